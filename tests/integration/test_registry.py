"""The registry end to end: real `mlflow run` pipelines, one SQLite store shared by the module.

The scenario builds on itself (tests run in file order):
A  random split seed 6, 40 trees           → v1 @champion (first)
A  again                                   → v1 reused, still one version
B  same split, 150 trees                   → promoted: better on the same rows
C  income-stratified split, test_size 0.3,
   40 trees (weaker; its own test RMSE is
   lower than B's, so the old own-split
   comparison promoted it)                 → @challenger: B is better on shared rows
D  test_size 0.1                           → @challenger: too few comparable rows
then promote by hand, roll back, bad promote input, a champion whose artifacts are gone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from steps import config
from steps.ml import gate
from tests.support import (
    copy_project,
    latest_run,
    mlflow_run_local,
    project_env,
    run_cmd,
    run_main,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = config.MODEL_NAME
# 40 trees fit in a second; the default model is not needed to exercise the registry.
A = ("-P", "n_estimators=40", "-P", "split_strategy=random", "-P", "split_seed=6")
B = ("-P", "n_estimators=150", "-P", "split_strategy=random", "-P", "split_seed=6")
C = ("-P", "n_estimators=40", "-P", "test_size=0.3")
D = ("-P", "n_estimators=40", "-P", "test_size=0.1")


class Store:
    def __init__(self, root: Path) -> None:
        self.project = copy_project(root / "project")
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    def main(self, *args: str):
        """Run main to success; returns (parent run, register run, train run)."""
        run_main(self.project, self.uri, *args)
        parent = latest_run(self.client, "main")
        tags = parent.data.tags
        return (
            parent,
            self.client.get_run(tags["pipeline.register.run_id"]),
            self.client.get_run(tags["pipeline.train.run_id"]),
        )

    def promote(self, *params: str):
        args = [arg for param in params for arg in ("-P", param)]
        return run_cmd(
            mlflow_run_local("promote", *args), cwd=self.project, env=project_env(self.uri)
        )

    def versions(self) -> list:
        return list(self.client.search_model_versions(f"name = '{NAME}'"))

    def champion(self):
        return self.client.get_model_version_by_alias(NAME, config.CHAMPION_ALIAS)

    def latest_promote_run(self):
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(
            experiments,
            f"tags.`{config.TAG_STEP}` = 'promote'",
            run_view_type=ViewType.ALL,
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]

    def aliases(self) -> dict[str, str]:
        model = self.client.get_registered_model(NAME)
        return {alias: str(version) for alias, version in model.aliases.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return Store(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def first(store):
    return store.main(*A)


def test_first_model_registers_the_logged_model_with_metrics_attached(store, first):
    _, register, train = first
    (version,) = store.versions()
    model_id = train.data.tags[config.TAG_LOGGED_MODEL]
    assert version.source == f"models:/{model_id}"
    assert version.run_id == train.info.run_id
    assert version.tags[config.VERSION_TAG_TRAIN_RUN] == train.info.run_id
    assert version.tags["gate.verdict"] == gate.FIRST
    assert str(store.champion().version) == str(version.version)
    assert register.data.tags["registry.reused_version"] == "false"
    assert "@champion" in register.data.tags["mlflow.note.content"]
    assert store.client.get_registered_model(NAME).description.startswith("Median house value")
    # metrics live on the logged model, each tied to the split it was computed on
    logged = store.client.get_logged_model(model_id)
    by_name = {m.key: m for m in logged.metrics}
    assert by_name["test_rmse"].value == pytest.approx(train.data.metrics["test_rmse"])
    assert by_name["test_rmse"].dataset_name == f"{config.RAW_DATASET_NAME}_test"
    assert by_name["train_rmse"].dataset_name == f"{config.RAW_DATASET_NAME}_train"


def test_rerun_reuses_the_version(store, first):
    before = len(store.versions())
    _, register, _ = store.main(*A)
    assert len(store.versions()) == before
    assert register.data.tags["registry.reused_version"] == "true"
    assert register.data.tags["registry.version"] == first[1].data.tags["registry.version"]
    assert register.data.tags["registry.alias"] == config.CHAMPION_ALIAS
    assert "reused" in register.data.tags["mlflow.note.content"]


def test_better_model_on_the_same_split_is_promoted(store, first):
    old = store.champion()
    _, register, train = store.main(*B)
    champion = store.champion()
    assert str(champion.version) != str(old.version)
    assert champion.tags[config.VERSION_TAG_TRAIN_RUN] == train.info.run_id
    assert champion.tags["gate.verdict"] == gate.PROMOTE
    assert champion.tags["gate.champion_version"] == str(old.version)
    metrics = register.data.metrics
    # same split: every test row is comparable, and the gate's scores are the test RMSEs
    assert metrics["gate_rows"] == 4128
    assert metrics["gate_candidate_rmse"] == pytest.approx(train.data.metrics["test_rmse"])
    assert metrics["gate_champion_rmse"] == pytest.approx(float(old.tags["test_rmse"]))
    assert register.data.tags[config.TAG_CHAMPION_FROM] == str(old.version)
    assert register.data.tags[config.TAG_CHAMPION_TO] == str(champion.version)


def test_weaker_model_with_a_lucky_split_is_not_promoted(store):
    champion = store.champion()
    _, register, train = store.main(*C)
    own_rmse = train.data.metrics["test_rmse"]
    # The construction: on its own test split the candidate looks better than the champion
    # on the champion's own split, which is all the old rule compared.
    assert own_rmse < float(champion.tags["test_rmse"])
    assert str(store.champion().version) == str(champion.version)
    version = store.client.get_model_version(NAME, register.data.tags["registry.version"])
    assert version.tags["gate.verdict"] == gate.KEEP
    assert register.data.tags["registry.alias"] == config.CHALLENGER_ALIAS
    assert store.aliases()[config.CHALLENGER_ALIAS] == str(version.version)
    metrics = register.data.metrics
    assert metrics["gate_rows"] >= config.DEFAULT_GATE_MIN_ROWS
    assert metrics["gate_champion_rmse"] < metrics["gate_candidate_rmse"]
    assert metrics["gate_candidate_rmse"] < metrics["gate_baseline_rmse"]
    print(
        f"\nweak-but-lucky v{version.version}: own test RMSE {own_rmse:,.0f} vs champion's "
        f"own {float(champion.tags['test_rmse']):,.0f}; on {metrics['gate_rows']:.0f} shared "
        f"rows candidate {metrics['gate_candidate_rmse']:,.0f}, champion "
        f"{metrics['gate_champion_rmse']:,.0f}, baseline {metrics['gate_baseline_rmse']:,.0f}"
    )


def test_too_few_comparable_rows_is_a_challenger_with_a_reason(store):
    champion = store.champion()
    _, register, _ = store.main(*D)
    assert str(store.champion().version) == str(champion.version)
    assert register.data.tags["registry.verdict"] == gate.TOO_FEW_ROWS
    assert register.data.tags["registry.alias"] == config.CHALLENGER_ALIAS
    reason = register.data.tags["registry.reason"]
    version = register.data.tags["registry.version"]
    assert f"-e promote -P version={version}" in reason
    assert register.data.metrics["gate_rows"] < config.DEFAULT_GATE_MIN_ROWS


def test_promote_by_hand_and_roll_back(store):
    before = str(store.champion().version)
    challenger = store.aliases()[config.CHALLENGER_ALIAS]
    result = store.promote(f"version={challenger}", "reason=canary looked fine")
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(store.champion().version) == challenger
    run = store.latest_promote_run()
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags[config.TAG_CHAMPION_FROM], tags[config.TAG_CHAMPION_TO]) == (before, challenger)
    assert tags["registry.reason"] == "canary looked fine"
    assert tags["mlflow.user"]

    result = store.promote("version=previous", "reason=canary regressed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(store.champion().version) == before
    tags = store.latest_promote_run().data.tags
    assert (tags[config.TAG_CHAMPION_FROM], tags[config.TAG_CHAMPION_TO]) == (challenger, before)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (("version=99", "reason=x"), "has no version 99"),
        (("version=1",), "a reason is required"),
        ((f"version=models:/Other{NAME}/1", "reason=x"), f"not of {NAME}"),
    ],
)
def test_bad_promote_input_fails_and_leaves_aliases(store, params, message):
    before = store.aliases()
    result = store.promote(*params)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [next(e for e in errors if message in e)], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert store.latest_promote_run().info.status == "FAILED"
    assert store.aliases() == before


def remove_model_files(store: Store, version: str) -> None:
    source = store.client.get_model_version(NAME, version).source
    logged = store.client.get_logged_model(source.removeprefix("models:/"))
    shutil.rmtree(urlparse(logged.artifact_location).path)


def test_a_version_whose_artifacts_are_gone_cannot_be_promoted(store):
    before = store.aliases()
    target = next(
        str(v.version)
        for v in store.versions()
        if str(v.version) not in before.values() and str(v.version) != "1"
    )
    remove_model_files(store, target)
    result = store.promote(f"version={target}", "reason=try it")
    assert result.returncode != 0
    assert f"error: promote: v{target} cannot be loaded" in result.stderr
    assert store.latest_promote_run().info.status == "FAILED"
    assert store.aliases() == before


def test_register_fails_cleanly_when_the_champion_cannot_be_scored(store, first):
    """Last: it breaks the champion's files for good."""
    before_aliases, before_count = store.aliases(), len(store.versions())
    preprocess_id = first[2].data.tags[config.TAG_UPSTREAM]
    env = project_env(store.uri)
    train = run_cmd(
        mlflow_run_local(
            "train", "-P", f"upstream_run_id={preprocess_id}", "-P", "n_estimators=20"
        ),
        cwd=store.project,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    remove_model_files(store, before_aliases[config.CHAMPION_ALIAS])
    experiments = [e.experiment_id for e in store.client.search_experiments()]
    train_run = store.client.search_runs(
        experiments, f"tags.`{config.TAG_STEP}` = 'train'", order_by=["attributes.start_time DESC"]
    )[0]
    result = run_cmd(
        mlflow_run_local("register", "-P", f"upstream_run_id={train_run.info.run_id}"),
        cwd=store.project,
        env=env,
    )
    assert result.returncode != 0
    champion = before_aliases[config.CHAMPION_ALIAS]
    assert f"error: register: champion v{champion} cannot be loaded" in result.stderr
    assert "Traceback" not in result.stderr
    assert store.aliases() == before_aliases
    assert len(store.versions()) == before_count
