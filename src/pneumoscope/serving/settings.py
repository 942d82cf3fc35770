"""What `pneumoscope serve` is told: the run, where to listen and the safety limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.inference.intended_use import parse_allow
from pneumoscope.inference.predict import BACKENDS


@dataclass(frozen=True)
class ServeSettings:
    """Safe defaults: loopback only, 50 MB uploads, 2 requests decoding at once and 16
    more admitted, images scored in shared batches of up to 16 gathered for up to 2 ms,
    30 s per request, no token, no CORS, no audit log, every intended-use rule applied."""

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(sorted(parse_allow(self.allow))))
        checks = [
            (self.backend in BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}"),
            (self.max_upload_mb > 0, "--max-upload-mb must be positive"),
            (self.max_concurrency >= 1, "--max-concurrency must be at least 1"),
            (self.max_queue >= 0, "--max-queue must be 0 or more"),
            (self.timeout_s > 0, "--timeout must be positive"),
            (self.max_batch_files >= 1, "the batch limit must be at least 1"),
            (self.max_batch >= 1, "--max-batch must be at least 1"),
            (0 <= self.batch_window_ms <= 1000, "--batch-window-ms must be 0 to 1000"),
            (0 <= self.port <= 65535, "--port must be between 0 and 65535"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def batching(self) -> dict:
        """The Engine's options: its batching arguments and the intended-use rules relaxed."""
        return {
            "max_batch": self.max_batch,
            "window_s": self.batch_window_ms / 1000,
            "decoders": self.max_concurrency,
            "allow": self.allow,
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
        return token
