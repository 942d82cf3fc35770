"""The predictor: a run made ready to score films, assembled in one place.

Whatever asks for a prediction (`predict` and `explain`, the service, the PACS worker, the
Ray engine, the Python API) needs the same four things besides the pixels: a runner for
the chosen backend (torch, bf16, ONNX float32 or int8, OpenVINO; wrapped in the run's
test-time augmentation when its calibration has it), the out-of-distribution guard, the
intended-use rules with what the user relaxed (with the population check that reads a
film's age group from its pixels), and the model id every output names.
``Predictor.from_run`` assembles them once; the callers only feed it films.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.inference.backends import make_runner
from pneumoscope.inference.intended_use import IntendedUse, Screened, load_screened
from pneumoscope.inference.scoring import Prediction, model_id, score_batch, score_screened
from pneumoscope.model.ood import OodGuard
from pneumoscope.model.population_check import check_folder
from pneumoscope.model.run import LoadedRun, load_run, torch_missing

__all__ = ["Predictor", "Screened"]


class Predictor:
    """A loaded run, its runner, OOD guard, intended-use rules and model id.

    The runner is made on first use, so a caller that scores elsewhere (the Ray engine's
    workers run their own ONNX session) pays nothing for it; ``ready()`` makes it now, so
    that a bad backend fails before any output is written.
    """

    def __init__(
        self,
        loaded: LoadedRun,
        scope: IntendedUse,
        guard: OodGuard | None,
        model_id: str,
        backend: str = "torch",
        runner=None,
    ):
        self.loaded = loaded
        self.scope = scope
        self.guard = guard
        self.model_id = model_id
        self.backend = backend
        self._runner = runner

    @classmethod
    def from_run(
        cls,
        run: str | Path | LoadedRun,
        backend: str = "torch",
        allow: Iterable[str] = (),
        runner=None,
    ) -> Predictor:
        """The predictor of a run folder (or a run already loaded): ``backend`` as
        `predict --backend` takes it, ``allow`` the intended-use rules relaxed (--allow);
        ``runner`` replaces the backend's (tests, a wrapped runner)."""
        loaded = run if isinstance(run, LoadedRun) else load_run(run)
        scope = IntendedUse.from_card(loaded.card, allow, check_folder(loaded.root))
        scope.population_check()  # a check that cannot load is one line, before any output
        guard = OodGuard.load(loaded.files)
        return cls(loaded, scope, guard, model_id(loaded), backend, runner)

    @property
    def runner(self):
        if self._runner is None:
            self._runner = make_runner(self.loaded, self.backend)
        return self._runner

    def ready(self) -> Predictor:
        """Make the runner now (a missing export or a bad backend is one line, early)."""
        _ = self.runner
        return self

    @property
    def threshold(self) -> float:
        return self.loaded.threshold

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.loaded.preprocess

    def screen(self, path: str) -> Screened:
        """A file read as every engine reads it: its DICOM header against the rules, then
        decoded, its population estimated, and preprocessed."""
        return load_screened(path, self.preprocess, self.scope)

    def score(self, pixels: np.ndarray, names: list[str]) -> list[Prediction]:
        """Predictions for a stack of preprocessed images, one per name."""
        return score_batch(self.loaded, self.runner, self.guard, pixels, names, self.model_id)

    def score_screened(self, batch: list[Screened]) -> list[Prediction]:
        """One Prediction per screened file, in order; the images scored together."""
        return score_screened(self.loaded, self.runner, self.guard, self.model_id, batch)

    def heatmaps(self, pixels: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Heatmaps (N, S, S) in [0, 1] of the PNEUMONIA logit for preprocessed films: from
        the export's class activation map when ONNX Runtime scores and the export has one
        (Grad-CAM's map for a global-pooling + linear head, no torch needed), else
        Grad-CAM on the torch network."""
        if getattr(self.runner, "has_cam", False):  # a TTA wrapper passes it through
            return self.runner.heatmaps(pixels, self.loaded.eval_crop, batch_size)
        problem = torch_missing("a heatmap of this run (Grad-CAM; its export has no map)")
        if problem:
            raise problem
        from pneumoscope.inference.gradcam import gradcam

        return gradcam(self.loaded, pixels, batch_size)

    def refusal(self, name: str, status: str, reason: str) -> Prediction:
        """The row of an input that was not scored (unreadable, skipped, out of scope)."""
        return Prediction(name, self.threshold, self.model_id, status=status, error=reason)
