"""The layout registry: the built-in layouts, and a new layout found by detection and
read_source, whether registered by hand or dropped in as one new module."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data import layouts
from pneumoscope.data.layouts.base import Layout, ReadOptions
from pneumoscope.data.records import SourceRead, SourceRow
from pneumoscope.data.sources import LAYOUTS, detect_layout, layout_choices, read_source

BUILT_IN = ("class-folders", "covid19-pneumonia", "csv", "medmnist", "rsna")


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so a toy layout does not outlive its test."""
    layouts.layout_names()  # the built-ins, discovered once
    monkeypatch.setattr(layouts, "_REGISTRY", dict(layouts._REGISTRY))
    return layouts


def _toy_detect(path: Path) -> bool:
    return path.is_dir() and (path / "toy.marker").is_file()


def _toy_read(name: str, path: Path, options: ReadOptions) -> SourceRead:
    rows = [
        SourceRow(str(p), 1, "", p.stem, name, age_group=options.default_age_group)
        for p in sorted(path.glob("*.png"))
    ]
    return SourceRead(rows, [], "toy")


def _toy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "toys"
    folder.mkdir()
    (folder / "toy.marker").write_text("")
    for n in ("a", "b"):
        (folder / f"{n}.png").write_bytes(b"")
    return folder


def test_the_built_in_layouts_and_their_detection_order():
    assert layouts.layout_names() == BUILT_IN
    assert LAYOUTS == layout_choices() == ("auto", *BUILT_IN)
    order = [lay.name for lay in layouts.layouts_in_detection_order()]
    # the RSNA labels file is a .csv and an RSNA download may hold class folders: rsna first
    assert order == ["rsna", "covid19-pneumonia", "class-folders", "csv", "medmnist"]
    assert layouts.get_layout("csv").name == "csv"
    with pytest.raises(UserError, match="unknown --layout 'toy'"):
        layouts.get_layout("toy")


def test_a_registered_layout_is_detected_and_read(registry, tmp_path):
    folder = _toy_folder(tmp_path)
    with pytest.raises(UserError, match="no known layout"):
        detect_layout(folder)
    registry.register(Layout("toy", _toy_detect, _toy_read))
    assert layout_choices() == ("auto", *BUILT_IN, "toy")
    assert detect_layout(folder) == "toy"
    read = read_source("zoo", folder, default_age_group="child")
    assert read.layout == "toy"
    assert [(Path(r.path).name, r.source, r.age_group) for r in read.rows] == [
        ("a.png", "zoo", "child"),
        ("b.png", "zoo", "child"),
    ]
    assert read_source("zoo", folder, layout="toy").layout == "toy"
    with pytest.raises(UserError, match=r"several sources: a/ \(toy\), b/ \(toy\).*\|rsna\|toy"):
        for n in ("a", "b"):
            (tmp_path / "both" / n).mkdir(parents=True)
            (tmp_path / "both" / n / "toy.marker").write_text("")
        detect_layout(tmp_path / "both")


def test_two_layouts_cannot_share_a_name(registry):
    with pytest.raises(ValueError, match="two dataset layouts named 'csv'"):
        registry.register(Layout("csv", _toy_detect, _toy_read))


_TOY_MODULE = '''
"""A layout that exists only in a test."""

from pathlib import Path

from pneumoscope.data.layouts.base import Layout
from pneumoscope.data.records import SourceRead, SourceRow


def _detect(path: Path) -> bool:
    return path.is_dir() and (path / "toy.marker").is_file()


def _read(name, path, options):
    rows = [SourceRow(str(p), 0, "", p.stem, name) for p in sorted(path.glob("*.png"))]
    return SourceRead(rows, [], "toy-file")


LAYOUT = Layout("toy-file", _detect, _read, priority=5)
'''


def test_a_new_module_in_the_package_is_discovered(monkeypatch, tmp_path):
    """Adding a layout is adding one file: the registry finds its module by itself."""
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "toy_file_layout.py").write_text(textwrap.dedent(_TOY_MODULE))
    monkeypatch.setattr(layouts, "__path__", [*layouts.__path__, str(extra)])
    monkeypatch.setattr(layouts, "_REGISTRY", {})
    monkeypatch.setattr(layouts, "_discovered", False)
    try:
        assert layouts.layout_names() == (*BUILT_IN, "toy-file")
        folder = _toy_folder(tmp_path)
        assert detect_layout(folder) == "toy-file"
        read = read_source("zoo", folder)
        assert (read.layout, len(read.rows)) == ("toy-file", 2)
    finally:
        sys.modules.pop(f"{layouts.__name__}.toy_file_layout", None)


def test_the_layout_option_help_names_every_registered_layout():
    from pneumoscope.data.config import DataConfig
    from pneumoscope.data.layouts import layout_names

    help_text = DataConfig.model_fields["layout"].description
    assert all(name in help_text for name in layout_names())
