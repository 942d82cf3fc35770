"""The execution engines of `data prepare` and `predict`, and a Ray session for the "ray" one.

``local`` runs on this machine (processes for prepare, threads and one model for predict);
``ray`` runs the same per-file functions as Ray Data jobs on a cluster. Ray is an optional
extra (``pip install 'pneumoscope[ray]'``) and is imported only here and in the engine
modules, inside functions, so that nothing else pays for it or needs it.

:func:`ray_session` connects to a running cluster (``--ray-address``, else the
``RAY_ADDRESS`` environment variable) or starts a local one on this machine for the job and
stops it afterwards; a Ray session the caller already started (a notebook, a test) is used
as it is and left running.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from pneumoscope.core.errors import UserError

ENGINES = ("local", "ray")
INSTALL_HINT = "pip install 'pneumoscope[ray]'"
PROBE_TIMEOUT_S = 5.0  # Ray itself retries an unreachable address for minutes
# Ray (2.59 and later) starts clusters with token authentication; a driver given an
# explicit address sends a token only when told to (Ray's choice: a token is not sent to
# any address it is given), so the user says so, and where the token is.
TOKEN_HINT = (
    "if the cluster uses token authentication (Ray >= 2.59 turns it on), set "
    "RAY_AUTH_MODE=token and give its token in ~/.ray/auth_token, RAY_AUTH_TOKEN or "
    "RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head node prints it)"
)


def check_engine(engine: str, ray_address: str | None = None) -> str:
    """``engine`` when it names one and can run: Ray installed, ``ray_address`` (HOST:PORT)
    answering. Otherwise one readable line (UserError), before any work is done."""
    if engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got '{engine}'")
    if ray_address and engine != "ray":
        raise UserError("--ray-address goes with --engine ray")
    if engine == "ray":
        require_ray()
        _probe(ray_address)
    return engine


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or one readable line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); {INSTALL_HINT}"
        ) from None
    return ray


@contextmanager
def ray_session(address: str | None = None) -> Iterator[ModuleType]:
    """Ray, connected for the ``with`` block (see the module docstring)."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    _probe(address)
    try:
        ray.init(
            address=address or None,
            include_dashboard=False,
            log_to_driver=False,  # worker output stays in the cluster's logs
            logging_level=logging.ERROR,  # Ray's notices are not the user's business
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a Ray cluster"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot connect to {where}: {first}; {TOKEN_HINT}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(address: str | None) -> None:
    """A HOST:PORT address that refuses connections fails now, in one line, rather than
    after Ray's own retries; other forms (``auto``, ``ray://``) are left to Ray."""
    if not address or "://" in address or address in ("auto", "local"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(
            f"--ray-address {address!r}: give HOST:PORT (e.g. 10.0.0.5:6379), "
            "ray://HOST:10001 or auto"
        )
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot connect to the Ray cluster at {address}: {exc.strerror or exc}; start it "
            "with 'ray start --head' or give the head node's address"
        ) from None


@contextmanager
def data_job(ray: ModuleType, preserve_order: bool) -> Iterator[None]:
    """Ray Data's context for one job: no progress bars of its own (the caller shows
    one), rows in input order when asked; the previous settings come back afterwards."""
    ctx = ray.data.DataContext.get_current()
    before = (ctx.enable_progress_bars, ctx.execution_options.preserve_order)
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = preserve_order
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = before


def cluster_cpus(ray: ModuleType) -> int:
    """The CPUs the connected cluster offers (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
