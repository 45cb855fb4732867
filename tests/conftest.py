"""Shared fixtures: a real zinit-server on a temporary config dir and socket.

Every test that needs a daemon gets its own (``daemon`` fixture), started as
``python zinit.py server`` with real children.  Waiting is always on a
condition with a generous deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

import zinit

ROOT = pathlib.Path(__file__).resolve().parent.parent
ZINIT_PY = str(ROOT / "zinit.py")
PYTHON = sys.executable


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Return the first truthy value of ``predicate()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}: {last!r}"
            )
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Daemon:
    """A zinit-server under test, with helpers to drive it."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        self.config_dir = base / "services"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(base / "zinit.sock")
        self.stdout_path = base / "daemon.out"
        self.stderr_path = base / "daemon.err"
        self.proc: subprocess.Popen | None = None

    # -- config ------------------------------------------------------------

    def write(self, name: str, text: str) -> pathlib.Path:
        path = self.config_dir / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def service(self, name: str, exec_: str, **sections: str) -> pathlib.Path:
        """Write a service file: ``exec_`` plus extra raw TOML per section name."""
        text = f"[service]\nexec = {json.dumps(exec_)}\n"
        text += sections.pop("service", "")
        for section, body in sections.items():
            text += f"\n[{section}]\n{textwrap.dedent(body)}"
        return self.write(name, text)

    # -- process -----------------------------------------------------------

    def start(self, *extra: str, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
        environment = dict(os.environ, ZINIT_LOG_LEVEL="debug")
        environment.update(env or {})
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    PYTHON,
                    ZINIT_PY,
                    "server",
                    "--config-dir",
                    str(self.config_dir),
                    "--socket",
                    self.socket,
                    *extra,
                ],
                stdout=out,
                stderr=err,
                env=environment,
            )
        if wait:
            wait_until(self._answers, timeout=30, what="the daemon's socket")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with zinit.ZinitClient.connect_unix(self.socket, timeout=5) as client:
                return bool(client.ping())
        except (zinit.ZinitError, OSError):
            return False

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM the daemon (ordered shutdown) and wait; kill whatever it left."""
        if self.proc is None:
            return None
        pid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._kill_leftovers(pid)
        return self.proc.returncode

    @staticmethod
    def _kill_leftovers(daemon_pid: int) -> None:
        """Safety net: end processes tagged by this daemon (only those, by pid)."""
        for process in psutil.process_iter(["pid"]):
            try:
                env = process.environ()
            except (psutil.Error, OSError):
                continue
            if env.get("ZINIT_SERVER_PID") == str(daemon_pid):
                try:
                    process.kill()
                except psutil.Error:
                    pass

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- talking to it -----------------------------------------------------

    def client(self) -> zinit.ZinitClient:
        return zinit.ZinitClient.connect_unix(self.socket, timeout=60)

    def call(self, method: str, **params: Any) -> Any:
        with self.client() as client:
            return getattr(client, method)(**params)

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, ZINIT_PY, "--socket", self.socket, *args],
            check=False,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.call("status", name=name)

    def wait_state(self, name: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            unit = self.status(name)
            return unit if unit["state"] in states else None

        try:
            return wait_until(reached, timeout=timeout, what=f"{name} to be {'/'.join(states)}")
        except AssertionError:
            raise AssertionError(
                f"{name} is {self.status(name)} after {timeout}s, wanted {states}"
            ) from None

    def wait_log(self, name: str, text: str, timeout: float = 20) -> list[str]:
        def found() -> list[str] | None:
            lines = [entry["line"] for entry in self.call("logs", name=name)]
            return lines if any(text in line for line in lines) else None

        return wait_until(found, timeout=timeout, what=f"{text!r} in the logs of {name}")


def _cgroup_roots() -> set[str]:
    """zinit-* directories in the daemon's cgroup v2 mount, if there is one."""
    own = zinit._own_cgroup_dir()
    if own is None:
        return set()
    return {os.path.join(own, e) for e in os.listdir(own) if e.startswith("zinit-")}


@pytest.fixture(autouse=True, scope="session")
def _tidy_cgroups() -> Any:
    """Remove the empty cgroup directories that daemons killed by tests leave behind."""
    before = _cgroup_roots()
    yield
    for root in _cgroup_roots() - before:
        zinit._Cgroups.remove_tree(root)  # rmdir: only empty directories go


@pytest.fixture
def daemon(tmp_path: pathlib.Path) -> Any:
    """A Daemon object (not started: write configs, then call .start())."""
    instance = Daemon(tmp_path)
    yield instance
    instance.stop()


@pytest.fixture
def python() -> str:
    return PYTHON
