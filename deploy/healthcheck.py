"""The container image's HEALTHCHECK: GET /readyz of the `pneumoscope serve` running in this
container; exit 0 when it answers 200 "ready", 1 otherwise (docs/deploy.md).

The address comes from the serve process's own flags (found in /proc), else from the
variables serve reads for them (PNEUMOSCOPE_PORT, PNEUMOSCOPE_HOST, PNEUMOSCOPE_TLS_CERT: the
health check runs with the container's environment), so a container started with other
flags or variables (`--port 9000`, `-e PNEUMOSCOPE_TLS_CERT=...`) is still checked where it
listens; PNEUMOSCOPE_HEALTHCHECK_URL overrides that. Standard library only: the image has no curl.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8000
TIMEOUT_S = 4.0


def serve_args() -> list[str]:
    """The arguments after `serve` of the lowest-numbered `pneumoscope serve` process
    (the parent of any replicas and decoding workers), or [] when none is found."""
    pids = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        head = argv[:3]
        if "serve" in head and any(Path(a).name.startswith("pneumoscope") for a in head):
            return argv[argv.index("serve") + 1 :]
    return []


def flag(args: list[str], name: str) -> str | None:
    """The last value of ``--name VALUE`` or ``--name=VALUE`` (the CLI takes the last), else
    the variable serve reads for it (--tls-cert: PNEUMOSCOPE_TLS_CERT)."""
    found = os.environ.get("PNEUMOSCOPE_" + name.lstrip("-").replace("-", "_").upper()) or None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith(name + "="):
            found = a.split("=", 1)[1]
    return found


def url_from(args: list[str]) -> str:
    port = flag(args, "--port") or str(DEFAULT_PORT)
    host = flag(args, "--host") or "127.0.0.1"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if flag(args, "--tls-cert") else "http"
    return f"{scheme}://{host}:{port}/readyz"


def main() -> int:
    url = os.environ.get("PNEUMOSCOPE_HEALTHCHECK_URL") or url_from(serve_args())
    # The service's own certificate, on its own address: nothing to verify it against.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as r:
            body = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if body.get("status") != "ready":
        print(f"unhealthy: {url} answered {body}", file=sys.stderr)
        return 1
    print(f"ready: {body.get('model_id', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
