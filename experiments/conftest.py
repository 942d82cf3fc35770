"""The experiments' own tests (``python -m pytest experiments/NAME``; not in the default
run, whose testpaths is tests/) use the test suite's shared synthetic data and tiny runs."""

from tests.conftest import data48, data_dir, resnet_run, run_dir, synthetic_source  # noqa: F401
