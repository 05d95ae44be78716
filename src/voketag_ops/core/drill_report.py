"""Drill reports for the monthly DR evidence: Markdown and a self-contained HTML page
(inline CSS and SVG, no external assets) rendered from a journal. Pure string building."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from voketag_ops.core.drill import TIMELINE_KEYS

# (label, start keys: the first one set counts, end key, colour), as core.drill.phases
_PHASES = (
    ("detection", ("fault_injected_at",), "detected_at", "#d9534f"),
    ("decision", ("detected_at",), "recovery_started_at", "#f0ad4e"),
    ("recovery", ("recovery_started_at",), "recovered_at", "#5bc0de"),
    ("services", ("recovered_at",), "services_back_at", "#9b59b6"),
    ("first write", ("services_back_at", "recovered_at"), "first_write_ok_at", "#5cb85c"),
    ("verification", ("first_write_ok_at",), "verified_at", "#777777"),
)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") + unit
    return f"{value}{unit}"


_STEP_HEADERS = ["step", "ok", "exit", "seconds", "commands"]


def _step_rows(steps: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """A journal's steps as rows: the commands each ran shown as `tool (exit code)` (a cloud
    step's operation as `name (status)`); the full command lines and output digests are in the
    JSON. Older journals lack both: shown as '–'."""
    return [
        (
            s.get("name"),
            "yes" if s.get("ok") else "NO",
            s.get("exit_code"),
            s.get("duration_seconds"),
            ", ".join(_command(c) for c in s.get("commands") or []) or None,
        )
        for s in steps
    ]


def _command(c: Mapping[str, Any]) -> str:
    if "command" in c:
        return f"{c['command'].split(' ', 1)[0]} ({_fmt(c.get('exit_code'))})"
    return f"{c.get('operation')} ({c.get('status')})"


def _mark(ok: Any) -> str:
    return _word(ok, "met", "BREACHED")


def _word(ok: Any, good: str, bad: str) -> str:
    return "not measured" if ok is None else good if ok else bad


def _md(value: Any) -> str:
    """VALUE as Markdown text that stays in its table cell or line: no HTML, no cell break."""
    text = str(value)
    for raw, safe in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|")):
        text = text.replace(raw, safe)
    return " ".join(text.split())  # a multi-line error on one line


def integrity_word(ok: Any) -> str:
    return _word(ok, "ok", "FAILED")


def _recovery_rows(j: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A point-in-time restore's evidence (research: requested target, stop point, new timeline,
    backup and WAL range), from the journal's details.restore; nothing for other scenarios."""
    restore = (j.get("details") or {}).get("restore") or {}
    if not restore:
        return []
    stop = restore.get("stop_point") or {}
    backup = restore.get("backup") or {}
    if not isinstance(backup, Mapping):  # a Cloud SQL clone names its source instead
        backup = {"label": backup}
    rows = [
        ("requested target", restore.get("target")),
        ("stop point", stop.get("stopped")),
        ("stopped at", stop.get("stop_time")),
        ("new timeline", stop.get("new_timeline")),
        ("base backup", backup.get("label")),
        ("backup finished", backup.get("finished_at")),
        ("WAL replayed", f"{stop.get('wal_first')} .. {stop.get('wal_last')} ({stop.get('wal_files')} file(s))"
         if stop.get("wal_files") else None),
        ("restored instance", f"{restore.get('name')} (port {restore.get('port')})" if restore.get("port")
         else restore.get("name")),
    ]  # fmt: skip
    return [(label, value) for label, value in rows if value not in (None, "")]


def _recovery(j: Mapping[str, Any]) -> list[str]:
    rows = _recovery_rows(j)
    if not rows:
        return []
    lines = ["## Recovery", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {_md(value)} |" for label, value in rows]
    return [*lines, ""]


def _canary_sentence(j: Mapping[str, Any]) -> str | None:
    canary = j.get("canary") or {}
    if not canary:
        return None
    lost = canary.get("lost_commits", j.get("lost_commits"))
    return (
        f"{canary.get('writes', 0)} writes every {_fmt(canary.get('interval_seconds'), ' s')}: "
        f"{canary.get('acked_commits', 0)} acknowledged, {canary.get('failed_writes', 0)} failed, "
        + (
            "acknowledged but lost: not determined (the run ended before the check)."
            if lost is None
            else f"{lost} acknowledged but lost."
        )
    )


_SOURCES = {
    "wal": "the old leader's WAL past the switch point",
    "canary": "the canary writer",
    "recovery log": "the recovery log",
    "canary rows": "the canary rows",
}


def _lost_row(j: Mapping[str, Any]) -> tuple[str, str, str]:
    """Lost commits: (achieved, target, verdict). Judged against a target of their own where the
    scenario has one (nothing may be lost in a failback), else by the RPO alone."""
    source = j.get("rpo_source")
    achieved = _fmt(j.get("lost_commits")) + (f" ({_SOURCES.get(source, source)})" if source else "")
    target = (j.get("targets") or {}).get("lost_commits_target")
    if target is None:
        return achieved, "–", "judged by the RPO"
    return achieved, _fmt(target), _mark(j.get("lost_met"))


def _loss_sentence(j: Mapping[str, Any]) -> str | None:
    """What a failover's lost commits were read from: the old leader's WAL past the switch point,
    or the canary when that could not be read."""
    lost = (j.get("details") or {}).get("lost_transactions")
    if not lost:
        return None
    if lost.get("error"):
        return (
            f"The old leader's WAL past the switch point could not be read ({lost['error']}): "
            "RPO and lost commits come from the canary writer alone."
        )
    return (
        f"{_fmt(lost.get('commits'))} commit(s) in {lost.get('old_leader')}'s WAL past the switch point "
        f"{lost.get('switch_lsn')} (timeline {lost.get('old_timeline')} to {lost.get('new_timeline')}), "
        f"the newest at {_fmt(lost.get('newest_lost_commit_at'))}; the new leader's last replayed commit "
        f"at {_fmt(lost.get('last_replayed_commit_at'))}; canary rows lost: {_fmt(lost.get('lost_canary_rows'))}."
    )


def _phases_sentence(j: Mapping[str, Any]) -> str:
    return "Phases: " + ", ".join(f"{k} {_fmt(v, ' s')}" for k, v in (j.get("phases") or {}).items())


def _steady_lines(j: Mapping[str, Any]) -> list[str]:
    ss = j.get("steady_state") or {}
    return [
        f"{when}: {'ok' if (ss.get(when) or {}).get('ok') else 'NOT ok'}" + _failed_checks(ss.get(when))
        for when in ("before", "after")
    ]


def markdown(j: Mapping[str, Any]) -> str:
    """The journal as a Markdown report."""
    t = j["targets"]
    lines = [
        f"# DR drill {_md(j['run_id'])}: {_md(j['scenario'])} ({_md(t.get('disruption', ''))})",
        "",
        f"- **Status: {j['status']}**"
        + (f" ({_md('; '.join(j.get('breaches') or []))})" if j.get("breaches") else ""),
        f"- Environment: {j['environment']} ({j['mode']}), voke {j['versions'].get('voke')}, "
        f"PostgreSQL {j['versions'].get('postgres')}, node {_md(j.get('node', ''))}",
        f"- Ran {j['started_at']} .. {j.get('finished_at')} ({_fmt(j.get('duration_seconds'), ' s')})",
        "",
        "## Targets",
        "",
        "| measure | achieved | target | verdict |",
        "|---|---|---|---|",
        f"| RTO | {_fmt(j.get('rto_seconds'), ' s')} | {_fmt(t['rto_target_seconds'], ' s')} | {_mark(j.get('rto_met'))} |",
        f"| RPO | {_fmt(j.get('rpo_seconds'), ' s')} | {_fmt(t['rpo_target_seconds'], ' s')} | {_mark(j.get('rpo_met'))} |",
        f"| integrity | {len(j.get('integrity') or [])} check(s) | all match | "
        f"{integrity_word(j.get('integrity_ok'))} |",
        "| lost commits | {} | {} | {} |".format(*(_md(c) for c in _lost_row(j))),
        "",
        "## Timeline (UTC)",
        "",
        "| event | at | seconds after the fault |",
        "|---|---|---|",
    ]
    offsets = _offsets(j)
    for key in TIMELINE_KEYS:
        lines.append(
            f"| {key.removesuffix('_at').replace('_', ' ')} | {j['timeline'].get(key) or '–'} | "
            f"{_fmt(offsets.get(key))} |"
        )
    lines += ["", _phases_sentence(j), ""]
    if (canary := _canary_sentence(j)) is not None:
        lines += ["## Canary writer", "", canary, ""]
    if (loss := _loss_sentence(j)) is not None:
        lines += ["## Lost commits", "", _md(loss), ""]
    lines += _recovery(j)
    lines += [
        "## Integrity",
        "",
        "| table | rows | checksum | at LSN | match | detail |",
        "|---|---|---|---|---|---|",
    ]
    for item in j.get("integrity") or []:
        lines.append(
            f"| {_md(item.get('table'))} | {_fmt(item.get('rows'))} | `{_md((item.get('checksum') or '–')[:16])}` | "
            f"{_md(_fmt(item.get('lsn')))} | {'yes' if item.get('match') else 'NO'} | {_md(item.get('detail') or '')} |"
        )
    for title, steps in (("Steps", j.get("steps")), ("Clean-up", j.get("cleanup"))):
        if not steps and title == "Clean-up":
            continue
        lines += ["", f"## {title}", "", "| step | ok | exit | seconds | commands |", "|---|---|---|---|---|"]
        for row in _step_rows(steps or []):
            lines.append("| " + " | ".join(_md(_fmt(c)) for c in row) + " |")
    lines += ["", "## Steady state", "", *(f"- {_md(line)}" for line in _steady_lines(j))]
    if j.get("error"):
        lines += ["", f"**Error:** {_md(j['error'])}"]
    return "\n".join(lines) + "\n"


def _failed_checks(state: Mapping[str, Any] | None) -> str:
    if not state:
        return " (not checked)"
    failed = [c["message"] for c in state.get("checks", []) if not c.get("ok")]
    return f" ({'; '.join(failed)})" if failed else ""


def _offsets(j: Mapping[str, Any]) -> dict[str, float | None]:
    from datetime import datetime

    def parse(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    fault = parse(j["timeline"].get("fault_injected_at"))
    out: dict[str, float | None] = {}
    for key in TIMELINE_KEYS:
        at = parse(j["timeline"].get(key))
        out[key] = round((at - fault).total_seconds(), 3) if fault and at else None
    return out


def _svg_timeline(j: Mapping[str, Any], width: int = 760) -> str:
    """Phases from the fault to verification as coloured segments, with the RTO mark."""
    offsets = _offsets(j)
    end = max([v for v in offsets.values() if v is not None] + [0.001])
    scale = (width - 40) / end
    bars = []
    for label, start_keys, end_key, colour in _PHASES:
        a = next((offsets[k] for k in start_keys if offsets.get(k) is not None), None)
        b = offsets.get(end_key)
        if a is None or b is None or b < a:
            continue
        x, w = 20 + a * scale, max(1.0, (b - a) * scale)
        bars.append(
            f'<rect x="{x:.1f}" y="20" width="{w:.1f}" height="28" fill="{colour}">'
            f"<title>{html.escape(label)}: {b - a:.3f} s</title></rect>"
        )
    rto = j.get("rto_seconds")
    marks = []
    if rto is not None:
        x = 20 + rto * scale
        marks.append(
            f'<line x1="{x:.1f}" y1="12" x2="{x:.1f}" y2="56" stroke="#000" stroke-width="2"/>'
            f'<text x="{x:.1f}" y="70" text-anchor="middle" font-size="12">RTO {rto:.2f} s</text>'
        )
    axis = "".join(
        f'<text x="{20 + end * f * scale:.1f}" y="90" text-anchor="middle" font-size="11">{end * f:.2f} s</text>'
        for f in (0, 0.25, 0.5, 0.75, 1)
    )
    legend = "".join(
        f'<rect x="{20 + i * 120}" y="100" width="12" height="12" fill="{c}"/>'
        f'<text x="{36 + i * 120}" y="111" font-size="12">{html.escape(label)}</text>'
        for i, (label, _, _, c) in enumerate(_PHASES)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="120" role="img" '
        f'aria-label="drill timeline">{"".join(bars)}{"".join(marks)}{axis}{legend}</svg>'
    )


def _svg_against_target(label: str, achieved: float | None, target: float, width: int = 760) -> str:
    """Achieved versus target on one bar (the target at 100 % of the scale, or the achieved if larger)."""
    top = max(target, achieved or 0.0) or 1.0
    scale = (width - 220) / top
    w = (achieved or 0.0) * scale
    tx = 200 + target * scale
    colour = "#5cb85c" if achieved is not None and achieved <= target else "#d9534f"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="34" role="img" '
        f'aria-label="{html.escape(label)}">'
        f'<text x="0" y="21" font-size="13">{html.escape(label)}: {_fmt(achieved, " s")} of {_fmt(target, " s")}</text>'
        f'<rect x="200" y="8" width="{max(w, 1):.1f}" height="18" fill="{colour}"/>'
        f'<line x1="{tx:.1f}" y1="2" x2="{tx:.1f}" y2="32" stroke="#000" stroke-dasharray="4 2"/></svg>'
    )


def html_page(j: Mapping[str, Any]) -> str:
    """A self-contained HTML page (inline CSS and SVG) for the journal."""
    e = html.escape
    t = j["targets"]
    status_colour = "#2e7d32" if j["status"] == "completed" else "#c62828"

    def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    offsets = _offsets(j)
    timeline_rows = [
        (k.removesuffix("_at").replace("_", " "), j["timeline"].get(k) or "–", offsets.get(k))
        for k in TIMELINE_KEYS
    ]
    integrity_rows = [
        (
            i.get("table"),
            i.get("rows"),
            (i.get("checksum") or "")[:16],
            i.get("lsn"),
            "yes" if i.get("match") else "NO",
            i.get("detail") or "",
        )
        for i in j.get("integrity") or []
    ]
    step_rows = _step_rows(j.get("steps") or [])
    cleanup_rows = _step_rows(j.get("cleanup") or [])
    breaches = "".join(f"<li>{e(b)}</li>" for b in j.get("breaches") or [])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>DR drill {e(j["run_id"])}</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:820px;color:#222}}
h1{{font-size:1.4em}} h2{{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}}
table{{border-collapse:collapse;width:100%;font-size:.92em}} td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}
th{{background:#f5f5f5}} .status{{color:#fff;background:{status_colour};padding:2px 10px;border-radius:3px}}
</style></head><body>
<h1>DR drill <code>{e(j["run_id"])}</code>: {e(j["scenario"])} ({e(t.get("disruption", ""))})
<span class="status">{e(j["status"])}</span></h1>
<p>{e(j["environment"])} ({e(j["mode"])}), voke {e(str(j["versions"].get("voke")))}, PostgreSQL
{e(str(j["versions"].get("postgres")))}; {e(j["started_at"])} .. {e(str(j.get("finished_at")))}</p>
{f"<ul>{breaches}</ul>" if breaches else ""}
<h2>Against the targets</h2>
{_svg_against_target("RTO", j.get("rto_seconds"), float(t["rto_target_seconds"]))}
{_svg_against_target("RPO", j.get("rpo_seconds"), float(t["rpo_target_seconds"]))}
{
        table(
            ["measure", "achieved", "target", "verdict"],
            [
                ("RTO (s)", j.get("rto_seconds"), t["rto_target_seconds"], _mark(j.get("rto_met"))),
                ("RPO (s)", j.get("rpo_seconds"), t["rpo_target_seconds"], _mark(j.get("rpo_met"))),
                ("lost commits", *_lost_row(j)),
                (
                    "integrity",
                    len(j.get("integrity") or []),
                    "all match",
                    integrity_word(j.get("integrity_ok")),
                ),
            ],
        )
    }
<h2>Timeline</h2>
{_svg_timeline(j)}
{table(["event", "at (UTC)", "seconds after the fault"], timeline_rows)}
<p>{e(_phases_sentence(j))}</p>
{f"<h2>Canary writer</h2><p>{e(canary)}</p>" if (canary := _canary_sentence(j)) is not None else ""}
{f"<h2>Lost commits</h2><p>{e(loss)}</p>" if (loss := _loss_sentence(j)) is not None else ""}
{("<h2>Recovery</h2>" + table(["", ""], recovery_rows)) if (recovery_rows := _recovery_rows(j)) else ""}
<h2>Integrity</h2>
{table(["table", "rows", "checksum", "at LSN", "match", "detail"], integrity_rows)}
<h2>Steps</h2>
{table(_STEP_HEADERS, step_rows)}
{("<h2>Clean-up</h2>" + table(_STEP_HEADERS, cleanup_rows)) if cleanup_rows else ""}
<h2>Steady state</h2>
<ul>{"".join(f"<li>{e(line)}</li>" for line in _steady_lines(j))}</ul>
{f"<h2>Error</h2><p>{e(j['error'])}</p>" if j.get("error") else ""}
</body></html>
"""
