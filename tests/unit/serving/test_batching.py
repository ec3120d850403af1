"""Rows to predictions (steps.serving.batching): the micro-batcher and the scorer."""

from __future__ import annotations

import asyncio

import numpy as np

from steps.serving import batching


# --- micro-batching -----------------------------------------------------------------------
def test_microbatcher_gives_each_request_its_own_rows():
    calls: list[int] = []

    def fake_predict(pipeline, rows):  # a stand-in model: identity on a number per row
        calls.append(len(rows))
        return np.array([float(r) for r in rows])

    async def main():
        batcher = batching.MicroBatcher(fake_predict)
        requests = [[1], [2, 3], [4], [5, 6, 7]]
        return await asyncio.gather(*(batcher.submit("model", r) for r in requests))

    results = asyncio.run(main())
    assert [r.tolist() for r in results] == [[1.0], [2.0, 3.0], [4.0], [5.0, 6.0, 7.0]]
    assert calls == [7]  # one predict for the four concurrent requests


def test_microbatcher_isolates_a_failing_request():
    def picky_predict(pipeline, rows):
        if "bad" in rows:
            raise ValueError("bad row")
        return np.zeros(len(rows))

    async def main():
        batcher = batching.MicroBatcher(picky_predict)
        futures = [batcher.submit("m", ["ok"]), batcher.submit("m", ["bad"])]
        futures.append(batcher.submit("m", ["ok", "ok"]))
        return await asyncio.gather(*futures, return_exceptions=True)

    ok1, bad, ok2 = asyncio.run(main())
    assert ok1.tolist() == [0.0] and ok2.tolist() == [0.0, 0.0]
    assert isinstance(bad, ValueError)


def test_microbatcher_answers_each_request_with_the_model_it_started_with():
    """A swap while requests are queued: each is predicted by its own model, one batch each."""
    calls: list[tuple[str, int]] = []

    def predict(pipeline, rows):
        calls.append((pipeline, len(rows)))
        return np.array([1.0 if pipeline == "old" else 2.0] * len(rows))

    async def main():
        batcher = batching.MicroBatcher(predict)
        models = ["old", "old", "new", "old", "new"]
        return await asyncio.gather(*(batcher.submit(m, [0, 0]) for m in models))

    results = asyncio.run(main())
    assert [r.tolist() for r in results] == [[1.0] * 2, [1.0] * 2, [2.0] * 2, [1.0] * 2, [2.0] * 2]
    assert sorted(calls) == [("new", 4), ("old", 6)]


def test_microbatcher_answers_the_others_when_a_request_went_away():
    def predict(pipeline, rows):
        return np.array([float(r) for r in rows])

    async def main():
        batcher = batching.MicroBatcher(predict)
        gone = batcher.submit("m", [1])
        stays = [batcher.submit("m", [2]), batcher.submit("m", [3, 4])]
        gone.cancel()  # the client disconnected before the batch ran
        return await asyncio.wait_for(asyncio.gather(*stays), timeout=5)

    assert [r.tolist() for r in asyncio.run(main())] == [[2.0], [3.0, 4.0]]


def test_the_scorer_runs_a_pipelines_steps_and_skips_passthrough():
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("skip", "passthrough"), ("fit", LinearRegression())]
    ).fit(X, y)
    np.testing.assert_array_equal(batching.scorer(pipeline)(X), pipeline.predict(X))
    model = LinearRegression().fit(X, y)  # not a Pipeline: its own predict
    np.testing.assert_array_equal(batching.scorer(model)(X), model.predict(X))
