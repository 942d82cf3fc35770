"""The data-preparation config: its choices agree with the pipeline's, and a
prepare_config.yaml written by earlier releases loads back unchanged."""

from __future__ import annotations

import typing

import yaml

from pneumoscope.data import dedupe, records, splits
from pneumoscope.data.config import NEAR_THRESHOLD, DataConfig, resolve_config
from pneumoscope.data.sources import layout_choices

# OUT/prepare_config.yaml as release 0.1.0 wrote it
OLD_PREPARE_CONFIG = """\
sources:
- pediatric=/data/chest_xray
- cov=/data/covid
layout:
  cov: covid19-pneumonia
covid_as: exclude
rsna_not_normal: exclude
age_group:
  pediatric: child
split: given
val_fraction: 0.1
fractions:
- 0.8
- 0.1
- 0.1
straddle: first-source
dedupe: drop
conflicts: drop
near_threshold: 24
img_size: 150
clahe: true
seed: 0
preset: keras-combined-dedup
"""


def _choices(field: str) -> tuple:
    return typing.get_args(DataConfig.model_fields[field].annotation)


def test_choices_and_defaults_agree_with_the_pipeline():
    assert NEAR_THRESHOLD == dedupe.NEAR_THRESHOLD
    assert _choices("straddle") == (*splits.STRADDLE_RULES, "keep")
    age_group = typing.get_args(DataConfig.model_fields["age_group"].annotation)[1]
    assert set(typing.get_args(age_group)) == set(records.AGE_GROUPS) - {""}
    every_layout = {f"s{i}": name for i, name in enumerate(layout_choices())}  # the registry
    assert DataConfig(sources=["a"], layout=every_layout).layout == every_layout


def test_a_saved_config_loads_back_byte_for_byte(tmp_path):
    saved = tmp_path / "prepare_config.yaml"
    saved.write_text(OLD_PREPARE_CONFIG)
    dc = resolve_config(config=saved)
    assert dc.to_yaml() == OLD_PREPARE_CONFIG
    assert dc.to_dict() == yaml.safe_load(OLD_PREPARE_CONFIG)


def test_flags_take_the_command_line_forms():
    dc = resolve_config(
        sources=["a"], layout=["csv"], age_group=["a=adult"], fractions="0.6/0.2/0.2"
    )
    assert dc.layout == {"*": "csv"} and dc.age_group == {"a": "adult"}
    assert dc.fractions == [0.6, 0.2, 0.2]
    assert DataConfig(sources="a", dedupe=False).dedupe == "off"  # YAML's bare off
