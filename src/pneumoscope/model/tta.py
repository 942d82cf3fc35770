"""Test-time augmentation: a film's logit averaged over the film and K augmented copies of it.

The copies are drawn from the run's own training augmentation: the variation (field of
view, position, exposure) the model was trained to be indifferent to. On the pediatric
reference runs, averaging 8 of them raised the official test AUROC of every run
(experiments/test_time_views). The setting belongs to the calibration
(calibration.json ``tta``; files written before the rename say ``test_views``): the
temperature and the threshold are fitted on the averaged validation logits, so they only
hold for scores made the same way, and every command that scores a film (predict,
evaluate, explain, the service, the Ray engine, the PACS worker) wraps its backend in
:class:`TTARunner`.

The K transforms are drawn once from a generator seeded with ``seed``: every film gets
the same K transforms, so a film's score never depends on which other films share its
batch, and `predict`, the service and the Ray workers agree. They are drawn with torch
(the training augmentation's own random stream) and applied in numpy
(:class:`pneumoscope.data.views.Views`); `pneumoscope export` records them, so that an
install without torch scores an exported run with the very same copies. The copies are
rounded back to uint8, the input every backend (torch, ONNX Runtime, OpenVINO) takes.
The penultimate features (what the OOD guard measures) stay those of the plain film.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscope.data.views import Views

if TYPE_CHECKING:
    from pneumoscope.data.augment_config import AugmentConfig

NO_TORCH = (
    "this run's calibration averages test-time augmented copies, whose transforms are drawn "
    "with PyTorch, which this install does not have: export the run with the training "
    "install ('pneumoscope export'), which records them, or install 'pneumoscope[train]'"
)


@dataclass(frozen=True)
class TestTimeAugmentation:
    """K augmented copies of each film, averaged with it: the count, the seed of the
    transforms and the augmentation they were drawn from (the run's training one)."""

    __test__ = False  # not a pytest class, whatever its name

    copies: int
    seed: int
    augment: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TestTimeAugmentation:
        """From calibration.json's ``tta``, or the ``test_views`` of files written before
        the rename (its count named ``views``)."""
        copies = d["copies"] if "copies" in d else d["views"]
        return cls(int(copies), int(d.get("seed", 0)), dict(d.get("augment") or {}))

    def note(self) -> str:
        """'the logit averaged over the film and K augmented copies' for cards and reports."""
        return f"the logit averaged over the film and {self.copies} augmented copies of it"


def draw_views(copies: int, augment: AugmentConfig, seed: int) -> Views:
    """The K transforms of test-time augmentation, drawn from the run's training
    augmentation with torch's generator seeded with ``seed``."""
    try:
        import torch
    except ImportError:
        from pneumoscope.core.errors import UserError

        raise UserError(NO_TORCH) from None
    from pneumoscope.data.augment import draw_transforms

    tr = draw_transforms(copies, augment, torch.Generator().manual_seed(seed))

    def arr(t):
        return None if t is None else t.float().numpy()

    return Views(arr(tr.theta), arr(tr.gamma), arr(tr.contrast), arr(tr.brightness), augment.fill)


def copy_stack(
    films: np.ndarray, copies: int, augment: AugmentConfig, seed: int, views: Views | None = None
) -> np.ndarray:
    """uint8 (N, S, S) -> uint8 (N * copies, S, S): film i's copies at rows i*K .. i*K+K-1,
    the same K seeded transforms for every film (``views``: drawn already)."""
    views = views or draw_views(copies, augment, seed)
    out = np.empty((len(films) * copies, *films.shape[1:]), dtype=np.uint8)
    for i, film in enumerate(films):
        out[i * copies : (i + 1) * copies] = views.apply(np.ascontiguousarray(film))
    return out


class TTARunner:
    """A backend's ``logits_and_features`` with the logit averaged over the film and its
    test-time augmented copies; the features are the plain film's. Anything else is the
    backend's."""

    def __init__(self, runner, tta: TestTimeAugmentation, views: Views | None = None):
        """``views``: the transforms an export recorded; drawn with torch when None."""
        from pneumoscope.data.augment_config import AugmentConfig

        self.runner = runner
        self.tta = tta
        self._augment = AugmentConfig.from_dict(tta.augment)
        self.views = views or draw_views(tta.copies, self._augment, tta.seed)

    def __getattr__(self, name: str):  # img_size, paths, ...: the wrapped backend's
        return getattr(self.runner, name)

    def logits_and_features(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Averaged logits (N,) and plain penultimate features (N, D)."""
        k = self.tta.copies
        step = max(1, batch_size // (k + 1))  # about batch_size forward passes a chunk
        rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        logits, feats = [np.zeros(0, np.float32)], []
        for start in range(0, len(rows), step):
            chunk = np.ascontiguousarray(images[rows[start : start + step]])
            z, f = self.runner.logits_and_features(chunk, batch_size)
            copies = copy_stack(chunk, k, self._augment, self.tta.seed, self.views)
            zv, _ = self.runner.logits_and_features(copies, batch_size)
            both = np.concatenate([z[:, None], zv.reshape(len(chunk), k)], axis=1)
            logits.append(both.astype(np.float64).mean(axis=1).astype(np.float32))
            feats.append(f)
        return np.concatenate(logits), np.concatenate(feats) if feats else np.zeros((0, 0))

    def predict_logits(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> np.ndarray:
        return self.logits_and_features(images, batch_size, rows)[0]


def with_tta(runner, tta: TestTimeAugmentation | None, views: Views | None = None):
    """``runner`` wrapped in the run's test-time augmentation, or ``runner`` itself without;
    ``views``: its transforms as an export recorded them (drawn with torch when None)."""
    if tta is None or tta.copies <= 0 or isinstance(runner, TTARunner):
        return runner
    return TTARunner(runner, tta, views)
