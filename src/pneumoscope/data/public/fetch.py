"""HTTP downloads that resume, show their progress, check what arrived, and fail fast offline.

The file grows as ``NAME.part`` beside its final place and is renamed to ``NAME`` only when
complete and checked, so a file under its final name is always whole. An interrupted
transfer (a dropped connection, a stalled read) resumes from the bytes already received
with an HTTP Range request, a few times in one call and again on the next call; a server
that ignores Range sends the whole file and the partial one is started over. A complete
file whose size or MD5 differs from the published values is moved aside as
``NAME.mismatch``: kept for inspection, never used, and the next call starts afresh.

No network (no route, a DNS failure, a refused connection or proxy) is one UserError line
within ``CONNECT_DEADLINE_S`` that says how to fetch the file by hand. The standard
library's urllib does all of it (redirects, proxies from the environment, Range), so no
HTTP library is needed at run time.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, build_opener

from pneumoscope.core import __version__
from pneumoscope.core.errors import UserError

CONNECT_DEADLINE_S = 20.0  # DNS, connection, TLS and the first answer, all together
READ_TIMEOUT_S = 30.0  # a transfer that stalls this long counts as interrupted
ATTEMPTS = 3  # transfers (the first and its resumes) in one call
CHUNK = 1 << 20
USER_AGENT = f"pneumoscope/{__version__} (dataset download)"
_NO_ROUTE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


class Interrupted(Exception):
    """The transfer stopped before the end; the partial file stays for a resume."""


@dataclass(frozen=True)
class Target:
    """What to fetch, where to, what it must be, and how a person would do it by hand."""

    url: str
    dest: Path
    size: int = 0  # published size in bytes, 0 when none is published
    md5: str = ""  # published MD5, "" when none is published
    manual: str = ""  # "download X by hand from Y and put it at Z ...": ends every failure


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch(t: Target, progress: bool = True, attempts: int = ATTEMPTS) -> Path:
    """Download ``t.url`` to ``t.dest`` (resuming ``t.dest.part``), check it, return it."""
    part = partial_path(t.dest)
    t.dest.parent.mkdir(parents=True, exist_ok=True)
    why = ""
    for _ in range(attempts):
        try:
            _transfer(t, part, progress)
            break
        except Interrupted as exc:
            why = str(exc)
    else:
        have = part.stat().st_size if part.exists() else 0
        raise UserError(
            f"download of {t.dest.name} interrupted ({why}); the {have} bytes received are "
            f"kept in {part}: run the command again to resume, or {t.manual}"
        )
    problem = mismatch(part, t.size, t.md5)
    if problem:
        aside = t.dest.with_name(t.dest.name + ".mismatch")
        os.replace(part, aside)
        raise UserError(
            f"checksum mismatch for {t.dest.name}: {problem}; the file is kept as {aside} and "
            f"never used: run the command again to download it afresh, or {t.manual}"
        )
    os.replace(part, t.dest)
    return t.dest


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def mismatch(path: Path, size: int = 0, md5: str = "") -> str:
    """What differs from the published size and MD5 (those published), or ""."""
    got = path.stat().st_size
    if size and got != size:
        return f"{got} bytes, published {size}"
    if md5:
        found = md5_of(path)
        if found != md5.lower():
            return f"MD5 {found}, published {md5}"
    return ""


def _transfer(t: Target, part: Path, progress: bool) -> None:
    """One request: append the rest of the file to ``part`` (Interrupted if cut short)."""
    start = part.stat().st_size if part.exists() else 0
    resp = _open(t, part, start)
    if resp is None:
        return  # the server says ``part`` already holds the whole file
    with resp:
        start, total = _body_range(resp, part, start)
        _receive(resp, part, start, total, progress)


def _open(t: Target, part: Path, start: int) -> Any:
    """The server's answer to a GET from byte ``start``, None when ``part`` already holds
    the whole file, or a UserError naming what failed and the manual way."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    host = urlsplit(t.url).netloc or t.url
    kept = f" ({start} bytes received so far are kept in {part} for a resume)" if start else ""
    request = Request(t.url, headers=headers)
    try:
        # a new opener each time: it reads the proxy settings from the environment now
        opener = build_opener()
        return _within(CONNECT_DEADLINE_S, lambda: opener.open(request, timeout=READ_TIMEOUT_S))
    except HTTPError as exc:
        if exc.code == 416 and start:
            return _past_the_end(exc, part, start)
        what = f"{host} answered HTTP {exc.code} {exc.reason}"
    except (URLError, OSError, http.client.HTTPException) as exc:
        what = network_problem(exc, host)
    raise UserError(f"cannot download {t.dest.name}: {_one_line(what)}{kept}; {t.manual}")


def _past_the_end(exc: HTTPError, part: Path, start: int) -> None:
    """A 416 answer to a resume: ``part`` is complete when it holds exactly the total."""
    m = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") or "")
    if m is None or int(m.group(1)) == start:
        return None  # complete (or unknown: the size and MD5 checks decide)
    part.unlink()
    raise Interrupted(f"the partial file is longer than the server's {m.group(1)} bytes")


def _body_range(resp: Any, part: Path, start: int) -> tuple[int, int]:
    """(first byte the body holds, total size or 0 when unknown); a server that ignored
    the Range request sends the whole file, so the partial one is started over."""
    length = int(resp.headers.get("Content-Length") or 0)
    if resp.status == 206:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != start:
            part.unlink()
            raise Interrupted("the server resumed from another byte than asked")
        return start, 0 if m.group(3) == "*" else int(m.group(3))
    if start and part.exists():
        part.unlink()
    return 0, length


def _receive(resp: Any, part: Path, start: int, total: int, progress: bool) -> None:
    """Append the body to ``part`` with a progress bar; Interrupted when it ends early."""
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    done = start
    columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
    bar = Progress(*columns, console=Console(stderr=True), disable=not progress)
    with bar, open(part, "ab" if start else "wb") as fh:
        task = bar.add_task(part.name[: -len(".part")], total=total or None, completed=start)
        while block := _read(resp, done):
            try:
                fh.write(block)
            except OSError as exc:  # a full disk is not a network problem: no retry
                raise UserError(f"cannot write {part}: {exc.strerror or exc}") from None
            done += len(block)
            bar.update(task, completed=done)
    if total and done < total:
        raise Interrupted(f"connection closed after {done} of {total} bytes")


def _read(resp: Any, done: int) -> bytes:
    try:
        return resp.read(CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise Interrupted(f"connection lost after {done} bytes: {_one_line(exc)}") from None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path`` (a lock file) while a file is downloaded and unpacked: a second
    pneumoscope fetching the same file at once is one UserError line, not a mixed file."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"another pneumoscope is fetching this file (it holds {path}): wait for it to "
                "finish, then run this command again"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def network_problem(exc: BaseException, host: str) -> str:
    """What an exception from opening a URL means for a person, in a few words."""
    reason = exc.reason if isinstance(exc, URLError) else exc
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {host} (no network or no DNS)"
    if isinstance(reason, ConnectionRefusedError):
        return f"{host} refused the connection"
    if isinstance(reason, TimeoutError):
        return f"no answer from {host} within {CONNECT_DEADLINE_S:.0f} s"
    if isinstance(reason, OSError) and reason.errno in _NO_ROUTE:
        return f"no network route to {host}"
    if isinstance(reason, ssl.SSLError):
        return f"the secure connection to {host} failed ({reason})"
    if "tunnel connection failed" in str(reason).lower():
        return f"the proxy refused the connection to {host} ({reason})"
    return f"cannot reach {host} ({reason or type(reason).__name__})"


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``, or TimeoutError after ``seconds``: name resolution ignores socket
    timeouts, so a resolver that hangs would otherwise hold the command for minutes."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    worker = threading.Thread(target=run, name="pneumoscope-connect", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _one_line(what: object) -> str:
    return " ".join(str(what).split())
