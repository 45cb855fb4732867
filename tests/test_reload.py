"""Hot reload (SPEC section 11), add-service and remove-service, on a real daemon."""

import json
import os
import signal

import pytest
from conftest import pid_alive, wait_until

QUICK = 'restart = "never"\nstop_timeout_ms = 2000\n'
BROKEN_KEY = (
    "service.restat: unknown key (allowed: name, exec, dir, oneshot, status, class, env, "
    "user, group, critical)"
)

#: reload's "xinet" part when no proxy file is there.
NO_PROXY_CHANGES = {
    "added": [],
    "removed": [],
    "changed": [],
    "unchanged": [],
    "errors": [],
    "warnings": [],
}


def echo_env(daemon, name, value, **sections):
    """A service that prints its V and then sleeps: its log shows which config it runs."""
    service = f'env = {{ V = "{value}" }}\n' + sections.pop("service", "")
    return daemon.service(
        name, "sh -c 'echo V=$V; exec sleep 1000'", service=service, lifecycle=QUICK, **sections
    )


def four_cases(daemon):
    """Set up keep/change/drop, start the daemon, then edit the directory for a reload."""
    echo_env(daemon, "keep", "same")
    echo_env(daemon, "change", "one")
    echo_env(daemon, "drop", "x")
    daemon.start()
    pids = {name: daemon.wait_state(name, "Running")["pid"] for name in ("keep", "change", "drop")}
    daemon.wait_log("change", "V=one")
    echo_env(daemon, "change", "two")
    (daemon.config_dir / "drop.toml").unlink()
    echo_env(daemon, "fresh", "new")
    echo_env(daemon, "later", "new", service='status = "stop"\n')
    return pids


def check_four_cases(daemon, pids):
    keep = daemon.status("keep")
    assert keep["state"] == "Running" and keep["pid"] == pids["keep"]
    change = daemon.wait_state("change", "Running")
    assert change["pid"] != pids["change"]
    assert not pid_alive(pids["change"])
    daemon.wait_log("change", "V=two")
    assert not pid_alive(pids["drop"])
    assert "drop" not in [unit["name"] for unit in daemon.call("list")]
    with pytest.raises(Exception, match="unknown unit 'drop'"):
        daemon.status("drop")
    daemon.wait_state("fresh", "Running")
    daemon.wait_log("fresh", "V=new")
    assert daemon.status("later")["state"] == "Inactive"


def test_reload_through_the_cli(daemon):
    pids = four_cases(daemon)
    result = daemon.cli("--json", "reload")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "added": ["fresh", "later"],
        "removed": ["drop"],
        "changed": ["change"],
        "unchanged": ["keep"],
        "stopped": [],
        "errors": [],
        "xinet": NO_PROXY_CHANGES,
    }
    check_four_cases(daemon, pids)


def test_reload_text_reply(daemon):
    four_cases(daemon)
    result = daemon.cli("reload")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "added: fresh, later",
        "removed: drop",
        "changed: change",
        "unchanged: keep",
    ]


def test_reload_on_sighup(daemon):
    pids = four_cases(daemon)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: not pid_alive(pids["drop"]), what="drop to be stopped")
    wait_until(
        lambda: "fresh" in [unit["name"] for unit in daemon.call("list")], what="fresh to appear"
    )
    check_four_cases(daemon, pids)
    assert daemon.proc.poll() is None
    # Nobody sees a SIGHUP's reply: the daemon's log says what it did.
    wait_until(
        lambda: "reload: added fresh, later; removed drop; changed change" in daemon.log(),
        what="the reload summary in the log",
    )


def test_reload_with_nothing_changed_touches_nothing(daemon):
    echo_env(daemon, "a", "1")
    echo_env(daemon, "b", "1", service='status = "stop"\n')
    daemon.start()
    pid = daemon.wait_state("a", "Running")["pid"]
    assert daemon.call("reload") == {
        "added": [],
        "removed": [],
        "changed": [],
        "unchanged": ["a", "b"],
        "stopped": [],
        "errors": [],
        "xinet": NO_PROXY_CHANGES,
    }
    assert daemon.status("a")["pid"] == pid
    assert daemon.status("b")["state"] == "Inactive"


def test_broken_file_keeps_the_old_config(daemon):
    echo_env(daemon, "web", "old")
    daemon.start()
    pid = daemon.wait_state("web", "Running")["pid"]
    path = daemon.write("web", '[service]\nexec = "sleep 1000"\nrestat = "x"\n')
    message = f"{path}:3:1: {BROKEN_KEY}"
    result = daemon.cli("--json", "reload")
    assert result.returncode == 1, "a file with an error makes reload fail (the rest applies)"
    reply = json.loads(result.stdout)
    assert (reply["added"], reply["removed"], reply["changed"]) == ([], [], [])
    assert "web" not in reply["unchanged"]
    assert reply["errors"] == [
        {
            "unit": "web",
            "file": str(path),
            "key": "service.restat",
            "line": 3,
            "col": 1,
            "reason": BROKEN_KEY.split(": ", 1)[1],
            "message": message,
            "also": [],
        }
    ]
    web = daemon.status("web")
    assert (web["state"], web["pid"]) == ("Running", pid)
    warning = f"config file has an error, still using the old config: {message}"
    assert warning in web["warnings"]
    [row] = [unit for unit in daemon.call("list") if unit["name"] == "web"]
    assert warning in row["warnings"]
    assert warning in daemon.cli("status", "web").stdout
    again = daemon.cli("reload")
    assert again.returncode == 1 and message in again.stderr
    daemon.wait_log("web", "V=old")

    # fixed again: the unit takes the new config
    echo_env(daemon, "web", "new")
    assert daemon.call("reload")["changed"] == ["web"]
    daemon.wait_log("web", "V=new")
    assert daemon.wait_state("web", "Running")["warnings"] == []


def test_a_unit_file_given_a_stray_xinet_table_keeps_its_unit(daemon):
    """A unit's file with an [xinet] table added stays a broken unit file (kept on its old
    config), not a broken proxy file whose unit would be removed."""
    path = daemon.service("web", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    pid = daemon.wait_state("web", "Running")["pid"]
    path.write_text(path.read_text() + '[xinet]\nlisten = "127.0.0.1:1"\n')
    reply = json.loads(daemon.cli("--json", "reload").stdout)
    assert reply["removed"] == [] and [e["unit"] for e in reply["errors"]] == ["web"], reply
    assert reply["xinet"]["errors"] == [], reply
    web = daemon.status("web")
    assert (web["state"], web["pid"]) == ("Running", pid), web
    assert any(w.startswith("config file has an error") for w in web["warnings"]), web
    # Rewritten as a proxy's file with an error, it keeps the unit too (SPEC 11).
    path.write_text('[xinet]\nlisten = "127.0.0.1:1"\n')
    reply = daemon.call("reload")
    assert reply["removed"] == [] and [e["unit"] for e in reply["errors"]] == ["web"], reply
    assert daemon.status("web")["pid"] == pid


def test_issue_2_broken_file_on_reload_shows_in_the_list_table(daemon):
    """SPEC 3: a file's error shows in `zinit list`, also for a unit kept on its old config."""
    daemon.service("web", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    daemon.wait_state("web", "Running")
    daemon.write("web", '[service]\nexec = "sleep 1000"\nrestat = "x"\n')
    assert daemon.cli("reload").returncode == 1
    table = daemon.cli("list")
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if line.startswith("web ")]
    assert "service.restat" in row, table.stdout


def test_a_file_with_several_problems_reports_them_all_on_reload(daemon):
    """The reply and the unit's warning carry the first problem and say how many more there
    are; the reply's ``also`` and the daemon log have each of the others."""
    daemon.service("web", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    daemon.wait_state("web", "Running")
    path = daemon.write("web", '[service]\nexec = "sleep 1000"\nrestat = "x"\nstatus = 7\n')
    reply = json.loads(daemon.cli("--json", "reload").stdout)
    [error] = reply["errors"]
    first = f"{path}:3:1: service.restat: {BROKEN_KEY.split(': ', 1)[1]}"
    second = f"{path}:4:10: service.status: expected start, stop or ignore, got 7"
    assert error["message"] == first
    assert [problem["message"] for problem in error["also"]] == [second]
    warning = f"config file has an error, still using the old config: {first} (and 1 more"
    assert any(w.startswith(warning) for w in daemon.status("web")["warnings"])
    printed = daemon.cli("reload").stderr.splitlines()
    assert printed == [f"zinit: reload: {first}", f"zinit: reload: {second}"]
    why = daemon.cli("why", "web").stdout
    assert f"(and 1 more in this file)\n    and {second}\n" in why, why
    log = daemon.log()
    assert f"reload: {first}\n" in log and f"reload: {second}\n" in log, log


def test_new_broken_file_is_listed_as_failed(daemon):
    daemon.service("ok", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    daemon.wait_state("ok", "Running")
    path = daemon.write("bad", '[service]\nexec = "sleep 1000"\n[servce]\n')
    message = (
        f"{path}:3:2: servce: unknown table (allowed: service, target, dependencies, "
        "lifecycle, health, logging, xinet)"
    )
    reply = daemon.call("reload")
    assert reply["added"] == [] and reply["unchanged"] == ["ok"]
    assert [error["message"] for error in reply["errors"]] == [message]
    [row] = [unit for unit in daemon.call("list") if unit["name"] == "bad"]
    assert (row["state"], row["reason"]) == ("Failed", f"config error: {message}")
    assert f"config error: {message}" in daemon.cli("list").stdout
    assert f"bad is Failed: config error: {message}" in daemon.cli("why", "bad").stdout
    assert daemon.status("ok")["state"] == "Running"
    # The file goes: the entry list showed goes too, and reload says so.
    path.unlink()
    reply = daemon.call("reload")
    assert reply["removed"] == ["bad"] and reply["errors"] == [], reply
    assert [unit["name"] for unit in daemon.call("list")] == ["ok"]


def test_a_changed_unit_restarts_the_units_that_require_it(daemon):
    echo_env(daemon, "db", "one")
    daemon.service("web", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["db"]\n')
    daemon.service("api", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["web"]\n')
    daemon.service("other", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    names = ("db", "web", "api", "other")
    before = {name: daemon.wait_state(name, "Running")["pid"] for name in names}
    echo_env(daemon, "db", "two")
    reply = daemon.call("reload")
    assert reply["changed"] == ["db"]
    assert reply["unchanged"] == ["api", "other", "web"]
    after = {name: daemon.wait_state(name, "Running")["pid"] for name in names}
    for name in ("db", "web", "api"):
        assert after[name] != before[name], name
    assert after["other"] == before["other"]
    daemon.wait_log("db", "V=two")


def test_a_changed_stopped_unit_is_not_started(daemon):
    echo_env(daemon, "idle", "one", service='status = "stop"\n')
    daemon.start()
    echo_env(daemon, "idle", "two", service='status = "stop"\n')
    assert daemon.call("reload")["changed"] == ["idle"]
    assert daemon.status("idle")["state"] == "Inactive"
    assert daemon.cli("start", "idle").returncode == 0
    daemon.wait_log("idle", "V=two")


def test_a_failed_unit_whose_file_is_fixed_starts_on_reload(daemon):
    """status=start, Failed for good on the old config: the fixed file is tried at once;
    the same unit stopped by hand would stay stopped."""
    daemon.service("fixme", "/nonexistent/zinit-typo", lifecycle=QUICK)
    daemon.start()
    daemon.wait_state("fixme", "Failed")
    daemon.service("fixme", "sleep 1000", lifecycle=QUICK)
    assert daemon.call("reload")["changed"] == ["fixme"]
    daemon.wait_state("fixme", "Running")
    assert daemon.cli("stop", "fixme").returncode == 0
    daemon.service("fixme", "sleep 999", lifecycle=QUICK)
    assert daemon.call("reload")["changed"] == ["fixme"]
    assert daemon.status("fixme")["state"] == "Exited"


# -- add-service / remove-service --------------------------------------------


def test_add_service_from_a_file(daemon, tmp_path):
    daemon.start()
    source = tmp_path / "filed.toml"
    source.write_text('[service]\nexec = "sleep 1000"\n')
    result = daemon.cli("add-service", str(source))
    assert result.returncode == 0, result.stderr
    target = daemon.config_dir / "filed.toml"
    assert result.stdout.startswith(f"added filed ({target}): Running: added; pid ")
    assert target.read_text() == source.read_text()
    daemon.wait_state("filed", "Running")


def test_add_service_from_stdin(daemon):
    daemon.start()
    text = '[service]\nname = "piped"\nexec = "sleep 1000"\n'
    result = daemon.cli("--json", "add-service", "-", input=text)
    assert result.returncode == 0, result.stderr
    path = daemon.config_dir / "piped.toml"
    reply = json.loads(result.stdout)
    assert reply == {
        "name": "piped",
        "path": str(path),
        "state": "Running",
        "reason": reply["reason"],
    }
    assert reply["reason"].startswith("added; pid ")
    assert path.read_text() == text
    daemon.wait_state("piped", "Running")


def test_add_service_from_toml_text(daemon):
    daemon.start()
    text = '[service]\nname = "inline"\nexec = "sleep 1000"\nstatus = "stop"\n'
    result = daemon.cli("add-service", text)
    assert result.returncode == 0, result.stderr
    assert (daemon.config_dir / "inline.toml").read_text() == text
    assert daemon.status("inline")["state"] == "Inactive"  # status=stop: added, not started
    assert daemon.cli("start", "inline").returncode == 0
    daemon.wait_state("inline", "Running")
    # the unit survives a reload unchanged
    assert daemon.call("reload")["unchanged"] == ["inline"]


def test_add_service_refuses_a_broken_unit(daemon):
    daemon.start()
    result = daemon.cli("add-service", '[service]\nname = "oops"\nexec = "sleep 1"\nrestat = 1\n')
    assert result.returncode == 1
    assert "service.restat: unknown key" in result.stderr
    assert list(daemon.config_dir.iterdir()) == []


def test_add_service_refuses_an_existing_name(daemon):
    daemon.service("web", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    pid = daemon.wait_state("web", "Running")["pid"]
    original = (daemon.config_dir / "web.toml").read_text()
    result = daemon.cli("add-service", '[service]\nname = "web"\nexec = "sleep 5"\n')
    assert result.returncode == 1
    assert "unit 'web' already exists" in result.stderr
    assert (daemon.config_dir / "web.toml").read_text() == original
    assert daemon.status("web")["pid"] == pid


def test_remove_service(daemon):
    daemon.service("gone", "sleep 1000", lifecycle=QUICK)
    daemon.service("stays", "sleep 1000", lifecycle=QUICK)
    daemon.start()
    pid = daemon.wait_state("gone", "Running")["pid"]
    result = daemon.cli("remove-service", "gone")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"removed gone ({daemon.config_dir / 'gone.toml'})"
    assert not pid_alive(pid)
    assert not (daemon.config_dir / "gone.toml").exists()
    assert [unit["name"] for unit in daemon.call("list")] == ["stays"]
    assert daemon.cli("status", "gone").returncode == 1
    assert daemon.call("reload")["removed"] == []
    missing = daemon.cli("remove-service", "gone")
    assert missing.returncode == 1
    assert "unknown unit 'gone'" in missing.stderr


def test_remove_service_of_a_broken_file(daemon):
    path = daemon.write("bad", "[service\n")
    daemon.start()
    assert daemon.status("bad")["state"] == "Failed"
    assert daemon.cli("remove-service", "bad").returncode == 0
    assert not path.exists()
    assert daemon.call("list") == []


BAD_NAMES = ["../evil", "a/b", ".hidden"]


def snapshot(daemon):
    """Every path under the daemon's base directory (the config dir's parent)."""
    return sorted(str(p.relative_to(daemon.base)) for p in daemon.base.rglob("*"))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_add_service_refuses_a_name_that_is_no_unit_name(daemon, name):
    daemon.start()
    before = snapshot(daemon)
    body = '[service]\nexec = "sleep 1000"\n'
    by_flag = daemon.cli("add-service", "--name", name, body)
    by_text = daemon.cli("add-service", f'[service]\nname = "{name}"\nexec = "sleep 1000"\n')
    by_rpc = None
    try:
        daemon.call("add_service", toml=body, name=name)
    except Exception as error:  # noqa: BLE001 - any refusal will do; checked below
        by_rpc = error
    for result in (by_flag, by_text):
        assert result.returncode != 0, result
        assert f"{name!r} is not a unit name" in result.stderr
    assert by_rpc is not None and "is not a unit name" in str(by_rpc)
    assert snapshot(daemon) == before
    assert list(daemon.config_dir.iterdir()) == []
    assert daemon.call("list") == []


def test_add_service_refuses_a_hidden_file(daemon, tmp_path):
    daemon.start()
    source = tmp_path / "src"
    source.mkdir()
    hidden = source / ".hidden.toml"
    hidden.write_text('[service]\nexec = "sleep 1000"\n')
    before = snapshot(daemon)
    result = daemon.cli("add-service", str(hidden))
    assert result.returncode != 0
    assert "'.hidden' is not a unit name" in result.stderr
    assert snapshot(daemon) == before
    assert daemon.call("list") == []


def test_a_file_fixed_after_boot_is_added_and_started(daemon):
    path = daemon.write("web", '[service]\nexec = "sleep 1000"\nrestat = 1\n')
    daemon.start()
    assert daemon.status("web")["state"] == "Failed"
    daemon.service("web", "sleep 1000", lifecycle=QUICK)
    reply = daemon.call("reload")
    assert (reply["added"], reply["errors"]) == (["web"], [])
    web = daemon.wait_state("web", "Running")
    assert web["path"] == str(path)
    assert web["warnings"] == []


def test_issue_2_reload_to_status_ignore_does_not_start_it(daemon):
    """SPEC 5: status=ignore units are never started, also when a reload makes them so."""
    daemon.service("a", "sleep 1000", lifecycle=QUICK)
    daemon.service("b", "sleep 1000", lifecycle=QUICK, dependencies='requires = ["a"]\n')
    daemon.start()
    a_pid = daemon.wait_state("a", "Running")["pid"]
    daemon.wait_state("b", "Running")
    daemon.service("a", "sleep 1000", lifecycle=QUICK, service='status = "ignore"\n')
    assert daemon.call("reload")["changed"] == ["a"]
    assert not pid_alive(a_pid)
    a = daemon.status("a")
    assert a["status"] == "ignore"
    assert a["pid"] is None, a
    assert a["state"] in ("Inactive", "Exited"), a
    wait_until(
        lambda: daemon.status("b")["reason"] == "requires 'a', which has status=ignore",
        what="b to be blocked by a's status=ignore",
    )
    assert daemon.status("b")["state"] == "Blocked"


def test_reload_refuses_when_the_config_dir_is_gone(daemon):
    """A directory that vanished (a mount missing, a deploy swapping it) removes nothing:
    the reload is refused, saying why, and the units keep running."""
    daemon.service("a", "sleep 1000")
    daemon.start()
    pid = daemon.wait_state("a", "Running")["pid"]
    moved = daemon.config_dir.with_name("moved")
    daemon.config_dir.rename(moved)
    result = daemon.cli("reload")
    assert result.returncode == 1, result
    assert f"config directory {daemon.config_dir} does not exist: nothing reloaded" in (
        result.stderr
    ), result.stderr
    assert "(its units keep running; to remove them, make it again (empty) and reload)" in (
        result.stderr
    )
    assert daemon.status("a")["pid"] == pid
    assert daemon.status("a")["warnings"] == [
        "its config directory is gone: a reload is refused until it is back"
    ]
    os.kill(daemon.proc.pid, signal.SIGHUP)  # the same, logged, when the reload is a signal's
    wait_until(lambda: "reload on SIGHUP: config directory" in daemon.log(), what="the error")
    assert daemon.status("a")["pid"] == pid
    moved.rename(daemon.config_dir)
    assert daemon.call("reload")["unchanged"] == ["a"]
    daemon.config_dir.rename(moved)  # a file where the directory was: the same refusal
    daemon.config_dir.write_text("")
    result = daemon.cli("reload")
    assert result.returncode == 1, result
    assert "is not a directory: nothing reloaded (its units keep running)" in result.stderr
    assert daemon.status("a")["pid"] == pid


def test_status_warns_of_a_file_changed_since_it_was_loaded(daemon):
    """As systemctl does: an edited (or deleted) file that no reload has read yet is named."""
    path = daemon.service("edited", "sleep 1000")
    daemon.start()
    daemon.wait_state("edited", "Running")
    assert daemon.status("edited")["warnings"] == []
    path.write_text(path.read_text() + "# a comment, but a change all the same\n")
    changed = "its file changed since it was loaded: `zinit reload` applies it"
    assert daemon.status("edited")["warnings"] == [changed]
    assert changed in daemon.call("why", name="edited")["warnings"]
    assert f"warning:  {changed}" in daemon.cli("status", "edited").stdout
    assert daemon.call("reload")["unchanged"] == ["edited"]
    assert daemon.status("edited")["warnings"] == []
    path.unlink()
    gone = "its file is gone: `zinit reload` removes the unit"
    assert daemon.status("edited")["warnings"] == [gone]
