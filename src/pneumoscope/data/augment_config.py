"""The augmentation's settings: plain numbers, read by training (``data.augment``, torch)
and by test-time augmentation in any install."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pneumoscope.core.errors import UserError

FILLS = ("zeros", "border", "reflection")


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 10.0  # degrees, uniform in [-r, r]
    zoom: float = 0.1  # isotropic scale uniform in [1 - z, 1 + z]
    shift: float = 0.05  # fraction of the image size, uniform in [-s, s]
    hflip: float = 0.0  # probability; off by default: a mirrored chest is not a real anatomy
    vflip: float = 0.0
    brightness: float = 0.1  # additive, uniform in [-b, b]
    contrast: float = 0.1  # multiplicative around the mean, uniform in [1 - c, 1 + c]
    # RandomResizedCrop: keep an area fraction uniform in [1 - crop, 1], aspect ratio
    # log-uniform in [3/4, 4/3], anywhere inside the image, resized back to full size
    crop: float = 0.0
    # independent x and y scale, each uniform in [1 - a, 1 + a] (times the zoom): Keras's
    # zoom_range draws x and y independently, so zoom 0 + aspect 0.2 is Keras's zoom 0.2
    aspect: float = 0.0
    gamma: float = 0.0  # x ** g, g log-uniform in [1 - gamma, 1 / (1 - gamma)]
    fill: str = "zeros"  # outside the image: zeros, border (Keras 'nearest') or reflection

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        """Unknown keys are ignored and missing ones take their defaults, so configs saved
        by older and newer versions still load (``zoom_out`` among them: tried, not adopted
        and removed; see experiments/fov_probe)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def check(self) -> None:
        """One-line errors for settings outside their range."""
        for name in (
            "zoom",
            "shift",
            "crop",
            "aspect",
            "gamma",
            "brightness",
            "contrast",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise UserError(f"augment {name} must be a number in [0, 1), got {v!r}")
        for name in ("hflip", "vflip"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise UserError(f"augment {name} is a probability in [0, 1], got {v!r}")
        if not isinstance(self.rotation, (int, float)) or not 0.0 <= self.rotation <= 180.0:
            raise UserError(f"augment rotation must be in [0, 180] degrees, got {self.rotation!r}")
        if self.fill not in FILLS:
            raise UserError(f"augment fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
