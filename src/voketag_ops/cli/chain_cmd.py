"""`voke chain`: Merkle roots and proofs over files, proof verification, the hash chain
and its anchors.

Leaves are the lines of FILE (`-` for stdin) without their line ending; with `--hex`
each line is the hex encoding of one leaf. Exit codes: 0 success or valid; 1 invalid
proof, failed validation or a rejected input file; 2 bad usage or a malformed proof
document; 4 the chain store failed; 5 an anchor in the wrong state or a diverging import;
7 a chain file that could not be migrated into PostgreSQL.

The chain lives where `open_chain_store` says (by default the local environment's
database, which commands that use it start on demand): those commands refuse a cloud
environment (exit 3), whose --env would have acted on the local chain under its name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops.cli.common import (
    MAX_LISTED,
    DryRun,
    MinDifficulty,
    Unasked,
    Yes,
    stdin_bytes,
    use,
    use_local,
    utf8_option,
)
from voketag_ops.output import print_table, shown

_UINT64_MAX = (1 << 64) - 1  # the largest size the chain store reads back (core.chain.MAX_NONCE)

if TYPE_CHECKING:
    from rich.console import Console

    from voketag_ops.cli.common import AppContext
    from voketag_ops.ports import ChainStore
    from voketag_ops.workflows.chain import AnchorRunReport
    from voketag_ops.workflows.ingest import BatchAnchorCheck

app = typer.Typer(
    help="Merkle roots and proofs (root, prove, consistency, verify), the hash chain (validate, export, import) "
    "and its anchors (anchors, anchor).",
    no_args_is_help=True,
)
anchor_app = typer.Typer(
    help="Anchors of roots on the chain: request, run (anchor what was requested), cancel.",
    no_args_is_help=True,
)
app.add_typer(anchor_app, name="anchor")

LeafFile = Annotated[str, typer.Argument(metavar="FILE", help="File of leaves, one per line (`-`: stdin).")]
Hex = Annotated[bool, typer.Option("--hex", help="Each line is the hex encoding of one leaf.")]


def _home(env: AppContext) -> Path:
    from voketag_ops.adapters.local.environment import resolve_home

    return resolve_home(env.settings.local.home)


def _store(env: AppContext, *, dry_run: bool = False, changes: bool = False) -> ChainStore:
    """The chain store; the local environment is started if the chain lives there and it is
    down (a spinner on a terminal, otherwise one line when it has to start): all of `env up`
    for a command that CHANGES the chain, the servers for a read. A DRY_RUN starts, creates
    and migrates nothing: with the chain unreachable it exits 4 saying so."""
    from voketag_ops.output import _isatty
    from voketag_ops.workflows.chain import open_chain_store

    if dry_run:
        return open_chain_store(_home(env), settings=env.settings, readonly=True)
    if _isatty(env.out.stderr) and not env.out.json_mode:
        with env.out.progress("checking the local environment") as update:
            return open_chain_store(_home(env), settings=env.settings, start=update, whole=changes)
    said: list[str] = []

    def first_line(message: str) -> None:
        if not said:
            said.append(message)
            env.out.note(message)

    return open_chain_store(_home(env), settings=env.settings, start=first_line, whole=changes)


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _binary_input(name: str) -> Iterator[tuple[IO[bytes], str]]:
    from voketag_ops.errors import UsageError

    if name == "-":
        yield stdin_bytes(sys.stdin), "<stdin>"
        return
    try:
        fh = open(name, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:  # a file that cannot be used at all is a usage error, as everywhere
        raise UsageError(f"{name}: cannot read: {exc.strerror}") from None
    with fh:
        yield fh, name


def _leaves(name: str, hex_lines: bool) -> Iterator[bytes]:
    from voketag_ops.workflows.chain import read_leaves

    with _binary_input(name) as (stream, source):
        yield from read_leaves(stream, hex_lines=hex_lines, source=source)


# -- Merkle trees over files ---------------------------------------------------------------


@app.command("root")
def root(ctx: typer.Context, file: LeafFile, hex_: Hex = False) -> None:
    """Print the RFC 6962 Merkle root of FILE's lines, in hex (streams: O(log n) memory)."""
    from voketag_ops.workflows.chain import tree_root

    env = use(ctx)
    env.out.result(tree_root(_leaves(file, hex_)), render=lambda c, r: c.print(r["root"]))


@app.command("prove")
def prove(
    ctx: typer.Context,
    file: LeafFile,
    index: Annotated[int, typer.Option("--index", "-i", min=0, help="Leaf index (0-based line number).")],
    hex_: Hex = False,
) -> None:
    """Print the inclusion proof (audit path) of leaf INDEX."""
    from voketag_ops.workflows.chain import inclusion_document

    env = use(ctx)
    env.out.result(inclusion_document(_leaves(file, hex_), index), render=_render_fields)


@app.command("consistency")
def consistency(
    ctx: typer.Context,
    file: LeafFile,
    old_size: Annotated[
        int, typer.Option("--old-size", "-m", min=1, help="Size of the earlier tree (its first M leaves).")
    ],
    hex_: Hex = False,
) -> None:
    """Print the consistency proof from the tree of the first M leaves to the whole file."""
    from voketag_ops.workflows.chain import consistency_document

    env = use(ctx)
    env.out.result(consistency_document(_leaves(file, hex_), old_size), render=_render_fields)


@app.command("verify")
def verify(
    ctx: typer.Context,
    proof: Annotated[
        str, typer.Argument(metavar="PROOF", help="Proof document from prove/consistency (`-`: stdin).")
    ],
    leaf: Annotated[str | None, typer.Option("--leaf", help="The leaf itself, as text (UTF-8).")] = None,
    leaf_hex: Annotated[str | None, typer.Option("--leaf-hex", help="The leaf itself, hex-encoded.")] = None,
    anchored: Annotated[
        bool,
        typer.Option(
            "--anchored",
            help="Also require the proof's root to be anchored on the local chain for its tree size "
            "(read-only; the chain must validate).",
        ),
    ] = False,
    min_difficulty: MinDifficulty = None,
) -> None:
    """Verify a proof document: exit 0 valid, 1 invalid (or, with --anchored, its root not
    anchored), 2 malformed.

    The proof is checked against the document's own root; without --anchored that root is not
    looked up anywhere (files only: a third party verifies offline), and the answer says so.
    For an inclusion proof, --leaf/--leaf-hex give the leaf, which is hashed here (and
    must match the document's leaf_hash); without them the document's leaf_hash is checked.
    """
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows.chain import MAX_PROOF_BYTES, MalformedProofError, verify_document

    env = use_local(ctx) if anchored else use(ctx)  # the chain looked up is the local one
    if min_difficulty is not None and not anchored:
        raise UsageError(
            "--min-difficulty applies to the chain --anchored looks the root up on; add --anchored"
        )
    if leaf is not None and leaf_hex is not None:
        raise UsageError("give --leaf or --leaf-hex, not both")
    data: bytes | None = leaf.encode("utf-8") if leaf is not None else None
    if leaf_hex is not None:
        try:
            data = bytes.fromhex(leaf_hex)
        except ValueError:
            raise UsageError("--leaf-hex: not hex") from None
    from voketag_ops.files import read_at_most

    with _binary_input(proof) as (stream, source):
        raw = read_at_most(stream, MAX_PROOF_BYTES)
    if raw is None:
        raise MalformedProofError(f"{source}: more than {MAX_PROOF_BYTES:,} bytes: not a proof document")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedProofError(f"{source}: not UTF-8 (byte {exc.start})") from None
    report = verify_document(text, source=source, leaf=data)
    failure = f"invalid {report.kind} proof: {report.reason}"
    if anchored and report.valid:
        from dataclasses import replace

        from voketag_ops.workflows.chain import root_anchoring

        found = root_anchoring(
            _store(env, dry_run=True),
            report.root,
            report.tree_size,
            min_difficulty=env.settings.chain.min_difficulty if min_difficulty is None else min_difficulty,
        )
        report = replace(report, anchoring=found)
        failure = f"the proof is valid, but {found.message}"
    env.out.result(
        report,
        ok=report.valid and (report.anchoring is None or report.anchoring.anchored),
        failure=failure,
        render=_render_verify,
    )


# -- the chain -------------------------------------------------------------------------------


@app.command("validate")
def validate(
    ctx: typer.Context,
    min_difficulty: MinDifficulty = None,
) -> None:
    """Check the whole chain; exit 1 naming the first bad block and why."""
    from voketag_ops.workflows.chain import validate as run_validate

    env = use_local(ctx)
    if min_difficulty is None:
        min_difficulty = env.settings.chain.min_difficulty
    report = run_validate(_store(env), min_difficulty=min_difficulty)
    env.out.result(report, ok=report.ok, failure=report.message, render=_render_validate)


@app.command("anchors")
def anchors(
    ctx: typer.Context,
    state: Annotated[
        str | None,
        typer.Option("--state", help="Only anchors in this state: pending, anchored, cancelled or failed."),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-n",
            min=1,
            max=MAX_LISTED,
            help=f"At most this many, newest first (at most {MAX_LISTED:,}).",
        ),
    ] = 50,
) -> None:
    """List anchor requests and their status (anchored ones with their block index), newest first."""
    from voketag_ops.core.chain import AnchorState
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows.chain import list_anchors

    env = use_local(ctx)
    if state is not None and state not in {s.value for s in AnchorState}:
        raise UsageError(f"--state must be one of {', '.join(s.value for s in AnchorState)}, not {state!r}")
    env.out.result(list_anchors(_store(env), state=state, limit=limit), render=_render_anchors)


@app.command("export")
def export(
    ctx: typer.Context,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the document here instead of stdout.")
    ] = None,
) -> None:
    """Export the chain and its anchors as one JSON document (the file form import reads)."""
    from voketag_ops.adapters.local.chain_store import render_document

    env = use_local(ctx)
    state = _store(env).load()
    text = render_document(state)
    if output is None and not env.out.json_mode:
        env.out.write_json(text)
        return
    if output is not None:
        from voketag_ops.files import write_output

        write_output(output, "--output", lambda fh: fh.write(text.encode()), private=True)
    summary = {
        "blocks": len(state.blocks),
        "anchors": len(state.anchors),
        "path": str(output) if output else None,
    }
    if output is None:
        import json

        summary["document"] = json.loads(text)
    env.out.result(
        summary,
        render=lambda c, r: c.print(
            f"exported {r['blocks']} block(s), {r['anchors']} anchor(s) to {r['path']}"
        ),
    )


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="A document from `voke chain export` (`-`: stdin).")
    ],
    dry_run: DryRun = False,
    yes: Unasked = False,
) -> None:
    """Import an exported chain: it must be valid and extend the local one (anchors merge)."""
    from voketag_ops.adapters.local.chain_store import parse_document
    from voketag_ops.core.chain import ChainFormatError, anchor_disagreement, validate_chain
    from voketag_ops.errors import InputError
    from voketag_ops.files import path_text, read_at_most
    from voketag_ops.workflows.audit import refuse_foreign_chain
    from voketag_ops.workflows.chain import plan_import

    env = use_local(ctx)
    limit = env.settings.chain.max_import_bytes
    with _binary_input(file) as (stream, source):
        raw = read_at_most(stream, limit)
    # A real import is on record from its first check: a rejected file (exit 1) or a refused
    # chain (exit 5) is a `failure` event too; a dry run writes none.
    with _audited(env, "chain.import", target=path_text(source), details={}, dry_run=dry_run) as event:
        if raw is None:
            raise ChainFormatError(
                f"{source}: more than {limit:,} bytes, the limit (chain.max_import_bytes); nothing was imported"
            )
        try:
            incoming = parse_document(raw.decode("utf-8"), source)
        except UnicodeDecodeError as exc:
            raise ChainFormatError(f"{source}: not UTF-8 (byte {exc.start})") from None
        # Blocks need chain.min_difficulty bits of work, as `chain validate` requires of the local chain:
        # a chain re-mined cheaply is refused here, not after it has extended the local one.
        least = env.settings.chain.min_difficulty
        report = validate_chain(incoming.blocks, min_difficulty=least)
        if not report.ok:
            light = report.bad_index is not None and incoming.blocks[report.bad_index].difficulty < least
            raise InputError(
                f"{source}: the chain does not validate: {report.message}; nothing was imported",
                hint="if its blocks were mined with fewer bits on purpose, lower chain.min_difficulty"
                if light
                else None,
            )
        if (problem := anchor_disagreement(incoming.blocks, incoming.anchors.values())) is not None:
            raise InputError(
                f"{source}: its anchors contradict its blocks: {problem[1]}; nothing was imported"
            )
        refuse_foreign_chain(_home(env), incoming, source)
        plan = {"blocks": len(incoming.blocks), "anchors": len(incoming.anchors), "source": source}
        if dry_run:  # read the local chain as the import would, and refuse alike
            counts = plan_import(lambda: _store(env, dry_run=True), incoming)
            env.out.result(
                {**plan, **counts, "dry_run": True},
                render=lambda c, r: c.print(
                    f"dry run: would import {r['blocks_added']} new block(s) and add or update "
                    f"{r['anchors_updated']} anchor(s) from {r['source']}"
                ),
            )
            return
        event.details.update(plan)
        counts = _store(env, changes=True).import_state(incoming)
        event.details.update(counts)
    env.out.result(
        {**plan, **counts},
        render=lambda c, r: c.print(
            f"imported: {r['blocks_added']} new block(s), {r['anchors_updated']} anchor(s) added or updated"
        ),
    )


# -- anchors -------------------------------------------------------------------------------------


@anchor_app.command("request")
def anchor_request(
    ctx: typer.Context,
    root_hex: Annotated[str, typer.Argument(metavar="ROOT", help="The root to anchor (64 hex digits).")],
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="What the root is, in a word of your choice (e.g. batch, release); "
            "audit-checkpoint and ingest-batch are reserved for `voke audit checkpoint` and "
            "`voke ingest load`.",
        ),
    ] = "batch",
    label: Annotated[str, typer.Option("--label", help="A name for it (batch id, ...).")] = "",
    tree_size: Annotated[
        int | None,
        typer.Option("--tree-size", min=1, max=_UINT64_MAX, help="Leaves in the tree the root is of."),
    ] = None,
    dry_run: DryRun = False,
    yes: Unasked = False,
) -> None:
    """Request that ROOT be anchored in the next block (the same root twice is one anchor)."""
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows.chain import request_anchor

    env = use_local(ctx)
    try:
        root_bytes = bytes.fromhex(root_hex)
    except ValueError:
        raise UsageError("ROOT: not hex") from None
    if len(root_bytes) != 32:
        raise UsageError(f"ROOT must be 32 bytes (64 hex digits), got {len(root_bytes)}")
    utf8_option("--kind", kind)
    utf8_option("--label", label)
    if kind == "audit-checkpoint":  # each is a claim on the audit log, checked by `audit verify`
        raise UsageError(
            "--kind audit-checkpoint is reserved: `voke audit checkpoint` requests those anchors "
            "(one requested by hand would be held against the audit log for good, cancelled or not)"
        )
    if kind == "ingest-batch":  # a batch's anchor is requested by its load (or anchor run) alone
        raise UsageError(
            "--kind ingest-batch is reserved: `voke ingest load` and `voke chain anchor run` request "
            "those anchors (one requested by hand could anchor a rewritten batch under its label)"
        )
    if dry_run:
        env.out.result(
            {"dry_run": True, "root": root_bytes.hex(), "kind": kind, "label": label},
            render=lambda c, r: c.print(f"dry run: would request an anchor for {r['root']}"),
        )
        return
    details = {"kind": kind, "label": label, "tree_size": tree_size}
    with _audited(env, "chain.anchor.request", target=root_bytes.hex(), details=details) as event:
        report = request_anchor(
            _store(env, changes=True),
            root=root_bytes,
            kind=kind,
            label=label,
            tree_size=tree_size,
            now=_now(),
        )
        event.details["outcome"] = report.outcome
    env.out.result(
        report,
        render=lambda c, r: c.print(f"{r.outcome}: anchor {r.anchor['id'][:16]} is {r.anchor['state']}"),
    )


@anchor_app.command("run")
def anchor_run(
    ctx: typer.Context,
    difficulty: Annotated[
        int | None,
        typer.Option(
            "--difficulty",
            min=0,
            max=64,
            help="Leading zero bits the block hash must have (default and least: chain.min_difficulty, 16).",
        ),
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", min=1, help="Give up mining after this many nonces.")
    ] = None,
    time_limit: Annotated[
        float, typer.Option("--time-limit", min=0.01, help="Give up mining after this many seconds.")
    ] = 60.0,
    dry_run: DryRun = False,
    yes: Unasked = False,
) -> None:
    """Anchor every pending root into one new block. Cron-friendly: with nothing pending it
    does nothing; store errors are retried with backoff. Exit 1 if mining ran out of bounds,
    or if an ingest batch's anchor is of another root (the batch was rewritten)."""
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows.chain import run_anchors

    env = use_local(ctx)
    least = env.settings.chain.min_difficulty
    if difficulty is None:
        difficulty = least
    elif difficulty < least:  # the block would fail `chain validate` and `audit verify`
        raise UsageError(
            f"--difficulty {difficulty} is below chain.min_difficulty ({least}): `voke chain validate` and "
            "`voke audit verify` would refuse the block",
            hint=f"mine at {least} or more bits, or lower chain.min_difficulty first",
        )
    store = _store(env, dry_run=dry_run, changes=True)
    if dry_run:  # counting what a real run requests first, as it would
        from voketag_ops.audit import AuditLog
        from voketag_ops.workflows.chain import unseen_requests

        try:
            checkpoints = AuditLog(_home(env)).checkpoint_requests(store)
        except Exception:  # a damaged checkpoints file: `voke audit verify` names it
            checkpoints = []
        batches = _batch_anchors(env, store)
        first = unseen_requests(store, [*checkpoints, *batches.requests])
        report = run_anchors(store, now=_now(), difficulty=difficulty, dry_run=True, also=len(first))
        _warn_if_light_block(env, report, least)
        report = _flag_mismatched_batches(env, report, batches.mismatches)
        env.out.result(report, ok=report.ok, failure=report.message, render=_render_run)
        return
    with _audited(
        env, "chain.anchor.run", target=store.location, details={"difficulty": difficulty}
    ) as event:
        # Audit checkpoints queued while the chain was unreachable ride in this block too.
        from voketag_ops.audit import AuditLog

        caught_up = AuditLog(_home(env), chain=lambda: store).anchor_checkpoints(now=_now())
        event.details["audit_checkpoints_requested"] = caught_up.requested
        event.details["ingest_batches_requested"], mismatches = _request_lost_batches(env, store)
        # said once mining starts: not for a chain refused, nor for nothing to anchor
        with env.out.progress("mining the next block", when_started=True) as said:
            report = run_anchors(
                store,
                now=_now(),
                difficulty=difficulty,
                max_attempts=max_attempts,
                time_limit=time_limit,
                mining=lambda: said("mining the next block"),
            )
        event.details.update(
            outcome=report.outcome,
            anchored=len(report.anchored),
            block=report.block["index"] if report.block else None,
            attempts=report.attempts,
            ingest_batches_mismatched=[m["batch_id"] for m in mismatches],
        )
        _warn_if_light_block(env, report, least)
        report = _flag_mismatched_batches(env, report, mismatches)
        if not report.ok:
            event.result = "failure"
    env.out.result(report, ok=report.ok, failure=report.message, render=_render_run)


@anchor_app.command("cancel")
def anchor_cancel(
    ctx: typer.Context,
    anchor_id: Annotated[
        str, typer.Argument(metavar="ID", help="Anchor id (its root), or 8+ leading hex digits.")
    ],
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Cancel a pending anchor (exit 5 if it is already anchored)."""
    from voketag_ops.core.chain import AnchorState, AnchorStateError
    from voketag_ops.workflows.chain import cancel_anchor, find_anchor

    env = use_local(ctx)
    store = _store(env, dry_run=dry_run, changes=True)
    anchor = find_anchor(store, anchor_id)

    def refuse_if_not_pending() -> None:
        if anchor.state not in (AnchorState.PENDING, AnchorState.CANCELLED):
            where = f" in block {anchor.block_index}" if anchor.block_index is not None else ""
            raise AnchorStateError(
                f"anchor {anchor.id[:16]} is {anchor.state.value}{where}; only pending anchors can be cancelled"
            )

    if dry_run:
        refuse_if_not_pending()
        env.out.result(
            {"dry_run": True, "anchor": anchor.to_json()},
            render=lambda c, r: c.print(f"dry run: would cancel anchor {r['anchor']['id'][:16]}"),
        )
        return
    env.out.confirm(f"Cancel the anchor of {anchor.kind} {anchor.label or anchor.id[:16]}?", yes=yes)
    # A refusal (an anchored root, exit 5) is on record as a `failure` event too.
    with _audited(env, "chain.anchor.cancel", target=anchor.id, details={"label": anchor.label}):
        refuse_if_not_pending()
        result = cancel_anchor(store, anchor.id, now=_now())
    env.out.result(result, render=lambda c, r: c.print(f"anchor {r['id'][:16]} is {r['state']}"))


# -- helpers ---------------------------------------------------------------------------------------


def _request_lost_batches(env: AppContext, store: ChainStore) -> tuple[int, list[dict[str, Any]]]:
    """Request again the roots of the local database's ingest batches the chain has never
    seen (lost across an asynchronous failover, or a chain restored from an older export);
    returns how many, and the batches whose anchor is of another root (never requested).
    Best effort: a failure is a warning."""
    from voketag_ops.errors import VokeError
    from voketag_ops.workflows.chain import request_missing_anchors

    batches = _batch_anchors(env, store)
    try:
        requested = (
            len(request_missing_anchors(store, batches.requests, now=_now())) if batches.requests else 0
        )
    except VokeError as exc:
        env.out.note(f"warning: ingest batches not checked for lost anchors: {exc.message}")
        requested = 0
    return requested, batches.mismatches


def _batch_anchors(env: AppContext, store: ChainStore) -> BatchAnchorCheck:
    """The local database's ingest batches held against STORE's anchors (never starts the
    environment: none while it is down; a failure is a warning)."""
    from voketag_ops.errors import VokeError
    from voketag_ops.workflows.ingest import BatchAnchorCheck, batch_anchor_requests

    local = env.local_environment()
    try:
        if not local.exists or not local.primary().running:
            return BatchAnchorCheck()
        return batch_anchor_requests(local.platform_database(), store)
    except VokeError as exc:
        env.out.note(f"warning: ingest batches not checked for lost anchors: {exc.message}")
        return BatchAnchorCheck()


def _warn_if_light_block(env: AppContext, report: AnchorRunReport, least: int) -> None:
    """A warning when a block of the chain has fewer bits of work than chain.min_difficulty (mined
    before the setting was raised, while it was lowered, or by an older voke with `--difficulty
    8`): `chain validate` and `audit verify` refuse such a chain, so what the run anchors counts
    for nothing until the setting accepts it. A run with something to anchor reads every block;
    one with nothing, the head alone."""
    if report.lightest_found is not None and report.lightest_found[1] < least:
        index, bits = report.lightest_found
        env.out.note(
            f"warning: block {index} of the chain has {bits} bits of work, below "
            f"chain.min_difficulty ({least}): `voke chain validate` and `voke audit verify` refuse the "
            "chain, and the roots anchored on it are not trusted until that setting accepts it"
        )


def _flag_mismatched_batches(
    env: AppContext, report: AnchorRunReport, mismatches: list[dict[str, Any]]
) -> AnchorRunReport:
    """REPORT with MISMATCHES: a batch whose anchor is of another root was rewritten after it
    was anchored; each is a warning, and the run's answer is no (exit 1), whatever it anchored."""
    from dataclasses import replace

    for mismatch in mismatches:
        env.out.note(f"warning: {mismatch['message']}; its root is not requested")
    if not mismatches:
        return report
    return replace(
        report,
        ok=False,
        mismatched_batches=mismatches,
        message=f"{report.message}; {len(mismatches)} ingest batch(es) not requested: "
        "their anchor is of another root or tree size",
    )


@contextmanager
def _audited(
    env: AppContext, event_type: str, *, target: str, details: dict[str, Any], dry_run: bool = False
) -> Iterator[Any]:
    from voketag_ops.audit import audited_unless

    with audited_unless(
        dry_run, _home(env), event_type=event_type, env=env.settings.env, target=target, details=details
    ) as event:
        yield event


def _render_fields(console: Console, report: dict[str, Any]) -> None:
    for key, value in report.items():
        if isinstance(value, list):
            console.print(f"{key}:")
            for item in value:
                console.print(f"  {item}")
        else:
            console.print(f"{key}: {value}")


def _render_verify(console: Console, report: Any) -> None:
    if report.kind == "inclusion":
        what = f"inclusion of leaf {report.leaf_index} in the tree of {report.tree_size} (root {report.root[:16]}…)"
    else:
        what = (
            f"consistency of tree {report.old_size} with tree {report.tree_size} (root {report.root[:16]}…)"
        )
    console.print(f"{'valid' if report.valid else 'INVALID'}: {what}")
    if not report.valid:
        return
    if report.anchoring is None:
        console.print("the root was not looked up on the chain (`--anchored` does)")
    elif report.anchoring.anchored:
        console.print(report.anchoring.message)
    else:
        console.print(f"NOT ANCHORED: {report.anchoring.message}")


def _render_validate(console: Console, report: Any) -> None:
    if report.ok:
        head = f", head {report.head[:16]}…" if report.head else ""
        console.print(f"chain ok: {report.length} block(s){head}")
    else:
        console.print(f"chain INVALID at block {report.bad_index}: {report.problem.value}")


def _render_anchors(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    rows = report["anchors"]
    if not rows:
        console.print("no anchors")
        return
    table = Table("id", "kind", "label", "state", "block", "requested", box=None)
    for a in rows:
        block = "" if a["block_index"] is None else str(a["block_index"])
        label = shown(a["label"])  # names a batch's file: its text, never ESC sequences or markup
        table.add_row(a["id"][:16], shown(a["kind"]), label, a["state"], block, a["requested_at"][:19] + "Z")
    print_table(console, table)
    counts = ", ".join(f"{n} {state}" for state, n in report["counts"].items() if n)
    page = (
        f"{len(rows)} of {report['total']} shown, newest first"
        if report["total"] > len(rows)
        else f"{len(rows)} shown"
    )
    console.print(f"{page} ({counts}); chain length {report['chain_length']}")


def _render_run(console: Console, report: Any) -> None:
    console.print(report.message)
    if report.attempts:
        console.print(
            f"difficulty {report.difficulty} bits: {report.attempts} attempts in {report.seconds:.2f} s "
            f"({report.hash_rate:,.0f} H/s)"
        )
    for note in report.retries:
        console.print(f"retried after: {note}")
