"""Health checks: http, tcp and exec probes gate Starting → Running and restart on failure.

Real daemon, real children (``python -m http.server`` on 127.0.0.1), real probes.
"""

import os
import shlex
import signal
import socket
import textwrap

import psutil
import pytest
from conftest import PYTHON, pid_alive, wait_until

FAST_STOP = "stop_timeout_ms = 1000\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_server(port: int, directory) -> str:
    return shlex.join(
        [
            PYTHON,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
            str(port),
        ]
    )


def tcp_listener(port: int) -> str:
    code = textwrap.dedent(
        f"""
        import socket
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", {port}))
        server.listen(16)
        while True:
            connection, _ = server.accept()
            connection.close()
        """
    )
    return shlex.join([PYTHON, "-c", code])


def history(daemon, name):
    return daemon.call("why", name=name)["history"]


def assert_started_via_starting(daemon, name):
    steps = [(entry["from"], entry["to"]) for entry in history(daemon, name)]
    assert ("Starting", "Running") in steps, steps
    assert steps.index(("Starting", "Running")) > 0, steps


# ---- passing checks ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "tcp", "exec"])
def test_passing_check_goes_starting_then_running(daemon, tmp_path, kind):
    port = free_port()
    marker = tmp_path / "ready"
    marker.write_text("ok")
    if kind == "http":
        exec_ = http_server(port, tmp_path)
        health = f'type = "http"\nendpoint = "http://127.0.0.1:{port}/ready"\n'
    elif kind == "tcp":
        exec_ = tcp_listener(port)
        health = f'type = "tcp"\nendpoint = "127.0.0.1:{port}"\n'
    else:
        exec_ = "sleep 1000"
        health = f'type = "exec"\ncommand = "test -f {marker}"\n'
    daemon.service(
        "svc",
        exec_,
        lifecycle=FAST_STOP,
        health=health + "interval_ms = 200\ntimeout_ms = 1000\n",
    )
    daemon.start()
    unit = daemon.wait_state("svc", "Running", "Failed", timeout=30)
    assert unit["state"] == "Running", unit
    assert unit["health"] == "healthy", unit
    assert "health check passed" in unit["reason"], unit["reason"]
    assert_started_via_starting(daemon, "svc")


# ---- failing at start: start timeout -----------------------------------------


def test_failing_check_at_start_times_out_to_failed(daemon, tmp_path):
    missing = tmp_path / "never-created"
    daemon.service(
        "svc",
        "sleep 1000",
        lifecycle='restart = "never"\nstart_timeout_ms = 1500\n' + FAST_STOP,
        health=f'type = "exec"\ncommand = "test -f {missing}"\ninterval_ms = 200\n',
    )
    daemon.start()
    pid = daemon.wait_state("svc", "Starting")["pid"]
    unit = daemon.wait_state("svc", "Failed", "Running", "Exited", timeout=30)
    assert unit["state"] == "Failed", unit
    assert "timed out" in unit["reason"] and "1.5s" in unit["reason"], unit["reason"]
    assert unit["pid"] is None
    assert not pid_alive(pid)


def test_failing_check_at_start_times_out_and_restarts(daemon, tmp_path):
    missing = tmp_path / "never-created"
    daemon.service(
        "svc",
        "sleep 1000",
        lifecycle=(
            'restart = "always"\nstart_timeout_ms = 1500\nrestart_delay_ms = 100\n' + FAST_STOP
        ),
        health=f'type = "exec"\ncommand = "test -f {missing}"\ninterval_ms = 200\n',
    )
    daemon.start()
    first = daemon.wait_state("svc", "Starting")["pid"]
    unit = wait_until(
        lambda: (
            (u := daemon.status("svc"))["restarts"] >= 1 and u["pid"] not in (None, first) and u
        ),
        timeout=30,
        what="a restart after the start timeout",
    )
    assert unit["state"] == "Starting", unit
    reasons = [e["reason"] for e in history(daemon, "svc") if e["from"] == "Stopping"]
    assert any("start timed out" in reason for reason in reasons), history(daemon, "svc")


# ---- failing later: restart --------------------------------------------------


def test_check_failing_later_restarts_the_service(daemon, tmp_path):
    marker = tmp_path / "healthy"
    marker.write_text("ok")
    daemon.service(
        "svc",
        "sleep 1000",
        lifecycle='restart = "always"\nrestart_delay_ms = 100\n' + FAST_STOP,
        health=(f'type = "exec"\ncommand = "test -f {marker}"\ninterval_ms = 200\nretries = 2\n'),
    )
    daemon.start()
    unit = daemon.wait_state("svc", "Running", timeout=30)
    pid, restarts = unit["pid"], unit["restarts"]
    assert unit["health"] == "healthy"
    marker.unlink()
    wait_until(
        lambda: (u := daemon.status("svc"))["pid"] not in (None, pid) and u["restarts"] > restarts,
        timeout=30,
        what="a restart after the check started failing",
    )
    assert not pid_alive(pid)
    assert any("unhealthy" in e["reason"] for e in history(daemon, "svc")), history(daemon, "svc")
    marker.write_text("ok")
    unit = daemon.wait_state("svc", "Running", timeout=30)
    assert unit["health"] == "healthy"
    assert unit["pid"] != pid


def test_a_check_failing_fewer_than_retries_times_shows_as_failing(daemon, tmp_path):
    """Between the first failed check and the last allowed one the service is still
    Running, but its status says the checks fail, and says so no more once one passes."""
    marker = tmp_path / "healthy"
    marker.write_text("ok")
    daemon.service(
        "svc",
        "sleep 1000",
        health=f'type = "exec"\ncommand = "test -f {marker}"\ninterval_ms = 100\nretries = 1000\n',
    )
    daemon.start()
    pid = daemon.wait_state("svc", "Running", timeout=30)["pid"]
    marker.unlink()
    unit = wait_until(
        lambda: (u := daemon.status("svc"))["health"] == "failing" and u,
        timeout=30,
        what="the health to show failing",
    )
    assert (unit["state"], unit["pid"]) == ("Running", pid), unit
    assert unit["reason"].startswith("health check failed "), unit
    assert " of 1000 times in a row (" in unit["reason"], unit
    marker.write_text("ok")
    unit = wait_until(
        lambda: (u := daemon.status("svc"))["health"] == "healthy" and u,
        timeout=30,
        what="the health to pass again",
    )
    assert unit["reason"].startswith("health check passed again ("), unit
    assert (unit["state"], unit["pid"], unit["restarts"]) == ("Running", pid, 0), unit


def test_health_is_unknown_before_a_result_and_unhealthy_while_a_restart_waits(daemon, tmp_path):
    """null means no [health] table: a unit with one says unknown before any result, and
    unhealthy while it waits to restart for having failed its checks."""
    marker = tmp_path / "healthy"
    marker.write_text("ok")
    check = f'type = "exec"\ncommand = "test -f {marker}"\ninterval_ms = 100\nretries = 1\n'
    daemon.service(
        "svc",
        "sleep 1000",
        lifecycle='restart = "always"\nrestart_delay_ms = 60000\n' + FAST_STOP,
        health=check,
    )
    daemon.service("later", "sleep 1000", service='status = "stop"\n', health=check)
    daemon.service("plain", "sleep 1000")
    daemon.start()
    daemon.wait_state("svc", "Running", timeout=30)
    assert daemon.status("later")["health"] == "unknown"
    assert daemon.wait_state("plain", "Running")["health"] is None
    marker.unlink()
    waiting = wait_until(
        lambda: (u := daemon.status("svc"))["next_restart_s"] is not None and u,
        timeout=30,
        what="svc to wait for its restart",
    )
    assert waiting["health"] == "unhealthy", waiting


def test_http_check_failing_later_restarts_the_service(daemon, tmp_path):
    port = free_port()
    page = tmp_path / "health"
    page.write_text("ok")
    daemon.service(
        "web",
        http_server(port, tmp_path),
        lifecycle='restart = "always"\nrestart_delay_ms = 100\n' + FAST_STOP,
        health=(
            f'type = "http"\nendpoint = "http://127.0.0.1:{port}/health"\n'
            "interval_ms = 200\nretries = 2\ntimeout_ms = 1000\n"
        ),
    )
    daemon.start()
    unit = daemon.wait_state("web", "Running", timeout=30)
    pid, restarts = unit["pid"], unit["restarts"]
    page.unlink()  # the server now answers 404
    wait_until(
        lambda: (u := daemon.status("web"))["pid"] not in (None, pid) and u["restarts"] > restarts,
        timeout=30,
        what="a restart after GET /health turned 404",
    )
    page.write_text("ok")
    unit = daemon.wait_state("web", "Running", timeout=30)
    assert unit["health"] == "healthy"
    assert unit["restarts"] > restarts


# ---- dependencies wait for health ---------------------------------------------


def test_dependent_is_blocked_until_the_check_passes(daemon, tmp_path):
    marker = tmp_path / "db-ready"
    daemon.service(
        "db",
        "sleep 1000",
        lifecycle="start_timeout_ms = 60000\n" + FAST_STOP,
        health=f'type = "exec"\ncommand = "test -f {marker}"\ninterval_ms = 200\n',
    )
    daemon.service("app", "sleep 1000", lifecycle=FAST_STOP, dependencies='requires = ["db"]\n')
    daemon.start()
    daemon.wait_state("db", "Starting")
    # Give the probe a few failed rounds so that a gate ignoring health would have let app go.
    wait_until(lambda: "last:" in daemon.status("db")["reason"], what="a failed probe on db")
    app = daemon.wait_state("app", "Blocked")
    assert "db" in app["reason"], app["reason"]
    assert app["pid"] is None
    assert daemon.status("db")["state"] == "Starting"
    assert daemon.status("app")["state"] == "Blocked"
    marker.write_text("ok")
    daemon.wait_state("db", "Running", timeout=30)
    app = daemon.wait_state("app", "Running", timeout=30)
    assert pid_alive(app["pid"])


# ---- a hanging exec probe is bounded -------------------------------------------


def test_hanging_exec_probe_is_bounded_and_its_group_killed(daemon):
    marker = "987.654"  # an unusual duration marks the probe's sleep
    daemon.service(
        "svc",
        "sleep 1000",
        lifecycle='restart = "never"\nstart_timeout_ms = 2500\n' + FAST_STOP,
        health=(
            f'type = "exec"\ncommand = "sh -c \'sleep {marker}\'"\n'
            "interval_ms = 200\ntimeout_ms = 300\n"
        ),
    )
    daemon.start()
    seen: set[int] = set()

    def probes() -> list[int]:
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            if marker in " ".join(process.info["cmdline"] or []) and pid_alive(process.pid):
                found.append(process.pid)
        seen.update(found)
        return found

    try:
        daemon.wait_state("svc", "Starting")
        wait_until(
            lambda: probes() is not None and "timed out" in daemon.status("svc")["reason"],
            timeout=30,
            what="a probe timing out",
        )
        assert "0.3s" in daemon.status("svc")["reason"]
        unit = daemon.wait_state("svc", "Failed", "Running", timeout=30)
        assert unit["state"] == "Failed", unit
        assert seen, "never saw the probe's sleep running"
        wait_until(lambda: not probes(), timeout=15, what="no probe process left")
        assert not [pid for pid in seen if pid_alive(pid)]
    finally:
        for pid in seen:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(os.geteuid() != 0, reason="user= needs the daemon to run as root")
def test_exec_check_runs_as_the_service_runs(daemon):
    """The check has the unit's user, env (PATH included) and dir, not the daemon's."""
    import pathlib
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    top = pathlib.Path(tempfile.mkdtemp(prefix="zinit-check-"))  # pytest's tmp is root-only
    bin_dir, work_dir, report = top / "bin", top / "work", top / "report"
    for directory in (bin_dir, work_dir):
        directory.mkdir()
    for path in (top, bin_dir, work_dir):
        path.chmod(0o777)
    try:
        _check_identity(daemon, nobody, bin_dir, work_dir, report)
    finally:
        shutil.rmtree(top)


def _check_identity(daemon, nobody, bin_dir, work_dir, report):
    check = bin_dir / "check-me"  # found only on the unit's own PATH
    check.write_text(f'#!/bin/sh\necho "$(id -un) $FOO $(pwd) $ZINIT_SERVICE" > {report}\n')
    check.chmod(0o755)
    daemon.service(
        "svc",
        "sleep 1000",
        service=(
            f'user = "nobody"\ndir = "{work_dir}"\n'
            f'env = {{ FOO = "bar", PATH = "{bin_dir}:/usr/bin:/bin" }}\n'
        ),
        lifecycle=FAST_STOP,
        health='type = "exec"\ncommand = "check-me"\ninterval_ms = 200\n',
    )
    daemon.start()
    assert daemon.wait_state("svc", "Running", "Failed")["state"] == "Running"
    assert report.read_text().split() == [nobody.pw_name, "bar", str(work_dir), "svc"]
    assert report.stat().st_uid == nobody.pw_uid
