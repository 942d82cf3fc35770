"""The HTTP server around the app: uvicorn with the service's guards.

One process (`serve`), or N replicas sharing one listening socket (`serve --workers N`,
:mod:`.replicas`): either way each process runs :func:`run_server` with its own engine.
"""

from __future__ import annotations

import resource
import socket

from pneumoscope.serving.engine import Engine
from pneumoscope.serving.settings import ServeSettings


def run_server(
    settings: ServeSettings, engine: Engine, sockets: list[socket.socket] | None = None
) -> None:
    """uvicorn with the service's guards: header deadline, connection cap, keep-alive
    timeout, no proxy headers unless trusted, the leak-free log, optional TLS; on
    ``sockets`` already bound (a replica) or on settings.host:port."""
    import uvicorn

    from pneumoscope.serving.app import create_app
    from pneumoscope.serving.logs import LOG_CONFIG
    from pneumoscope.serving.protocol import protocol_with

    raise_open_files(settings.max_connections + 64)
    trusted = list(settings.trusted_proxy)
    config = uvicorn.Config(
        create_app(settings, engine),
        host=settings.host,
        port=settings.port,
        http=protocol_with(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        server_header=False,
        log_config=LOG_CONFIG,
        access_log=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    uvicorn.Server(config).run(sockets=sockets)


def raise_open_files(wanted: int) -> None:
    """Room for --max-connections sockets: the soft open-files limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
