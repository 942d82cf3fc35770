"""pneumoscope: pneumonia detection on chest X-rays, from image folders to honest numbers."""

from pneumoscope.core import CLASS_NAMES, __version__

__all__ = ["CLASS_NAMES", "__version__"]
