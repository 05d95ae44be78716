"""What a fresh interpreter imports: for tests that keep heavy libraries (the CLI's, the cloud
clients, the database driver, pydantic) off a start path or out of the pure core."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_of(statements: str, *names: str) -> list[str]:
    """Those of NAMES (a package, `pydantic`, or a module, `voketag_ops.config`) that a new
    interpreter holds after running STATEMENTS (Python code), sorted."""
    code = f"{statements}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.splitlines()[-1])
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in loaded))
