"""Shadow and canary serving (steps.serving.shadow): the canary split by request id, serve's
option checks, shadow scoring in batches, and the real app with a real challenger pipeline:
who answers, what the inference log and /metrics hold. Nothing of ours is mocked."""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from steps import config
from steps.serving import api, metrics, shadow
from steps.serving.inferencelog import InferenceLog, Limits
from steps.serving.rowschema import HousingRow
from tests.support import demo_pipeline
from tests.unit.serving.app import MAX_BODY, MAX_ROWS, REF, good_row

CHALLENGER_REF = dataclasses.replace(REF, version="8")
ALIAS = "challenger"
MANUAL = Limits(drain_interval_s=3600)


# --- canary split -------------------------------------------------------------------------
def test_canary_share_is_the_percentage_of_request_ids_and_the_same_every_time():
    ids = [f"req-{i}" for i in range(20_000)]
    for percent in (1, 10, 50, 90):
        chosen = [rid for rid in ids if shadow.answers_canary(rid, percent)]
        assert abs(len(chosen) / len(ids) - percent / 100) < 0.015, percent
        assert chosen == [rid for rid in ids if shadow.answers_canary(rid, percent)]
    assert not any(shadow.answers_canary(rid, 0) for rid in ids)
    assert all(shadow.answers_canary(rid, 100) for rid in ids)
    # CRC-32, not Python's per-process salted hash: every worker and run agree
    assert shadow.canary_bucket("abc") == zlib.crc32(b"abc") % 100 == 78
    assert not shadow.answers_canary("", 100)  # no id, no canary


@pytest.mark.parametrize(
    ("alias", "percent", "served", "logging", "message"),
    [
        ("", 10, "champion", True, "--canary-percent needs --shadow-alias"),
        ("champion", 0, "champion", True, "--shadow-alias champion is the alias already served"),
        ("challenger", 0, "champion", False, "inference log, which is off"),
        ("challenger", 101, "champion", True, "--canary-percent must be within [0, 100]"),
    ],
    ids=["canary-without-alias", "same-alias", "shadow-without-log", "percent"],
)
def test_bad_shadow_settings_are_one_line(alias, percent, served, logging, message):
    with pytest.raises(shadow.ShadowSettingsError, match=message.replace("[", r"\[")):
        shadow.check_settings(alias, percent, served, logging)


def test_good_shadow_settings():
    assert shadow.check_settings("", 0, "champion", True) is None
    assert shadow.check_settings(" challenger ", 0, "champion", True) == "challenger"
    # a canary needs no log: the answers name their version
    assert shadow.check_settings("challenger", 5, "champion", False) == "challenger"


# --- scoring ------------------------------------------------------------------------------
@dataclasses.dataclass
class Scored:
    """A served model whose scorer doubles median_income and counts its calls."""

    ref: object
    calls: int = 0
    fail: bool = False

    def score(self, array: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise ValueError("broken")
        return array[:, config.FEATURES.index("median_income")].astype(float) * 2


def test_jobs_are_scored_once_in_one_call_per_shadow_model():
    rows = [[HousingRow(**good_row() | {"median_income": m})] * n for m, n in ((1, 2), (3, 1))]
    model, other = Scored(CHALLENGER_REF), Scored(dataclasses.replace(REF, version="9"))
    jobs = [shadow.ShadowJob(ALIAS, model), shadow.ShadowJob(ALIAS, model)]
    jobs.append(shadow.ShadowJob(ALIAS, other))
    scored = shadow.score_jobs(jobs, [*rows, rows[0]], [np.ones(2), np.full(1, 5.0), np.ones(2)])
    assert model.calls == 1 and other.calls == 1
    assert [j.version for j in jobs] == ["8", "8", "9"]
    assert [j.predictions.tolist() for j in jobs] == [[2.0, 2.0], [6.0], [2.0, 2.0]]
    (a, v, predicted, answered), _ = scored
    assert (a, v, predicted.tolist(), answered.tolist()) == (ALIAS, "8", [2, 2, 6], [1, 1, 5])
    assert shadow.score_jobs(jobs, [*rows, rows[0]], [np.ones(2)] * 3) == []  # done already
    assert model.calls == 1
    broken = shadow.ShadowJob(ALIAS, Scored(CHALLENGER_REF, fail=True))
    shadow.score_jobs([broken], [rows[1]], [np.ones(1)])
    assert np.isnan(broken.predictions).all()  # the log keeps the row, without a shadow


# --- the app ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def challenger(sample):
    X, y = sample
    return demo_pipeline(X.head(600), y[:600], n_estimators=5)


def sample_value(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    metrics.instruments()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_shadow_scores_champion_answers_and_canary_answers_are_the_challengers(
    pipeline, challenger, tmp_path
):
    """Shadow + 50% canary: requests whose id is in the canary share are answered (and named)
    by the challenger; the others by the champion, with the challenger's prediction of the
    same row in the log and counted on /metrics, labelled by alias and version."""
    log = InferenceLog(tmp_path, model_alias="champion", limits=MANUAL)
    app = api.create_app(
        api.ServedModel(pipeline, REF),
        MAX_ROWS,
        MAX_BODY,
        inference_log=log,
        shadow_alias=ALIAS,
        canary_percent=50,
    )
    labels = {"alias": ALIAS, "version": "8"}
    before = sample_value("housing_api_shadow_predictions_total", labels)
    canaries_before = sample_value("housing_api_canary_requests_total", labels)
    rows = pd.DataFrame([good_row()] * 3)
    rows["median_income"] = [2.0, 5.0, 9.0]
    body = json.dumps({"data": json.loads(rows.to_json(orient="records"))})
    headers = {"content-type": "application/json"}
    answered = {}
    with TestClient(app) as client:
        r = client.post("/predict", content=body, headers=headers | {"x-request-id": "early"})
        assert r.json()["model_version"] == "7"  # no challenger loaded yet: the champion
        app.state.shadow = api.ServedModel(challenger, CHALLENGER_REF)  # what a follower swaps
        assert client.get("/ready").json()["shadow"]["model_version"] == "8"
        for i in range(30):
            rid = f"r-{i}"
            r = client.post("/predict", content=body, headers=headers | {"x-request-id": rid})
            assert r.status_code == 200
            answered[rid] = (r.headers["x-model-version"], r.json())
    canary = {rid for rid in answered if shadow.answers_canary(rid, 50)}
    assert 5 < len(canary) < 25
    for rid, (header, reply) in answered.items():
        model, version = (challenger, "8") if rid in canary else (pipeline, "7")
        assert header == reply["model_version"] == version, rid
        assert reply["predictions"] == model.predict(rows).tolist(), rid

    df = pd.read_parquet(tmp_path).set_index("request_id")
    assert df.loc["early", "shadow_version"].isna().all()  # before the challenger existed
    logged = df.drop(index="early")
    is_canary = logged.index.isin(list(canary))
    assert (logged.loc[is_canary, "model_version"] == "8").all()
    assert (logged.loc[is_canary, "model_alias"] == ALIAS).all()
    assert logged.loc[is_canary, "shadow_version"].isna().all()
    champion = logged.loc[~is_canary]
    assert (champion["model_version"] == "7").all() and (
        champion["model_alias"] == "champion"
    ).all()
    assert (champion["shadow_version"] == "8").all() and (champion["shadow_alias"] == ALIAS).all()
    expected = np.tile(challenger.predict(rows), len(answered) - len(canary))
    np.testing.assert_array_equal(champion["shadow_prediction"].to_numpy(), expected)
    shadowed = sample_value("housing_api_shadow_predictions_total", labels) - before
    assert shadowed == len(champion)
    canaried = sample_value("housing_api_canary_requests_total", labels) - canaries_before
    assert canaried == len(canary)


def test_shadow_only_never_answers(pipeline, challenger, tmp_path):
    log = InferenceLog(tmp_path, model_alias="champion", limits=MANUAL)
    app = api.create_app(
        api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY, inference_log=log, shadow_alias=ALIAS
    )
    app.state.shadow = api.ServedModel(challenger, CHALLENGER_REF)
    with TestClient(app) as client:
        for i in range(20):
            r = client.post(
                "/invocations", json={"inputs": [good_row()]}, headers={"x-request-id": f"s-{i}"}
            )
            assert r.headers["x-model-version"] == "7"
    df = pd.read_parquet(tmp_path)
    assert (df["model_version"] == "7").all() and (df["shadow_version"] == "8").all()
