"""The audit log of reads: who read which shopper's data, when, through which route and worker.

One JSON line per read (`intent.audit` logger), whatever the answer (200, 404, 503), on every worker
the read passed through: the one that took the call and, when it forwarded it, the owner that
answered. The caller is named by its token's fingerprint (the first 8 hex digits of the token's
sha256), never by the token; the answer itself is never written. Without `INTENT_AUDIT_LOG_PATH`
the lines go to stderr beside the worker's log lines, with `"logger": "intent.audit"`; with it,
they are appended to that file only. They are JSON and written whatever `INTENT_LOG_LEVEL` and
`INTENT_LOG_JSON` say.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

from intent.observability import JsonLogFormatter

LOGGER_NAME = "intent.audit"


def token_fingerprint(token: str) -> str:
    """How the audit log names a caller: enough to tell the configured tokens apart, useless to a reader."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]


class AuditLog:
    def __init__(self, worker_url: str, path: Path | None = None) -> None:
        """`worker_url` names this worker in every line; `path`: the file to append the lines to
        (None: stderr, where the worker logs). The process's audit lines go where the last
        `AuditLog` created says."""
        self.worker_url = worker_url
        self.log = logging.getLogger(LOGGER_NAME)
        self.log.setLevel(logging.INFO)  # never filtered out by the worker's log level
        self.log.propagate = False  # JSON lines even when the worker logs plain text; not twice
        for old in list(self.log.handlers):
            self.log.removeHandler(old)
            old.close()
        if path is None:
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(JsonLogFormatter())
        self.log.addHandler(handler)

    def read(
        self,
        *,
        route: str,
        shopper_id: str,
        token: str,
        forwarded_by: str | None,
        forwarded_to: list[str],
        status: int,
    ) -> None:
        """Record one read of `shopper_id`'s data through `route` (its template) by the holder of
        `token`; `forwarded_by`: the worker that forwarded the call here; `forwarded_to`: the workers
        this one asked; `status`: the answer's HTTP status."""
        self.log.info(
            "shopper data read",
            extra={
                "ids": {
                    "audit": "shopper_read",
                    "route": route,
                    "shopper_id": shopper_id,
                    "token": token_fingerprint(token),
                    "worker": self.worker_url,
                    "forwarded": forwarded_by is not None,
                    "forwarded_by": forwarded_by,
                    "forwarded_to": forwarded_to,
                    "status": status,
                }
            },
        )
