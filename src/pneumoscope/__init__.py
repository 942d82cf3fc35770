"""pneumoscope: pneumonia detection on chest X-rays, from image folders to honest numbers.

``pneumoscope.load(RUN)`` returns a model for notebooks (see pneumoscope.api); it is
imported on first use, so the command line starts without loading torch.
"""

from pneumoscope.core import CLASS_NAMES, __version__

__all__ = ["CLASS_NAMES", "__version__", "load", "Model"]


def __getattr__(name: str):
    if name in ("load", "Model"):
        from pneumoscope import api

        return getattr(api, name)
    raise AttributeError(f"module 'pneumoscope' has no attribute {name!r}")
