"""steps.infra.storetemplate: the empty store make setup builds is one MLflow takes as its own."""

from __future__ import annotations

from mlflow import MlflowClient

from steps.infra import storetemplate


def test_a_placed_store_is_a_working_mlflow_store(tmp_path):
    assert storetemplate.build().exists()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert storetemplate.place(uri)
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    experiment_id = client.create_experiment("placed")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "m", 1.5)
    client.create_registered_model("placed-model")
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}


def test_place_never_replaces_a_store_nor_touches_other_uris(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert storetemplate.place(uri)
    MlflowClient(uri).create_experiment("kept")
    assert not storetemplate.place(uri)
    assert "kept" in [e.name for e in MlflowClient(uri).search_experiments()]
    assert not storetemplate.place(f"sqlite:///{tmp_path / 'missing-dir' / 'mlflow.db'}")
    assert not storetemplate.place("http://127.0.0.1:5000")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no partial copies
