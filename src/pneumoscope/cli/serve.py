"""`pneumoscope serve`: a run behind a web page and an HTTP API, on 127.0.0.1 by default."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import app
from pneumoscope.cli.predict import ALLOW_HELP


@app.command(
    # every flag also reads PNEUMOSCOPE_<FLAG> (--max-queue: PNEUMOSCOPE_MAX_QUEUE), for
    # containers; a flag given on the command line wins
    context_settings={"auto_envvar_prefix": "PNEUMOSCOPE", "show_default": True},
    epilog="Every flag can also be set by the environment variable PNEUMOSCOPE_ and its "
    "name in capitals with underscores (--max-queue 32: PNEUMOSCOPE_MAX_QUEUE=32; lists "
    "separated by spaces); the command line wins.\n\n"
    "Examples:\n\n"
    "  pneumoscope serve --run runs/r18\n\n"
    "  pneumoscope serve --run runs/r18 --backend onnx --port 8080\n\n"
    "  pneumoscope serve --run runs/r18 --host 0.0.0.0 --allowed-host xray.example.org "
    "--token-file token.txt --tls-cert cert.pem --tls-key key.pem --audit-log audit.jsonl\n\n"
    "  curl -F file=@film.png http://127.0.0.1:8000/v1/predict",
)
def serve(
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (0.0.0.0: every interface; use a token)."
    ),
    port: int = typer.Option(8000, help="TCP port."),
    backend: str = typer.Option(
        "torch",
        help="torch | torch-bf16 | onnx | onnx-int8 | openvino | auto (onnx*, openvino: "
        "after 'pneumoscope export'; auto: the fastest this CPU and run allow).",
    ),
    max_upload_mb: float = typer.Option(50.0, help="Largest request body, in MB (413 above)."),
    token_file: Path = typer.Option(
        None, help="File holding a bearer token that every /v1 request must send."
    ),
    max_concurrency: int = typer.Option(2, help="Requests decoding their uploads at once."),
    max_queue: int = typer.Option(16, help="Requests admitted beyond those (503 above)."),
    max_batch: int = typer.Option(16, help="Images scored together from concurrent requests."),
    max_batch_files: int = typer.Option(32, help="Files one /v1/predict/batch request may hold."),
    batch_window_ms: float = typer.Option(
        2.0, help="How long a batch waits for more requests, in ms (0: take what is queued)."
    ),
    timeout: float = typer.Option(30.0, help="Time limit per request, in seconds (504)."),
    audit_log: Path = typer.Option(
        None, help="Append one JSON line per prediction here (hash, result; no names)."
    ),
    cors_origin: list[str] = typer.Option(
        None,
        metavar="ORIGIN",
        help="Origin allowed to call the API from a browser (repeatable; default none).",
    ),
    allow: list[str] = typer.Option(None, "--allow", metavar="RULE", help=ALLOW_HELP),
    allowed_host: list[str] = typer.Option(
        None,
        metavar="NAME",
        help="Host header name to accept beside the loopback names and --host "
        "(repeatable; guards against DNS rebinding).",
    ),
    trusted_proxy: list[str] = typer.Option(
        None,
        metavar="ADDRESS",
        help="A proxy whose X-Forwarded-For names the client (repeatable; default none: "
        "the client is the socket's peer).",
    ),
    tls_cert: Path = typer.Option(None, help="PEM certificate: serve HTTPS (with --tls-key)."),
    tls_key: Path = typer.Option(None, help="PEM private key of --tls-cert."),
    insecure: bool = typer.Option(
        False, help="Allow a non-loopback --host without --token-file (refused otherwise)."
    ),
    header_timeout: float = typer.Option(
        10.0, help="Seconds a connection has to send a request's headers (then closed)."
    ),
    body_timeout: float = typer.Option(
        60.0, help="Seconds a request has to send its body after its headers (408)."
    ),
    max_connections: int = typer.Option(1000, help="Open connections at most (503 beyond)."),
    max_upload_memory_mb: float = typer.Option(
        256.0, help="Memory all request bodies may hold at once, in MB (503 beyond)."
    ),
    decode_memory_mb: float = typer.Option(
        1024.0, help="Memory each decoding worker process may take, in MB (4xx beyond)."
    ),
    decode_timeout: float = typer.Option(
        8.0, help="Seconds to decode one upload in a worker process (4xx beyond)."
    ),
    workers: int = typer.Option(
        1,
        help="Replica processes on one socket, each with its own model copy (the kernel "
        "spreads connections; a replica that dies is started again).",
    ),
) -> None:
    """Serve a run: the web page at /, the API under /v1 (documented at /docs),
    /healthz and /readyz. The model is loaded once, before listening; uploads are
    kept in memory only and decoded in worker processes bounded in memory and time. A
    DICOM upload that is no image or that the intended-use rules refuse is answered 422
    with the reason (one result of a batch)."""
    from pneumoscope.serving.engine import Engine
    from pneumoscope.serving.settings import ServeSettings

    settings = ServeSettings(
        run=run,
        host=host,
        port=port,
        backend=backend,
        max_upload_mb=max_upload_mb,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        max_batch=max_batch,
        max_batch_files=max_batch_files,
        batch_window_ms=batch_window_ms,
        timeout_s=timeout,
        token_file=token_file,
        cors_origins=tuple(cors_origin or ()),
        audit_log=audit_log,
        allow=tuple(allow or ()),
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
        max_upload_memory_mb=max_upload_memory_mb,
        decode_memory_mb=decode_memory_mb,
        decode_timeout_s=decode_timeout,
        allowed_hosts=tuple(allowed_host or ()),
        trusted_proxy=tuple(trusted_proxy or ()),
        insecure=insecure,
        tls_cert=tls_cert,
        tls_key=tls_key,
        workers=workers,
    )
    settings.read_token()  # a bad token file is one line, before the model loads
    engine = Engine.load(run, backend, settings.allow, **settings.batching)
    scheme = "https" if tls_cert else "http"
    if insecure and not settings.is_loopback and settings.token_file is None:
        typer.echo(f"warning: serving on {host} to anyone who can reach it: no token", err=True)
    if workers == 1:
        from pneumoscope.serving.server import run_server

        typer.echo(
            f"serving {engine.model_id} on {scheme}://{host}:{port}/ (Ctrl+C stops)", err=True
        )
        run_server(settings, engine)
        return
    from pneumoscope.serving.replicas import Replicas, bind

    model_id = engine.model_id
    del engine  # checked here, in one line if it fails; each replica loads its own copy
    sock = bind(settings)
    port = sock.getsockname()[1]
    typer.echo(
        f"serving {model_id} on {scheme}://{host}:{port}/ with {workers} replicas (Ctrl+C stops)",
        err=True,
    )
    Replicas(settings, workers, sock).run()
