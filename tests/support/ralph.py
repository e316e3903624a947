"""A real LRS for the tests: Ralph 5.1.0 in a virtualenv of its own, served on a free loopback port.

Ralph pins fastapi and uvicorn differently from us, so it cannot share our environment. The venv
is built once and cached in `~/.cache/exam-events/ralph-5.1.0/` (`EXAM_EVENTS_CACHE` moves the
cache): built in a temporary directory next to it, checked, then renamed into place, under a file
lock, so a concurrent run waits for it and an aborted one leaves only a temporary directory that
the next build removes. A venv's console scripts carry the build path in their first line, so
Ralph is always run as `python -m ...`, which survives the rename.

Two things about Ralph 5.1.0 that the harness works around, both found by running it:
- `ralph runserver` starts uvicorn with `reload=True` (a file watcher and a child process); we run
  uvicorn on `ralph.api:app` ourselves: one process, stopped by SIGTERM.
- its file-system backend writes statements with the CREATE operation, which refuses to write to
  a file that exists: every POST after the first answers 500 "Statements bulk indexation failed".
  The launcher sets that backend's default operation to APPEND (what the file, one JSON line per
  statement, is made for) before serving. Validation, id conflicts (409, 204), authentication and
  queries are Ralph's own code, untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.broker import free_port

RALPH_VERSION = "5.1.0"
# Ralph imports `requests` without declaring it.
REQUIREMENTS = (f"ralph-malph[cli,lrs]=={RALPH_VERSION}", "requests>=2.31,<3")
# A PyPI that does not answer fails the install in about a minute, not at the install timeout.
PIP_NETWORK = ("--timeout", "30", "--retries", "2")
INSTALL_TIMEOUT_SECONDS = 480.0
START_TIMEOUT_SECONDS = 90.0
USERNAME = "exam-events-forwarder"
PASSWORD = "forwarder-test-secret"  # a throwaway credential of a test LRS

# Runs in Ralph's venv: argv = host, port.
LAUNCHER = """
import sys
import uvicorn
from ralph.backends.data.base import BaseOperationType
from ralph.backends.lrs.fs import FSLRSBackend

FSLRSBackend.default_operation_type = BaseOperationType.APPEND
uvicorn.run("ralph.api:app", host=sys.argv[1], port=int(sys.argv[2]), log_level="warning")
"""


class RalphUnavailable(Exception):
    """Ralph could not be installed or started; the message says why in one line."""


def cache_root() -> Path:
    """Where the project caches downloads (the Kafka jars live there too)."""
    return Path(os.environ.get("EXAM_EVENTS_CACHE", Path.home() / ".cache" / "exam-events"))


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _installed(venv: Path) -> bool:
    return (venv / ".complete").is_file() and venv_python(venv).exists()


def ralph_venv(root: Path | None = None, *, timeout: float = INSTALL_TIMEOUT_SECONDS) -> Path:
    """The cached venv with Ralph installed, building it first when it is missing or incomplete."""
    root = root or cache_root()
    venv = root / f"ralph-{RALPH_VERSION}"
    if _installed(venv):
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"ralph-{RALPH_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run builds: wait for it, then use its venv
        if _installed(venv):
            return venv
        for leftover in [venv, *root.glob(f"ralph-{RALPH_VERSION}.building-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f"ralph-{RALPH_VERSION}.building-", dir=root))
        try:
            _build(building, timeout)
            building.rename(venv)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return venv


def _build(venv: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], deadline, "create its virtualenv")
    python = str(venv_python(venv))
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            *PIP_NETWORK,
            *REQUIREMENTS,
        ],
        deadline,
        f"install {' '.join(REQUIREMENTS)} from PyPI (is PyPI reachable?)",
    )
    _run(
        [python, "-c", "import ralph.backends.lrs.fs, ralph.cli, fastapi, requests, uvicorn"],
        deadline,
        "import it after installing",
    )
    (venv / ".complete").write_text(f"{' '.join(REQUIREMENTS)}\n")


def _run(command: list[str], deadline: float, what: str) -> None:
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RalphUnavailable(f"Ralph {RALPH_VERSION}: could not {what} within the install time") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        raise RalphUnavailable(f"Ralph {RALPH_VERSION}: could not {what}: {lines[-1]}")


@dataclass
class RalphServer:
    """One Ralph LRS: its file-system store and credentials in `directory`, served on `port`."""

    venv: Path
    directory: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    username: str = USERNAME
    password: str = PASSWORD
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """LRS_URL: the base below which `/xAPI/statements` is served."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "ralph.log"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RALPH_RUNSERVER_BACKEND": "fs",
            "RALPH_APP_DIR": str(self.directory / "app"),
            "RALPH_AUTH_FILE": str(self.directory / "app" / "auth.json"),
            "RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH": str(self.directory / "statements"),
        }

    def create_credentials(self) -> None:
        """`ralph auth`: a user with every scope, written to the auth file."""
        (self.directory / "app").mkdir(parents=True, exist_ok=True)
        python = str(venv_python(self.venv))
        args = ["auth", "-u", self.username, "-p", self.password, "-s", "all", "-w"]
        args += ["-M", f"mailto:{self.username}@example.com"]
        done = subprocess.run(
            [python, "-m", "ralph", *args],
            env=self.env(),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RalphUnavailable(f"ralph auth failed: {done.stderr.strip().splitlines()[-1:]}")

    def start(self) -> None:
        """Serve, and return once `GET /__heartbeat__` answers 200."""
        if self.process is not None:
            return
        (self.directory / "statements").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(venv_python(self.venv)), "-c", LAUNCHER, self.host, str(self.port)],
                env=self.env(),
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a stop reaches all of it
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                self.process = None
                raise RalphUnavailable(f"Ralph exited at start: {' | '.join(tail)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/__heartbeat__", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RalphUnavailable(f"Ralph did not answer on {self.url} within {START_TIMEOUT_SECONDS:.0f} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; waits until it exited."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            auth=(self.username, self.password),
            headers={"X-Experience-API-Version": "1.0.3"},
            timeout=30,
        )

    def statements(self, **query: str) -> list[dict[str, Any]]:
        """Every stored statement matching the query (GET /xAPI/statements, following `more`)."""
        found: list[dict[str, Any]] = []
        with self._client() as client:
            answer = client.get("/xAPI/statements", params={"limit": "500", **query})
            while True:
                answer.raise_for_status()
                page = answer.json()
                found.extend(page["statements"])
                if not page.get("more"):
                    return found
                answer = client.get(page["more"])

    def post(self, statements: list[dict[str, Any]]) -> httpx.Response:
        """POST statements as a client would (for checking the LRS itself)."""
        with self._client() as client:
            return client.post("/xAPI/statements", json=statements)


@contextlib.contextmanager
def ralph_server(directory: Path, venv: Path | None = None, port: int | None = None) -> Iterator[RalphServer]:
    """A started Ralph in `directory`, stopped at the end whatever happens."""
    server = RalphServer(venv=venv or ralph_venv(), directory=directory, port=port or free_port())
    server.create_credentials()
    try:
        server.start()
        yield server
    finally:
        server.stop()
