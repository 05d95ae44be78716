"""`voke rotate`: rotate credentials without locking anyone out."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops import interrupts
from voketag_ops.cli.common import DryRun, Yes, read_pasted, use
from voketag_ops.errors import Interrupted, NeedsOperatorError, VokeError
from voketag_ops.output import print_table

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from rich.console import Console

app = typer.Typer(
    help="Rotate credentials (db-password, api-key, jwt, sa-key; jwks prints the public keys), crash-safe: "
    "resume or rollback; status, what is due, cleanup, history.",
    no_args_is_help=True,
)


def _engine(
    env: Any, *, dry_run: bool = False, reads: bool = False, check: Callable[[Any], object] | None = None
) -> Any:
    """The rotation engine; a dry run never starts (or creates) the local environment, nor
    does a command that only READS (status, history, jwks), which also works mid-failover.
    CHECK (the arguments: a login, a key's name, a rotation id) runs before it is started."""
    from voketag_ops.workflows.rotate import local_engine

    with env.out.steps("preparing") as update:
        return local_engine(env.settings, update, start=not dry_run, reads=reads, check=check)


def _show(env: Any, outcome: Any) -> None:
    report = outcome.report
    if report is None:
        env.out.result({"status": "nothing to do"}, render=lambda c, r: c.print("no unfinished rotation"))
        return
    env.out.result(report, render=lambda c, r: _render_report(c, r, env.out.with_env), error=outcome.error)


@app.command("db-password")
def db_password(
    ctx: typer.Context,
    user: Annotated[str, typer.Option("--user", help="Managed database login (rotation.db_users).")] = "app",
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="alternating or single (must match the configuration).")
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Rotate a database password: new version, ALTER ROLE, test, commit, restart services, health."""
    from voketag_ops.workflows.rotate import on_record

    env = use(ctx)
    if strategy not in (None, "alternating", "single"):
        from voketag_ops.errors import UsageError

        raise UsageError(f"--strategy must be alternating or single, not {strategy!r}")
    if not dry_run:
        env.out.confirm(f"Rotate the database password of {user}?", yes=yes)
    with on_record(env.settings, env.home, f"rotation.db_users.{user}", dry_run=dry_run) as engine_of:
        engine = engine_of(
            _engine(env, dry_run=dry_run, check=lambda e: e.check_db_password(user, strategy=strategy))
        )
        outcome = engine.rotate_db_password(user, strategy=strategy, dry_run=dry_run)
    _show(env, outcome)


@app.command("api-key")
def api_key(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The key's name in rotation.api_keys: stripe, auth0, maps, sendgrid.")
    ],
    adopt: Annotated[
        bool,
        typer.Option("--adopt", help="Store the key in use today (pasted) as the first version, verified."),
    ] = False,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Rotate a third-party API key (Auth0, SendGrid, Google Maps, Stripe).

    Auth0 gets a new client secret set through its Management API; SendGrid and Maps mint a key beside the old one (`voke rotate cleanup` deletes the old one a day later); Stripe takes the key rolled in the Dashboard, pasted on stdin or at a prompt that does not echo, and verifies it before storing it.

    --adopt stores the key in use today as the first version.
    """
    from voketag_ops.workflows.api_keys import adopt_api_key, api_credential, needs_pasted_key, rotate_api_key
    from voketag_ops.workflows.rotate import on_record

    env = use(ctx)
    pasted = None
    if not dry_run:
        env.out.confirm(f"{'Adopt' if adopt else 'Rotate'} the API key {name}?", yes=yes)
        if adopt or needs_pasted_key(env.settings.rotation, name):
            pasted = read_pasted(env, f"{'Current' if adopt else 'New'} {name} key")
    if adopt:
        engine = _engine(env, dry_run=dry_run, check=lambda e: api_credential(e, name))
        env.out.result(adopt_api_key(engine, name, pasted or "", dry_run=dry_run), render=_render_adopt)
        return
    with on_record(env.settings, env.home, f"rotation.api_keys.{name}", dry_run=dry_run) as engine_of:
        engine = engine_of(_engine(env, dry_run=dry_run, check=lambda e: api_credential(e, name)))
        outcome = rotate_api_key(engine, name, new_key=pasted, dry_run=dry_run)
    _show(env, outcome)


@app.command("jwt")
def jwt(
    ctx: typer.Context,
    emergency: Annotated[
        bool,
        typer.Option(
            "--emergency", help="Replace every key now; tokens signed before stop verifying (forced logouts)."
        ),
    ] = False,
    init: Annotated[
        bool,
        typer.Option(
            "--init", help="Create the keyring (one signing key) where none exists yet, e.g. on a cloud env."
        ),
    ] = False,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Rotate the JWT signing keyring (publish before sign).

    The first run publishes a next key; a run after rotation.jwt.verifier_refresh_seconds switches signing to it, and the old key stays in the JWKS for max_token_lifetime_seconds. --emergency replaces every key at once (forced logouts). --init creates the keyring where nothing has yet (`voke env up` does it on the local environment).
    """
    from voketag_ops.workflows.jwt import init_keyring, rotate_jwt
    from voketag_ops.workflows.rotate import on_record

    env = use(ctx)
    if init and emergency:
        from voketag_ops.errors import UsageError

        raise UsageError("--init and --emergency cannot be combined")
    if not dry_run:
        if init:
            question = "Create the JWT signing keyring?"
        elif emergency:
            question = "Replace every JWT signing key now (forced logouts)?"
        else:
            question = "Rotate the JWT keyring?"
        env.out.confirm(question, yes=yes)
    if init:
        engine = _engine(env, dry_run=dry_run)
        env.out.result(init_keyring(engine, dry_run=dry_run), render=_render_init)
        return
    with on_record(env.settings, env.home, "rotation.jwt", dry_run=dry_run) as engine_of:
        engine = engine_of(_engine(env, dry_run=dry_run))
        outcome = rotate_jwt(engine, emergency=emergency, dry_run=dry_run)
    _show(env, outcome)


@app.command("sa-key")
def sa_key(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The key's name in rotation.sa_keys.")],
    init: Annotated[
        bool,
        typer.Option("--init", help="Store a first, new key as `current` (a key voke does not manage yet)."),
    ] = False,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Rotate a Google service-account key (cloud environments).

    IAM creates the new key beside the old one (at most 10 per account); it is stored, then verified by a token exchange. `voke rotate cleanup` disables the old key, checks the new one, then deletes it. Prefer keyless auth wherever a workload can use it.
    """
    from voketag_ops.workflows.rotate import on_record
    from voketag_ops.workflows.sa_keys import init_sa_key, rotate_sa_key

    env = use(ctx)
    if env.settings.env == "local":
        from voketag_ops.errors import ConfigError

        raise ConfigError(
            "service-account keys live in Google Cloud IAM: use --env NAME with a cloud environment"
        )
    if not dry_run:
        env.out.confirm(f"{'Create the first' if init else 'Rotate the'} key of {name}?", yes=yes)
    if init:
        engine = _engine(env)
        env.out.result(init_sa_key(engine, name, dry_run=dry_run), render=_render_sa_init)
        return
    with on_record(env.settings, env.home, f"rotation.sa_keys.{name}", dry_run=dry_run) as engine_of:
        engine = engine_of(_engine(env))
        outcome = rotate_sa_key(engine, name, dry_run=dry_run)
    _show(env, outcome)


@app.command("jwks")
def jwks(ctx: typer.Context) -> None:
    """Print the public JWKS (next, current, previous until its tokens expire); never a private key."""
    from voketag_ops.workflows.jwt import jwt_credential, public_jwks

    env = use(ctx)
    env.out.result(public_jwks(jwt_credential(_engine(env, reads=True))), render=_render_jwks)


@app.command("resume")
def resume(
    ctx: typer.Context,
    rotation_id: Annotated[
        str | None, typer.Argument(help="Rotation id (default: the unfinished one).")
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Finish an interrupted rotation from the step after the last one recorded."""
    env = use(ctx)
    if dry_run:
        env.out.result(
            _engine(env, dry_run=True).plan_unfinished(rotation_id, action="resume"), render=_render_plan
        )
        return
    env.out.confirm(f"Resume rotation {rotation_id or '(the unfinished one)'}?", yes=yes)
    engine = _engine(env, check=lambda e: e.plan_unfinished(rotation_id, action="resume"))  # as its dry run
    _show(env, engine.resume(rotation_id))


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    rotation_id: Annotated[str, typer.Argument(help="Rotation id (see `voke rotate status`).")],
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Undo an unfinished rotation: target, aliases and services back to the previous version."""
    env = use(ctx)
    if dry_run:
        env.out.result(
            _engine(env, dry_run=True).plan_unfinished(rotation_id, action="rollback"), render=_render_plan
        )
        return
    env.out.confirm(f"Roll back rotation {rotation_id}?", yes=yes)
    engine = _engine(env, check=lambda e: e.plan_unfinished(rotation_id, action="rollback"))  # as its dry run
    _show(env, engine.rollback(rotation_id))


def _render_plan(console: Console, report: dict[str, Any]) -> None:
    console.print(f"[bold]dry run[/]: {report.get('rotation_id') or 'no rotation'}; nothing will change")
    if report.get("scope"):
        console.print(f"  rollback scope: {report['scope']} (last step recorded: {report['last_step']})")
    for step in report["plan"]:
        console.print(f"  • {step}", markup=False)


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Every managed secret: current version, age, next due date, rotations in progress."""
    env = use(ctx)
    engine = _engine(env, reads=True)
    report = engine.status()
    setup = {secret: engine.setup_command(secret) for secret in report["missing"]}
    report["setup"] = _setup_json(env, setup)
    env.out.result(report, render=lambda c, r: _render_status(c, r, env.out.with_env, setup=setup))


@app.command("due")
def due(
    ctx: typer.Context,
    run: Annotated[bool, typer.Option("--run", help="Rotate every due secret (for cron).")] = False,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """What is due by the schedule; with --run, rotate it (exit 6/7 if any rotation failed)."""
    env = use(ctx)
    if run and not dry_run:  # before the environment is started: a refusal changes nothing
        env.out.confirm("Rotate every due secret and finish the unfinished rotations?", yes=yes)
    engine = _engine(env, dry_run=dry_run or not run)
    due_now = engine.due()
    # A rotation whose voke died (a crashed cron run) is finished first, by the next cron run:
    # otherwise nothing would report it until the secret fell due again.
    # One that stopped for a person (needs_attention) waits for one: rerunning its failing step
    # every hour would only notify again; --run names it, and ends with exit 7.
    state = engine.status()
    waiting = [r for r in state["in_progress"] if not r["running"]]
    stuck = [r for r in waiting if r["status"] != "needs_attention"]
    attention = [r for r in waiting if r["status"] == "needs_attention"]
    missing = state["missing"]  # configured, never stored: never rotated until set up
    setup = {secret: engine.setup_command(secret) for secret in missing}
    listed = {
        "due": due_now,
        "unfinished": stuck,
        "needs_attention": attention,
        "missing": missing,
        "setup": _setup_json(env, setup),
    }
    if not run or not (due_now or stuck or attention):
        env.out.result(
            {**listed, "rotations": []}, render=lambda c, r: _render_due(c, r, env.out.with_env, setup=setup)
        )
        return
    reports: list[Any] = []
    worst: VokeError | None = None

    class Stopped(Exception):
        """A Ctrl-C or SIGTERM: no further rotation starts; those that ran are reported."""

    def one(secret: str, refused: str, run_it: Any) -> None:
        # One secret that cannot start (a Stripe key to paste) must not stop the others; a
        # Ctrl-C stops the run (in a rotation, or held since the last one ended).
        nonlocal worst
        try:
            interrupts.reopen()  # the last one ended: a signal since stops the run here, not held on
        except KeyboardInterrupt:
            signal = interrupts.stopped_by()
            worst = Interrupted(f"{signal} before {secret}", hint="the rotations listed ran; rerun to go on")
            raise Stopped from None
        try:
            outcome = run_it()
        except VokeError as exc:
            error = {"type": exc.type_name, "message": exc.message, "exit_code": int(exc.exit_code)}
            reports.append({"secret": secret, "status": refused, "error": error})
            failed: VokeError | None = exc
        else:
            reports.append(outcome.report)
            failed = outcome.error
        if failed is not None and (worst is None or failed.exit_code > worst.exit_code):
            worst = failed
        if isinstance(failed, Interrupted):
            raise Stopped

    # A dry run plans each rotation as the run would make it (finishing one: the plan of its resume).
    resumed = {r["secret"] for r in waiting}
    due_now = [d for d in due_now if d["name"] not in resumed]  # finishing it was its rotation
    with contextlib.suppress(Stopped):
        for r in stuck:
            if dry_run:
                one(r["secret"], "not_resumed", lambda r=r: engine.plan_resume(r["rotation_id"]))
            else:
                one(r["secret"], "not_resumed", lambda r=r: engine.resume(r["rotation_id"]))
        for r in attention:
            one(r["secret"], "not_resumed", lambda r=r: _waits_for_a_person(r))
        for item in due_now:
            one(
                item["name"],
                "not_started",
                lambda item=item: engine.rotate(engine.name_of(item["name"]), dry_run=dry_run),
            )
    env.out.result(
        {**listed, "rotations": reports},
        render=lambda c, r: _render_due(c, r, env.out.with_env, setup=setup),
        error=worst,
    )


def _waits_for_a_person(r: dict[str, Any]) -> Any:
    raise NeedsOperatorError(
        f"rotation {r['rotation_id']} of {r['secret']} stopped and needs a person; not resumed",
        hint=f"fix the cause, then: {r['next']}",
    )


@app.command("cleanup")
def cleanup(ctx: typer.Context, dry_run: DryRun = False, yes: Yes = False) -> None:
    """Disable superseded versions after 24 h, destroy them after 30 days; never current,
    previous, the newest 3 enabled, or a version any service is pinned to."""
    env = use(ctx)
    if not dry_run:  # before the environment is started: a refusal changes nothing
        env.out.confirm("Disable/destroy old secret versions?", yes=yes)
    engine = _engine(env, dry_run=dry_run)
    env.out.result(engine.cleanup(dry_run=dry_run), render=_render_cleanup)


@app.command("history")
def history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest N rotations.")] = 20,
    secret: Annotated[str | None, typer.Option("--secret", help="Only this secret.")] = None,
) -> None:
    """Finished rotations, newest first."""
    env = use(ctx)
    records = _engine(env, reads=True).history(limit=limit, secret=secret)
    env.out.result({"rotations": records}, render=_render_history)


def _same(text: str) -> str:
    return text


def _render_report(console: Console, report: Any, with_env: Callable[[str], str] = _same) -> None:
    """A rotation's report; WITH_ENV adds `--env NAME` to the voke commands it names."""
    from rich.markup import escape
    from rich.table import Table

    if report.dry_run:
        console.print(
            f"[bold]dry run[/]: rotation plan for {report.secret} ({report.strategy}); nothing will change"
        )
        for step in report.plan:
            console.print(f"  • {with_env(step)}", markup=False)
        return
    table = Table(title=f"{report.rotation_id}: {report.secret} ({report.strategy})", title_justify="left")
    for col in ("step", "status", "seconds", "detail"):
        table.add_column(col)
    for step in report.steps:
        table.add_row(step.name, step.status, f"{step.duration_seconds:.2f}", escape(step.detail))
    print_table(console, table)
    resumed = " (resumed)" if report.resumed else ""
    console.print(
        f"{report.status}{resumed}: version {report.previous_version} -> {report.new_version} "
        f"in {report.duration_seconds:.2f} s"
    )
    _render_unclaimed(console, report)


def _render_unclaimed(console: Console, report: Any) -> None:
    """The service-account keys REPORT's rotation kept because it could not tell them from
    another consumer's (`unclaimed_keys`, as --json lists them): each with what deletes it."""
    for key in report.unclaimed_keys:
        console.print(
            f"unclaimed key {key['key_id']} of {key['account']}: a create whose answer was lost may have "
            f"made it, or another consumer did; kept. If nothing uses it, delete it: {key['command']}",
            markup=False,
        )


def _render_status(
    console: Console,
    report: dict[str, Any],
    with_env: Callable[[str], str] = _same,
    *,
    setup: Mapping[str, str],
) -> None:
    """SETUP: what creates each missing secret (RotationEngine.setup_command)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="managed secrets", title_justify="left")
    for col in ("secret", "current", "previous", "age (days)", "next due", "due"):
        table.add_column(col)
    for s in report["secrets"]:
        table.add_row(
            s["name"],
            str(s["current_version"]),
            "-" if s["previous_version"] is None else str(s["previous_version"]),
            "-" if s["age_days"] is None else f"{s['age_days']:.1f}",
            s["next_due"],
            "[yellow]yes[/]" if s["due"] else "no",
        )
    print_table(console, table)
    for r in report["in_progress"]:
        console.print(
            f"[yellow]unfinished[/] {r['rotation_id']} on {r['secret']}: last step {r['step']} "
            + escape(with_env(f"({'running' if r['running'] else 'not running: ' + r['next']})"))
        )
    for name in report.get("missing", []):
        console.print(
            f"[yellow]not set up[/] {name}: the secret does not exist ({escape(with_env(setup[name]))})"
        )


def _setup_json(env: Any, setup: Mapping[str, str]) -> dict[str, str]:
    """`setup` of --json: each missing secret's setup command, as the terminal view names it."""
    return {secret: env.out.with_env(command) for secret, command in setup.items()}


def _render_due(
    console: Console,
    report: dict[str, Any],
    with_env: Callable[[str], str] = _same,
    *,
    setup: Mapping[str, str],
) -> None:
    """SETUP: what creates each missing secret (RotationEngine.setup_command)."""
    if not any(report[k] for k in ("due", "unfinished", "needs_attention", "missing")):
        console.print("nothing is due")
    for s in report["due"]:
        console.print(f"due: {s['name']} (since {s['next_due']})")
    for u in report["unfinished"]:
        console.print(
            f"unfinished: {u['rotation_id']} of {u['secret']} (its voke is gone; --run finishes it)"
        )
    for u in report["needs_attention"]:
        console.print(
            with_env(
                f"needs attention: {u['rotation_id']} of {u['secret']} stopped for a person ({u['next']})"
            ),
            markup=False,
        )
    for name in report["missing"]:
        console.print(f"not set up: secret {name} does not exist ({with_env(setup[name])})", markup=False)
    for r in report["rotations"]:
        if isinstance(r, dict):
            word = "not resumed" if r["status"] == "not_resumed" else "not started"
            console.print(f"{r['secret']}: {word} ({r['error']['message']})", markup=False)
        elif r.dry_run:
            _render_report(console, r, with_env)
        else:
            console.print(f"{r.rotation_id}: {r.status}, version {r.previous_version} -> {r.new_version}")
            _render_unclaimed(console, r)


def _render_init(console: Console, report: dict[str, Any]) -> None:
    if report["status"] == "planned":
        console.print("dry run: would " + "; ".join(report["plan"]))
    elif report["status"] == "exists":
        console.print(f"{report['secret']} already holds a keyring; nothing changed")
    else:
        console.print(
            f"created: {report['secret']} version {report['version']} is current ({report['algorithm']})"
        )


def _render_sa_init(console: Console, report: dict[str, Any]) -> None:
    if report["dry_run"]:
        console.print("dry run: would " + "; ".join(report["plan"]), markup=False)
        return
    console.print(
        f"created: {report['secret']} version {report['version']} is current "
        f"(key {report['key_id']} of {report['account']})",
        markup=False,
    )


def _render_adopt(console: Console, report: dict[str, Any]) -> None:
    if report["status"] == "planned":
        console.print(
            f"dry run: would verify the pasted {report['kind']} key and store it as the first version "
            f"of {report['secret']}"
        )
        return
    key = f" (key {report['key_id']})" if report.get("key_id") else ""
    console.print(f"adopted: {report['secret']} version {report['version']} is current{key}")


def _render_jwks(console: Console, report: dict[str, Any]) -> None:
    import json

    console.print(json.dumps(report, indent=2), markup=False, highlight=False, soft_wrap=True)


def _render_cleanup(console: Console, report: dict[str, Any]) -> None:
    verb = "would" if report["dry_run"] else "did"
    if not report["actions"]:
        console.print("nothing to clean up")
    for a in report["actions"]:
        console.print(f"{verb} {a.action} {a.secret} version {a.version} ({a.reason})")


def _render_history(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    from voketag_ops.output import shown

    table = Table(title="rotations", title_justify="left")
    for col in ("id", "secret", "status", "versions", "started", "finished", "error"):
        table.add_column(col)
    for r in report["rotations"]:
        table.add_row(
            shown(r.id),
            shown(r.secret),
            r.status,
            f"{r.old_current} -> {r.pending_version}",
            shown(r.started_at),
            shown(r.finished_at or ""),
            shown((r.error or {}).get("message", "")),
        )
    print_table(console, table)
