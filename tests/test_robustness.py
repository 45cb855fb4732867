"""Regressions from a review of the daemon: hangs, leaks and stalls that must not come back."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time

import pytest
from conftest import PYTHON, ZINIT_PY, pid_alive, wait_until

import zinit

SLOW_STOP = (
    f'{PYTHON} -c "import signal, time\n'
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), exit(0)))\n"
    'time.sleep(1000)"'
)


def test_issue_2_stop_returns_when_a_start_arrives_during_it(daemon):
    """A stop whose unit is started again meanwhile still returns (no hung RPC)."""
    daemon.service("slow", SLOW_STOP, lifecycle="stop_timeout_ms = 5000\n")
    daemon.start()
    daemon.wait_state("slow", "Running")
    stopper = subprocess.Popen(
        [PYTHON, ZINIT_PY, "--socket", daemon.socket, "stop", "slow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    daemon.wait_state("slow", "Stopping")
    assert daemon.cli("start", "slow").returncode == 0
    assert stopper.wait(30) == 0
    daemon.wait_state("slow", "Running")


def test_issue_2_forwarded_logs_to_a_stalled_reader_do_not_freeze_the_daemon(daemon, tmp_path):
    """--forward-logs into a pipe nobody reads: the socket answers and SIGTERM still works."""
    daemon.service("flood", "yes forwarded-line")
    read_end, write_end = socket.socketpair()  # a stdout that nobody ever reads
    environment = {"ZINIT_LOG_LEVEL": "info"}
    daemon.proc = subprocess.Popen(
        [
            PYTHON,
            ZINIT_PY,
            "server",
            "--config-dir",
            str(daemon.config_dir),
            "--socket",
            daemon.socket,
            "--forward-logs",
        ],
        stdout=write_end.fileno(),
        stderr=subprocess.DEVNULL,
        env={**__import__("os").environ, **environment},
    )
    write_end.close()
    try:
        wait_until(lambda: daemon._answers(), timeout=30)
        daemon.wait_state("flood", "Running")
        for _ in range(20):
            started = time.monotonic()
            assert daemon.call("list")
            assert time.monotonic() - started < 5
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0
    finally:
        read_end.close()


def test_issue_2_streams_of_vanished_clients_leave_no_subscription(daemon):
    """Clients that subscribe and vanish at once leave no queue behind."""
    daemon.service("idle", "sleep 1000")
    daemon.start()
    daemon.wait_state("idle", "Running")
    for method in ("logs.follow", "events.subscribe") * 10:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(daemon.socket)
            sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode() + b"\n")
    batch = [{"jsonrpc": "2.0", "id": n, "method": "events.subscribe"} for n in range(5)]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(daemon.socket)
        sock.sendall(json.dumps(batch).encode() + b"\n")
        sock.recv(65536)

    def subscriptions():
        counts = daemon.call("debug_state")["subscriptions"]
        return counts if counts == {"events": 0, "logs": 0} else None

    wait_until(subscriptions, timeout=20, what="subscriptions to go away")


def test_issue_2_wants_and_after_do_not_wait_for_a_hopeless_unit(daemon):
    """b requires a unit that failed to spawn: a (wants b) and d (after b) start anyway."""
    daemon.service("c", "/nonexistent/binary")
    daemon.service("b", "sleep 1000", dependencies='requires = ["c"]\n')
    daemon.service("a", "sleep 1000", dependencies='wants = ["b"]\n')
    daemon.service("d", "sleep 1000", dependencies='after = ["b"]\n')
    daemon.start()
    daemon.wait_state("c", "Failed")
    assert "requires 'c'" in daemon.wait_state("b", "Blocked")["reason"]
    daemon.wait_state("a", "Running")
    daemon.wait_state("d", "Running")


def test_issue_2_merged_logs_are_bounded_and_in_time_order(daemon):
    """`logs` without a unit returns the newest 1000 lines of all units, oldest first."""
    for name in ("one", "two"):
        daemon.service(name, f"sh -c 'for i in $(seq 1 700); do echo {name}-$i; done; sleep 1000'")
    daemon.start()
    daemon.wait_log("one", "one-700")
    daemon.wait_log("two", "two-700")
    entries = daemon.call("logs")
    assert len(entries) == 1000
    times = [entry["time"] for entry in entries]
    assert times == sorted(times)
    assert {entry["unit"] for entry in entries} == {"one", "two"}
    assert len(daemon.call("logs", lines=5)) == 5


def test_issue_2_usr1_and_usr2_do_not_end_the_daemon(daemon):
    """Signals a PID-1 shim forwards (USR1, USR2) leave the daemon and its units alone."""
    daemon.service("idle", "sleep 1000")
    daemon.start()
    pid = daemon.wait_state("idle", "Running")["pid"]
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        daemon.proc.send_signal(signum)
    assert daemon.call("ping")["pong"]
    assert daemon.proc.poll() is None
    assert daemon.status("idle")["pid"] == pid and pid_alive(pid)


def test_issue_2_deeply_nested_json_gets_a_parse_error(daemon):
    """A frame nested too deeply for the parser is a -32700, and the connection goes on."""
    daemon.start()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(daemon.socket)
        reader = sock.makefile("rb")
        sock.sendall(b"[" * 100_000 + b"\n")
        reply = json.loads(reader.readline())
        assert reply["error"]["code"] == -32700
        sock.sendall(b'{"jsonrpc": "2.0", "id": 2, "method": "ping"}\n')
        assert json.loads(reader.readline())["result"]["pong"] is True


def test_issue_2_concurrent_starts_and_stops_settle(daemon):
    """Many clients starting and stopping the same units: every call returns, no unit hangs."""
    for name in ("x", "y"):
        daemon.service(name, SLOW_STOP, lifecycle="stop_timeout_ms = 3000\n")
    daemon.start()
    errors = []

    def churn(action_order):
        try:
            for action in action_order:
                for name in ("x", "y"):
                    result = daemon.cli(action, name, timeout=60)
                    if result.returncode != 0:
                        errors.append(result.stderr)
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(error))

    threads = [
        threading.Thread(target=churn, args=(order,))
        for order in (["stop", "start"] * 2, ["start", "stop"] * 2, ["restart", "stop", "start"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert daemon.cli("start", "x").returncode == 0
    daemon.wait_state("x", "Running")


def test_issue_6_usage_counts_the_whole_process_tree(daemon):
    """`list` with usage sums memory over the unit's process tree, not only its main pid."""
    import psutil

    daemon.service("tree", "sh -c 'sleep 1000 & sleep 1000 & wait'")
    daemon.start()
    pid = daemon.wait_state("tree", "Running")["pid"]
    wait_until(lambda: len(psutil.Process(pid).children()) == 2, what="both sleeps")
    [unit] = [u for u in daemon.call("list", with_usage=True) if u["name"] == "tree"]
    assert unit["rss_bytes"] > psutil.Process(pid).memory_info().rss


def test_a_config_dir_that_is_missing_or_a_file_is_named_and_the_daemon_serves(daemon, tmp_path):
    """A wrong --config-dir gets a warning that says what is wrong with it; nothing else breaks."""
    not_a_directory = tmp_path / "units.toml"
    not_a_directory.write_text("")
    daemon.start("--config-dir", str(not_a_directory))
    assert isinstance(daemon.call("list"), list)
    wait_until(
        lambda: f"config directory {not_a_directory} is not a directory" in daemon.log(),
        what="the warning",
    )
    # Listed by its path (so that it is seen), it is no unit to remove or to write beside.
    removed = daemon.cli("remove-service", str(not_a_directory))
    assert removed.returncode == 1 and "unknown unit" in removed.stderr, removed
    added = daemon.cli("add-service", '[service]\nexec = "true"\n', "--name", "x")
    assert added.returncode == 1 and f"cannot write into {not_a_directory}" in added.stderr
    assert not_a_directory.is_file()
    assert daemon.stop() == 0
    daemon.start("--config-dir", str(tmp_path / "nowhere"))
    assert daemon.call("list") == []
    wait_until(
        lambda: f"config directory {tmp_path / 'nowhere'} does not exist" in daemon.log(),
        what="the warning",
    )


def run_probe(script: str, config, *args: str) -> str:
    """Run a script that drives a Supervisor in its own process; return its stdout."""
    result = subprocess.run(
        [PYTHON, "-c", script, str(config), str(ZINIT_PY.rsplit("/", 1)[0]), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


READER_FAULT_PROBE = """
import os, sys, time
import gevent
sys.path.insert(0, sys.argv[2])
import zinit

calls = []

def publish(unit, entries):
    calls.append(entries)
    if len(calls) == 1:
        raise RuntimeError("a bug while handing lines to followers")

runtime = zinit._Runtime()
ring = zinit.LogRing("x", 100, publish)
read_end, write_end = os.pipe()
reader = zinit._PipeReader(runtime, read_end, ring, "stdout")
os.write(write_end, b"first\\n")
deadline = time.monotonic() + 30
while reader.fd is not None and time.monotonic() < deadline:
    gevent.sleep(0.01)
os.set_blocking(write_end, False)
try:
    while True:
        os.write(write_end, b"x" * 4096)
except BrokenPipeError:
    print("EPIPE")
except BlockingIOError:
    print("blocked: nobody reads the pipe")
print(len(runtime.pipe_readers))
"""


def test_a_failing_pipe_reader_closes_the_pipe_instead_of_leaving_the_service_blocked(tmp_path):
    """A bug while a line is handled: the service gets EPIPE, not a full pipe nobody reads."""
    assert run_probe(READER_FAULT_PROBE, tmp_path).split() == ["EPIPE", "0"]


LEAK_PROBE = """
import os, sys
import gevent.event
sys.path.insert(0, sys.argv[2])
import zinit

runtime = zinit._Runtime()
supervisor = zinit.Supervisor(runtime, [(sys.argv[1], None)], write_dir=sys.argv[1])
supervisor.load()
gevent.sleep(0.1)
before = len(os.listdir("/proc/self/fd"))
for _ in range(20):
    # A start and a removal queued together: the unit spawns, then quits before
    # its pipe readers have run once.
    unit = zinit.Service(supervisor.configs["x"], supervisor)
    supervisor.units["x"] = unit
    unit.request_start("test")
    done = gevent.event.Event()
    unit.post(zinit._Quit(done))
    done.wait()
gevent.sleep(0.5)
print(before, len(os.listdir("/proc/self/fd")))
"""


def test_pipe_fds_are_closed_when_a_unit_quits_before_its_readers_run(tmp_path):
    """remove-service racing a start: the output pipes of the spawn are closed, not leaked.

    The race cannot be timed through the socket, so a script drives a
    Supervisor directly, in its own process (it reaps its own children).
    """
    config = tmp_path / "services"
    config.mkdir()
    (config / "x.toml").write_text('[service]\nexec = "sleep 1000"\n')
    before, after = map(int, run_probe(LEAK_PROBE, config).split())
    assert after == before, f"{after - before} fds leaked over 20 start-then-quit rounds"


def test_a_daemon_started_after_a_kill_9_ends_the_services_left_unsupervised(daemon):
    """kill -9 leaves a daemon's services running, unsupervised; the next daemon in the same
    cgroup stops them (SIGTERM) before it starts its own, so nothing runs twice."""
    daemon.service("worker", "sleep 1000")
    daemon.start()
    old_pid = daemon.wait_state("worker", "Running")["pid"]
    killed = daemon.proc.pid
    own = zinit._own_cgroup_dir()  # the tests' cgroup, where the daemons make theirs
    if own is None:
        pytest.skip("no cgroup v2 here: a daemon killed with -9 leaves nothing to find")
    dead_root = os.path.join(own, f"zinit-{killed}")
    assert os.path.isdir(dead_root)
    try:
        daemon.proc.kill()
        daemon.proc.wait(30)
        assert pid_alive(old_pid)  # orphaned, still running
        daemon.start()
        new_pid = daemon.wait_state("worker", "Running")["pid"]
        assert new_pid != old_pid
        # (Any daemon started in this cgroup meanwhile may be the one that does it.)
        wait_until(lambda: not pid_alive(old_pid), what="the orphan to be stopped")
        wait_until(lambda: not os.path.exists(dead_root), what="the dead daemon's cgroup to go")
    finally:
        daemon._kill_leftovers(killed)


RACE_PROBE = """
import sys
import gevent
sys.path.insert(0, sys.argv[2])
import zinit

runtime = zinit._Runtime()
supervisor = zinit.Supervisor(runtime, [(sys.argv[1], None)], write_dir=sys.argv[1])
supervisor.load()
try:
    supervisor.boot()
    web, db = supervisor.units["web"], supervisor.units["db"]
    while web.state != zinit.State.RUNNING:
        gevent.sleep(0.01)
    removal = gevent.spawn(supervisor.remove_service, "db")
    # The operator's stop lands while the removal is still at work: while db
    # takes its time to stop, or after, once db is out of the registry.
    if sys.argv[3] == "while-db-stops":
        while not (web.state in zinit.AT_REST and db.state == zinit.State.STOPPING):
            gevent.sleep(0.01)
    else:
        while "db" in supervisor.units:
            gevent.sleep(0)
    assert not removal.dead and web.state in zinit.AT_REST
    supervisor.stop("web")
    removal.get()
    gevent.sleep(0.2)
    print(web.state, web.wanted)
finally:
    supervisor.shutdown()  # ends the sleeps it started, whatever happened
"""


@pytest.mark.parametrize("moment", ["while-db-stops", "after-db-stopped"])
def test_a_stop_made_during_a_removal_is_not_undone(tmp_path, moment):
    """remove-service db re-blocks web, which requires db; an operator's `stop web` made
    meanwhile wins: web stays stopped, not Blocked waiting for db.

    The window cannot be timed through the socket, so a script drives a Supervisor
    directly, in its own process.
    """
    config = tmp_path / "services"
    config.mkdir()
    slow_stop = "trap 'sleep 1; exit 0' TERM; while :; do sleep 0.05; done"
    (config / "db.toml").write_text(
        f"[service]\nexec = {json.dumps(f'sh -c {shlex.quote(slow_stop)}')}\n"
    )
    (config / "web.toml").write_text(
        '[service]\nexec = "sleep 1000"\n[dependencies]\nrequires = ["db"]\n'
    )
    assert run_probe(RACE_PROBE, config, moment).split() == ["Exited", "False"]


def test_the_daemon_without_its_dependencies_says_what_to_install(tmp_path):
    """Run from source by an interpreter without gevent: one line naming the fix."""
    result = subprocess.run(
        [PYTHON, "-S", ZINIT_PY, "server", "--socket", str(tmp_path / "s.sock"),
         "--config-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result
    assert result.stderr.startswith("zinit-server: cannot load gevent (No module named 'gevent')")
    assert result.stderr.rstrip().endswith(": pip install gevent psutil"), result.stderr


def test_failures_are_logged_as_warnings_and_a_numeric_socket_group_works(daemon):
    """At ZINIT_LOG_LEVEL=warn the daemon's log still shows a unit going Failed; a bare gid
    is taken for --socket-group."""
    daemon.service("nobin", "/nonexistent/zinit-typo")
    daemon.start("--socket-group", "1", env={"ZINIT_LOG_LEVEL": "warn"})
    daemon.wait_state("nobin", "Failed")
    wait_until(lambda: "WARNING nobin: Inactive -> Failed (spawn failed" in daemon.log())
    info = os.stat(daemon.socket)
    assert (info.st_gid, info.st_mode & 0o777) == (1, 0o660)
