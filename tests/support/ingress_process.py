"""`python -m ingress` as a subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.broker import ROOT
from tests.support.ingress_server import two_free_ports


@dataclass
class IngressProcess:
    """A running ingress process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The public port: the webhook routes and /openapi.json."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin port: /healthz, /readyz, /metrics."""
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text()


def ingress_environment(bootstrap: str, topic: str, port: int, **extra: str) -> dict[str, str]:
    """The process environment: this machine's, minus any INGRESS_*, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_")}
    env.update(
        {
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(port),
            "INGRESS_RAW_TOPIC": topic,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **extra,
        }
    )
    return env


@contextmanager
def ingress_process(bootstrap: str, topic: str, log_path: Path, **settings: str) -> Iterator[IngressProcess]:
    """Start the ingress, wait (bounded) until /healthz answers on the admin port, and kill it on exit
    if still running."""
    port, admin_port = two_free_ports()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingress"],
            cwd=ROOT,
            env=ingress_environment(bootstrap, topic, port, INGRESS_ADMIN_PORT=str(admin_port), **settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = IngressProcess(process, port, admin_port, log_path)
    try:
        wait_until_healthy(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def wait_until_healthy(running: IngressProcess, attempts: int = 300) -> None:
    """Poll /healthz (admin port) every 0.1 s until it answers, the process dies, or the attempts run out."""
    for _ in range(attempts):
        if running.process.poll() is not None:
            raise RuntimeError(f"ingress exited with {running.process.returncode}:\n{running.log()}")
        try:
            if httpx.get(f"{running.admin_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"ingress not healthy after {attempts} attempts:\n{running.log()}")
