"""The prediction API's request and response schema: what a valid row is.

In: JSON request bodies (``/predict``'s ``{"data": [row, ...]}``; other protocols' rows after
``steps.serving.protocols`` has turned them into row dicts). Out: validated ``HousingRow``
objects, the
raw-row array the pipeline scores (``rows_to_array``), FastAPI-style 422 ``detail`` items, and
the response models /docs shows. The numeric bounds come from ``steps.data.schema``, the table
rules load_data enforces: one source of truth for the pipeline, the API and batch scoring.
No I/O, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from steps import config
from steps.data import schema
from steps.tracking.loading import ModelRef

# Most rows per request (more: 413); `serve --max-rows` and the MLproject mirror it.
DEFAULT_MAX_ROWS = 10_000


def _bounded(name: str, description: str, example: float) -> Any:
    """A float field whose bounds come from the raw-table schema (one source of truth)."""
    col = schema.NUMERIC_BY_NAME[name]
    return Field(
        ge=col.minimum,
        le=col.maximum,
        description=description,
        examples=[example],
        **({"default": None} if col.nullable else {}),
    )


OceanProximity = Literal[*config.OCEAN_PROXIMITY_VALUES]


class HousingRow(BaseModel):
    """One census block group, the nine raw feature columns of housing.csv.

    Strict: numbers must be JSON numbers (not strings or booleans) and finite; unknown keys
    are rejected so a misspelt column cannot silently become a missing value.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    longitude: float = _bounded("longitude", "Degrees east (California).", -122.23)
    latitude: float = _bounded("latitude", "Degrees north (California).", 37.88)
    housing_median_age: float = _bounded("housing_median_age", "Median age, years.", 41.0)
    total_rooms: float = _bounded("total_rooms", "Rooms in the block group.", 880.0)
    total_bedrooms: float | None = _bounded(
        "total_bedrooms", "Bedrooms in the block group; null or omitted = unknown.", 129.0
    )
    population: float = _bounded("population", "People in the block group.", 322.0)
    households: float = _bounded("households", "Households in the block group.", 126.0)
    median_income: float = _bounded(
        "median_income", "Median household income, tens of thousands of dollars.", 8.3252
    )
    ocean_proximity: OceanProximity = Field(description="Location relative to the ocean.")


class PredictResponse(BaseModel):
    predictions: list[float] = Field(description="Predicted median house value, dollars.")
    model_name: str
    model_version: str


class VersionInfo(BaseModel):
    model_name: str
    model_version: str
    model_uri: str
    run_id: str | None
    dataset_dvc_md5: str | None
    git_commit: str | None
    test_rmse: str | None


def version_info(ref: ModelRef) -> VersionInfo:
    """What /version reports: the pinned version and the lineage its register step tagged."""
    return VersionInfo(
        model_name=ref.name,
        model_version=ref.version,
        model_uri=ref.uri,
        run_id=ref.tags.get(config.VERSION_TAG_TRAIN_RUN) or ref.run_id,
        dataset_dvc_md5=ref.tags.get(config.TAG_DVC_MD5),
        git_commit=ref.tags.get(config.VERSION_TAG_GIT_COMMIT),
        test_rmse=ref.tags.get(config.VERSION_TAG_TEST_RMSE),
    )


def request_model(max_rows: int) -> type[BaseModel]:
    """The POST /predict body model; ``max_rows`` is a runtime setting, hence a factory."""
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        data=(
            Annotated[list[HousingRow], Field(min_length=1, max_length=max_rows)],
            ...,
        ),
    )


def error_detail(exc: ValidationError, root: str = "data") -> list[dict[str, Any]]:
    """pydantic errors -> FastAPI-style ``detail`` items that always serialise as JSON.

    ``loc`` is prefixed with "body" like FastAPI's own 422s. The offending ``input`` is echoed
    only when it is a JSON scalar: NaN/inf would break JSON encoding (the classic 500 of
    FastAPI's default handler) and echoing whole lists would return the request body.
    """
    detail = []
    for err in exc.errors(include_url=False, include_context=False):
        loc = list(err["loc"])
        if loc and loc[0] == "data":
            loc[0] = root  # /invocations names the field its client sent
        item: dict[str, Any] = {
            "type": err["type"],
            "loc": ["body", *loc],
            "msg": err["msg"],
        }
        value = err.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            item["input"] = str(value)
        elif value is None or isinstance(value, str | int | float | bool):
            item["input"] = value
        detail.append(item)
    return detail


# A valid row (the fields' own examples): the probe every loaded version must score.
PROBE_ROW = HousingRow(
    **{
        name: field.examples[0]
        for name, field in HousingRow.model_fields.items()
        if field.examples is not None
    },
    ocean_proximity="NEAR BAY",
)

_ROW_VALUES = attrgetter(*config.FEATURES)


def rows_to_array(rows: Sequence[HousingRow]) -> np.ndarray:
    """Validated rows -> the (n, 9) object array of raw values, columns in ``config.FEATURES``
    order, that ``steps.features.HousingFeatures`` takes as well as a DataFrame: a DataFrame
    of a few rows costs more to build (~60 us in pandas 3) than the rows cost to score."""
    array = np.empty((len(rows), len(config.FEATURES)), dtype=object)
    array[:] = [_ROW_VALUES(row) for row in rows]
    return array
