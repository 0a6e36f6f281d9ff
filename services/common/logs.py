"""Logging set-up shared by every service: one line per record (time, level, role, logger: message).

`SARATHI_LOG_FORMAT=json` prints one JSON object per line instead (for log
collectors), with `request_id` as a field wherever a record concerns one
request, so a request can be followed through gateway, scheduler and worker.
"""

from __future__ import annotations

import json
import logging
import os
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "role": self.role,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(role: str) -> None:
    level = os.environ.get("SARATHI_LOG_LEVEL", "INFO").upper()
    if os.environ.get("SARATHI_LOG_FORMAT", "text").lower() == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter(role))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(
            level=level, format=f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s"
        )
