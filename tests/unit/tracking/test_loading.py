"""Registry URIs and skops-only model loading (steps.tracking.loading)."""

from __future__ import annotations

import numpy as np
import pytest

from steps.tracking import loading


# --- model loading ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("models:/Name@champion", ("Name", None, "champion")),
        ("models:/Name/3", ("Name", "3", None)),
        ("models:/A@b@c", ("A@b", None, "c")),
    ],
)
def test_parse_registry_uri(uri, parsed):
    assert loading.parse_registry_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/Name", "models:/Name/latest", "x"])
def test_parse_registry_uri_rejects_non_registry_uris(uri):
    with pytest.raises(loading.ModelLoadError, match="models:/NAME@ALIAS"):
        loading.parse_registry_uri(uri)


def test_skops_model_loads_with_the_code_trusted_types(tmp_path, pipeline, sample):
    import mlflow.sklearn

    from steps import models

    path = tmp_path / "model"
    mlflow.sklearn.save_model(
        pipeline,
        path,
        serialization_format="skops",
        skops_trusted_types=list(models.SKOPS_TRUSTED_TYPES),
    )
    loaded = loading.load_skops_pipeline(path)
    X = sample[0].head(20)
    np.testing.assert_array_equal(loaded.predict(X), pipeline.predict(X))
    with pytest.raises(loading.ModelLoadError, match="Untrusted types"):
        loading.load_skops_pipeline(path, trusted_types=())


def test_pickled_model_is_refused(tmp_path, pipeline):
    import mlflow.sklearn

    path = tmp_path / "model"
    mlflow.sklearn.save_model(pipeline, path, serialization_format="cloudpickle")
    with pytest.raises(loading.ModelLoadError, match="only skops is served"):
        loading.load_skops_pipeline(path)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(loading.ModelLoadError, match="no MLmodel"):
        loading.load_skops_pipeline(tmp_path)
