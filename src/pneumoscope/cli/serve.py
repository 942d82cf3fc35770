"""`pneumoscope serve`: a run behind a web page and an HTTP API, on 127.0.0.1 by default."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import app
from pneumoscope.cli.predict import ALLOW_HELP


@app.command(
    epilog="Examples:\n\n"
    "  pneumoscope serve --run runs/r18\n\n"
    "  pneumoscope serve --run runs/r18 --backend onnx --port 8080\n\n"
    "  pneumoscope serve --run runs/r18 --host 0.0.0.0 --token-file token.txt "
    "--audit-log audit.jsonl\n\n"
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
) -> None:
    """Serve a run: the web page at /, the API under /v1 (documented at /docs),
    /healthz and /readyz. The model is loaded once, before listening; uploads are
    kept in memory only. A DICOM upload that is no image or that the intended-use rules
    refuse is answered 422 with the reason (one result of a batch)."""
    import uvicorn

    from pneumoscope.serving.app import create_app
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
        batch_window_ms=batch_window_ms,
        timeout_s=timeout,
        token_file=token_file,
        cors_origins=tuple(cors_origin or ()),
        audit_log=audit_log,
        allow=tuple(allow or ()),
    )
    settings.read_token()  # a bad token file is one line, before the model loads
    engine = Engine.load(run, backend, **settings.batching)
    typer.echo(f"serving {engine.model_id} on http://{host}:{port}/ (Ctrl+C stops)", err=True)
    uvicorn.run(create_app(settings, engine), host=host, port=port, log_level="info")
