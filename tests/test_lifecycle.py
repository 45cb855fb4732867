"""Lifecycle of one service: oneshots, restart policies, backoff, stopping whole trees.

Every test runs a real zinit-server with real children and waits on conditions.
"""

import itertools
import os
import pwd
import shlex
import signal
import subprocess
import textwrap

import psutil
import pytest
from conftest import PYTHON, ROOT, pid_alive, wait_until

import zinit

FAST_STOP = "stop_timeout_ms = 1000\n"


def py(code: str) -> str:
    """An exec line running ``code`` with the test's Python."""
    return shlex.join([PYTHON, "-c", textwrap.dedent(code)])


def descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids) -> list[int]:
    return [pid for pid in pids if pid_alive(pid)]


def kill_pids(pids) -> None:
    """Clean up after a failed test: end the processes we identified, by pid."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---- oneshots ----------------------------------------------------------------


def test_a_units_deadline_counts_from_when_it_is_set():
    """A deadline set late in a busy loop turn is not early by the time the turn took."""
    script = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, sys.argv[1])
        import gevent, gevent.hub, zinit
        hub = gevent.get_hub()
        def hold(seconds, due):
            timer = hub.loop.timer(due)
            timer.start(time.sleep, seconds)
            return timer
        def unit():
            # Woken by a timer (as by its restart delay) in a turn that another
            # timer's callback held for 0.5 s after the loop read the clock.
            waiter = gevent.hub.Waiter()
            wake = hub.loop.timer(0.2)
            wake.start(waiter.switch, None)
            waiter.get()
            start = time.monotonic()
            assert zinit._Mailbox(hub).get(1.0) is None
            return time.monotonic() - start
        busy, held = hold(0.3, 0.1), hold(0.5, 0.15)  # both due with the unit's at 0.4
        print(gevent.spawn(unit).get())
    """)
    result = subprocess.run(
        [PYTHON, "-c", script, str(ROOT)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) >= 1.0, result.stdout


def test_oneshot_success_is_exited_with_code_0(daemon):
    daemon.service("once", "sh -c 'echo done'", service="oneshot = true\n")
    daemon.start()
    unit = daemon.wait_state("once", "Exited", "Failed")
    assert unit["state"] == "Exited", unit
    assert unit["exit_code"] == 0
    assert unit["pid"] is None
    assert unit["restarts"] == 0


def test_oneshot_failure_is_failed_and_names_the_code(daemon):
    daemon.service("once", "sh -c 'exit 3'", service="oneshot = true\n")
    daemon.start()
    unit = daemon.wait_state("once", "Exited", "Failed")
    assert unit["state"] == "Failed", unit
    assert unit["exit_code"] == 3
    assert "3" in unit["reason"], unit["reason"]
    assert "exit" in unit["reason"], unit["reason"]
    assert unit["restarts"] == 0
    assert unit["next_restart_s"] is None


# ---- restart policies --------------------------------------------------------


def test_restart_always_restarts_after_a_clean_exit(daemon):
    daemon.service(
        "svc",
        "sh -c 'sleep 0.2; exit 0'",
        lifecycle='restart = "always"\nrestart_delay_ms = 50\nrestart_delay_max_ms = 50\n',
    )
    daemon.start()
    wait_until(lambda: daemon.status("svc")["restarts"] >= 2, timeout=30, what="two restarts")


def test_restart_on_failure_restarts_a_failure(daemon):
    daemon.service(
        "svc",
        "sh -c 'sleep 0.2; exit 1'",
        lifecycle='restart = "on-failure"\nrestart_delay_ms = 50\nrestart_delay_max_ms = 50\n',
    )
    daemon.start()
    wait_until(lambda: daemon.status("svc")["restarts"] >= 2, timeout=30, what="two restarts")


def test_restart_on_failure_leaves_a_clean_exit_alone(daemon):
    daemon.service(
        "svc",
        "sh -c 'sleep 0.2; exit 0'",
        lifecycle='restart = "on-failure"\nrestart_delay_ms = 50\n',
    )
    daemon.start()
    unit = daemon.wait_state("svc", "Exited", "Failed")
    assert unit["state"] == "Exited", unit
    assert unit["exit_code"] == 0
    assert unit["next_restart_s"] is None, unit
    assert "restarting" not in unit["reason"], unit["reason"]
    assert unit["restarts"] == 0


def test_restart_never_leaves_a_failure_failed(daemon):
    daemon.service(
        "svc",
        "sh -c 'sleep 0.2; exit 4'",
        lifecycle='restart = "never"\nrestart_delay_ms = 50\n',
    )
    daemon.start()
    unit = daemon.wait_state("svc", "Exited", "Failed")
    assert unit["state"] == "Failed", unit
    assert unit["exit_code"] == 4
    assert unit["next_restart_s"] is None, unit
    assert "restarting" not in unit["reason"], unit["reason"]
    assert unit["restarts"] == 0


# ---- backoff and giving up ---------------------------------------------------


def test_backoff_doubles_up_to_the_max(daemon):
    """Delays between spawns go 0.3, 0.6, 1.2, 1.2 s (restart_delay_ms doubling, capped)."""
    daemon.service(
        "flappy",
        "sh -c 'exit 1'",
        service='status = "stop"\n',
        lifecycle=(
            'restart = "always"\nrestart_delay_ms = 300\nrestart_delay_max_ms = 1200\n' + FAST_STOP
        ),
    )
    daemon.start()
    expected = [0.3, 0.6, 1.2, 1.2]
    spawns: list[float] = []
    with daemon.client() as client:
        client.call("events.subscribe")
        client.start("flappy")
        for message in client.notifications():
            event = message.get("params", {})
            if message.get("method") != "event" or event.get("unit") != "flappy":
                continue
            if event["to"] in ("Running", "Starting") and event["from"] != "Starting":
                spawns.append(event["time"])
                if len(spawns) == len(expected) + 1:
                    break
    daemon.call("stop", name="flappy")
    gaps = [later - earlier for earlier, later in itertools.pairwise(spawns)]
    for gap, want in zip(gaps, expected, strict=True):
        assert 0.9 * want <= gap <= want + 1.5, (gaps, expected)


def test_max_restarts_gives_up_for_good(daemon):
    daemon.service(
        "flappy",
        "sh -c 'exit 2'",
        lifecycle=(
            'restart = "always"\nmax_restarts = 2\nrestart_delay_ms = 50\n'
            "restart_delay_max_ms = 100\n" + FAST_STOP
        ),
    )
    daemon.start()
    unit = wait_until(
        lambda: (
            (u := daemon.status("flappy"))["state"] == "Failed"
            and u["next_restart_s"] is None
            and u
        ),
        timeout=30,
        what="flappy to give up",
    )
    assert unit["restarts"] == 2, unit
    assert "gave up" in unit["reason"], unit["reason"]
    assert unit["pid"] is None
    assert unit["exit_code"] == 2


def test_a_stop_cancelling_a_restart_says_so_without_the_restart_it_cancelled(daemon):
    daemon.service(
        "crash",
        "sh -c 'exit 3'",
        lifecycle="restart_delay_ms = 600000\nrestart_delay_max_ms = 600000\n",
    )
    daemon.start()
    wait_until(lambda: "restarting in 600s" in daemon.status("crash")["reason"], what="backoff")
    assert daemon.cli("stop", "crash").returncode == 0
    unit = daemon.status("crash")
    assert unit["reason"] == "stopped by request; restart cancelled (exited with code 3)", unit
    assert unit["next_restart_s"] is None, unit


def test_a_changed_config_gets_the_whole_restart_budget_again(daemon):
    """A unit that gave up, edited and reloaded, is tried 1 + max_restarts times again."""
    lifecycle = 'restart = "always"\nmax_restarts = 2\nrestart_delay_ms = 50\n' + FAST_STOP
    daemon.service("flappy", "sh -c 'exit 2'", lifecycle=lifecycle)
    daemon.start()
    gave_up = "gave up after 2 restart(s)"
    wait_until(lambda: gave_up in daemon.status("flappy")["reason"], what="flappy to give up")
    daemon.service("flappy", "sh -c 'echo second; exit 3'", lifecycle=lifecycle)
    assert daemon.call("reload")["changed"] == ["flappy"]
    unit = wait_until(
        lambda: (u := daemon.status("flappy"))["exit_code"] == 3 and gave_up in u["reason"] and u,
        timeout=30,
        what="the new config to give up",
    )
    runs = [e["line"] for e in daemon.call("logs", name="flappy") if e["line"] == "second"]
    assert len(runs) == 3, (runs, unit)


# ---- spawn errors ------------------------------------------------------------


def test_missing_binary_fails_and_names_it(daemon):
    daemon.service("ghost", "/nonexistent/zinit-no-such-binary --flag")
    daemon.start()
    unit = daemon.wait_state("ghost", "Failed")
    assert "/nonexistent/zinit-no-such-binary" in unit["reason"], unit["reason"]
    assert unit["pid"] is None
    # Started by hand, the spawn error is the command's answer (exit 1), not a silent 0.
    for command in ("start", "restart"):
        result = daemon.cli(command, "ghost")
        assert result.returncode == 1, (command, result)
        assert "'ghost' did not start: spawn failed:" in result.stderr, result.stderr
        assert "/nonexistent/zinit-no-such-binary" in result.stderr
    # The unit's log says it too: a program that never ran has no output of its own.
    logged = [(e["stream"], e["line"]) for e in daemon.call("logs", name="ghost")]
    assert logged == 3 * [("stderr", f"zinit: {unit['reason']}")], logged


def test_missing_dir_fails_and_names_it(daemon):
    daemon.service("homeless", "sleep 1000", service='dir = "/nonexistent/zinit-no-such-dir"\n')
    daemon.start()
    unit = daemon.wait_state("homeless", "Failed")
    assert "/nonexistent/zinit-no-such-dir" in unit["reason"], unit["reason"]
    assert unit["pid"] is None


# ---- stopping whole trees ----------------------------------------------------


def test_stop_ends_the_whole_sh_tree(daemon):
    daemon.service("tree", "sh -c 'sleep 1000 & sleep 1000 & wait'", lifecycle=FAST_STOP)
    daemon.start()
    pid = daemon.wait_state("tree", "Running")["pid"]
    children = wait_until(lambda: len(d := descendants(pid)) >= 2 and d, what="two sleeps")
    tree = [pid, *children]
    try:
        result = daemon.cli("stop", "tree")
        assert result.returncode == 0, result.stderr
        wait_until(lambda: not alive(tree), timeout=15, what="the tree to be gone")
        assert daemon.status("tree")["state"] == "Exited"
    finally:
        kill_pids(alive(tree))


def test_stop_ends_a_setsid_descendant(daemon):
    daemon.service(
        "escaper", "sh -c \"setsid sh -c 'sleep 1000' & exec sleep 1000\"", lifecycle=FAST_STOP
    )
    daemon.start()
    pid = daemon.wait_state("escaper", "Running")["pid"]

    def escaped():
        found = descendants(pid)
        sleeps = [p for p in found if psutil.Process(p).name() == "sleep"]
        return sleeps and found

    children = wait_until(escaped, what="the setsid sleep")
    tree = [pid, *children]
    assert any(os.getsid(p) != os.getsid(pid) for p in children), "setsid did not happen"
    try:
        result = daemon.cli("stop", "escaper")
        assert result.returncode == 0, result.stderr
        wait_until(lambda: not alive(tree), timeout=15, what="the tree to be gone")
    finally:
        kill_pids(alive(tree))


def test_stop_ends_a_double_forked_orphan(daemon, tmp_path):
    """A grandchild whose parent exited (re-parented away from the service) is stopped too."""
    pidfile = tmp_path / "grandchild.pid"
    code = f"""
        import os, time
        child = os.fork()
        if child == 0:
            os.setsid()
            if os.fork() == 0:
                with open({str(pidfile)!r} + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.rename({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
                os.execvp("sleep", ["sleep", "1000"])
            os._exit(0)
        os.waitpid(child, 0)
        print("intermediate gone", flush=True)
        os.execvp("sleep", ["sleep", "1000"])
    """
    daemon.service("forker", py(code), lifecycle=FAST_STOP)
    daemon.start()
    pid = daemon.wait_state("forker", "Running")["pid"]
    daemon.wait_log("forker", "intermediate gone")
    grandchild = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), what="pidfile"))
    try:
        assert pid_alive(grandchild)
        assert grandchild not in descendants(pid), "the grandchild should be an orphan"
        result = daemon.cli("stop", "forker")
        assert result.returncode == 0, result.stderr
        wait_until(
            lambda: not alive([pid, grandchild]), timeout=15, what="main and grandchild gone"
        )
    finally:
        kill_pids(alive([grandchild]))


def test_leftover_child_is_killed_before_restart(daemon, tmp_path):
    """When the main process exits, what it left behind is killed before the next spawn."""
    pidfile = tmp_path / "leftover.pid"
    script = (
        f"if [ -f {pidfile} ]; then "
        f'if kill -0 "$(cat {pidfile})" 2>/dev/null; then echo LEFTOVER-ALIVE; '
        f"else echo LEFTOVER-GONE; fi; exec sleep 1000; fi; "
        f"sleep 1000 & echo $! > {pidfile}; exit 1"
    )
    daemon.service(
        "leaky",
        f"sh -c {shlex.quote(script)}",
        lifecycle='restart = "always"\nrestart_delay_ms = 0\n' + FAST_STOP,
    )
    daemon.start()
    lines = daemon.wait_log("leaky", "LEFTOVER-")
    leftover = int(pidfile.read_text())
    try:
        assert "LEFTOVER-GONE" in lines, lines
        assert "LEFTOVER-ALIVE" not in lines, lines
        assert not pid_alive(leftover)
        assert daemon.status("leaky")["restarts"] == 1
    finally:
        kill_pids(alive([leftover]))


# ---- signals -----------------------------------------------------------------

USR1_CHILD = """
    import os, signal, time
    def on_usr1(signum, frame):
        print("got SIGUSR1", flush=True)
        os._exit(0)
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    while True:
        time.sleep(1)
"""


@pytest.mark.parametrize("spelling", ['"SIGUSR1"', '"usr1"', str(int(signal.SIGUSR1))])
def test_stop_signal_is_honoured(daemon, spelling):
    daemon.service(
        "usr1",
        py(USR1_CHILD),
        lifecycle=f"stop_signal = {spelling}\nstop_timeout_ms = 10000\n",
    )
    daemon.start()
    pid = daemon.wait_state("usr1", "Running")["pid"]
    daemon.wait_log("usr1", "ready")
    result = daemon.cli("stop", "usr1")
    assert result.returncode == 0, result.stderr
    unit = daemon.wait_state("usr1", "Exited")
    assert unit["exit_code"] == 0, unit
    assert "got SIGUSR1" in [e["line"] for e in daemon.call("logs", name="usr1")]
    assert not pid_alive(pid)


def test_stop_continues_a_stopped_service_so_that_it_hears_the_stop_signal(daemon):
    """A SIGSTOPped service gets SIGCONT after SIGTERM: it ends on SIGTERM, not SIGKILL."""
    daemon.service("frozen", "sleep 1000", lifecycle="stop_timeout_ms = 30000\n")
    daemon.start()
    pid = daemon.wait_state("frozen", "Running")["pid"]
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, what="stopped")
    result = daemon.cli("stop", "frozen", timeout=20)  # not the 30 s stop timeout
    assert result.returncode == 0, result.stderr
    unit = daemon.wait_state("frozen", "Exited")
    assert unit["exit_code"] == -signal.SIGTERM, unit


def test_stop_timeout_sends_sigkill(daemon):
    daemon.service(
        "stubborn",
        "sh -c \"trap '' TERM; echo ready; sleep 1000\"",
        lifecycle="stop_timeout_ms = 500\n",
    )
    daemon.start()
    pid = daemon.wait_state("stubborn", "Running")["pid"]
    daemon.wait_log("stubborn", "ready")
    children = wait_until(lambda: descendants(pid), what="the sleep")
    tree = [pid, *children]
    try:
        result = daemon.cli("stop", "stubborn")
        assert result.returncode == 0, result.stderr
        unit = daemon.wait_state("stubborn", "Exited")
        assert unit["exit_code"] == -signal.SIGKILL, unit
        wait_until(lambda: not alive(tree), timeout=15, what="the tree to be gone")
    finally:
        kill_pids(alive(tree))


# Realtime signals queue instead of merging, so the child can count deliveries exactly.
COUNTING_CHILD = """
    import signal, sys
    sig = signal.SIGRTMIN
    signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
    print("ready", flush=True)
    while True:
        signal.sigwaitinfo([sig])
        count = 1
        while signal.sigtimedwait([sig], 1.0) is not None:
            count += 1
        print(f"received {count}", flush=True)
        if sys.argv[1] == "exit":
            sys.exit(0 if count == 1 else 3)
"""


def test_issue_2_stop_signal_is_sent_once(daemon):
    """`stop` delivers the stop signal once to the main process, not once per mechanism.

    A service that treats a second SIGTERM as "quit now" must not see two.
    """
    daemon.service(
        "counter",
        py(COUNTING_CHILD) + " exit",
        lifecycle='stop_signal = "SIGRTMIN"\nstop_timeout_ms = 10000\n',
    )
    daemon.start()
    daemon.wait_state("counter", "Running")
    daemon.wait_log("counter", "ready")
    result = daemon.cli("stop", "counter")
    assert result.returncode == 0, result.stderr
    unit = daemon.wait_state("counter", "Exited")
    lines = [e["line"] for e in daemon.call("logs", name="counter")]
    assert "received 1" in lines, lines
    assert unit["exit_code"] == 0, unit


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "no-cgroup"])
def test_stop_signals_a_leftover_child_once_then_kills_it(daemon, tmp_path, cgroups):
    """The stop signal reaches the whole tree once; what outlives the main process gets
    SIGKILL when the stop timeout runs out, not a second stop signal."""
    marks = tmp_path / "terms"
    child = f"(trap 'echo term >> {marks}' TERM; while :; do sleep 0.05; done) & echo ready; wait"
    daemon.service("tree", f"sh -c {shlex.quote(child)}", lifecycle=FAST_STOP)
    daemon.start(env=None if cgroups else {"ZINIT_CGROUP_ROOT": "/proc/zinit-no-cgroup-here"})
    daemon.wait_log("tree", "ready")
    result = daemon.cli("stop", "tree")
    assert result.returncode == 0, result.stderr
    daemon.wait_state("tree", "Exited")
    assert marks.read_text() == "term\n"


def test_without_cgroups_a_stop_still_signals_a_setsid_descendant(daemon, tmp_path):
    """No writable cgroup: a descendant that left the process group gets the stop signal
    when the main process is gone, not only the SIGKILL at the stop timeout."""
    marks = tmp_path / "terms"
    escaped = f"trap 'echo term >> {marks}; exit 0' TERM; while :; do sleep 0.05; done"
    script = f"setsid sh -c {shlex.quote(escaped)} & exec sleep 1000"
    daemon.service("escaper", f"sh -c {shlex.quote(script)}", lifecycle="stop_timeout_ms = 30000\n")
    daemon.start(env={"ZINIT_CGROUP_ROOT": "/proc/zinit-no-cgroup-here"})
    daemon.wait_state("escaper", "Running")
    wait_until(
        lambda: any(
            (p.info["cmdline"] or [])[-1:] == [escaped] for p in psutil.process_iter(["cmdline"])
        ),
        what="the setsid descendant",
    )
    result = daemon.cli("stop", "escaper")
    assert result.returncode == 0, result.stderr
    daemon.wait_state("escaper", "Exited")
    assert marks.read_text() == "term\n"  # asked to stop, not killed after 30 s


def test_without_cgroups_shutdown_ends_what_left_the_group_and_its_tags(daemon, tmp_path):
    """No cgroup: a descendant that called setsid and cleared its environment outlives its
    unit's stop (nothing can tell it was the unit's), but not the daemon's shutdown."""
    stray_argv = ["sleep", "4099.5"]
    script = f"setsid sh -c 'exec env -i {shlex.join(stray_argv)}' & exec sleep 1000"
    daemon.service("scrubber", f"sh -c {shlex.quote(script)}", lifecycle=FAST_STOP)
    daemon.start(env={"ZINIT_CGROUP_ROOT": "/proc/zinit-no-cgroup-here"})
    daemon.wait_state("scrubber", "Running")

    def stray():
        found = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == stray_argv]
        return found[0] if found else None

    process = wait_until(stray, what="the scrubbed descendant")
    try:
        assert daemon.cli("stop", "scrubber").returncode == 0
        daemon.wait_state("scrubber", "Exited")
        assert process.is_running() and process.ppid() == daemon.proc.pid  # the subreaper's
        assert daemon.cli("shutdown").returncode == 0
        assert daemon.proc.wait(60) == 0
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
        assert "left behind by units outside their process groups" in daemon.log()
    finally:
        if process.is_running():
            process.kill()  # psutil checks the pid is still that process


def test_a_spawn_short_of_file_descriptors_leaks_none_and_is_tried_again(daemon):
    """At the daemon's fd limit a spawn fails saying so (not blaming the program), closes
    what it had opened, and follows the restart policy: it runs once fds are free."""
    import resource

    daemon.service("later", "sleep 1000", service='status = "stop"\n')
    daemon.start()
    daemon.wait_state("later", "Inactive")
    pid = daemon.proc.pid

    def fds() -> set[int]:
        return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}

    taken = fds()
    free = sorted(set(range(max(taken) + 4)) - taken)
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # Three fds: the control connection and one pipe; the second pipe cannot be had.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (free[2] + 1, limits[1]))
    try:
        result = daemon.cli("start", "later")
        why = "spawn failed: the daemon is out of file descriptors (Too many open files); "
        assert result.returncode == 1, result
        assert f"zinit: 'later' did not start: {why}restarting in " in result.stderr, result
        unit = daemon.status("later")
        assert unit["state"] == "Failed" and unit["reason"].startswith(why), unit
        # A subset: a control connection open when `taken` was read may be closed since.
        wait_until(lambda: fds() <= taken, what="the daemon to hold no fd it did not hold before")
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    assert daemon.wait_state("later", "Running", timeout=30)["restarts"] >= 1


def test_a_crash_with_leftovers_is_stopping_not_running_while_they_are_ended(daemon):
    """After the main process exits, the unit shows Stopping (no pid) while its leftovers
    are ended, then the exit's outcome."""
    script = "(trap '' TERM; exec sleep 1000) & sleep 0.2; exit 3"
    daemon.service(
        "crasher",
        f"sh -c {shlex.quote(script)}",
        lifecycle='restart = "never"\nstop_timeout_ms = 8000\n',
    )
    daemon.start()
    stopping = daemon.wait_state("crasher", "Stopping")
    assert stopping["reason"] == "exited with code 3; stopping what it left behind"
    assert stopping["pid"] is None
    failed = daemon.wait_state("crasher", "Failed", timeout=30)
    assert failed["reason"] == "exited with code 3"


def test_issue_2_kill_sends_the_signal_once(daemon):
    """`zinit kill NAME SIGNAL` delivers the signal once to each process of the unit."""
    daemon.service("counter", py(COUNTING_CHILD) + " stay", lifecycle=FAST_STOP)
    daemon.start()
    daemon.wait_state("counter", "Running")
    daemon.wait_log("counter", "ready")
    result = daemon.cli("kill", "counter", "SIGRTMIN")
    assert result.returncode == 0, result.stderr
    lines = daemon.wait_log("counter", "received")
    assert "received 1" in lines, lines


@pytest.mark.parametrize("spelling", ["SIGUSR1", "usr1", str(int(signal.SIGUSR1))])
def test_kill_cli_sends_the_signal(daemon, spelling):
    code = """
        import signal, time
        signal.signal(signal.SIGUSR1, lambda s, f: print("got SIGUSR1", flush=True))
        print("ready", flush=True)
        while True:
            time.sleep(1)
    """
    daemon.service("target", py(code), lifecycle=FAST_STOP)
    daemon.start()
    pid = daemon.wait_state("target", "Running")["pid"]
    daemon.wait_log("target", "ready")
    result = daemon.cli("kill", "target", spelling)
    assert result.returncode == 0, result.stderr
    daemon.wait_log("target", "got SIGUSR1")
    unit = daemon.status("target")
    assert unit["state"] == "Running"
    assert unit["pid"] == pid


def test_restart_changes_the_pid(daemon):
    daemon.service("svc", "sleep 1000", lifecycle=FAST_STOP)
    daemon.start()
    pid = daemon.wait_state("svc", "Running")["pid"]
    result = daemon.cli("restart", "svc")
    assert result.returncode == 0, result.stderr
    unit = wait_until(
        lambda: (u := daemon.status("svc"))["state"] == "Running" and u["pid"] != pid and u,
        what="a new pid",
    )
    assert pid_alive(unit["pid"])
    assert not pid_alive(pid)


def test_crash_with_zero_delay_comes_back(daemon):
    daemon.service(
        "phoenix", "sleep 1000", lifecycle='restart = "always"\nrestart_delay_ms = 0\n' + FAST_STOP
    )
    daemon.start()
    pid = daemon.wait_state("phoenix", "Running")["pid"]
    os.kill(pid, signal.SIGKILL)
    unit = wait_until(
        lambda: (
            (u := daemon.status("phoenix"))["state"] == "Running"
            and u["pid"] not in (None, pid)
            and u
        ),
        what="phoenix back with a new pid",
    )
    assert unit["restarts"] >= 1
    assert pid_alive(unit["pid"])


# ---- identity and environment ------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="user= needs the daemon to run as root")
def test_user_nobody_runs_as_nobody(daemon):
    nobody = pwd.getpwnam("nobody")
    daemon.service(
        "whoami",
        "sh -c 'echo \"uid=$(id -u) home=$HOME user=$USER logname=$LOGNAME\"'",
        service='oneshot = true\nuser = "nobody"\n',
    )
    daemon.start()
    unit = daemon.wait_state("whoami", "Exited", "Failed")
    assert unit["state"] == "Exited", unit
    lines = [e["line"] for e in daemon.call("logs", name="whoami")]
    want = f"uid={nobody.pw_uid} home={nobody.pw_dir} user=nobody logname=nobody"
    assert want in lines, lines


def test_numeric_user_and_group(daemon):
    """A uid with a passwd entry is that account; one without (as containers use) runs as
    that uid with the same gid and no supplementary groups; a numeric group is taken as is."""
    nobody = pwd.getpwnam("nobody")
    show = "sh -c 'echo \"uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME\"'"
    daemon.service("byuid", show, service=f'oneshot = true\nuser = "{nobody.pw_uid}"\n')
    daemon.service("bare", show, service='oneshot = true\nuser = "54321"\n')
    daemon.service("bare2", show, service='oneshot = true\nuser = "54321"\ngroup = "54322"\n')
    env_show = "sh -c 'echo \"user=$USER logname=$LOGNAME home=$HOME\"'"
    daemon.service("bare_env", env_show, service='oneshot = true\nuser = "54321"\n')
    daemon.service("minus1", show, service='oneshot = true\nuser = "4294967295"\n')
    daemon.start()
    minus1 = daemon.wait_state("minus1", "Failed")  # -1 to the kernel: "stay root"
    assert minus1["reason"].startswith("spawn failed: user '4294967295' is not a valid uid")
    expected = {
        "byuid": f"uid={nobody.pw_uid} gid={nobody.pw_gid}",
        "bare": "uid=54321 gid=54321 groups=54321 ",
        "bare2": "uid=54321 gid=54322 groups=54322 ",
        "bare_env": "user=54321 logname=54321 home=/",
    }
    for name, start in expected.items():
        unit = daemon.wait_state(name, "Exited", "Failed")
        assert unit["state"] == "Exited", unit
        lines = [e["line"] for e in daemon.call("logs", name=name)]
        assert any(line.startswith(start) for line in lines), (name, lines)


def test_env_table_reaches_the_child(daemon):
    daemon.service(
        "envy",
        "sh -c 'echo \"greeting=$GREETING other=$OTHER\"'",
        service='oneshot = true\nenv = { GREETING = "hello world", OTHER = "x=y" }\n',
    )
    daemon.start()
    daemon.wait_state("envy", "Exited")
    lines = [e["line"] for e in daemon.call("logs", name="envy")]
    assert "greeting=hello world other=x=y" in lines, lines


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as stream:
        return next(line.strip()[3:] for line in stream if line.startswith("0::"))


needs_cgroups = pytest.mark.skipif(
    zinit._own_cgroup_dir() is None, reason="needs a writable cgroup v2 mount (CI has one)"
)


def _cgroup_mount() -> str:
    return os.path.normpath(zinit._own_cgroup_dir()).removesuffix(
        _cgroup_of(os.getpid()).rstrip("/")
    )


@needs_cgroups
def test_units_run_in_their_own_cgroups_under_the_daemon(daemon):
    """Each unit's tree lives in <daemon's cgroup>/zinit-<pid>/<unit>, across a restart;
    the daemon itself is outside it between spawns, and the tree goes at a clean exit."""
    daemon.service(
        "tree", "sh -c 'sleep 1000 & exec sleep 1000'", lifecycle="restart_delay_ms = 0\n"
    )
    daemon.start()
    first = daemon.wait_state("tree", "Running")["pid"]
    mount = _cgroup_mount()
    root = os.path.join(zinit._own_cgroup_dir(), f"zinit-{daemon.proc.pid}")
    leaf = os.path.join(root, "tree")
    wait_until(lambda: len(zinit._Cgroups.pids(leaf)) == 2, what="sh's child in the leaf")
    for pid in zinit._Cgroups.pids(leaf):
        assert os.path.normpath(mount + _cgroup_of(pid)) == os.path.normpath(leaf)
    os.kill(first, signal.SIGKILL)
    second = wait_until(
        lambda: (
            (s := daemon.status("tree"))["state"] == "Running"
            and s["pid"] not in (None, first)
            and s["pid"]
        ),
        what="a restart",
    )
    assert os.path.normpath(mount + _cgroup_of(second)) == os.path.normpath(leaf)
    assert os.path.normpath(mount + _cgroup_of(daemon.proc.pid)) != os.path.normpath(leaf)
    assert daemon.stop() == 0
    assert not os.path.exists(root)


@needs_cgroups
def test_the_log_says_when_the_cgroup_mount_makes_starts_wait(daemon):
    """Without favordynmods (when the kernel offers it) a unit entering its cgroup after a
    quiet spell waits an RCU grace period; the daemon says so once, with the fix."""
    mount = _cgroup_mount().rstrip("/") or "/"
    with open("/proc/mounts") as stream:
        options = next(f[3] for f in map(str.split, stream) if f[1] == mount and f[2] == "cgroup2")
    with open("/sys/kernel/cgroup/features") as stream:
        offered = "favordynmods" in stream.read().split()
    daemon.service("one", "sleep 1000")
    daemon.start()
    daemon.wait_state("one", "Running")
    hint = f"mount -o remount,favordynmods {mount}"
    # The log is written by a thread of the daemon's own: it may lag behind the unit.
    wait_until(lambda: "listening on" in daemon.log(), what="the daemon's first log lines")
    if offered and "favordynmods" not in options.split(","):
        assert daemon.log().count(hint) == 1, daemon.log()
    else:
        assert hint not in daemon.log()


def test_the_fd_table_is_sized_for_the_units_before_they_start(daemon):
    """Growing the fd table once threads exist waits an RCU grace period per doubling:
    the daemon sizes it for its units (four slots each) before it starts any thread."""
    for index in range(120):
        daemon.service(f"u{index}", "sleep 1000", service='status = "stop"\n')
    daemon.start()
    with open(f"/proc/{daemon.proc.pid}/status") as stream:
        size = next(int(line.split()[1]) for line in stream if line.startswith("FDSize:"))
    assert size >= 4 * 120 + 64, size  # 256 slots do for 120 stopped units otherwise


@needs_cgroups
def test_a_unit_may_make_cgroups_of_its_own(daemon):
    """A nested supervisor or container engine makes cgroups below its unit's: they work,
    what runs there is stopped with the unit, and they are removed with it."""
    mount = _cgroup_mount()
    script = (
        f'cg="{mount}$(sed -n "s/^0:://p" /proc/self/cgroup)"; '
        'mkdir "$cg/inner"; echo $$ > "$cg/inner/cgroup.procs"; '
        "setsid sleep 1000 & exec sleep 1000"
    )
    daemon.service("nest", f"sh -c {shlex.quote(script)}", lifecycle=FAST_STOP)
    daemon.start()
    daemon.wait_state("nest", "Running")
    root = os.path.join(zinit._own_cgroup_dir(), f"zinit-{daemon.proc.pid}")
    inner = os.path.join(root, "nest", "inner")
    pids = wait_until(
        lambda: len(zinit._Cgroups.pids(inner)) == 2 and zinit._Cgroups.pids(inner),
        what="both processes in the cgroup the unit made",
    )
    assert zinit._Cgroups.pids(os.path.join(root, "nest")) == pids
    with open(os.path.join(inner, "cgroup.type")) as stream:
        assert stream.read().strip() == "domain"
    for pid in pids:
        assert os.path.normpath(mount + _cgroup_of(pid)) == os.path.normpath(inner)
    try:
        assert daemon.cli("stop", "nest").returncode == 0
        wait_until(lambda: not alive(pids), timeout=15, what="the nested processes gone")
        wait_until(lambda: not os.path.exists(inner), what="the nested cgroup removed")
    finally:
        kill_pids(alive(pids))
