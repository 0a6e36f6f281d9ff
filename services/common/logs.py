"""Logging set-up shared by every service: one line per record, role first."""

from __future__ import annotations

import logging
import os


def setup_logging(role: str) -> None:
    logging.basicConfig(
        level=os.environ.get("SARATHI_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s",
    )
