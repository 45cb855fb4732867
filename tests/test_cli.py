"""The zinit CLI as a user runs it: a subprocess against a real daemon (SPEC section 8).

Each command of the seed (but xinet and tui) runs and exits 0 on good input; --json
works before and after the command; exit codes are 0, 1 (daemon said no), 2 (usage)
and 3 (no daemon); output without a terminal, or with NO_COLOR, has no escape codes.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import signal
import subprocess
import threading
import time

import psutil
import pytest
from conftest import PYTHON, ZINIT_PY, pid_alive, wait_until

import zinit

SEVEN = {"Inactive", "Blocked", "Starting", "Running", "Stopping", "Exited", "Failed"}
UNIT_KEYS = {
    "name", "kind", "state", "pid", "class", "status", "restarts", "exit_code", "health",
    "uptime_s", "reason",
}  # fmt: skip
FAST_STOP = "stop_timeout_ms = 2000\n"
ESC = "\x1b"


@pytest.fixture
def running(daemon):
    """A daemon with a long-running 'sleeper', a oneshot 'job' and a stopped 'idle'."""
    daemon.service("sleeper", "sleep 1000", lifecycle=FAST_STOP)
    daemon.service("job", "sh -c 'echo hello from job'", service="oneshot = true\n")
    daemon.service("idle", "sleep 1000", service='status = "stop"\n', lifecycle=FAST_STOP)
    daemon.start()
    daemon.wait_state("sleeper", "Running")
    daemon.wait_state("job", "Exited")
    return daemon


def ok(result: subprocess.CompletedProcess) -> str:
    """Assert a CLI run exited 0 and return its stdout."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def as_json(result: subprocess.CompletedProcess):
    return json.loads(ok(result))


# -- every command ------------------------------------------------------------


def test_times_shown_carry_the_date_when_it_is_not_today():
    """logs, events and why show the time of day, and the date before it for older lines."""
    now = time.time()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", zinit._format_time(now))
    days_ago = now - 3 * 86400
    expected = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(days_ago))
    assert zinit._format_time(days_ago).startswith(expected + ".")


def test_list(running):
    out = ok(running.cli("list"))
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "KIND", "STATE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"idle", "job", "sleeper"}
    assert rows["sleeper"][2] == "Running"
    assert rows["job"][2] == "Exited"
    assert rows["idle"][2] == "Inactive"


def test_status(running):
    pid = running.status("sleeper")["pid"]
    out = ok(running.cli("status", "sleeper"))
    assert "sleeper" in out
    assert "Running" in out
    assert str(pid) in out


def test_start_stop_restart(running):
    ok(running.cli("start", "idle"))
    pid = running.wait_state("idle", "Running")["pid"]
    ok(running.cli("restart", "idle"))
    new_pid = running.wait_state("idle", "Running")["pid"]
    assert new_pid != pid
    ok(running.cli("stop", "idle"))
    assert running.status("idle")["state"] == "Exited"
    assert not pid_alive(new_pid)


def test_start_wait_shows_progress_until_running(running, tmp_path):
    """start --wait prints each state change (Starting, then Running) and exits 0 when up."""
    marker = tmp_path / "ready"
    running.service(
        "slow", f"sh -c 'sleep 0.5; touch {marker}; exec sleep 1000'",
        service='status = "stop"\n', lifecycle=FAST_STOP,
        health=f'type = "exec"\ncommand = "test -e {marker}"\ninterval_ms = 100\n',
    )  # fmt: skip
    ok(running.cli("reload"))
    out = ok(running.cli("start", "--wait", "slow"))
    lines = out.strip().splitlines()
    assert any("slow" in line and "-> Starting" in line for line in lines), out
    assert any("slow" in line and "-> Running" in line for line in lines), out
    assert lines[-1] == "slow is Running"
    assert running.status("slow")["state"] == "Running"


def test_issue_2_start_wait_shows_progress_of_a_fast_unit(running):
    """start --wait shows the state changes even when the unit is up before the first status
    check (SPEC 8: `start --wait` showing progress); the events already received are not
    dropped."""
    out = ok(running.cli("start", "--wait", "idle"))
    assert "idle" in out and "-> Running" in out, out
    assert out.strip().splitlines()[-1] == "idle is Running"


def test_issue_2_start_wait_judges_the_new_attempt_not_a_stale_state(running):
    """start --wait exits 0 for a unit that comes up, every time: the state the unit was in
    before the start (Inactive, Exited) is not taken for the outcome of the start."""
    results = []
    for _ in range(15):
        result = running.cli("start", "--wait", "idle")
        results.append((result.returncode, result.stderr.strip()))
        assert running.status("idle")["state"] == "Running"
        ok(running.cli("stop", "idle"))
    assert results == [(0, "")] * 15, results


def test_start_wait_shows_its_units_only_and_keeps_its_timeout(running, tmp_path):
    """Progress names the unit and what it depends on, not a unit flapping elsewhere; and
    --timeout bounds the whole wait, however many events arrive meanwhile."""
    running.service(
        "flapper", "sh -c 'sleep 0.05; exit 1'",
        lifecycle='restart = "always"\nrestart_delay_ms = 10\nrestart_delay_max_ms = 10\n',
    )  # fmt: skip
    running.service("base", "sleep 1000", service='status = "stop"\n', lifecycle=FAST_STOP)
    running.service(
        "never", "sleep 1000", service='status = "stop"\n', lifecycle=FAST_STOP,
        health='type = "exec"\ncommand = "false"\ninterval_ms = 50\n',
        dependencies='requires = ["base"]\n',
    )  # fmt: skip
    ok(running.cli("reload"))
    # Under the old per-read timer, the flapper's events kept this wait alive forever.
    result = running.cli("start", "--wait", "--timeout", "2", "never", timeout=60)
    assert result.returncode == 1, result
    assert "never is not up after 2s" in result.stderr
    assert "base" in result.stdout and "never" in result.stdout, result.stdout
    assert "flapper" not in result.stdout, result.stdout


def test_start_wait_oneshot_success(running):
    """start --wait on a oneshot exits 0 once it has Exited with success."""
    out = ok(running.cli("start", "--wait", "job"))
    assert "job is Exited" in out


def test_start_wait_fails_for_a_failing_unit(running):
    """start --wait exits 1, with the reason on stderr, for a unit that fails."""
    running.service(
        "crasher", "sh -c 'echo dying; exit 3'",
        service='status = "stop"\noneshot = true\n', lifecycle='restart = "never"\n',
    )  # fmt: skip
    ok(running.cli("reload"))
    result = running.cli("start", "--wait", "crasher")
    assert result.returncode == 1, result
    assert "crasher" in result.stderr
    assert "Failed" in result.stderr
    assert running.status("crasher")["state"] == "Failed"


def test_start_wait_fails_for_a_unit_that_cannot_spawn(running):
    """A program that does not exist fails to spawn: start --wait exits 1."""
    running.service(
        "ghost", "/nonexistent/program", service='status = "stop"\n',
        lifecycle='restart = "never"\n',
    )  # fmt: skip
    ok(running.cli("reload"))
    result = running.cli("start", "--wait", "ghost")
    assert result.returncode == 1, result
    assert "ghost" in result.stderr
    assert running.status("ghost")["state"] == "Failed"


def test_start_wait_waits_through_restarts_until_failed_for_good(running):
    """With restarts left, start --wait keeps waiting; it exits 1 once they are used up."""
    running.service(
        "flaky", "sh -c 'exit 4'", service='status = "stop"\noneshot = true\n',
        lifecycle='restart = "on-failure"\nmax_restarts = 2\nrestart_delay_ms = 50\n',
    )  # fmt: skip
    ok(running.cli("reload"))
    result = running.cli("start", "--wait", "flaky")
    assert result.returncode == 1, result
    unit = running.status("flaky")
    assert unit["state"] == "Failed"
    assert unit["restarts"] == 2
    assert unit["next_restart_s"] is None


def test_start_wait_fails_for_a_service_that_exits_right_after_starting(running):
    """Running at once (no health check) is not enough: it must stay up --settle seconds."""
    running.service(
        "flap", "sh -c 'echo flapping; exit 3'", service='status = "stop"\n',
        lifecycle='restart = "on-failure"\nmax_restarts = 4\nrestart_delay_ms = 200\n',
    )  # fmt: skip
    running.service("steady", "sleep 1000", service='status = "stop"\n')
    ok(running.cli("reload"))
    result = running.cli("start", "--wait", "--settle", "30", "flap", timeout=60)
    assert result.returncode == 1, result
    assert "zinit: flap did not stay up for 30s" in result.stderr, result.stderr
    assert "exited with code 3" in result.stderr, result.stderr
    out = ok(running.cli("start", "--wait", "--settle", "0.3", "steady"))
    assert out.strip().endswith("steady is Running"), out
    result = running.cli("start", "--settle", "1", "steady")
    assert result.returncode == 2 and "--settle only applies with --wait" in result.stderr


def test_start_wait_timeout_bounds_the_settle_window_too(running):
    """--timeout is the whole wait: a settle window longer than what is left is cut short."""
    running.service("steady", "sleep 1000", service='status = "stop"\n')
    ok(running.cli("reload"))
    result = running.cli("start", "--wait", "--timeout", "1.5", "--settle", "600", "steady")
    assert result.returncode == 1, result
    message = "zinit: steady had not been up 600s (--settle) when the 1.5s passed"
    assert message in result.stderr, result.stderr
    assert running.status("steady")["state"] == "Running"  # only the wait gave up


def test_restart_wait_timeout_bounds_a_slow_stop_too(running, tmp_path):
    """--timeout bounds every call of the wait: here the restart's own stop outlasts it."""
    once = tmp_path / "stubborn-once"  # only the first run ignores SIGTERM
    running.service(
        "stubborn",
        f"sh -c \"[ -e {once} ] || {{ touch {once}; trap '' TERM; }}; echo ready; sleep 1000\"",
        lifecycle="stop_timeout_ms = 60000\n",
    )
    ok(running.cli("reload"))
    pid = running.wait_state("stubborn", "Running")["pid"]
    running.wait_log("stubborn", "ready")
    result = running.cli(
        "restart", "--wait", "--timeout", "1.5", "--settle", "0", "stubborn", timeout=30
    )
    assert result.returncode == 1, result
    message = "zinit: stubborn is not up after 1.5s (the daemon had not answered yet)"
    assert message in result.stderr, result.stderr
    for child in psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]:
        child.kill()  # ours: it would hold the restart for its 60 s stop timeout
    assert running.wait_state("stubborn", "Running")["pid"] != pid


def test_restart_wait_returns_once_the_new_process_is_up(running):
    """restart --wait, as start --wait: progress, then 0 once up; 1 when it will not be."""
    old = running.status("sleeper")["pid"]
    out = ok(running.cli("restart", "--wait", "--settle", "0.2", "sleeper"))
    assert out.strip().endswith("sleeper is Running"), out
    unit = running.status("sleeper")
    assert unit["state"] == "Running" and unit["pid"] not in (None, old)
    running.service(
        "flap", "sh -c 'exit 3'", service='status = "stop"\n', lifecycle='restart = "never"\n'
    )
    ok(running.cli("reload"))
    result = running.cli("restart", "--wait", "--settle", "30", "flap", timeout=60)
    assert result.returncode == 1, result
    assert "flap" in result.stderr and "exited with code 3" in result.stderr, result.stderr
    result = running.cli("restart", "--timeout", "1", "sleeper")
    assert result.returncode == 2 and "--timeout only applies with --wait" in result.stderr


def test_kill(running):
    pid = running.status("sleeper")["pid"]
    ok(running.cli("kill", "sleeper", "SIGKILL"))
    wait_until(lambda: not pid_alive(pid), timeout=10, what="sleeper to die of SIGKILL")
    new_pid = running.wait_state("sleeper", "Running")["pid"]  # restart = always
    ok(running.cli("kill", "sleeper"))  # SIGTERM by default
    wait_until(lambda: not pid_alive(new_pid), timeout=10, what="sleeper to die of SIGTERM")
    for spelling, signum in (("-KILL", signal.SIGKILL), ("-RTMIN+3", signal.SIGRTMIN + 3)):
        unit = wait_until(
            lambda: (u := running.status("sleeper"))["state"] == "Running" and u["pid"] and u,
            what="sleeper running again",
        )
        ok(running.cli("kill", "sleeper", spelling, "--json"))  # as kill(1) writes it
        wait_until(
            lambda signum=signum: running.status("sleeper")["exit_code"] == -signum,
            what=f"{spelling} seen",
        )
        assert not pid_alive(unit["pid"])


def test_logs(running):
    out = ok(running.cli("logs", "job"))
    assert "hello from job" in out
    assert len(ok(running.cli("logs", "job", "-n", "1")).splitlines()) == 1
    assert ok(running.cli("logs", "job", "-n", "0")) == ""
    assert "hello from job" in ok(running.cli("logs"))  # all units


def test_logs_follow(running):
    """logs -f prints the recent lines, then keeps running until interrupted."""
    process = subprocess.Popen(
        [PYTHON, ZINIT_PY, "--socket", running.socket, "logs", "-f", "job"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = read_line(process, 30)
        assert "hello from job" in line
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(30)


def test_logs_follow_and_events_exit_3_when_the_daemon_goes_away(running):
    """A follower cannot end normally: losing the daemon is exit 3 with a message, so that
    a script can tell."""
    followers = [
        subprocess.Popen(
            [PYTHON, ZINIT_PY, "--socket", running.socket, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in (["logs", "-f", "job"], ["events"])
    ]
    try:
        assert "hello from job" in read_line(followers[0], 30)
        ok(running.cli("shutdown"))
        errors = []
        for process in followers:
            assert process.wait(30) == 3
            errors.append(process.stderr.read())
        assert "closed the connection" in errors[0], errors
        # events may have connected only after the daemon left: exit 3 all the same.
        assert "daemon" in errors[1], errors
    finally:
        for process in followers:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def _on_a_terminal(running, *args):
    """What the CLI writes to a terminal (a pty) for ``args``."""
    parent, child = pty.openpty()
    process = subprocess.Popen(
        [PYTHON, ZINIT_PY, "--socket", running.socket, *args],
        stdout=child, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(child)
    output = b""
    try:
        while chunk := os.read(parent, 4096):
            output += chunk
    except OSError:  # EIO: the other side closed
        pass
    finally:
        os.close(parent)
    assert process.wait(30) == 0
    return output


def test_logs_on_a_terminal_show_control_characters_escaped(running):
    """A service's escape sequences reach a terminal as text, not as commands (in logs and
    in why's recent output); piped, the line is left as it was."""
    running.service("painter", "printf 'a\\033]0;owned\\007b\\n'", service="oneshot = true\n")
    ok(running.cli("reload"))
    running.wait_state("painter", "Exited")
    for command in ("logs", "why"):
        output = _on_a_terminal(running, command, "painter")
        assert b"a\\x1b]0;owned\\x07b" in output, (command, output)
        assert b"\x1b]0" not in output, (command, output)
    piped = ok(running.cli("logs", "painter"))
    assert "| a\x1b]0;owned\x07b" in piped


def test_reasons_quoting_a_service_reach_a_terminal_escaped(running):
    """A health check's reason quotes what the service answered (here an HTTP reason phrase
    holding an escape sequence): status, why and list show it escaped on a terminal."""
    import shlex
    import socket as sockets
    import textwrap

    with sockets.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = textwrap.dedent(f"""
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen(8)
        while True:
            c, _ = s.accept(); c.recv(4096)
            c.sendall(b"HTTP/1.0 500 a\\x1b]0;owned\\x07b\\r\\nContent-Length: 0\\r\\n\\r\\n")
            c.close()
    """)
    running.service(
        "liar", shlex.join([PYTHON, "-c", server]),
        health=f'type = "http"\nendpoint = "http://127.0.0.1:{port}/"\ninterval_ms = 100\n',
        lifecycle="start_timeout_ms = 60000\n",
    )  # fmt: skip
    ok(running.cli("reload"))
    wait_until(lambda: "\x1b]0;owned" in running.status("liar")["reason"], what="the reason")
    for command in (("status", "liar"), ("why", "liar"), ("list",)):
        output = _on_a_terminal(running, *command)
        if command != ("list",):  # list cuts the reason to the terminal's width
            assert b"a\\x1b]0;owned\\x07b" in output, (command, output)
        assert b"liar" in output and b"\x1b]0" not in output, (command, output)


def test_why(running):
    out = ok(running.cli("why", "sleeper"))
    assert out.startswith("sleeper is Running")


def test_tree(running):
    running.service("web", "sleep 1000", dependencies='requires = ["sleeper"]\n')
    ok(running.cli("reload"))
    running.wait_state("web", "Running")
    out = ok(running.cli("tree", "web"))
    assert out.splitlines()[0].startswith("web")
    assert "sleeper" in out.splitlines()[1]
    everything = ok(running.cli("tree"))
    for name in ("web", "sleeper", "job", "idle"):
        assert name in everything


def test_tree_shows_every_unit_that_list_shows(running):
    """Units on a cycle that nothing else points at, and units whose file has an error."""
    running.service("cyc1", "sleep 1000", dependencies='requires = ["cyc2"]\n')
    running.service("cyc2", "sleep 1000", dependencies='requires = ["cyc1"]\n')
    running.write("broken", '[service]\nexec = "sleep 1000"\nbogus = 1\n')
    running.cli("reload")  # exits 1: broken.toml has an error
    lines = ok(running.cli("tree")).splitlines()
    listed = {unit["name"] for unit in running.call("list")}
    assert {"cyc1", "cyc2", "broken"} <= listed
    roots = {line.split()[0] for line in lines if not line.startswith((" ", "│", "├", "└"))}
    assert {"cyc1", "broken"} <= roots, lines
    assert any(line.startswith("broken (config error)") for line in lines), lines
    assert any("cyc1 (cycle)" in line for line in lines), lines
    assert ok(running.cli("tree", "broken")).startswith("broken (config error)")


def test_reload(running):
    running.service("fresh", "sleep 1000", lifecycle=FAST_STOP)
    out = ok(running.cli("reload"))
    assert "added: fresh" in out
    running.wait_state("fresh", "Running")


def test_add_service_from_file_stdin_and_text(running, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    source = incoming / "fromfile.toml"
    source.write_text('[service]\nexec = "sleep 1000"\n[lifecycle]\nstop_timeout_ms = 2000\n')
    out = ok(running.cli("add-service", str(source)))
    assert out.startswith(f"added fromfile ({running.config_dir}/fromfile.toml): Running: ")
    running.wait_state("fromfile", "Running")
    assert (running.config_dir / "fromfile.toml").exists()
    named = incoming / "draft.toml"  # the name the file declares wins over the file's own
    named.write_text('[service]\nname = "declared"\nexec = "true"\noneshot = true\n')
    out = ok(running.cli("add-service", str(named)))
    assert out.startswith(f"added declared ({running.config_dir}/declared.toml): "), out

    stdin_text = '[service]\nname = "fromstdin"\nexec = "true"\noneshot = true\n'
    ok(running.cli("add-service", "-", input=stdin_text))
    running.wait_state("fromstdin", "Exited")

    ok(running.cli("add-service", '[service]\nexec = "true"\noneshot = true\n', "--name", "txt"))
    running.wait_state("txt", "Exited")

    # Added, but it cannot run: the reply says so at once.
    out = ok(
        running.cli("add-service", '[service]\nexec = "/nonexistent/bin"\n', "--name", "nobin")
    )
    assert ": Failed: spawn failed: " in out and "/nonexistent/bin" in out, out


def test_add_service_names_the_source_in_its_errors(running, tmp_path):
    """Errors point at the user's file (or stdin), in file order; a path that does not
    exist says so; `key = value` text counts as TOML; the name hint mentions --name."""
    source = tmp_path / "bad.toml"
    source.write_text("[service]\nexec = 5\n[lifecycle]\nstop_timeout_ms = -1\n")
    result = running.cli("add-service", str(source))
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        f"zinit: {source}:2:8: service.exec: expected a string, got 5",
        f"zinit: {source}:4:19: lifecycle.stop_timeout_ms: expected an integer >= 0, got -1",
    ]
    result = running.cli("add-service", "-", "--name", "x", input="[service]\nexec = 5\n")
    assert result.stderr == "zinit: <stdin>:2:8: service.exec: expected a string, got 5\n"
    assert not (running.config_dir / "bad.toml").exists()

    result = running.cli("add-service", str(tmp_path / "nope.toml"))
    assert result.returncode == 2, result
    assert result.stderr == f"zinit: add-service: {tmp_path}/nope.toml: no such file\n"
    result = running.cli("add-service", str(tmp_path))
    assert result.returncode == 2, result
    assert "is a directory, not a unit file" in result.stderr
    result = running.cli("add-service", 'exec = "true"', "--name", "flat")
    assert result.returncode == 1, result
    assert "<text>:1:1: exec: a key outside any table: it belongs in [service]" in result.stderr
    result = running.cli("add-service", "-", input='[service]\nexec = "true"\n')
    assert result.returncode == 2 and "pass one (--name)" in result.stderr, result


def test_kill_a_target_and_start_with_a_bad_timeout(running):
    running.write("all", '[target]\n[dependencies]\nrequires = ["sleeper"]\n')
    ok(running.cli("reload"))
    running.wait_state("all", "Running")
    result = running.cli("kill", "all")
    assert result.returncode == 1, result
    assert result.stderr == "zinit: 'all' is a target: it has no process to signal\n"
    result = running.cli("start", "--wait", "--timeout", "-1", "idle")
    assert result.returncode == 2, result
    assert result.stderr == "zinit: start: --timeout: expected seconds > 0, got -1\n"
    assert running.status("idle")["state"] == "Inactive"


def test_remove_service(running):
    pid = running.status("sleeper")["pid"]
    out = ok(running.cli("remove-service", "sleeper"))
    assert "sleeper" in out
    assert not (running.config_dir / "sleeper.toml").exists()
    assert not pid_alive(pid)
    assert running.cli("status", "sleeper").returncode == 1


def test_start_all_stop_all_delete_all(running):
    out = ok(running.cli("start-all"))
    assert "idle" in out and "sleeper" in out
    running.wait_state("idle", "Running")
    out = ok(running.cli("stop-all"))
    assert "idle" in out
    for unit in running.call("list"):
        assert unit["pid"] is None, unit
    out = ok(running.cli("delete-all"))
    assert "sleeper" in out
    assert running.call("list") == []
    assert list(running.config_dir.glob("*.toml")) == []


def test_start_all_names_what_did_not_start_and_stop_all_what_it_stopped(running):
    """start-all exits 1 naming a unit it could not spawn; stop-all lists only the units
    there was something to stop."""
    running.service("nobin", "/nonexistent/prog", service='status = "stop"\n')
    running.service(
        "orphan", "sleep 1000", service='status = "stop"\n',
        dependencies='requires = ["undefined"]\n',
    )  # fmt: skip
    running.service(
        "rival", "sleep 1000", service='status = "stop"\n', dependencies='conflicts = ["idle"]\n'
    )
    ok(running.cli("reload"))
    result = running.cli("start-all")
    assert result.returncode == 1, result
    assert "zinit: start-all: 'nobin' did not start: spawn failed: executable" in result.stderr
    assert "zinit: start-all: 'orphan' did not start: requires 'undefined'" in result.stderr
    started, *rest = result.stdout.strip().splitlines()
    assert started == "started: idle, job, sleeper", result.stdout
    assert rest == ["rival: not started: conflicts with 'idle', which is starting with it"]
    running.service("rival", "sleep 1000", service='status = "stop"\n')  # no conflict now
    running.service("orphan", "sleep 1000", service='status = "stop"\n')
    ok(running.cli("reload"))
    assert running.cli("--json", "start-all").returncode == 1
    running.wait_state("idle", "Running")
    ok(running.cli("stop", "idle"))
    stopped = as_json(running.cli("--json", "stop-all"))["stopped"]
    # idle was at rest, nobin failed for good; the others run since the second start-all.
    assert stopped == ["job", "orphan", "rival", "sleeper"], stopped


def test_delete_all_goes_on_past_a_file_it_cannot_delete(running):
    """A unit file turned into a directory meanwhile: the others are deleted, the daemon
    says which it could not, and the command succeeds."""
    path = running.config_dir / "job.toml"
    path.unlink()
    path.mkdir()
    result = running.cli("delete-all", "--yes")
    assert result.returncode == 0, result
    assert result.stdout == "deleted: idle, job, sleeper\n", result.stdout
    assert running.call("list") == []
    assert [p.name for p in running.config_dir.iterdir()] == ["job.toml"]  # the directory
    wait_until(lambda: f"cannot delete {path}: Is a directory" in running.log())


def test_a_query_to_a_stopped_daemon_gives_up_and_says_so(running):
    """list, status, check ... wait ZINIT_TIMEOUT seconds (30 by default), then exit 3; a
    command that may wait long (stop) first asks whether the daemon answers at all."""

    def run(timeout: str, *words: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, ZINIT_TIMEOUT=timeout)
        return subprocess.run(
            [PYTHON, ZINIT_PY, "--socket", running.socket, *words],
            env=env, check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    os.kill(running.proc.pid, signal.SIGSTOP)
    try:
        answers = [run("1", "list"), run("1", "stop", "sleeper")]
    finally:
        os.kill(running.proc.pid, signal.SIGCONT)
    message = f"zinit: the daemon at {running.socket} did not answer within 1s (stopped, or hung?)"
    for answer in answers:
        assert answer.returncode == 3, answer
        assert message in answer.stderr, answer.stderr
    assert running.status("sleeper")["state"] == "Running"  # the stop was never sent
    bad = run("soon", "list")
    assert bad.returncode == 2, bad
    assert "ZINIT_TIMEOUT: expected seconds > 0, up to a day, got 'soon'" in bad.stderr
    assert "sleeper" in ok(running.cli("list"))


def _answering_at_a_terminal(running, answer, *args):
    """Run the CLI with a terminal (a pty) as stdin, typing ``answer``."""
    parent, child = pty.openpty()
    try:
        process = subprocess.Popen(
            [PYTHON, ZINIT_PY, "--socket", running.socket, *args],
            stdin=child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        os.write(parent, answer.encode())
        out, err = process.communicate(timeout=60)
    finally:
        os.close(parent)
        os.close(child)
    return process.returncode, out, err


def test_delete_all_asks_first_at_a_terminal(running):
    """delete-all deletes unit files: typed at a terminal it lists them and asks; --yes
    (or a script, without a terminal) does not ask."""
    files = sorted(running.config_dir.glob("*.toml"))
    code, out, err = _answering_at_a_terminal(running, "n\n", "delete-all")
    assert code == 1, (out, err)
    assert "delete-all stops 3 unit(s) and deletes their files: idle, job, sleeper" in err, err
    assert "go on? [y/N]" in err and "zinit: delete-all: nothing deleted" in err, err
    assert sorted(running.config_dir.glob("*.toml")) == files
    code, out, err = _answering_at_a_terminal(running, "y\n", "delete-all")
    assert code == 0 and "deleted: idle, job, sleeper" in out, (out, err)
    assert list(running.config_dir.glob("*.toml")) == []
    running.service("again", "sleep 1000")
    ok(running.cli("reload"))
    code, out, err = _answering_at_a_terminal(running, "", "delete-all", "--yes")
    assert code == 0 and "deleted: again" in out and "go on?" not in err, (out, err)


def test_delete_all_at_a_terminal_deletes_only_what_it_asked_about(running):
    """A unit added while the question waits for its answer is not deleted with the others."""
    parent, child = pty.openpty()
    try:
        process = subprocess.Popen(
            [PYTHON, ZINIT_PY, "--socket", running.socket, "delete-all"],
            stdin=child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        asked = ""
        while "go on?" not in asked:
            chunk = os.read(process.stderr.fileno(), 4096).decode()
            assert chunk, asked  # the command ended without asking
            asked += chunk
        assert "idle, job, sleeper" in asked, asked
        running.service("newcomer", "sleep 1000")
        ok(running.cli("reload"))
        os.write(parent, b"y\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(parent)
        os.close(child)
    assert process.returncode == 0 and "deleted: idle, job, sleeper" in out, (out, err)
    assert [unit["name"] for unit in running.call("list")] == ["newcomer"]
    assert [path.name for path in running.config_dir.glob("*.toml")] == ["newcomer.toml"]


def test_check(running):
    """check exits 0 when every status=start unit is up, 1 when one is Failed."""
    ok(running.cli("check"))
    # A long-running service that ended with success counts, as SPEC 8 says.
    running.service("done", "true", lifecycle='restart = "on-failure"\n')
    ok(running.cli("reload"))
    assert running.wait_state("done", "Exited")["exit_code"] == 0
    ok(running.cli("check"))
    # A status=start service stopped by hand is not up, however it exited.
    running.service("polite", "sh -c 'trap \"exit 0\" TERM; while :; do sleep 0.05; done'")
    ok(running.cli("reload"))
    running.wait_state("polite", "Running")
    ok(running.cli("stop", "polite"))
    assert running.wait_state("polite", "Exited")["exit_code"] == 0
    assert running.cli("check").returncode == 1
    ok(running.cli("start", "polite"))
    running.wait_state("polite", "Running")
    ok(running.cli("check"))
    running.service("broken", "sh -c 'exit 3'", service="oneshot = true\n")
    ok(running.cli("reload"))
    running.wait_state("broken", "Failed")
    result = running.cli("check")
    assert result.returncode == 1, result
    assert "broken" in result.stdout + result.stderr


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """Read one stdout line of a running process, failing after ``timeout`` seconds."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no output within {timeout}s") from None


def test_events(running):
    """events prints a line per state change until it is terminated."""
    process = subprocess.Popen(
        [PYTHON, ZINIT_PY, "--socket", running.socket, "events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        # The subscription is made some time after launch: change a state until one shows.
        def shown() -> str | None:
            if lines.empty():
                running.call("restart", name="idle")
                return None
            return lines.get()

        line = wait_until(shown, timeout=30, interval=0.1, what="an event line")
        assert "idle" in line
        assert "->" in line
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(30)


def test_debug_state(running):
    state = json.loads(ok(running.cli("debug-state")))
    assert state["pid"] == running.proc.pid
    assert set(state["units"]) == {"idle", "job", "sleeper"}


def test_debug_procs(running):
    pid = running.status("sleeper")["pid"]
    out = ok(running.cli("debug-procs", "sleeper"))
    assert out.splitlines()[0].split()[0] == "PID"
    assert str(pid) in out
    assert "sleep 1000" in out


def test_shutdown(running):
    """shutdown stops every unit, shows progress, and the daemon exits 0 with no child left."""
    pids = [running.status("sleeper")["pid"]]
    ok(running.cli("start", "idle"))
    pids.append(running.wait_state("idle", "Running")["pid"])
    daemon_pid = running.proc.pid
    out = ok(running.cli("shutdown"))
    assert "sleeper" in out and "idle" in out
    assert "Stopping" in out or "Exited" in out
    assert out.strip().splitlines()[-1] == "shutdown: done"
    assert running.proc.wait(60) == 0
    for pid in pids:
        assert not pid_alive(pid)
    assert not pid_alive(daemon_pid)


@pytest.mark.parametrize("command", ["poweroff", "reboot"])
def test_poweroff_and_reboot_need_pid1(running, command):
    """Without zinit-pid1, poweroff and reboot exit 1 saying so; the daemon goes on."""
    result = running.cli(command)
    assert result.returncode == 1, result
    assert "zinit-pid1" in result.stderr
    assert running.status("sleeper")["state"] == "Running"
    assert running.proc.poll() is None


# -- --json --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_list(running, where):
    args = ["--json", "list"] if where == "before" else ["list", "--json"]
    units = as_json(running.cli(*args))
    assert isinstance(units, list)
    assert [unit["name"] for unit in units] == ["idle", "job", "sleeper"]
    for unit in units:
        assert UNIT_KEYS <= set(unit), UNIT_KEYS - set(unit)
        assert unit["state"] in SEVEN


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_status(running, where):
    args = ["--json", "status", "sleeper"] if where == "before" else ["status", "sleeper", "--json"]
    unit = as_json(running.cli(*args))
    assert isinstance(unit, dict)
    assert UNIT_KEYS <= set(unit), UNIT_KEYS - set(unit)
    assert unit["name"] == "sleeper"
    assert unit["kind"] == "service"
    assert unit["state"] == "Running"
    assert isinstance(unit["pid"], int)
    assert unit["class"] == "user"
    assert unit["status"] == "start"
    assert unit["restarts"] == 0
    assert unit["exit_code"] is None
    assert unit["health"] is None
    assert isinstance(unit["uptime_s"], float | int) and unit["uptime_s"] >= 0
    assert isinstance(unit["reason"], str)
    stopped = as_json(running.cli("status", "idle", "--json"))
    assert stopped["state"] == "Inactive"
    assert stopped["pid"] is None
    assert stopped["uptime_s"] is None


@pytest.mark.parametrize(
    "args",
    [
        ("why", "sleeper"),
        ("tree",),
        ("logs", "job"),
        ("check",),
        ("reload",),
        ("debug-procs", "sleeper"),
        ("start", "job"),
        ("kill", "sleeper", "SIGCONT"),
    ],
)
def test_json_works_on_other_commands(running, args):
    """--json after any command prints one JSON document."""
    json.loads(ok(running.cli(*args, "--json")))


# -- exit codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("status", "nope"), ("start", "nope"), ("stop", "nope"), ("why", "nope"), ("logs", "nope")],
)
def test_unknown_unit_exits_1(running, args):
    result = running.cli(*args)
    assert result.returncode == 1, result
    assert "nope" in result.stderr
    assert result.stdout == ""


def test_refusal_exits_1(running):
    """The daemon saying no (kill of a unit with no process) is exit 1 with its message."""
    result = running.cli("kill", "idle")
    assert result.returncode == 1, result
    assert "idle" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        (),
        ("status",),
        ("start",),
        ("kill",),
        ("logs", "job", "-n", "many"),
        ("list", "--bogus-flag"),
        ("add-service", "neither-a-file-nor-toml"),
        ("kill", "sleeper", "SIGNOTASIGNAL"),
    ],
)
def test_usage_errors_exit_2(running, args):
    result = running.cli(*args)
    assert result.returncode == 2, result
    assert result.stderr.strip(), result


def test_unknown_command_lists_every_command(running):
    """Only the named command's parser is built; an unknown name still gets the full list."""
    result = running.cli("no-such-command")
    assert result.returncode == 2, result
    for command in ("list", "status", "start", "xinet", "validate", "tui"):
        assert f"'{command}'" in result.stderr, result.stderr
    assert running.cli("--json", "status", "sleeper").returncode == 0
    assert "usage: zinit xinet set" in running.cli("xinet", "set", "--help").stdout
    assert "COMMAND" in running.cli("--help").stdout


def test_no_daemon_exits_3(tmp_path):
    """Nothing at the socket: exit 3, naming the socket and how to start a daemon."""
    socket_path = str(tmp_path / "nothing.sock")
    result = subprocess.run(
        [PYTHON, ZINIT_PY, "--socket", socket_path, "list"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result
    assert socket_path in result.stderr
    assert "zinit-server" in result.stderr


def test_zinit_socket_environment(running):
    """Without --socket, the CLI uses ZINIT_SOCKET."""
    result = subprocess.run(
        [PYTHON, ZINIT_PY, "list"],
        check=False, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, ZINIT_SOCKET=running.socket),
    )  # fmt: skip
    assert "sleeper" in ok(result)


# -- colour --------------------------------------------------------------------


def run_on_tty(daemon, *args: str, no_color: bool) -> str:
    """Run the CLI with stdout on a pseudo-terminal and return what it wrote there."""
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    if no_color:
        env["NO_COLOR"] = "1"
    main, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            [PYTHON, ZINIT_PY, "--socket", daemon.socket, *args],
            stdout=secondary, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(60) == 0
    finally:
        os.close(main)
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_without_no_color(running):
    """A terminal gets colour; NO_COLOR or a pipe gets none."""
    coloured = run_on_tty(running, "list", no_color=False)
    assert ESC in coloured, coloured
    plain = run_on_tty(running, "list", no_color=True)
    assert ESC not in plain
    assert "sleeper" in plain and "Running" in plain
    for args in (("list",), ("status", "sleeper"), ("why", "sleeper"), ("tree",)):
        result = running.cli(*args)
        assert ESC not in ok(result), args
