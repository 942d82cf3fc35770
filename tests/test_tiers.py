"""The quick tier (`bash scripts/test.sh --quick`, pytest -m "not slow") leaves out what
tests/conftest.py names as slow: those names must be real, or a renamed test would slip
into the quick tier and a removed one would leave a dead entry."""

from __future__ import annotations

import re

from tests import conftest
from tests.helpers import REPO


def test_slow_modules_and_tests_exist():
    for module in conftest.SLOW_MODULES:
        assert (REPO / module).exists(), module
    for test in conftest.SLOW_TESTS:
        path, name = test.split("::")
        source = (REPO / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), test


def test_the_marker_is_registered_and_the_quick_tier_uses_it():
    assert re.search(r'^\s+"slow: ', (REPO / "pyproject.toml").read_text(), re.M)
    script = (REPO / "scripts" / "test.sh").read_text()
    assert '-m "not slow"' in script and '"--quick"' in script
