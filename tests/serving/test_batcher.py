"""Micro-batching: concurrent requests share forward passes, each gets its own results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pneumoscope.serving.batcher import MicroBatcher


class GatedScore:
    """A score function that records its batches and can be held shut."""

    def __init__(self):
        self.sizes: list[int] = []
        self.seen: list[float] = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def __call__(self, pixels: np.ndarray) -> list[float]:
        self.entered.set()
        self.open.wait(10)
        self.sizes.append(len(pixels))
        values = [float(p[0, 0]) for p in pixels]
        self.seen += values
        return values


def images(*values: float) -> np.ndarray:
    return np.stack([np.full((2, 2), v, np.float32) for v in values])


@pytest.fixture
def gated():
    score = GatedScore()
    batcher = MicroBatcher(score, max_batch=8, window_s=0.0)
    yield score, batcher
    score.open.set()
    batcher.close()


def _hold(score: GatedScore, batcher: MicroBatcher):
    """Occupy the worker with one job, so the next ones queue up behind it."""
    score.open.clear()
    first = batcher.submit(images(-1))
    assert score.entered.wait(5)
    return first


def test_queued_jobs_share_one_batch_and_get_their_own_results(gated):
    score, batcher = gated
    first = _hold(score, batcher)
    jobs = [batcher.submit(images(10 * k, 10 * k + 1)) for k in range(4)]
    score.open.set()
    assert first.result(5) == [-1.0]
    for k, job in enumerate(jobs):
        assert job.result(5) == [10.0 * k, 10.0 * k + 1]
    assert score.sizes == [1, 8]  # 4 jobs of 2 images: one batch, in order


def test_a_batch_never_passes_max_batch_and_a_large_job_runs_alone(gated):
    score, batcher = gated
    first = _hold(score, batcher)
    small = [batcher.submit(images(k, k, k)) for k in range(3)]  # 3 images each
    large = batcher.submit(images(*range(20)))
    score.open.set()
    for job in [first, *small, large]:
        job.result(5)
    assert score.sizes == [1, 6, 3, 20]  # 3+3 fits in 8, the third waits; 20 alone


def test_a_cancelled_job_is_never_scored(gated):
    score, batcher = gated
    first = _hold(score, batcher)
    dropped = batcher.submit(images(42))
    kept = batcher.submit(images(7))
    assert dropped.cancel()
    score.open.set()
    assert first.result(5) == [-1.0] and kept.result(5) == [7.0]
    assert 42.0 not in score.seen


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs():
    calls = {"n": 0}

    def score(pixels):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model broke")
        return list(range(len(pixels)))

    batcher = MicroBatcher(score, max_batch=4, window_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="model broke"):
            batcher.run(images(1), timeout=5)
        assert batcher.run(images(1, 2), timeout=5) == [0, 1]
    finally:
        batcher.close()


def test_the_window_gathers_requests_that_arrive_together():
    score = GatedScore()
    batcher = MicroBatcher(score, max_batch=16, window_s=0.5)
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda k: batcher.run(images(k), 10), range(6)))
    finally:
        batcher.close()
    assert results == [[float(k)] for k in range(6)]
    assert max(score.sizes) > 1 and sum(score.sizes) == 6


def test_engine_batches_concurrent_uploads_with_the_same_numbers(engine, films, one_torch_thread):
    """Real model: uploads scored together in one batch give each film the probability it
    gets alone (float tolerance: a batch may change the last bits of a sum)."""
    from pneumoscope.inference.predictor import Predictor
    from pneumoscope.serving.engine import Engine, Upload

    uploads = [Upload(f.read_bytes(), f.name) for f in films]
    alone = [engine.predict([u])[0].prediction.probability for u in uploads]
    predictor = Predictor.from_run(engine.loaded, runner=engine.runner)
    batched = Engine(predictor, max_batch=16, window_s=0.5, decoders=4)
    try:
        with ThreadPoolExecutor(len(uploads)) as pool:
            outcomes = list(pool.map(lambda u: batched.predict([u])[0], uploads))
    finally:
        batched.close()
    assert max(batched.batcher.batches) > 1
    assert [o.prediction.path for o in outcomes] == [f.name for f in films]
    together = [o.prediction.probability for o in outcomes]
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
