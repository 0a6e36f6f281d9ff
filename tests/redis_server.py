"""A real redis-server on a free port, for tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from sarathi_serve.common.net import free_port


class RedisServer:
    def __init__(self, data_dir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("tests need redis-server: apt-get install -y redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(data_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
