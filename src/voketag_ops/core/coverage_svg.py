"""SVG for `voke coverage`: a shields-style badge and a trend chart. Pure and byte-deterministic:
the same input gives the same bytes, with no fonts measured and no network (text widths
come from a fixed table of Verdana 11 px advances)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

# Text and attribute values alike: quotes escaped too; control characters (most of which XML 1.0
# cannot carry at all; a label is one line) and the two non-characters dropped. A label is free
# text from the command line; a lone surrogate (a history's "\udcff", which no UTF-8 file can
# hold) is shown as U+FFFD, as a decoder shows a byte it cannot read.
_ATTRIBUTE_SAFE = {'"': "&quot;", "'": "&apos;"}
_NOT_XML: dict[int, str | None] = {
    **dict.fromkeys([*range(0x20), 0xFFFE, 0xFFFF]),
    **dict.fromkeys(range(0xD800, 0xE000), "\ufffd"),
}


def _esc(text: str) -> str:
    return escape(text.translate(_NOT_XML), _ATTRIBUTE_SAFE)


# Verdana advance widths at 11 px, rounded to 0.1 px (from the font's hmtx table).
_WIDTHS: dict[str, float] = {
    **dict.fromkeys("0123456789", 7.0),
    " ": 3.9, "%": 11.9, ".": 3.5, ",": 3.5, ":": 4.0, "-": 4.6, "_": 7.0, "/": 4.9, "(": 4.9, ")": 4.9,
    "+": 9.2, "a": 6.6, "b": 6.8, "c": 5.9, "d": 6.8, "e": 6.6, "f": 3.8, "g": 6.8, "h": 6.9, "i": 3.0,
    "j": 3.3, "k": 6.4, "l": 3.0, "m": 10.7, "n": 6.9, "o": 6.6, "p": 6.8, "q": 6.8, "r": 4.7, "s": 5.7,
    "t": 4.3, "u": 6.9, "v": 6.4, "w": 9.0, "x": 6.4, "y": 6.4, "z": 5.6,
}  # fmt: skip
_DEFAULT_WIDTH = 7.5  # capitals and anything else


def text_width(text: str) -> float:
    """Approximate rendered width of TEXT in Verdana 11 px."""
    return round(sum(_WIDTHS.get(ch, _DEFAULT_WIDTH) for ch in text), 1)


def _n(value: float) -> str:
    """A number as SVG text: at most one decimal, no trailing ".0"."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def badge(label: str, value: str, color: str) -> str:
    """A flat badge "LABEL | VALUE" with the value on COLOR."""
    lw = round(text_width(label) + 10)
    vw = round(text_width(value) + 10)
    width = lw + vw
    lab, val = _esc(label), _esc(value)
    font = "Verdana,Geneva,DejaVu Sans,sans-serif"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{lab}: {val}">'
        f"<title>{lab}: {val}</title>"
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/>'
        f'<rect x="{lw}" width="{vw}" height="20" fill="{_esc(color)}"/>'
        f'<rect width="{width}" height="20" fill="url(#s)"/></g>'
        f'<g fill="#fff" text-anchor="middle" font-family="{font}" font-size="11">'
        f'<text x="{_n(lw / 2)}" y="15" fill="#010101" fill-opacity=".3">{lab}</text>'
        f'<text x="{_n(lw / 2)}" y="14">{lab}</text>'
        f'<text x="{_n(lw + vw / 2)}" y="15" fill="#010101" fill-opacity=".3">{val}</text>'
        f'<text x="{_n(lw + vw / 2)}" y="14">{val}</text></g></svg>\n'
    )


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class Series:
    """One line of the chart: a name, its points (None = no data in that run), target and baseline."""

    name: str
    values: Sequence[float | None]
    target: float | None = None
    baseline: float | None = None
    latest: str | None = (
        None  # the last value as the report shows it (its precision, never rounded up to 100)
    )


def chart(series: Sequence[Series], labels: Sequence[str], *, title: str = "coverage") -> str:
    """A line chart of percentages per run. LABELS name the runs on the x axis (first and last shown)."""
    width, height = 720, 320
    left, right, top, bottom = 48, 180, 28, 36
    pw, ph = width - left - right, height - top - bottom
    points = [v for s in series for v in s.values if v is not None]
    refs = [x for s in series for x in (s.target, s.baseline) if x is not None]
    lo = min([*points, *refs], default=0.0)
    lo = max(0.0, math.floor((lo - 1) / 10) * 10)
    hi = 100.0
    n = max((len(s.values) for s in series), default=0)

    def x(i: int) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph * (hi - v) / (hi - lo if hi > lo else 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">',
        f"<title>{_esc(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{left}" y="18" font-size="13">{_esc(title)}</text>',
    ]
    for tick in range(int(lo), 101, 10):
        ty = _n(y(tick))
        out.append(f'<line x1="{left}" y1="{ty}" x2="{left + pw}" y2="{ty}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{_n(y(tick) + 4)}" text-anchor="end" fill="#555">{tick}%</text>')
    if labels:
        base = top + ph + 18
        out.append(
            f'<text x="{_n(x(0))}" y="{base}" text-anchor="start" fill="#555">{_esc(labels[0])}</text>'
        )
        if len(labels) > 1:
            last = _n(x(len(labels) - 1))
            out.append(f'<text x="{last}" y="{base}" text-anchor="end" fill="#555">{_esc(labels[-1])}</text>')
    for idx, s in enumerate(series):
        color = _PALETTE[idx % len(_PALETTE)]
        if s.target is not None:
            ty = _n(y(s.target))
            out.append(
                f'<line x1="{left}" y1="{ty}" x2="{left + pw}" y2="{ty}" stroke="{color}" '
                'stroke-dasharray="6 4" stroke-opacity=".6"/>'
            )
        if s.baseline is not None:
            by = _n(y(s.baseline))
            out.append(
                f'<line x1="{left}" y1="{by}" x2="{left + pw}" y2="{by}" stroke="{color}" '
                'stroke-dasharray="1 3" stroke-opacity=".6"/>'
            )
        for run in _runs(s.values):
            pts = " ".join(f"{_n(x(i))},{_n(y(v))}" for i, v in run)
            if len(run) > 1:
                out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
            for i, v in run:
                out.append(f'<circle cx="{_n(x(i))}" cy="{_n(y(v))}" r="2.5" fill="{color}"/>')
        ly = top + 14 + 18 * idx
        lx = left + pw + 16
        last_value = next((v for v in reversed(s.values) if v is not None), None)
        shown = s.latest if s.latest is not None else None if last_value is None else f"{last_value:.1f}"
        text = s.name + ("" if shown is None else f" {shown}%")
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 14}" y="{ly}">{_esc(text)}</text>')
    legend_y = top + 14 + 18 * len(series) + 6
    out.append(f'<text x="{left + pw + 16}" y="{legend_y}" fill="#555">dashed: target</text>')
    out.append(f'<text x="{left + pw + 16}" y="{legend_y + 16}" fill="#555">dotted: baseline</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((i, v))
    if current:
        runs.append(current)
    return runs
