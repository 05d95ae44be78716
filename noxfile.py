"""nox sessions: tests, lint, typecheck, bench, system (real Google Cloud), checkov (terraform/)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (starts its own PostgreSQL)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the package."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark script under benchmarks/; each prints ratios against a baseline from the same run."""
    session.install("-e", ".[test]", "pymerkle", "pandas", "sqlalchemy")
    # An installed voke runs from bytecode (pip compiles it at install time); an editable
    # checkout would recompile voke's modules on every run where PYTHONDONTWRITEBYTECODE is
    # set (~0.1 s a command), which no user sees. Measure voke as installed.
    session.run("python", "-m", "compileall", "-q", "src")
    import pathlib

    for script in sorted(pathlib.Path("benchmarks").glob("*.py")):
        if script.name.startswith("_"):
            continue
        session.run("python", str(script), *session.posargs)


@nox.session
def system(session: nox.Session) -> None:
    """The contract suites against a real Google Cloud project (VOKE_SYSTEM_PROJECT and ADC
    needed; every test skips without them). Never in the default sessions."""
    session.install("-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "-m", "system", "-rs", *session.posargs, env={"VOKE_SYSTEM_TESTS": "1"}
    )


@nox.session
def checkov(session: nox.Session) -> None:
    """checkov on terraform/, offline, in its own venv (it ships another `hcl2` module)."""
    session.install("checkov")
    session.run(
        "checkov",
        "-d",
        "terraform",
        "--framework",
        "terraform",
        "--skip-download",
        "--compact",
        "--quiet",
        *session.posargs,
    )
