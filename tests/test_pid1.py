"""zinit-pid1 as a real PID 1, in a new PID namespace (``unshare --pid --fork``).

These need root and a working ``unshare``; CI runs as root.  Each test starts
the shim inside its own namespace, drives the daemon through its socket from
outside, and checks what happened inside by walking the namespace's process
tree from the host with psutil.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import textwrap
import time

import psutil
import pytest
from conftest import PYTHON, ZINIT_PY, wait_until

import zinit


def _unshare_works() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a PID namespace"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare --pid fails here: {probe.stderr.decode().strip()}"
    return None


pytestmark = pytest.mark.skipif(_unshare_works() is not None, reason=str(_unshare_works()))


class Shim:
    """zinit-pid1 running as PID 1 of a fresh PID namespace."""

    def __init__(
        self,
        base: pathlib.Path,
        *,
        container: bool = True,
        env: dict | None = None,
        namespace: bool = True,
    ):
        self.base = base
        self.services = base / "services"
        self.system = base / "system"
        self.services.mkdir()
        self.system.mkdir()
        self.socket = str(base / "zinit.sock")
        self.output = base / "shim.log"
        self.container = container
        self.namespace = namespace  # False: an ordinary child of the test, not a PID 1
        self.env = dict(os.environ, ZINIT_LOG_LEVEL="debug", **(env or {}))
        self.proc: subprocess.Popen | None = None

    def write(self, directory: pathlib.Path, name: str, text: str) -> None:
        (directory / f"{name}.toml").write_text(textwrap.dedent(text))

    def start(self, *, until_it_answers: bool = True) -> None:
        argv = ["unshare", "--pid", "--fork", "--mount-proc"] if self.namespace else []
        argv += [
            PYTHON,
            ZINIT_PY,
            "pid1",
            "--config-dir",
            str(self.services),
            "--socket",
            self.socket,
        ]
        argv += ["--container"] if self.container else ["--system-dir", str(self.system)]
        with open(self.output, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=self.env)
        if until_it_answers:
            wait_until(self.answers, timeout=30, what="the daemon inside the namespace")

    def answers(self) -> bool:
        try:
            with zinit.ZinitClient.connect_unix(self.socket, timeout=5) as client:
                return bool(client.ping())
        except (zinit.ZinitError, OSError):
            return False

    def client(self) -> zinit.ZinitClient:
        return zinit.ZinitClient.connect_unix(self.socket, timeout=60)

    @property
    def init(self) -> psutil.Process:
        """The shim: PID 1 inside, the only child of unshare outside."""
        return wait_until(lambda: next(iter(psutil.Process(self.proc.pid).children()), None))

    def server_pid(self) -> int:
        with self.client() as client:
            return client.ping()["pid"]  # a pid inside the namespace

    def processes(self) -> list[psutil.Process]:
        return self.init.children(recursive=True)

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.init.send_signal(signal.SIGKILL)  # PID 1 dies: the kernel ends the namespace
            except psutil.Error:
                pass
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def shim(tmp_path):
    instances = []

    def make(**kwargs) -> Shim:
        instance = Shim(tmp_path, **kwargs)
        instances.append(instance)
        return instance

    yield make
    for instance in instances:
        instance.cleanup()


def _states(instance: Shim) -> dict[str, str]:
    with instance.client() as client:
        return {unit["name"]: unit["state"] for unit in client.list()}


def test_issue_4_no_zombies_from_double_forking_grandchildren(shim):
    """A service that keeps double-forking short-lived grandchildren leaves no zombie behind."""
    instance = shim()
    instance.write(
        instance.services,
        "forker",
        """
        [service]
        exec = "sh -c 'while true; do sh -c \\"sleep 0.05 &\\" ; sleep 0.05; done'"
    """,
    )
    instance.start()
    wait_until(lambda: _states(instance).get("forker") == "Running", what="forker Running")
    seen_twice: set[int] = set()
    previous: set[int] = set()
    for _ in range(20):
        zombies = {p.pid for p in instance.processes() if _status(p) == psutil.STATUS_ZOMBIE}
        seen_twice |= zombies & previous
        previous = zombies
        time.sleep(0.25)  # sampling interval: a zombie seen across samples was never reaped
    assert not seen_twice, f"zombies not reaped: {seen_twice}"
    assert "forker" in instance.log()


def _status(process: psutil.Process) -> str:
    try:
        return process.status()
    except psutil.Error:
        return "gone"


def test_issue_4_sigterm_gives_ordered_shutdown_and_exit_0(shim):
    """SIGTERM to the container's PID 1 stops dependents first, then exits 0."""
    instance = shim()
    instance.write(instance.services, "db", '[service]\nexec = "sleep 1000"\n')
    instance.write(
        instance.services,
        "app",
        """
        [service]
        exec = "sleep 1000"
        [dependencies]
        requires = ["db"]
    """,
    )
    instance.start()
    wait_until(lambda: _states(instance) == {"app": "Running", "db": "Running"})
    started = time.monotonic()
    instance.init.send_signal(signal.SIGTERM)
    assert instance.wait(60) == 0
    elapsed = time.monotonic() - started
    log = instance.log()
    assert log.index("app: Running -> Stopping") < log.index("app: Stopping -> Exited")
    assert log.index("app: Stopping -> Exited") < log.index("db: Running -> Stopping")
    assert "exiting with status 0" in log
    assert elapsed < 30, f"shutdown took {elapsed:.1f}s"


def test_issue_4_killed_server_is_restarted_without_duplicate_services(shim):
    """After SIGKILL of zinit-server, the shim restarts it and each service runs exactly once."""
    instance = shim()
    marker = "31415926"
    instance.write(instance.services, "one", f'[service]\nexec = "sleep {marker}"\n')
    instance.start()
    wait_until(lambda: _states(instance).get("one") == "Running")
    server = next(p for p in instance.init.children() if "server" in " ".join(p.cmdline()))
    server.send_signal(signal.SIGKILL)
    wait_until(lambda: not server.is_running() or _status(server) == psutil.STATUS_ZOMBIE)
    wait_until(instance.answers, timeout=30, what="the restarted daemon")
    wait_until(lambda: _states(instance).get("one") == "Running", timeout=30)

    def sleepers() -> list[psutil.Process]:
        return [
            p
            for p in instance.processes()
            if _status(p) != psutil.STATUS_ZOMBIE and marker in " ".join(_cmdline(p))
        ]

    wait_until(lambda: len(sleepers()) == 1, timeout=30, what="exactly one copy of the service")
    assert "restarting it" in instance.log()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_issue_4_critical_failure_ends_container_with_its_code(shim):
    """A critical service that fails for good shuts down and exits with its exit code."""
    instance = shim()
    instance.write(instance.services, "other", '[service]\nexec = "sleep 1000"\n')
    instance.write(
        instance.services,
        "vital",
        """
        [service]
        exec = "sh -c 'sleep 1; exit 7'"
        critical = true
        [lifecycle]
        restart = "never"
    """,
    )
    instance.start()
    assert instance.wait(60) == 7
    log = instance.log()
    assert "critical unit vital failed" in log
    assert "other: Running -> Stopping" in log


def test_a_critical_program_not_found_ends_the_container_with_127(shim):
    """As a shell says "command not found": 127 (and 126 for one that cannot be run)."""
    instance = shim()
    instance.write(
        instance.services, "vital", '[service]\nexec = "/nonexistent/prog"\ncritical = true\n'
    )
    instance.start(until_it_answers=False)  # it may be gone before it could answer
    assert instance.wait(60) == 127
    assert "critical unit vital failed" in instance.log()


def test_a_critical_program_gone_after_a_run_ends_the_container_with_127(shim):
    """The failure that ends it is the spawn's, not the earlier run's exit code."""
    instance = shim()
    script = instance.base / "once.sh"
    script.write_text('#!/bin/sh\nrm -- "$0"\nexit 3\n')
    script.chmod(0o755)
    instance.write(
        instance.services,
        "vital",
        f'[service]\nexec = "{script}"\ncritical = true\n'
        '[lifecycle]\nrestart = "always"\nrestart_delay_ms = 100\n',
    )
    instance.start(until_it_answers=False)
    assert instance.wait(60) == 127
    assert "not found" in instance.log()


@pytest.mark.parametrize(
    ("signum", "action"), [(signal.SIGTERM, "poweroff"), (signal.SIGINT, "reboot")]
)
def test_issue_4_vm_mode_shuts_down_then_names_the_action(shim, signum, action):
    """VM mode: system units load first (class system), user units stop before system ones,
    then the shim would call reboot(2); the dry-run switch makes it say which action."""
    instance = shim(container=False, env={"ZINIT_PID1_DRY_RUN": "1"})
    instance.write(instance.system, "sysd", '[service]\nexec = "sleep 1000"\n')
    instance.write(instance.services, "userd", '[service]\nexec = "sleep 1000"\n')
    instance.start()
    wait_until(lambda: _states(instance) == {"sysd": "Running", "userd": "Running"})
    with instance.client() as client:
        assert client.status("sysd")["class"] == "system"
    instance.init.send_signal(signum)
    assert instance.wait(60) == 0
    log = instance.log()
    assert log.index("userd: Stopping -> Exited") < log.index("sysd: Running -> Stopping")
    assert f"would {action} now" in log
    assert f"shutting down (shutdown on {signal.Signals(signum).name})" in log


def test_a_server_that_cannot_start_makes_the_container_exit(shim):
    """Three ends in a row within seconds of starting (here: a regular file where its
    socket goes): the shim gives up with the server's status instead of looping for ever."""
    instance = shim(container=True)
    pathlib.Path(instance.socket).write_text("not a socket\n")
    instance.start(until_it_answers=False)
    assert instance.wait(60) == 1
    log = instance.log()
    assert "exited with code 1, 3 times in a row within 5s of starting: giving up" in log, log


def test_vm_mode_not_run_as_pid_1_never_reboots(shim):
    """zinit-pid1 tried from a terminal (not PID 1, no --container): SIGTERM stops the units
    and exits; it never calls reboot(2) on the host.  The dry-run switch is only a safety
    net here: the refusal comes before it."""
    instance = shim(container=False, namespace=False, env={"ZINIT_PID1_DRY_RUN": "1"})
    instance.write(instance.services, "userd", '[service]\nexec = "sleep 1000"\n')
    instance.start()
    wait_until(lambda: _states(instance) == {"userd": "Running"})
    instance.proc.send_signal(signal.SIGTERM)
    assert instance.wait(60) == 0
    log = instance.log()
    assert "not PID 1: no poweroff; exiting with status 0" in log, log
    assert "would poweroff" not in log


def test_issue_4_poweroff_command_reaches_the_shim(shim):
    """`zinit poweroff` goes through the daemon to the shim, which shuts down and powers off."""
    instance = shim(container=False, env={"ZINIT_PID1_DRY_RUN": "1"})
    instance.write(instance.services, "userd", '[service]\nexec = "sleep 1000"\n')
    instance.start()
    result = subprocess.run(
        [PYTHON, ZINIT_PY, "--socket", instance.socket, "poweroff"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert instance.wait(60) == 0
    assert "would poweroff now" in instance.log()


def test_container_mode_loads_the_image_directory_whoever_runs_it(monkeypatch):
    """--container without --config-dir names /etc/zinit/services to the server, so that a
    non-root USER (whose own default is under $HOME) loads it too; ZINIT_CONFIG_DIR wins."""
    monkeypatch.delenv("ZINIT_CONFIG_DIR", raising=False)
    shim = zinit._Pid1(zinit._pid1_parser().parse_args(["--container"]))
    assert shim.server_argv[-2:] == ["--config-dir", "/etc/zinit/services"]
    monkeypatch.setenv("ZINIT_CONFIG_DIR", "/srv/units")
    shim = zinit._Pid1(zinit._pid1_parser().parse_args(["--container"]))
    assert "--config-dir" not in shim.server_argv  # the server reads the variable itself
