"""Model Registry state shared by register and promote (loading models: ``steps.tracking.loading``).

* Lineage: a train run's logged model (its outputs are read by ``steps.tracking.outputs``).
* Alias state: ``@champion``, every version's gate record (tag ``gate.record``) and the
  floor/pinned version a manual promotion left (registered-model tags), and the settle loop
  that points ``@champion`` at ``steps.ml.gate.settle_target`` of that state.
* History: register and promote runs that moved ``@champion`` carry
  ``registry.champion_from``/``registry.champion_to``; ``champion_history`` lists them.

Imports nothing heavy at module level: serve imports it on its start-up path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from steps import config
from steps.infra.errors import StepError
from steps.ml import gate
from steps.tracking import storerace

MAX_SETTLE_ROUNDS = 20
SETTLE_PAUSE_S = 0.2


# --- lineage ---------------------------------------------------------------------------------
def logged_model_id(train_run) -> str:
    """The logged model a train run produced: its tag, else the run's only logged model."""
    import mlflow

    tagged = train_run.data.tags.get(config.TAG_LOGGED_MODEL)
    if tagged:
        return tagged
    found = mlflow.search_logged_models(
        experiment_ids=[train_run.info.experiment_id],
        filter_string=f"source_run_id = '{train_run.info.run_id}'",
        output_format="list",
    )
    if len(found) != 1:
        raise StepError(
            f"train run {train_run.info.run_id} has {len(found)} logged models; expected one"
        )
    return found[0].model_id


# --- alias state ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistryState:
    champion: int | None
    records: dict[int, gate.GateRecord]
    floor: int
    pinned: int | None
    versions: list[Any]


def champion_version(client, model_name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, config.CHAMPION_ALIAS)
    except MlflowException:
        return None


def all_versions(client, model_name: str) -> list[Any]:
    return list(client.search_model_versions(f"name = '{model_name}'", max_results=10_000))


def read_state(client, model_name: str) -> RegistryState:
    from mlflow.exceptions import MlflowException

    champion = champion_version(client, model_name)
    versions = all_versions(client, model_name)
    records = {
        int(v.version): record
        for v in versions
        if (
            record := gate.GateRecord.from_tag(
                int(v.version), v.tags.get(config.VERSION_TAG_GATE_RECORD)
            )
        )
    }
    try:
        tags = client.get_registered_model(model_name).tags or {}
    except MlflowException:
        tags = {}
    pinned = tags.get(config.MODEL_TAG_PINNED)
    return RegistryState(
        champion=int(champion.version) if champion is not None else None,
        records=records,
        floor=int(tags.get(config.MODEL_TAG_SETTLE_FLOOR) or 0),
        pinned=int(pinned) if pinned else None,
        versions=versions,
    )


def set_alias(client, model_name: str, alias: str, version: int | str) -> None:
    # The store upserts aliases without a lock; concurrent registers can collide on the key.
    storerace.with_unique_race_retry(
        lambda: client.set_registered_model_alias(model_name, alias, str(version))
    )


def settle_champion(client, model_name: str) -> RegistryState:
    """Point ``champion`` at the settle target, re-checking until no one else moved it.

    The registry has no compare-and-set, so two registers (or a register and a promote)
    writing at once could overwrite each other; each re-reads after writing, and all compute
    the same target from the same tags, so the alias converges. Returns the settled state.
    """
    for _ in range(MAX_SETTLE_ROUNDS):
        state = read_state(client, model_name)
        target = gate.settle_target(state.champion, state.records, state.floor, state.pinned)
        if target is None or target == state.champion:
            return state
        set_alias(client, model_name, config.CHAMPION_ALIAS, target)
        time.sleep(SETTLE_PAUSE_S)
    raise StepError(f"champion alias of {model_name} kept changing; rerun register")


# --- history ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Move:
    """One move of ``@champion`` recorded on a register or promote run."""

    run_id: str
    step: str
    ended: int
    from_version: int | None
    to_version: int
    user: str
    reason: str


def champion_history(client, model_name: str) -> list[Move]:
    """Every recorded move of ``@champion`` of ``model_name``, newest first.

    Searches all active experiments: ``mlflow run . -e promote`` logs to the one the user
    chose (Default unless told otherwise), main's registers to the pipeline's.
    """
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiment_ids,
        filter_string=(
            f"tags.`{config.TAG_REGISTRY_MODEL}` = '{model_name}' "
            f"and tags.`{config.TAG_CHAMPION_TO}` != '' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.end_time DESC"],
        max_results=1000,
    )
    moves = []
    for run in runs:
        tags = run.data.tags
        source = tags.get(config.TAG_CHAMPION_FROM) or ""
        moves.append(
            Move(
                run_id=run.info.run_id,
                step=tags.get(config.TAG_STEP, "?"),
                ended=run.info.end_time or 0,
                from_version=int(source) if source.isdigit() else None,
                to_version=int(tags[config.TAG_CHAMPION_TO]),
                user=tags.get(config.TAG_MLFLOW_USER, "?"),
                reason=tags.get(config.TAG_REGISTRY_REASON, ""),
            )
        )
    return moves


def previous_champion(moves: list[Move], current: int | None) -> int | None:
    """The champion before ``current``: where the latest move to ``current`` came from."""
    return next((m.from_version for m in moves if m.to_version == current and m.from_version), None)


def history_markdown(moves: list[Move], limit: int = 20) -> str:
    lines = ["| ended (UTC) | step | from | to | who | why |", "|---|---|---|---|---|---|"]
    for m in moves[:limit]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.ended / 1000))
        source = f"v{m.from_version}" if m.from_version else "—"
        why = m.reason.replace("|", "/").replace("\n", " ")
        lines.append(f"| {when} | {m.step} | {source} | v{m.to_version} | {m.user} | {why} |")
    return "\n".join(lines)
