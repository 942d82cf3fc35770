"""Fixtures for the service: the committed v1 run loaded once, clients built around it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import REPO

RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"


class SlowRunner:
    """The real runner, made to take ``delay`` seconds: fills the service on demand."""

    def __init__(self, runner, delay: float):
        self.runner = runner
        self.delay = delay

    def logits_and_features(self, images):
        time.sleep(self.delay)
        return self.runner.logits_and_features(images)


@pytest.fixture(scope="session")
def engine():
    from pneumoscope.serving.engine import Engine

    return Engine.load(RUN_V1)


@pytest.fixture
def make_client(engine, one_torch_thread):
    """make_client(runner_delay=0, **settings) -> a TestClient (lifespan run) on run_v1."""
    from fastapi.testclient import TestClient

    from pneumoscope.inference.predictor import Predictor
    from pneumoscope.serving.app import create_app
    from pneumoscope.serving.engine import Engine
    from pneumoscope.serving.settings import ServeSettings

    clients = []

    def make(runner_delay: float = 0.0, **settings):
        eng = engine
        serve_settings = ServeSettings(run=RUN_V1, **settings)
        if runner_delay:
            slow = SlowRunner(engine.runner, runner_delay)
            predictor = Predictor.from_run(engine.loaded, allow=serve_settings.allow, runner=slow)
            eng = Engine(predictor, **serve_settings.batching)
        client = TestClient(create_app(serve_settings, eng), base_url="http://localhost")
        clients.append(client.__enter__())
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture(scope="session")
def films(shared_data) -> list[Path]:
    """A few real films from the shared data, NORMAL and PNEUMONIA."""
    root = shared_data / "chest_xray_224" / "test"
    return (
        sorted((root / "NORMAL").glob("*.jpeg"))[:2]
        + sorted((root / "PNEUMONIA").glob("*.jpeg"))[:2]
    )
