"""fit_to_time: on a CPU too slow for the configured epochs, the cosine ends within the cap."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd

from pneumoscope.training import callbacks
from pneumoscope.training.callbacks import FitScheduleToTime
from pneumoscope.training.config import TrainConfig
from pneumoscope.training.train import train


class FakeClock:
    """Returns the given readings in turn (then the last one)."""

    def __init__(self, *readings: float):
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


class Module:
    def __init__(self):
        self.epochs: list[int] = []

    def schedule_epochs(self, n: int) -> None:
        self.epochs.append(n)


def trainer_at(epoch: int, max_epochs: int = 12):
    loop = SimpleNamespace(max_epochs=max_epochs)
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, fit_loop=loop)


def test_a_slow_first_epoch_shortens_the_run_and_the_schedule():
    cb = FitScheduleToTime(1800.0, clock=FakeClock(0.0, 300.0))
    module = Module()
    cb.on_train_start(trainer_at(0), module)
    trainer = trainer_at(1)
    cb.on_train_epoch_start(trainer, module)
    # 1800 s * 0.97 / 300 s an epoch = 5 epochs of the 12 configured
    assert cb.epochs == 5 and trainer.fit_loop.max_epochs == 5 and module.epochs == [5]
    assert "5 of 12 epochs" in cb.note() and "30-minute cap" in cb.note()
    # a resumed run keeps the choice, whatever its own first minutes say
    again = FitScheduleToTime(1800.0, clock=FakeClock(0.0, 1.0))
    again.load_state_dict(cb.state_dict())
    resumed, module2 = trainer_at(3), Module()
    again.on_train_start(resumed, module2)
    again.on_train_epoch_start(trainer_at(4), module2)
    assert resumed.fit_loop.max_epochs == 5 and module2.epochs == [5]


def test_a_machine_fast_enough_keeps_the_configured_run():
    cb = FitScheduleToTime(1800.0, clock=FakeClock(0.0, 100.0))
    module, trainer = Module(), trainer_at(1)
    cb.on_train_start(trainer_at(0), module)
    cb.on_train_epoch_start(trainer, module)
    assert cb.epochs is None and trainer.fit_loop.max_epochs == 12 and module.epochs == []
    assert cb.note() == ""


def test_a_run_resumed_before_its_choice_never_times_a_partial_epoch():
    cb = FitScheduleToTime(1800.0, clock=FakeClock(0.0, 1000.0))
    module = Module()
    cb.on_train_start(trainer_at(1), module)  # resumed at epoch 1: no first epoch timed
    cb.on_train_epoch_start(trainer_at(1), module)
    assert cb.epochs is None and module.epochs == []


def test_training_ends_the_cosine_on_the_last_epoch_that_fits(data_dir, tmp_path, monkeypatch):
    # the first epoch "takes" 20 s of a 1-minute cap: 2 of the 6 epochs fit
    monkeypatch.setattr(callbacks, "_now", FakeClock(0.0, 20.0))
    cfg = dict(data=str(data_dir), model="seed_cnn", epochs=6, batch_size=16, lr=3e-3)
    cfg.update(patience=6, channels_last=False, precision="fp32", max_minutes=1.0)
    card = train(TrainConfig(out=str(tmp_path / "fit"), fit_to_time=True, **cfg), progress=False)
    hist = pd.read_csv(tmp_path / "fit" / "history.csv")
    assert len(hist) == 2 and card.training.stopped_by == "max_epochs"
    assert hist["lr"].iloc[-1] < 0.02 * 3e-3  # the cosine reached its end (1% of lr)
    assert "2 of 6 epochs" in card.training.schedule_note
    saved = json.loads((tmp_path / "fit" / "model.json").read_text())
    assert saved["training"]["schedule_note"] == card.training.schedule_note
    # without fit_to_time the same clock changes nothing: the cap is a minute of real time
    monkeypatch.setattr(callbacks, "_now", FakeClock(0.0, 20.0))
    cfg["epochs"] = 3
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **cfg), progress=False)
    assert len(pd.read_csv(tmp_path / "plain" / "history.csv")) == 3
    assert plain.training.schedule_note == ""
