"""What `pneumoscope serve` is told: the run, where to listen and the safety limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.inference.backends import BACKENDS
from pneumoscope.inference.intended_use import parse_allow

MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServeSettings:
    """Safe defaults: loopback only (and only loopback Host headers), 50 MB uploads whose
    bodies must arrive within 60 s and take at most 256 MB of memory together, request
    headers within 10 s, 1,000 connections; uploads decoded in 2 worker processes limited
    to 1 GB and 8 s each, 16 more requests admitted once their body has arrived; images
    scored in shared batches of up to 16 gathered for up to 2 ms, 30 s per request; no
    token, no CORS, no audit log, no TLS, every intended-use rule applied."""

    run: Path
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "torch"
    max_upload_mb: float = 50.0
    max_concurrency: int = 2
    max_queue: int = 16
    timeout_s: float = 30.0
    max_batch_files: int = 32
    max_batch: int = 16
    batch_window_ms: float = 2.0
    token_file: Path | None = None
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    audit_log: Path | None = None
    allow: tuple[str, ...] = ()  # intended-use rules relaxed (--allow)
    header_timeout_s: float = 10.0  # a request's headers must arrive within this
    body_timeout_s: float = 60.0  # and its body within this, after the headers
    max_connections: int = 1000  # open connections (idle ones too); 503 beyond
    max_upload_memory_mb: float = 256.0  # request bodies held at once, all requests
    decode_workers: int | None = None  # worker processes; None: max_concurrency
    decode_memory_mb: float = 1024.0  # each worker's memory beyond its start
    decode_timeout_s: float = 8.0  # time to decode one upload
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted beside loopback
    trusted_proxy: tuple[str, ...] = ()  # proxies whose X-Forwarded-For is believed
    insecure: bool = False  # allow a non-loopback address without a token
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = 1  # replica processes on one socket (serve --workers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(sorted(parse_allow(self.allow))))
        self._check_limits()
        self._check_exposure()

    def _check_limits(self) -> None:
        checks = [
            (self.backend in BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}"),
            (self.max_upload_mb > 0, "--max-upload-mb must be positive"),
            (self.max_concurrency >= 1, "--max-concurrency must be at least 1"),
            (self.max_queue >= 0, "--max-queue must be 0 or more"),
            (self.timeout_s > 0, "--timeout must be positive"),
            (self.max_batch_files >= 1, "--max-batch-files must be at least 1"),
            (self.max_batch >= 1, "--max-batch must be at least 1"),
            (0 <= self.batch_window_ms <= 1000, "--batch-window-ms must be 0 to 1000"),
            (0 <= self.port <= 65535, "--port must be between 0 and 65535"),
            (self.header_timeout_s > 0, "--header-timeout must be positive"),
            (self.body_timeout_s > 0, "--body-timeout must be positive"),
            (self.max_connections >= 1, "--max-connections must be at least 1"),
            (
                self.max_upload_memory_mb >= self.max_upload_mb,
                "--max-upload-memory-mb must be at least --max-upload-mb",
            ),
            ((self.decode_workers or 1) >= 1, "--decode-workers must be at least 1"),
            (self.decode_memory_mb >= 128, "--decode-memory-mb must be at least 128"),
            (self.decode_timeout_s > 0, "--decode-timeout must be positive"),
            (self.workers >= 1, "--workers must be at least 1"),
            (
                (self.tls_cert is None) == (self.tls_key is None),
                "--tls-cert and --tls-key go together",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def _check_exposure(self) -> None:
        """Listening beyond this machine without a token is refused unless --insecure."""
        if self.is_loopback or self.insecure or self.token_file is not None:
            return
        raise UserError(
            f"--host {self.host} exposes the service beyond this machine without a token: "
            "give --token-file (and --tls-cert/--tls-key, or a TLS proxy), or --insecure "
            "to accept the risk"
        )

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    @property
    def host_names(self) -> list[str]:
        """The Host header names accepted: loopback, the address served, --allowed-host."""
        names = list(LOOPBACK_NAMES) + list(self.allowed_hosts)
        if self.host not in ("0.0.0.0", "::", ""):
            names.append(self.host)
        return list(dict.fromkeys(names))

    @property
    def max_upload_memory_bytes(self) -> int:
        return int(self.max_upload_memory_mb * 1024 * 1024)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def batching(self) -> dict:
        """The Engine's batching arguments."""
        return {
            "max_batch": self.max_batch,
            "window_s": self.batch_window_ms / 1000,
            "decoders": self.decode_workers or self.max_concurrency,
        }

    def read_token(self) -> str | None:
        """The bearer token from --token-file (surrounding whitespace dropped), or None."""
        if self.token_file is None:
            return None
        try:
            token = Path(self.token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read the token file {self.token_file}: {exc}") from None
        if not token:
            raise UserError(f"the token file {self.token_file} is empty")
        if len(token) < MIN_TOKEN_LENGTH:
            raise UserError(
                f"the token in {self.token_file} is too short ({len(token)} characters, "
                f"at least {MIN_TOKEN_LENGTH}): make one with 'openssl rand -hex 32'"
            )
        return token
