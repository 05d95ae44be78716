"""Which Cloud SQL instance is the primary of a cloud environment now, recorded where every
voke run sees it: userLabels on the environment's two Cloud SQL instances.

voke.toml names the *home* topology (`instance` primary, `replica` its cross-region
replica). `voke dr failover` and `dr failback` write, on both instances,
`voke-env=<env>`, `voke-role=primary|replica|fenced` and, on the primary, `voke-since`
(when it became the primary) and `voke-op` (failover or failback). Every later run, on
a laptop or in the Cloud Run job, reads them back with instances.get. No labels means the
home topology. When the record and Cloud SQL disagree (the recorded primary is a replica,
two instances claim the role, or nothing is recorded but the home primary is a replica),
`read` raises PreconditionError (exit 5) instead of guessing; `read(strict=False)` (dr status
and dr check, which an operator needs exactly then) returns the record with the
disagreement in `Topology.problem` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from voketag_ops.core.times import iso
from voketag_ops.errors import ConfigError, NotFoundError, PreconditionError

if TYPE_CHECKING:
    from voketag_ops.config import Settings
    from voketag_ops.ports import DbInstanceInfo

ENV_LABEL = "voke-env"
ROLE_LABEL = "voke-role"
SINCE_LABEL = "voke-since"
OP_LABEL = "voke-op"
ROLES = ("primary", "replica", "fenced")
# An instance `dr restore` made: its clone copies its source's labels (voke-role=primary
# included), so it is relabelled voke-role=restored, with what it restores
RESTORED = "restored"
RESTORE_OF_LABEL = "voke-restore-of"
RESTORE_TO_LABEL = "voke-restore-to"
_STAMP = "%Y%m%dt%H%M%Sz"  # label values: lowercase letters, digits, - and _ only
_MAX_LABEL_VALUE = 63


def stamp(when: datetime) -> str:
    """WHEN as a label value (20261126t061502z)."""
    return when.astimezone(timezone.utc).strftime(_STAMP)


def unstamp(value: str | None) -> str | None:
    """A label stamp back as ISO 8601 UTC (None when absent or unreadable)."""
    if not value:
        return None
    try:
        when = datetime.strptime(value, _STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return iso(when)


def restored_labels(env_name: str, *, source: str, target: datetime) -> dict[str, str | None]:
    """The label changes that mark a clone of SOURCE at TARGET as a restored instance of
    ENV_NAME, never its primary: the topology record (voke-since, voke-op) copied from SOURCE is
    cleared (None), and SOURCE is named only when it fits a label value (an instance id may not)."""
    return {
        ENV_LABEL: env_name,
        ROLE_LABEL: RESTORED,
        SINCE_LABEL: None,
        OP_LABEL: None,
        RESTORE_OF_LABEL: source if len(source) <= _MAX_LABEL_VALUE else None,
        RESTORE_TO_LABEL: stamp(target),
    }


def patch_command(name: str, project: str, changes: dict[str, str | None]) -> str:
    """The gcloud command that makes CHANGES (None: remove the key) to NAME's labels."""
    command = f"gcloud sql instances patch {name} --project {project}"
    update = ",".join(f"{k}={v}" for k, v in changes.items() if v is not None)
    remove = ",".join(k for k, v in changes.items() if v is None)
    return (
        command
        + (f" --update-labels={update}" if update else "")
        + (f" --remove-labels={remove}" if remove else "")
    )


@dataclass(frozen=True)
class Topology:
    """The environment's instances as voke last recorded them, checked against Cloud SQL."""

    env: str
    home: str  # `instance` in voke.toml
    primary: str  # the primary now
    standby: str | None  # the other configured instance (None without a replica)
    recorded: bool  # False: no labels yet, the home topology is assumed
    since: str | None  # when `primary` became the primary (ISO 8601), if recorded
    operation: str | None  # failover | failback, if recorded
    roles: dict[str, str | None]  # instance -> recorded voke-role
    # Cloud SQL's view of the instances, as read with the labels (not part of the record)
    instances: dict[str, DbInstanceInfo] = field(default_factory=dict, repr=False, compare=False)
    # how the record and Cloud SQL disagree ({"message", "hint"}), from a non-strict read
    problem: dict[str, str] | None = field(default=None, compare=False)

    @property
    def moved(self) -> bool:
        return self.primary != self.home

    def as_dict(self) -> dict[str, Any]:
        keys = ("env", "home", "primary", "standby", "recorded", "since", "operation", "roles")
        return {k: getattr(self, k) for k in keys} | {"moved": self.moved, "disagreement": self.problem}

    def describe(self) -> str:
        """`voke-db-dr (since failover at T, configured home: voke-db)`."""
        if not self.recorded:
            return f"{self.primary} (the configured home; no failover recorded)"
        if self.moved:
            return f"{self.primary} (since {self.operation or 'failover'} at {self.since or '?'}, configured home: {self.home})"
        return (
            f"{self.primary} (configured home; since {self.operation or 'failback'} at {self.since or '?'})"
        )


def _get(recovery: Any, name: str) -> tuple[DbInstanceInfo, dict[str, str]] | None:
    try:
        info, labels = recovery.instance_with_labels(name)
    except NotFoundError:
        return None
    return info, labels


def read(settings: Settings, recovery: Any, *, strict: bool = True) -> Topology:
    """The recorded topology of `settings.env`. STRICT (the default) checks it against
    Cloud SQL and raises PreconditionError (exit 5) on any disagreement."""
    env_name = settings.env
    env = settings.environment(env_name)
    # only the two configured instances, by name (instances.get), never a listing: a drill's
    # scratch clone copies production's labels (voke-role=primary included) until it is
    # labelled as the drill's, and must never be taken for the primary
    names = [env.instance] + ([env.replica] if env.replica else [])
    found: dict[str, tuple[DbInstanceInfo, dict[str, str]]] = {}
    for name in names:
        got = _get(recovery, name)
        if got is not None:
            found[name] = got
    if env.instance not in found and not env.replica:
        raise ConfigError(f"the Cloud SQL instance {env.instance!r} of {env_name} does not exist")
    roles: dict[str, str | None] = {
        n: ((labels.get(ROLE_LABEL) or None) if labels.get(ENV_LABEL) == env_name else None)  # "" = cleared
        for n, (_i, labels) in found.items()
    }
    claims = [n for n in names if roles.get(n) == "primary"]
    fix = "gcloud sql instances patch NAME --update-labels=voke-role=primary (and voke-role=replica on the other)"
    double: PreconditionError | None = None
    if len(claims) > 1:
        double = PreconditionError(
            f"the recorded topology of {env_name} is inconsistent: {' and '.join(claims)} are both "
            "labelled the primary; nothing was changed",
            hint=f"`voke --env {env_name} dr status` shows Cloud SQL's view; correct the labels: {fix}",
        )
        if strict:
            raise double
        # show the one Cloud SQL calls a primary (the first claim when it calls both or neither so)
        claims.sort(key=lambda n: found[n][0].role != "primary")
    recorded = bool(claims)
    primary = claims[0] if claims else env.instance
    standby = next((n for n in names if n != primary), None)
    labels = found[primary][1] if primary in found else {}
    topo = Topology(
        env=env_name,
        home=env.instance,
        primary=primary,
        standby=standby,
        recorded=recorded,
        since=unstamp(labels.get(SINCE_LABEL)) if recorded else None,
        operation=(labels.get(OP_LABEL) or None) if recorded else None,
        roles=roles,
        instances={n: info for n, (info, _l) in found.items()},
    )
    if strict:
        check(topo, topo.instances)
        return topo
    err = double or disagreement(topo, topo.instances)
    if err is None:
        return topo
    return replace(topo, problem={"message": err.message, "hint": err.hint or ""})


def check(topo: Topology, instances: dict[str, DbInstanceInfo]) -> None:
    """PreconditionError when Cloud SQL contradicts TOPO."""
    err = disagreement(topo, instances)
    if err is not None:
        raise err


def disagreement(topo: Topology, instances: dict[str, DbInstanceInfo]) -> PreconditionError | None:
    """The PreconditionError (not raised) saying how Cloud SQL contradicts TOPO, or None."""
    info = instances.get(topo.primary)
    where = "recorded" if topo.recorded else "configured (no failover recorded)"
    hint = (
        f"finish an interrupted `voke --env {topo.env} dr failover --yes` or `dr failback --yes`; "
        "after a failover done by hand, label the real primary: gcloud sql instances patch NAME "
        f"--update-labels=voke-env={topo.env},voke-role=primary"
    )
    if info is None:
        return PreconditionError(
            f"the {where} primary {topo.primary} of {topo.env} does not exist in Cloud SQL", hint=hint
        )
    if info.role != "primary":
        return PreconditionError(
            f"the {where} primary {topo.primary} of {topo.env} is a replica of {info.primary} in Cloud SQL; "
            "the record and reality disagree, so voke does not guess",
            hint=hint,
        )
    return None


def record(
    settings: Settings,
    recovery: Any,
    primary: str,
    *,
    operation: str,
    other_role: str = "replica",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Label PRIMARY as the primary of `settings.env` (keeping an earlier `voke-since` when it
    already was) and the other configured instance as OTHER_ROLE. The primary is labelled
    first, so an interruption in between leaves a record `read` reports rather than hides."""
    env = settings.environment(settings.env)
    now = now or datetime.now(timezone.utc)
    names = [env.instance] + ([env.replica] if env.replica else [])
    other = next((n for n in names if n != primary), None)
    changed: list[str] = []
    current = _get(recovery, primary)
    labels = current[1] if current else {}
    keep = labels.get(ENV_LABEL) == settings.env and labels.get(ROLE_LABEL) == "primary"
    changes: dict[str, str | None] = {ENV_LABEL: settings.env, ROLE_LABEL: "primary"}
    if not keep or not labels.get(SINCE_LABEL):
        changes |= {SINCE_LABEL: stamp(now), OP_LABEL: operation}
    if recovery.set_labels(primary, changes) is not None:
        changed.append(primary)
    if other is not None and _get(recovery, other) is not None:
        op = recovery.set_labels(
            other, {ENV_LABEL: settings.env, ROLE_LABEL: other_role, SINCE_LABEL: None, OP_LABEL: None}
        )
        if op is not None:
            changed.append(other)
    return {"primary": primary, "other": other, "other_role": other_role, "labelled": changed}
