"""Atomic writes leave files every user may read (as the umask allows), whatever the writer."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.ood import OodGuard
from tests.helpers import REPO


def test_a_writer_that_recreates_the_file_owner_only_still_leaves_the_usual_mode(tmp_path):
    """safetensors recreates its file 0600: a service running as another user (the
    container's) could not read the run's OOD statistics."""

    def owner_only(tmp: str) -> None:
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        os.close(fd)

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.bin", owner_only)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o644


def test_unreadable_ood_statistics_are_one_line(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "run_v1", run)
    (run / "ood.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="cannot read .*ood.safetensors") as err:
        OodGuard.load(RunFiles.of(run))
    assert "\n" not in str(err.value)
