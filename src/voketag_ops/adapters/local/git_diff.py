"""The lines changed since a git ref, for diff coverage: `git diff --merge-base REF`, i.e.
committed, staged and unstaged changes against the merge base, as diff-cover does
(untracked files are not part of a diff). Paths are relative to the repository root."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from voketag_ops.core.coverage import DiffError, parse_unified_diff
from voketag_ops.errors import ConfigError, InputError, UsageError
from voketag_ops.files import read_at_most

# A diff of a change worth gating is a few MiB at most; /dev/zero or an endless pipe is not one.
DIFF_LIMIT = 64 << 20


@dataclass(frozen=True)
class ChangedLines:
    """Changed lines per repository-relative path, and where the working directory sits."""

    lines: dict[str, set[int]]
    toplevel: Path
    prefix: str  # the working directory relative to the toplevel, "" or "sub/dir/"
    base: str


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git")
    if git is None:
        raise ConfigError("git is not installed (needed for --base)", hint="install git, or pass --diff-file")
    done = subprocess.run(
        # paths quoted alike, and from the repository's top whatever diff.relative says
        [git, "-c", "core.quotePath=true", "-c", "diff.relative=false", *args],
        cwd=root,
        capture_output=True,
        check=False,
    )
    # decoded here: text=True turns a "\r" inside a changed line into a line end, a hunk line too many
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0].removeprefix("fatal: ") if lines else "git failed"


def changed_lines(root: Path, base: str) -> ChangedLines:
    """Lines added or modified since the merge base of BASE and HEAD, working tree included."""
    if not base or base.startswith("-"):
        raise UsageError(f"--base must name a git ref, not {base!r}")
    top = _git(root, "rev-parse", "--show-toplevel", "--show-prefix")
    if top.returncode != 0:
        raise UsageError(f"--base needs a git repository: {_first_line(top.stderr)}")
    toplevel, _, prefix = top.stdout.partition("\n")
    verify = _git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    if verify.returncode != 0:
        raise UsageError(f"unknown git ref {base!r}", hint="fetch it first (e.g. git fetch origin main)")
    diff = _git(
        root,
        "diff",
        "--merge-base",
        base,
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        "--unified=0",
        "--src-prefix=a/",
        "--dst-prefix=b/",
    )
    if diff.returncode != 0:
        # (asked of git, not read from its message, which is translated)
        if _git(root, "merge-base", base, "HEAD").returncode == 1:
            if _git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
                raise UsageError(
                    f"no merge base of {base!r} and HEAD in this shallow clone",
                    hint="fetch the history first: git fetch --unshallow (actions/checkout: fetch-depth: 0)",
                )
            raise UsageError(
                f"{base!r} and HEAD share no history (no merge base)",
                hint="compare against a ref HEAD grew from",
            )
        raise UsageError(f"git diff against {base!r} failed: {_first_line(diff.stderr)}")
    return ChangedLines(parse_unified_diff(diff.stdout), Path(toplevel.strip()), prefix.strip(), base)


def work_tree_prefix(root: Path) -> str:
    """ROOT relative to its git repository's top ("sub/dir/"), "" at the top or outside git."""
    if shutil.which("git") is None:
        return ""
    found = _git(root, "rev-parse", "--show-prefix")
    return found.stdout.strip() if found.returncode == 0 else ""


def read_diff_file(path: Path) -> dict[str, set[int]]:
    """Changed lines from a unified diff saved in PATH (paths relative to the project root)."""
    try:
        with path.open("rb") as fh:  # not stat'ed first: `--diff-file /dev/stdin` reads a pipe
            data = read_at_most(fh, DIFF_LIMIT)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        raise InputError(f"{path}: larger than {DIFF_LIMIT:,} bytes, the most voke reads of a diff")
    text = data.decode("utf-8", errors="replace")
    if text.strip() and not any(line.startswith(("+++ ", "@@ ", "diff ")) for line in text.split("\n")):
        # an HTML page or a log saved by mistake would otherwise pass as "nothing changed"
        raise InputError(f"{path}: not a unified diff (no '+++' file header or '@@' hunk)")
    try:
        return parse_unified_diff(text)
    except DiffError as exc:
        raise InputError(f"{path}: line {exc.line}, column {exc.column}: {exc}") from None
