"""Dependencies (SPEC section 5) on a real daemon: requires, after, wants, conflicts,
undefined units, cycles, status=stop/ignore, targets, class=system, ordered shutdown.

Orders are read from the daemon's log, where every transition is one line
``name: Old -> New (reason)`` written in the order it happened.
"""

import re
import time

from conftest import pid_alive, wait_until

# Short timeouts so that stops and restarts are quick.
QUICK = 'restart = "never"\nstop_timeout_ms = 2000\n'
RESTARTING = 'restart = "always"\nrestart_delay_ms = 100\nstop_timeout_ms = 2000\n'
TRANSITION = re.compile(r" zinit (?:INFO|WARNING) (\S+): (\w+) -> (\w+) \(", re.MULTILINE)


def transitions(daemon):
    """Every state change, in order: [(unit, old, new), ...].

    From the units' histories while the daemon runs (its log is written by a
    background thread, so the file may lag), from its log once it has exited.
    """
    if daemon.proc.poll() is not None:
        return TRANSITION.findall(daemon.log())
    units = daemon.call("debug_state")["units"]
    entries = sorted(
        (entry["time"], name, entry["from"], entry["to"])
        for name, unit in units.items()
        for entry in unit["history"]
    )
    return [(name, old, new) for _, name, old, new in entries]


def first(events, unit, new, old=None):
    """Index of the first transition of ``unit`` into ``new`` (from ``old``, if given)."""
    for index, (name, frm, to) in enumerate(events):
        if name == unit and to == new and (old is None or frm == old):
            return index
    raise AssertionError(f"no {unit}: {old or '*'} -> {new} in {events}")


def every(events, unit, new):
    """Indexes of every transition of ``unit`` into ``new``, in order."""
    return [index for index, (name, _, to) in enumerate(events) if name == unit and to == new]


def gated(daemon, name, flag):
    """A service that stays Starting until ``flag`` exists (an exec health check)."""
    return daemon.service(
        name,
        "sleep 1000",
        lifecycle='restart = "never"\nstart_timeout_ms = 60000\nstop_timeout_ms = 2000\n',
        health=f'type = "exec"\ncommand = "test -f {flag}"\ninterval_ms = 50\n',
    )


def reason_of(daemon, name, text):
    """Wait until the unit's reason contains ``text``; return its status."""

    def found():
        unit = daemon.status(name)
        return unit if text in unit["reason"] else None

    return wait_until(found, what=f"{text!r} in the reason of {name}")


# -- requires ----------------------------------------------------------------


def test_requires_waits_for_running(daemon, tmp_path):
    flag = tmp_path / "b-ready"
    gated(daemon, "b", flag)
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.start()
    daemon.wait_state("b", "Starting")
    blocked = reason_of(daemon, "a", "waiting for 'b'")
    assert blocked["state"] == "Blocked"
    assert blocked["pid"] is None
    flag.touch()
    daemon.wait_state("a", "Running")
    events = transitions(daemon)
    assert first(events, "b", "Running") < first(events, "a", "Running")


def test_requires_a_oneshot_waits_for_its_success(daemon, tmp_path, python):
    flag = tmp_path / "go"
    daemon.service(
        "b",
        f"sh -c 'while [ ! -f {flag} ]; do sleep 0.05; done'",
        service="oneshot = true\n",
        lifecycle=QUICK,
    )
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.start()
    daemon.wait_state("b", "Starting")
    assert reason_of(daemon, "a", "waiting for 'b'")["state"] == "Blocked"
    flag.touch()
    daemon.wait_state("a", "Running")
    b = daemon.status("b")
    assert b["state"] == "Exited" and b["exit_code"] == 0
    events = transitions(daemon)
    assert first(events, "b", "Exited") < first(events, "a", "Running")


def test_requires_a_failed_unit_stays_blocked(daemon):
    daemon.service("b", "sh -c 'exit 3'", service="oneshot = true\n", lifecycle=QUICK)
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.start()
    assert daemon.wait_state("b", "Failed")["exit_code"] == 3
    a = reason_of(daemon, "a", "which is Failed")
    assert a["state"] == "Blocked"
    assert a["reason"] == "requires 'b', which is Failed (exited with code 3)"
    why = daemon.cli("why", "a")
    assert why.returncode == 0, why.stderr
    assert "a is Blocked: requires 'b', which is Failed (exited with code 3)" in why.stdout
    assert "requires b: Failed (exited with code 3)" in why.stdout
    assert daemon.call("why", name="a")["blocked_by"] == a["reason"]
    assert daemon.status("a")["state"] == "Blocked"  # still, not Failed


def test_stop_cascades_to_dependents_first(daemon):
    daemon.service("b", "sleep 1000", lifecycle=QUICK)
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.start()
    a_pid = daemon.wait_state("a", "Running")["pid"]
    daemon.wait_state("b", "Running")
    result = daemon.cli("stop", "b")
    assert result.returncode == 0, result.stderr
    a = daemon.status("a")
    assert a["state"] == "Exited"
    assert a["reason"].startswith("stopped because it requires 'b', which is stopping")
    assert daemon.status("b")["state"] == "Exited"
    assert not pid_alive(a_pid)
    events = transitions(daemon)
    assert first(events, "a", "Exited") < first(events, "b", "Stopping", old="Running")


def test_stop_cascade_is_transitive(daemon):
    daemon.service("a", "sleep 1000", lifecycle=QUICK)
    daemon.service("b", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["a"]\n')
    daemon.service("c", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.service("free", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    for name in "abc":
        daemon.wait_state(name, "Running")
    free_pid = daemon.wait_state("free", "Running")["pid"]
    assert daemon.cli("stop", "a").returncode == 0
    assert [daemon.status(n)["state"] for n in "abc"] == ["Exited"] * 3
    assert daemon.status("free")["pid"] == free_pid
    events = transitions(daemon)
    assert first(events, "c", "Exited") < first(events, "b", "Stopping")
    assert first(events, "b", "Exited") < first(events, "a", "Stopping")


def test_a_crash_that_the_required_unit_restarts_from_does_not_stop_dependents(daemon):
    daemon.service("b", "sleep 1000", lifecycle=RESTARTING)
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.start()
    a_pid = daemon.wait_state("a", "Running")["pid"]
    b_pid = daemon.wait_state("b", "Running")["pid"]
    assert daemon.cli("kill", "b", "SIGKILL").returncode == 0
    wait_until(lambda: daemon.status("b")["restarts"] == 1, what="b to restart")
    b = daemon.wait_state("b", "Running")
    assert b["pid"] != b_pid
    a = daemon.status("a")
    assert a["state"] == "Running" and a["pid"] == a_pid
    assert pid_alive(a_pid)
    assert ("a", "Running", "Stopping") not in transitions(daemon)


def test_restart_restarts_the_units_that_require_it(daemon):
    daemon.service("b", "sleep 1000", lifecycle=QUICK)
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.service("c", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["a"]\n')
    daemon.service("other", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    before = {n: daemon.wait_state(n, "Running")["pid"] for n in ("a", "b", "c", "other")}
    result = daemon.cli("restart", "b")
    assert result.returncode == 0, result.stderr
    after = {n: daemon.wait_state(n, "Running")["pid"] for n in ("a", "b", "c", "other")}
    for name in ("a", "b", "c"):
        assert after[name] != before[name], name
        assert not pid_alive(before[name])
    assert after["other"] == before["other"]


def migration_stack(daemon, tmp_path, *, app=True):
    """db; mig, a oneshot that requires db and notes each run in a file; app, which requires
    mig (unless told not to).  Starts the daemon; returns the file of mig's runs."""
    runs = tmp_path / "runs"
    daemon.service("db", "sleep 1000", lifecycle=QUICK)
    daemon.service(
        "mig",
        f"sh -c 'echo run >> {runs}'",
        service="oneshot = true\n",
        dependencies='requires = ["db"]\n',
    )
    if app:
        daemon.service("app", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["mig"]\n')
    daemon.start()
    return runs


def test_a_finished_oneshot_runs_again_when_what_it_requires_comes_back(daemon, tmp_path):
    """A migration oneshot that was undone by its database's stop runs again, before the
    app that needs it, when the app starts again (or at once on restart db); pulled in
    while its database stayed up, it stays done."""
    runs = migration_stack(daemon, tmp_path)
    app_pid = daemon.wait_state("app", "Running")["pid"]
    assert daemon.status("mig")["state"] == "Exited"
    assert daemon.cli("stop", "app").returncode == 0
    assert daemon.cli("start", "app").returncode == 0
    app_pid = daemon.wait_state("app", "Running")["pid"]
    assert runs.read_text() == "run\n"  # pulled in while done: not run again

    assert daemon.cli("stop", "db").returncode == 0
    app = daemon.wait_state("app", "Exited")
    # The stop reached app through the finished oneshot: the reason says how.
    assert app["reason"].startswith(
        "stopped because it requires 'mig', which requires 'db', which is stopping "
        "(stopped by request)"
    )
    assert not pid_alive(app_pid)
    mig = daemon.status("mig")
    assert mig["state"] == "Exited"
    assert mig["reason"].startswith("stopped because it requires 'db', which is stopping")
    assert {p["name"] for p in daemon.call("check")["problems"]} == {"db", "mig", "app"}

    assert daemon.cli("start", "app").returncode == 0
    daemon.wait_state("app", "Running")
    assert runs.read_text() == "run\nrun\n"
    assert daemon.cli("restart", "db").returncode == 0
    wait_until(lambda: runs.read_text() == "run\nrun\nrun\n", what="mig's third run")
    daemon.wait_state("app", "Running")
    events = transitions(daemon)
    mig_runs = [i for i, event in enumerate(events) if event == ("mig", "Starting", "Exited")]
    app_starts = every(events, "app", "Running")
    assert (len(mig_runs), len(app_starts)) == (3, 4), events
    assert mig_runs[1] < app_starts[2] and mig_runs[2] < app_starts[3], events


def test_a_changed_finished_oneshot_runs_again_on_reload(daemon, tmp_path):
    """SPEC 11: a changed unit restarts with its new config; for a finished oneshot (a
    migration with a new step) that is a new run, and what requires it restarts after."""
    runs = migration_stack(daemon, tmp_path)
    app_pid = daemon.wait_state("app", "Running")["pid"]
    daemon.service(
        "mig",
        f"sh -c 'echo run v2 >> {runs}'",
        service="oneshot = true\n",
        dependencies='requires = ["db"]\n',
    )
    reply = daemon.call("reload")
    assert reply["changed"] == ["mig"], reply
    wait_until(lambda: runs.read_text() == "run\nrun v2\n", what="mig's run with its new step")
    assert daemon.wait_state("app", "Running")["pid"] != app_pid
    assert daemon.status("mig")["state"] == "Exited"


def test_a_finished_oneshot_alone_runs_again_when_its_removed_requirement_is_back(daemon, tmp_path):
    """Nothing else pulls it in: undone with the removed unit, it waits for it and runs."""
    runs = migration_stack(daemon, tmp_path, app=False)
    wait_until(lambda: runs.exists() and runs.read_text() == "run\n", what="mig's first run")
    db_text = (daemon.config_dir / "db.toml").read_text()
    (daemon.config_dir / "db.toml").unlink()
    result = daemon.cli("reload")
    assert "stopped, as they require a removed unit: mig" in result.stdout, result.stdout
    reason_of(daemon, "mig", "requires 'db', which is not defined")
    (daemon.config_dir / "db.toml").write_text(db_text)
    assert daemon.cli("reload").returncode == 0
    wait_until(lambda: runs.read_text() == "run\nrun\n", what="mig's run once db is back")
    assert daemon.call("check")["ok"] is True


def test_a_finished_oneshot_runs_again_when_its_removed_requirement_is_added_back(daemon, tmp_path):
    runs = migration_stack(daemon, tmp_path)
    daemon.wait_state("app", "Running")
    assert daemon.cli("remove-service", "db").returncode == 0
    reason_of(daemon, "mig", "requires 'db', which is not defined")
    assert daemon.wait_state("app", "Blocked")
    result = daemon.cli("add-service", '[service]\nname = "db"\nexec = "sleep 1000"\n')
    assert result.returncode == 0, result.stderr
    daemon.wait_state("app", "Running")
    assert runs.read_text() == "run\nrun\n"


# -- after -------------------------------------------------------------------


def test_after_orders_a_joint_start(daemon, tmp_path):
    flag = tmp_path / "b-ready"
    gated(daemon, "b", flag)
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='after = ["b"]\n')
    daemon.start()
    daemon.wait_state("b", "Starting")
    a = reason_of(daemon, "a", "waiting for 'b' to start first")
    assert a["state"] == "Blocked"
    flag.touch()
    daemon.wait_state("a", "Running")
    events = transitions(daemon)
    assert first(events, "b", "Running") < first(events, "a", "Running")


def test_after_never_pulls_the_other_unit_in(daemon):
    daemon.service("b", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n')
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='after = ["b"]\n')
    daemon.start()
    daemon.wait_state("a", "Running")
    assert daemon.cli("stop", "a").returncode == 0
    assert daemon.cli("start", "a").returncode == 0
    daemon.wait_state("a", "Running")
    assert daemon.status("b")["state"] == "Inactive"
    assert not any(name == "b" for name, _, _ in transitions(daemon))


# -- wants -------------------------------------------------------------------


def test_wants_pulls_the_other_unit_in(daemon):
    daemon.service("b", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n')
    daemon.service(
        "a",
        "sleep 1000",
        lifecycle=QUICK,
        service='status = "stop"\n',
        dependencies='wants = ["b"]\n',
    )
    daemon.start()
    assert daemon.status("b")["state"] == "Inactive"
    assert daemon.cli("start", "a").returncode == 0
    daemon.wait_state("a", "Running")
    b = daemon.wait_state("b", "Running")
    assert b["reason"].startswith("pulled in by 'a'")


def test_wants_waits_for_the_wanted_start_to_settle(daemon, tmp_path):
    flag = tmp_path / "b-ready"
    gated(daemon, "b", flag)
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='wants = ["b"]\n')
    daemon.start()
    daemon.wait_state("b", "Starting")
    a = reason_of(daemon, "a", "waiting for wanted 'b' to settle")
    assert a["state"] == "Blocked"
    flag.touch()
    daemon.wait_state("a", "Running")
    events = transitions(daemon)
    assert first(events, "b", "Running") < first(events, "a", "Running")


def test_a_wanted_unit_failing_does_not_block(daemon):
    daemon.service("b", "sh -c 'exit 4'", service="oneshot = true\n", lifecycle=QUICK)
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='wants = ["b"]\n')
    daemon.start()
    daemon.wait_state("a", "Running")
    assert daemon.wait_state("b", "Failed")["exit_code"] == 4
    events = transitions(daemon)
    assert first(events, "b", "Failed") < first(events, "a", "Running")


def test_after_orders_a_restart_cascade(daemon):
    """Units restarted together with what they require still wait for their 'after' units."""
    daemon.service("base", "sleep 1000", lifecycle=QUICK)
    daemon.service(
        "slow", "sleep 1", service="oneshot = true\n", dependencies='requires = ["base"]\n'
    )
    daemon.service(
        "late",
        "sleep 1000",
        lifecycle=QUICK,
        dependencies='requires = ["base"]\nafter = ["slow"]\n',
    )
    daemon.start()
    daemon.wait_state("late", "Running")
    assert daemon.cli("restart", "base").returncode == 0
    wait_until(
        lambda: len(every(transitions(daemon), "late", "Running")) == 2,
        what="late running again",
    )
    events = transitions(daemon)
    done, started = every(events, "slow", "Exited"), every(events, "late", "Running")
    assert len(done) == 2, events  # slow requires base: it ran again
    assert done[1] < started[1], events


# -- conflicts ---------------------------------------------------------------


def test_conflicts_starting_one_stops_the_other_both_ways(daemon):
    daemon.service("b", "sleep 1000", lifecycle=QUICK)
    daemon.service(
        "a",
        "sleep 1000",
        lifecycle=QUICK,
        service='status = "stop"\n',
        dependencies='conflicts = ["b"]\n',
    )
    daemon.start()
    b_pid = daemon.wait_state("b", "Running")["pid"]
    assert daemon.status("a")["state"] == "Inactive"

    assert daemon.cli("start", "a").returncode == 0
    daemon.wait_state("a", "Running")
    b = daemon.wait_state("b", "Exited")
    assert "conflicts with 'a'" in b["reason"]
    assert not pid_alive(b_pid)

    a_pid = daemon.status("a")["pid"]
    assert daemon.cli("start", "b").returncode == 0  # declared on a only: still applies
    daemon.wait_state("b", "Running")
    a = daemon.wait_state("a", "Exited")
    assert "conflicts with 'b'" in a["reason"]
    assert not pid_alive(a_pid)
    events = transitions(daemon)
    assert first(events, "b", "Exited") < first(events, "a", "Running")
    assert first(events, "a", "Exited") < first(events, "b", "Running", old="Exited")


def test_a_unit_stopped_for_a_conflict_names_the_unit_it_conflicts_with(daemon):
    """Starting a target that pulls in green stops blue "for green", not "for the target"."""
    daemon.service("blue", "sleep 1000", lifecycle=QUICK)
    daemon.service(
        "green", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n',
        dependencies='conflicts = ["blue"]\n',
    )  # fmt: skip
    daemon.write("stack", '[target]\nname = "stack"\n[dependencies]\nrequires = ["green"]\n')
    daemon.start()
    daemon.wait_state("blue", "Running")  # at boot the target lost to it: it runs
    assert daemon.cli("start", "stack").returncode == 0
    blue = daemon.wait_state("blue", "Exited")
    assert blue["reason"].startswith("stopped: conflicts with 'green'"), blue


def test_conflicts_at_boot_the_first_by_name_starts(daemon):
    daemon.service("alpha", "sleep 1000", lifecycle=QUICK)
    daemon.service("beta", "sleep 1000", lifecycle=QUICK, dependencies='conflicts = ["alpha"]\n')
    daemon.start()
    daemon.wait_state("alpha", "Running")
    beta = reason_of(daemon, "beta", "conflicts")
    assert beta["state"] == "Inactive"
    assert (
        beta["reason"] == "not started at boot: conflicts with 'alpha', which starts first by name"
    )
    why = daemon.cli("why", "beta")
    assert "beta is Inactive: not started at boot: conflicts with 'alpha'" in why.stdout


def test_conflicts_inside_one_start_all(daemon):
    """start-all names both rivals: the first by name runs, the other is not started."""
    daemon.service("ca", "sleep 1000", lifecycle=QUICK, dependencies='conflicts = ["cb"]\n')
    daemon.service("cb", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n')
    daemon.start()
    daemon.wait_state("ca", "Running")
    for _ in range(2):
        assert daemon.cli("stop-all").returncode == 0
        daemon.wait_state("ca", "Exited")
        assert daemon.cli("start-all").returncode == 0
        daemon.wait_state("ca", "Running")
        cb = reason_of(daemon, "cb", "conflicts with 'ca'")
        assert cb["state"] in ("Inactive", "Exited") and cb["pid"] is None
        assert not every(transitions(daemon), "cb", "Running")


def test_conflicts_with_a_unit_pulled_in_at_boot(daemon):
    """A boot unit pulls in a rival of another boot unit: the named one wins, never both."""
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='conflicts = ["b"]\n')
    daemon.service("b", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n')
    daemon.service("c", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.start()
    daemon.wait_state("a", "Running")
    b = reason_of(daemon, "b", "not started: conflicts with 'a', which is starting with it")
    assert b["state"] == "Inactive" and b["pid"] is None
    c = reason_of(daemon, "c", "requires 'b'")
    assert c["state"] == "Blocked"
    assert daemon.status("a")["state"] == "Running"


def test_a_start_never_stops_a_running_requirement_for_a_wanted_rival(daemon):
    """web requires zdb (running) and wants atool, which conflicts with zdb: starting web
    leaves zdb alone and does not start atool."""
    daemon.service("zdb", "sleep 1000", lifecycle=QUICK)
    daemon.service(
        "web", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n',
        dependencies='requires = ["zdb"]\nwants = ["atool"]\n',
    )  # fmt: skip
    daemon.service(
        "atool", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n',
        dependencies='conflicts = ["zdb"]\n',
    )  # fmt: skip
    daemon.start()
    zdb_pid = daemon.wait_state("zdb", "Running")["pid"]
    assert daemon.cli("start", "web").returncode == 0
    daemon.wait_state("web", "Running")
    assert daemon.status("zdb")["pid"] == zdb_pid
    atool = daemon.status("atool")
    assert atool["state"] == "Inactive" and atool["pid"] is None, atool
    assert atool["reason"] == "not started: conflicts with 'zdb', which is running"


def test_a_required_unit_wins_over_a_running_wanted_rival(daemon):
    """a requires b and wants c; c runs and conflicts with b: starting a stops c, runs b."""
    daemon.service("c", "sleep 1000", lifecycle=QUICK, dependencies='conflicts = ["b"]\n')
    daemon.service("b", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n')
    daemon.service(
        "a", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n',
        dependencies='requires = ["b"]\nwants = ["c"]\n',
    )  # fmt: skip
    daemon.start()
    daemon.wait_state("c", "Running")
    assert daemon.cli("start", "a").returncode == 0
    daemon.wait_state("a", "Running")
    assert daemon.status("b")["state"] == "Running"
    c = daemon.wait_state("c", "Exited")
    assert "conflicts" in c["reason"], c


# -- undefined units ---------------------------------------------------------


def test_undefined_requirement_blocks_until_added(daemon):
    daemon.service("web", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["db"]\n')
    daemon.start()
    web = reason_of(daemon, "web", "not defined")
    assert web["state"] == "Blocked"
    assert web["reason"] == "requires 'db', which is not defined"
    assert "web is Blocked: requires 'db', which is not defined" in daemon.cli("why", "web").stdout
    result = daemon.cli("add-service", '[service]\nname = "db"\nexec = "sleep 1000"\n')
    assert result.returncode == 0, result.stderr
    daemon.wait_state("db", "Running")
    daemon.wait_state("web", "Running")


def test_undefined_requirement_blocks_until_reload(daemon):
    daemon.service("web", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["db"]\n')
    daemon.start()
    reason_of(daemon, "web", "requires 'db', which is not defined")
    daemon.service("db", "sleep 1000", lifecycle=QUICK)
    result = daemon.cli("reload")
    assert result.returncode == 0, result.stderr
    daemon.wait_state("db", "Running")
    daemon.wait_state("web", "Running")


def test_removed_requirement_blocks_its_dependents_until_it_returns(daemon):
    """remove-service or a reload that drops db stops web, which waits Blocked for db's return."""
    db_text = '[service]\nexec = "sleep 1000"\n[lifecycle]\nstop_timeout_ms = 2000\n'
    daemon.write("db", db_text)
    daemon.service("web", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["db"]\n')
    daemon.start()
    web_pid = daemon.wait_state("web", "Running")["pid"]

    removed = daemon.cli("remove-service", "db")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines()[1:] == [
        "stopped with it, as they require it: web (they start again once it is back)"
    ], removed.stdout
    web = reason_of(daemon, "web", "requires 'db', which is not defined")
    assert web["state"] == "Blocked" and not pid_alive(web_pid)
    # Back with status=stop: web's start pulls it in, as at boot.
    added = daemon.cli(
        "add-service", '[service]\nname = "db"\nexec = "sleep 1000"\nstatus = "stop"\n'
    )
    assert added.returncode == 0, added.stderr
    web_pid = daemon.wait_state("web", "Running")["pid"]
    daemon.wait_state("db", "Running")

    (daemon.config_dir / "db.toml").unlink()
    reloaded = daemon.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert (
        "stopped, as they require a removed unit: web (they start again once it is back)"
        in reloaded.stdout.splitlines()
    ), reloaded.stdout
    web = reason_of(daemon, "web", "requires 'db', which is not defined")
    assert web["state"] == "Blocked" and not pid_alive(web_pid)
    daemon.write("db", db_text.replace("[lifecycle]", 'status = "stop"\n[lifecycle]'))
    assert daemon.cli("reload").returncode == 0
    daemon.wait_state("db", "Running")
    daemon.wait_state("web", "Running")


def test_undefined_wanted_or_after_unit_is_only_a_warning(daemon):
    daemon.service(
        "web",
        "sleep 1000",
        lifecycle=QUICK,
        dependencies='wants = ["cache"]\nafter = ["migrate"]\n',
    )
    daemon.start()
    web = daemon.wait_state("web", "Running")
    assert web["warnings"] == [
        "wants 'cache', which is not defined",
        "after 'migrate', which is not defined",
    ]
    assert daemon.call("why", name="web")["warnings"] == web["warnings"]
    status = daemon.cli("status", "web")
    assert "warning:  wants 'cache', which is not defined" in status.stdout


# -- cycles ------------------------------------------------------------------


def test_cycle_blocks_its_members_and_the_rest_starts(daemon):
    daemon.service("a", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.service("b", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["a"]\n')
    daemon.service("c", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    daemon.wait_state("c", "Running")
    a = reason_of(daemon, "a", "cycle")
    b = reason_of(daemon, "b", "cycle")
    assert (a["state"], a["reason"]) == ("Blocked", "dependency cycle: a → b → a")
    assert (b["state"], b["reason"]) == ("Blocked", "dependency cycle: b → a → b")
    assert daemon.call("why", name="a")["cycle"] == "a → b → a"
    assert "cycle: a → b → a" in daemon.cli("why", "a").stdout
    assert daemon.proc.poll() is None


def test_a_reload_that_makes_a_cycle_says_so_and_fails(daemon):
    """The units of a cycle made by a reload stop and wait Blocked; reload exits 1 naming it."""
    daemon.service("web", "sleep 1000", lifecycle=QUICK)
    daemon.service("app", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["web"]\n')
    daemon.start()
    daemon.wait_state("app", "Running")
    path = daemon.service("web", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["app"]\n')
    result = daemon.cli("reload")
    assert result.returncode == 1, result
    assert f"zinit: reload: {path}: dependency cycle: web → app → web" in result.stderr
    reply = daemon.call("reload")
    assert {e["unit"] for e in reply["errors"]} == {"app", "web"}, reply
    assert reason_of(daemon, "web", "cycle")["state"] == "Blocked"


# -- status=stop / status=ignore ----------------------------------------------


def test_status_stop_units_are_pulled_in_by_requires(daemon):
    daemon.service("db", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n')
    daemon.service("lonely", "sleep 1000", lifecycle=QUICK, service='status = "stop"\n')
    daemon.service("web", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["db"]\n')
    daemon.start()
    daemon.wait_state("web", "Running")
    db = daemon.wait_state("db", "Running")
    assert db["status"] == "stop"
    assert db["reason"].startswith("pulled in by 'web'")
    assert daemon.status("lonely")["state"] == "Inactive"


def test_status_ignore_units_are_never_started(daemon):
    daemon.service("x", "sleep 1000", lifecycle=QUICK, service='status = "ignore"\n')
    daemon.service("web", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["x"]\n')
    daemon.service("ok", "sleep 1000", lifecycle=QUICK, dependencies='wants = ["x"]\n')
    daemon.start()
    daemon.wait_state("ok", "Running")
    web = reason_of(daemon, "web", "status=ignore")
    assert (web["state"], web["reason"]) == ("Blocked", "requires 'x', which has status=ignore")
    result = daemon.cli("start", "x")
    assert result.returncode == 1
    assert "'x' has status=ignore: zinit never starts it" in result.stderr
    assert daemon.cli("restart", "x").returncode == 1
    result = daemon.cli("start-all")  # web can never start: start-all says so
    assert result.returncode == 1, result
    assert "'web' did not start: requires 'x', which has status=ignore" in result.stderr
    assert result.stdout == "started: ok\n", result.stdout
    assert daemon.status("x")["state"] == "Inactive"
    assert daemon.status("x")["pid"] is None


# -- targets -----------------------------------------------------------------


def test_target_is_running_when_everything_required_is_up(daemon, tmp_path):
    flag = tmp_path / "web-ready"
    gated(daemon, "web", flag)
    daemon.service("migrate", "true", service="oneshot = true\n", lifecycle=QUICK)
    daemon.write("app", '[target]\n[dependencies]\nrequires = ["web", "migrate"]\n')
    daemon.start()
    daemon.wait_state("migrate", "Exited")
    app = reason_of(daemon, "app", "waiting for 'web'")
    assert app["state"] == "Blocked"
    assert app["kind"] == "target" and app["pid"] is None
    flag.touch()
    app = daemon.wait_state("app", "Running")
    assert app["pid"] is None
    events = transitions(daemon)
    assert first(events, "web", "Running") < first(events, "app", "Running")
    # stopping what it requires takes the target down first
    assert daemon.cli("stop", "web").returncode == 0
    assert daemon.status("app")["state"] == "Exited"


# -- class=system ------------------------------------------------------------


def test_system_units_are_skipped_by_the_bulk_commands(daemon):
    stopped = 'status = "stop"\n'
    daemon.service("usr", "sleep 1000", lifecycle=QUICK, service=stopped)
    sys_path = daemon.service(
        "sys", "sleep 1000", lifecycle=QUICK, service=stopped + 'class = "system"\n'
    )
    daemon.start()
    result = daemon.cli("--json", "start-all")
    assert result.returncode == 0, result.stderr
    assert '"sys"' not in result.stdout and '"usr"' in result.stdout
    daemon.wait_state("usr", "Running")
    assert daemon.status("sys")["state"] == "Inactive"

    assert daemon.cli("start", "sys").returncode == 0
    sys_pid = daemon.wait_state("sys", "Running")["pid"]
    assert daemon.cli("stop-all").returncode == 0
    assert daemon.status("usr")["state"] == "Exited"
    assert daemon.status("sys")["pid"] == sys_pid

    result = daemon.cli("delete-all")
    assert result.returncode == 0, result.stderr
    assert [unit["name"] for unit in daemon.call("list")] == ["sys"]
    assert not (daemon.config_dir / "usr.toml").exists()
    assert sys_path.exists()
    assert daemon.status("sys")["pid"] == sys_pid


# -- shutdown ----------------------------------------------------------------


def test_ordered_shutdown_dependents_first_user_before_system(daemon):
    daemon.service("a", "sleep 1000", lifecycle=QUICK)
    daemon.service("b", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["a"]\n')
    daemon.service("c", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["b"]\n')
    daemon.service("s", "sleep 1000", lifecycle=QUICK, service='class = "system"\n')
    daemon.start()
    pids = [daemon.wait_state(name, "Running")["pid"] for name in ("a", "b", "c", "s")]
    assert daemon.stop() == 0
    for pid in pids:
        assert not pid_alive(pid)
    events = transitions(daemon)
    assert first(events, "c", "Exited") < first(events, "b", "Stopping")
    assert first(events, "b", "Exited") < first(events, "a", "Stopping")
    assert first(events, "a", "Exited") < first(events, "s", "Stopping")


# -- parallel ----------------------------------------------------------------


def test_independent_units_start_in_parallel(daemon):
    """20 oneshots of 1 s each: in series that is 20 s; in parallel about one."""
    count = 20
    for index in range(count):
        daemon.service(f"job{index:02d}", "sleep 1", service="oneshot = true\n", lifecycle=QUICK)
    names = ", ".join(f'"job{index:02d}"' for index in range(count))
    daemon.write("all", f"[target]\n[dependencies]\nrequires = [{names}]\n")
    began = time.monotonic()
    daemon.start()
    daemon.wait_state("all", "Running", timeout=60)
    elapsed = time.monotonic() - began
    for unit in daemon.call("list"):
        if unit["name"] != "all":
            assert (unit["state"], unit["exit_code"]) == ("Exited", 0), unit
    assert elapsed < count / 2, f"took {elapsed:.1f}s: not in parallel"


def test_independent_units_stop_in_parallel(daemon):
    """10 units that each take 1 s to stop: stop-all takes about one second, not ten."""
    count = 10
    slow_stop = "sh -c 'trap \"sleep 1; exit 0\" TERM; while :; do sleep 0.1; done'"
    for index in range(count):
        daemon.service(
            f"slow{index}", slow_stop, lifecycle='restart = "never"\nstop_timeout_ms = 8000\n'
        )
    daemon.start()
    for index in range(count):
        daemon.wait_state(f"slow{index}", "Running")
    began = time.monotonic()
    result = daemon.cli("stop-all")
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    for index in range(count):
        unit = daemon.status(f"slow{index}")
        assert (unit["state"], unit["exit_code"]) == ("Exited", 0), unit
    assert 1.0 <= elapsed < count / 2, f"took {elapsed:.1f}s: not in parallel"
