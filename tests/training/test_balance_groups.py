"""`balance_groups: age_group` (issue 30): the training loader draws each age group equally
often, alone or with the class-balancing sampler, and pos_weight follows the class mix it
draws. Only the loader is exercised: nothing is trained."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.data.loader import draw_weights
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.model.contract import ModelCard
from pneumoscope.training.config import TrainConfig
from pneumoscope.training.train import balanced_groups, loss_pos_weight, make_train_loader
from tests.helpers import invoke_cli

EPOCHS = 20
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _write_cache(root: Path, cells: dict[tuple[str, str, int], int], column: bool = True) -> Path:
    """A prepared folder by hand: ``cells`` maps (split, age group, label) to a number of
    4 px images; ``column=False`` leaves the age_group column out (an older cache)."""
    rows = [
        (split, group, label)
        for (split, group, label), n in cells.items()
        for _ in range(n)
    ]  # fmt: skip
    manifest = pd.DataFrame(
        {
            "index": range(len(rows)),
            "path": [f"/x/{i}.png" for i in range(len(rows))],
            "label": [r[2] for r in rows],
            "patient": [f"p{i}" for i in range(len(rows))],
            "split": [r[0] for r in rows],
            "source": "s",
            "group": [f"g{i}" for i in range(len(rows))],
            "age_group": [r[1] for r in rows],
        }
    )
    if not column:
        manifest = manifest.drop(columns="age_group")
    root.mkdir(parents=True)
    manifest.to_csv(root / "manifest.csv", index=False)
    np.save(root / "images.npy", np.zeros((len(rows), 4, 4), np.uint8))
    info = {"preprocess": PreprocessConfig(img_size=4).to_dict(), "n_images": len(rows)}
    (root / "cache.json").write_text(json.dumps(info))
    return root


# training: 400 children (100 NORMAL, 300 PNEUMONIA), 40 adults (5 NORMAL, 35 PNEUMONIA)
MIXED = {
    ("train", "child", 0): 100,
    ("train", "child", 1): 300,
    ("train", "adult", 0): 5,
    ("train", "adult", 1): 35,
    ("val", "child", 0): 4,
    ("val", "child", 1): 4,
}


def _config(data: Path, **settings) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(data.parent / "run"), batch_size=20, **settings)


def _drawn(data: Path, **settings) -> Counter:
    """(age group, label) of every image the training loader draws in EPOCHS epochs."""
    cache = open_cache(data)
    loader = make_train_loader(cache, _config(data, **settings))
    groups = cache.manifest["age_group"].to_numpy()
    labels = cache.manifest["label"].to_numpy()
    x, y = next(iter(loader))
    assert x.shape[0] == len(y) == 20  # full batches of images and labels, as training gets
    seen: Counter = Counter()
    for _ in range(EPOCHS):  # each pass is the next epoch's seeded draws, as row indices
        for batch in loader.sampler:
            seen.update(zip(groups[batch], labels[batch], strict=True))
    return seen


def _share(seen: Counter, keep) -> float:
    return sum(n for k, n in seen.items() if keep(*k)) / sum(seen.values())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return _write_cache(tmp_path_factory.mktemp("mixed") / "data", MIXED)


def test_without_the_option_the_children_drown_the_adults(mixed):
    seen = _drawn(mixed)  # the default: balance_groups none, imbalance pos-weight
    assert _share(seen, lambda g, _y: g == "adult") == pytest.approx(40 / 440, abs=0.02)


def test_age_groups_are_drawn_equally_often_and_keep_their_class_mix(mixed):
    seen = _drawn(mixed, balance_groups="age_group")
    assert _share(seen, lambda g, _y: g == "adult") == pytest.approx(0.5, abs=0.03)
    adults = Counter({k: n for k, n in seen.items() if k[0] == "adult"})
    assert _share(adults, lambda _g, y: y == 0) == pytest.approx(5 / 40, abs=0.03)
    children = Counter({k: n for k, n in seen.items() if k[0] == "child"})
    assert _share(children, lambda _g, y: y == 0) == pytest.approx(100 / 400, abs=0.03)


def test_with_the_class_sampler_every_group_and_class_cell_is_drawn_equally(mixed, tmp_path):
    seen = _drawn(mixed, balance_groups="age_group", imbalance="sampler")
    assert set(seen) == {("child", 0), ("child", 1), ("adult", 0), ("adult", 1)}
    for cell in seen:
        assert _share(seen, lambda g, y, c=cell: (g, y) == c) == pytest.approx(0.25, abs=0.03)
    # a group holding one class: its one cell gets a whole share (three cells, a third each)
    cells = {k: n for k, n in MIXED.items() if k != ("train", "adult", 0)}
    seen = _drawn(_write_cache(tmp_path / "d", cells), balance_groups="age_group",
                  imbalance="sampler")  # fmt: skip
    assert set(seen) == {("child", 0), ("child", 1), ("adult", 1)}
    for cell in seen:
        assert _share(seen, lambda g, y, c=cell: (g, y) == c) == pytest.approx(1 / 3, abs=0.03)


def test_pos_weight_stays_a_loss_weight_for_the_class_mix_drawn(mixed):
    cache = open_cache(mixed)
    rows = cache.split("train")
    y = rows["label"].to_numpy()
    plain = _config(mixed)
    assert loss_pos_weight(plain, y, None) == 105 / 335  # N_NORMAL / N_PNEUMONIA, as before
    cfg = _config(mixed, balance_groups="age_group")
    groups = balanced_groups(cfg, cache)
    # half the draws children (1/4 NORMAL), half adults (1/8 NORMAL): 3/16 NORMAL drawn
    assert loss_pos_weight(cfg, y, groups) == pytest.approx((3 / 16) / (13 / 16))
    sampler = _config(mixed, balance_groups="age_group", imbalance="sampler")
    assert loss_pos_weight(sampler, y, groups) is None  # one class compensation, never two


def test_the_class_sampler_alone_draws_as_before():
    y = np.array([0, 1, 1, 1, 0, 1])
    assert draw_weights(y) is None
    assert draw_weights(y, classes=True).tolist() == (1.0 / np.bincount(y)[y]).tolist()


@pytest.mark.parametrize(
    "cells, column, fragment",
    [
        (dict(MIXED), False, "has no age groups"),
        ({(s, "", y): n for (s, _g, y), n in MIXED.items()}, True, "has no age groups"),
        ({**MIXED, ("train", "", 0): 3}, True, "3 of 443 training images"),
        ({(s, "child", y): n for (s, _g, y), n in MIXED.items()}, True, "one age group only"),
    ],
    ids=["older-cache", "no-groups", "some-without", "one-group"],
)
def test_a_cache_that_cannot_be_balanced_is_one_line(tmp_path, cells, column, fragment):
    data = _write_cache(tmp_path / "data", cells, column)
    cfg = _config(data, balance_groups="age_group")
    with pytest.raises(UserError, match=fragment) as err:
        make_train_loader(open_cache(data), cfg)
    assert "\n" not in str(err.value) and "--balance-groups age_group" in str(err.value)
    make_train_loader(open_cache(data), _config(data))  # without the option: trains as before


def test_train_refuses_it_in_one_line_before_training(tmp_path):
    data = _write_cache(tmp_path / "data", {(s, "", y): n for (s, _g, y), n in MIXED.items()})
    r = invoke_cli("train", "--data", str(data), "--out", str(tmp_path / "run"),
                   "--balance-groups", "age_group", "--model", "seed_cnn", "--epochs", "1",
                   "--accelerator", "cpu", "--no-progress")  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert (
        lines[-1].startswith("error: --balance-groups age_group: ") and "no age groups" in lines[-1]
    )
    assert not (tmp_path / "run").exists()


def test_the_option_is_recorded_in_the_config_and_the_card_only_when_on(tmp_path):
    assert "balance_groups" not in _config(tmp_path).to_dict()  # older configs unchanged
    on = _config(tmp_path, balance_groups="age_group")
    assert on.to_dict()["balance_groups"] == "age_group"
    assert "balance_groups: age_group" in on.to_yaml()
    with pytest.raises(UserError, match="--balance-groups must be one of none, age_group"):
        _config(tmp_path, balance_groups="source")
    d = json.loads((FIXTURES / "run_v1" / "model.json").read_text())
    assert ModelCard.from_dict(d).training.balance_groups == ""  # a card from before it
    assert "balance_groups" not in ModelCard.from_dict(d).to_dict()["training"]
    d["training"]["balance_groups"] = "age_group"
    card = ModelCard.from_dict(d)
    assert card.training.balance_groups == "age_group"
    assert card.to_dict()["training"]["balance_groups"] == "age_group"
