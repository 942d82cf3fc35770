"""The dataset layouts, found by name: one module per layout.

A module of this package that sets ``LAYOUT = Layout(...)`` (see ``base.Layout``) is
registered under ``LAYOUT.name`` the first time the registry is asked, so adding a layout
means adding one file here. :func:`register` adds a layout defined elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.base import Layout

_REGISTRY: dict[str, Layout] = {}
_discovered = False


def register(layout: Layout) -> Layout:
    """Add ``layout`` under its name; another layout already under that name is an error."""
    known = _REGISTRY.get(layout.name)
    if known is not None and known is not layout:
        raise ValueError(f"two dataset layouts named {layout.name!r}")
    _REGISTRY[layout.name] = layout
    return layout


def _discover() -> None:
    """Import every module of this package once and register its ``LAYOUT``."""
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        layout = getattr(module, "LAYOUT", None)
        if isinstance(layout, Layout):
            register(layout)
    _discovered = True


def layout_names() -> tuple[str, ...]:
    """The registered layout names, sorted (the ``--layout`` values besides ``auto``)."""
    _discover()
    return tuple(sorted(_REGISTRY))


def layouts_in_detection_order() -> list[Layout]:
    """Every registered layout, in the order automatic detection asks them."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda lay: (lay.priority, lay.name))


def get_layout(name: str) -> Layout:
    """The layout registered as ``name``; UserError listing the choices otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise UserError(f"unknown --layout {name!r}: choose one of {', '.join(layout_names())}")
    return _REGISTRY[name]
