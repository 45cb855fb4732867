"""ZinitClient and AsyncZinitClient against a real daemon (SPEC section 7).

Every client method is called at least once, the stream iterators are read, and
error replies come back as the right ZinitError subclasses.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest
from conftest import pid_alive, wait_until

import zinit

SEVEN = {"Inactive", "Blocked", "Starting", "Running", "Stopping", "Exited", "Failed"}
FAST_STOP = "stop_timeout_ms = 2000\n"


@pytest.fixture
def running(daemon):
    """A daemon with a long-running 'sleeper', a oneshot 'job' and a stopped 'idle'."""
    daemon.service("sleeper", "sleep 1000", lifecycle=FAST_STOP)
    daemon.service("job", "sh -c 'echo hello from job; echo oops >&2'", service="oneshot = true\n")
    daemon.service("idle", "sleep 1000", service='status = "stop"\n', lifecycle=FAST_STOP)
    daemon.start()
    daemon.wait_state("sleeper", "Running")
    daemon.wait_state("job", "Exited")
    return daemon


def connect(daemon) -> zinit.ZinitClient:
    return zinit.ZinitClient.connect_unix(daemon.socket, timeout=60)


def test_connect_unix_with_path(running):
    with zinit.ZinitClient.connect_unix(running.socket) as client:
        reply = client.ping()
    assert reply["pong"] is True
    assert reply["pid"] == running.proc.pid


def test_connect_unix_default_uses_zinit_socket(running, monkeypatch):
    """connect_unix() without a path uses ZINIT_SOCKET."""
    monkeypatch.setenv("ZINIT_SOCKET", running.socket)
    with zinit.ZinitClient.connect_unix() as client:
        assert client.ping()["pid"] == running.proc.pid
        assert client.path == running.socket


def test_many_calls_on_one_connection(running):
    with connect(running) as client:
        for _ in range(20):
            assert client.ping()["pong"] is True
        assert client.status("sleeper")["state"] == "Running"


def test_list_and_status(running):
    with connect(running) as client:
        units = client.list()
        status = client.status("sleeper")
    assert [unit["name"] for unit in units] == ["idle", "job", "sleeper"]
    for unit in units:
        assert unit["state"] in SEVEN
    assert status["name"] == "sleeper"
    assert status["kind"] == "service"
    assert status["state"] == "Running"
    assert pid_alive(status["pid"])
    assert status["class"] == "user"
    assert status["status"] == "start"
    by_name = {unit["name"]: unit for unit in units}
    assert by_name["job"]["state"] == "Exited"
    assert by_name["job"]["exit_code"] == 0
    assert by_name["idle"]["state"] == "Inactive"
    assert by_name["idle"]["pid"] is None


def test_start_stop_restart(running):
    with connect(running) as client:
        assert client.start("idle")["ok"] is True
        pid = running.wait_state("idle", "Running")["pid"]
        assert pid_alive(pid)
        assert client.restart("idle")["ok"] is True
        new_pid = running.wait_state("idle", "Running")["pid"]
        assert new_pid != pid
        wait_until(lambda: not pid_alive(pid), timeout=10, what="the old idle process to end")
        assert client.stop("idle")["ok"] is True
        unit = client.status("idle")
    assert unit["state"] == "Exited"
    assert unit["pid"] is None
    assert not pid_alive(new_pid)


def test_kill(running):
    """kill sends a signal to the unit's process; the default is SIGTERM."""
    running.service(
        "trap",
        "sh -c 'trap \"echo got USR1\" USR1; echo ready; while true; do sleep 0.1; done'",
        lifecycle=FAST_STOP,
    )
    with connect(running) as client:
        client.reload()
        running.wait_log("trap", "ready")
        reply = client.kill("trap", "SIGUSR1")
        assert reply["ok"] is True
        running.wait_log("trap", "got USR1")
        pid = client.status("sleeper")["pid"]
        assert client.kill("sleeper")["ok"] is True
        wait_until(lambda: not pid_alive(pid), timeout=10, what="sleeper to die of SIGTERM")


def test_logs(running):
    with connect(running) as client:
        entries = client.logs("job")
        last = client.logs("job", lines=1)
        everything = client.logs()
    assert [entry["line"] for entry in entries] in (
        ["hello from job", "oops"],
        ["oops", "hello from job"],
    )
    for entry in entries:
        assert set(entry) >= {"time", "unit", "stream", "line"}
        assert entry["unit"] == "job"
    streams = {entry["line"]: entry["stream"] for entry in entries}
    assert streams == {"hello from job": "stdout", "oops": "stderr"}
    assert len(last) == 1
    assert last[0] == entries[-1]
    assert any(entry["line"] == "hello from job" for entry in everything)


def test_why_and_tree(running):
    running.service("web", "sleep 1000", dependencies='requires = ["sleeper"]\n')
    with connect(running) as client:
        client.reload()
        running.wait_state("web", "Running")
        why = client.why("web")
        forest = client.tree()
        tree = client.tree("web")
    assert why["name"] == "web"
    assert why["state"] == "Running"
    assert isinstance(why["reason"], str) and why["reason"]
    assert {"name": "sleeper", "relation": "requires"}.items() <= why["dependencies"][0].items()
    assert why["history"], why
    names = {node["name"] for node in forest}
    assert "web" in names
    assert len(tree) == 1 and tree[0]["name"] == "web"
    assert [child["name"] for child in tree[0]["children"]] == ["sleeper"]


def test_reload(running):
    running.service("fresh", "sleep 1000", lifecycle=FAST_STOP)
    with connect(running) as client:
        result = client.reload()
    assert result["added"] == ["fresh"]
    assert result["removed"] == []
    assert result["changed"] == []
    assert sorted(result["unchanged"]) == ["idle", "job", "sleeper"]
    assert result["errors"] == []
    running.wait_state("fresh", "Running")


def test_add_and_remove_service(running):
    toml = '[service]\nexec = "sleep 1000"\n[lifecycle]\nstop_timeout_ms = 2000\n'
    with connect(running) as client:
        added = client.add_service(toml, "extra")
        assert added["name"] == "extra"
        assert os.path.exists(added["path"])
        pid = running.wait_state("extra", "Running")["pid"]
        named = client.add_service('[service]\nname = "named"\nexec = "true"\noneshot = true\n')
        assert named["name"] == "named"
        running.wait_state("named", "Exited")
        removed = client.remove_service("extra")
        assert removed["name"] == "extra"
        assert not os.path.exists(added["path"])
        assert not pid_alive(pid)
        with pytest.raises(zinit.UnitNotFound):
            client.status("extra")


def test_start_all_stop_all_delete_all(running):
    with connect(running) as client:
        started = client.start_all()
        assert set(started["started"]) == {"idle", "job", "sleeper"}
        running.wait_state("idle", "Running")
        stopped = client.stop_all()
        assert set(stopped["stopped"]) == {"idle", "job", "sleeper"}
        for unit in client.list():
            assert unit["pid"] is None, unit
            assert unit["state"] in {"Exited", "Inactive"}, unit
        with pytest.raises(zinit.RpcError, match="names must hold strings, got 1"):
            client.delete_all(["idle", 1])
        deleted = client.delete_all(["job", "nosuch"])  # only these (if they exist)
        assert deleted["deleted"] == ["job"], deleted
        assert sorted(unit["name"] for unit in client.list()) == ["idle", "sleeper"]
        deleted = client.delete_all()
        assert set(deleted["deleted"]) == {"idle", "sleeper"}
        assert client.list() == []
    assert list(running.config_dir.glob("*.toml")) == []


def test_check(running):
    with connect(running) as client:
        assert client.check() == {"ok": True, "problems": []}
        running.service("broken", "sh -c 'exit 3'", service="oneshot = true\n")
        client.reload()
        running.wait_state("broken", "Failed")
        result = client.check()
    assert result["ok"] is False
    assert [problem["name"] for problem in result["problems"]] == ["broken"]
    assert result["problems"][0]["state"] == "Failed"


def test_debug_state_and_procs(running):
    with connect(running) as client:
        state = client.debug_state()
        pid = client.status("sleeper")["pid"]
        procs = client.debug_procs("sleeper")
    assert state["pid"] == running.proc.pid
    assert set(state["units"]) == {"idle", "job", "sleeper"}
    assert state["units"]["sleeper"]["state"] == "Running"
    assert pid in [row["pid"] for row in procs]
    row = next(row for row in procs if row["pid"] == pid)
    assert row["cmdline"] == ["sleep", "1000"]


def test_discover(running):
    with connect(running) as client:
        document = client.discover()
    names = {method["name"] for method in document["methods"]}
    assert {"ping", "list", "status", "logs.follow", "events.subscribe", "rpc.discover"} <= names


def test_raw_call(running):
    """call(method, params) sends any method, with params by name or by position."""
    with connect(running) as client:
        assert client.call("status", {"name": "sleeper"})["name"] == "sleeper"
        assert client.call("status", ["sleeper"])["name"] == "sleeper"


def test_events_iterator(daemon):
    """events() yields each state change as a dict (unit, from, to, reason, time)."""
    daemon.service(
        "flapper",
        "sh -c 'exit 3'",
        lifecycle="restart_delay_ms = 50\nrestart_delay_max_ms = 100\n",
    )
    daemon.start()
    with connect(daemon) as client:
        events = client.events()
        seen = [next(events) for _ in range(4)]
    for event in seen:
        assert set(event) >= {"unit", "from", "to", "reason", "time"}, event
        assert event["unit"] == "flapper"
        assert event["from"] in SEVEN and event["to"] in SEVEN
        assert isinstance(event["reason"], str)
    assert "Failed" in {event["to"] for event in seen}


def test_events_report_a_change_made_elsewhere(running):
    """A stop done on another connection shows up on the events stream."""
    with connect(running) as watcher, connect(running) as actor:
        watcher.call("events.subscribe")
        actor.stop("sleeper")
        wanted = None
        for message in watcher.notifications():
            event = message["params"]
            if event["unit"] == "sleeper" and event["to"] == "Exited":
                wanted = event
                break
    assert wanted["from"] == "Stopping"


def test_follow_logs_iterator(running):
    """follow_logs() yields the backlog, then each new line as it is written."""
    running.service(
        "ticker",
        "sh -c 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done'",
        lifecycle=FAST_STOP,
    )
    with connect(running) as client:
        backlog = client.follow_logs("job", lines=5)
        first = next(backlog)
        assert first["unit"] == "job"
        assert first["line"] in ("hello from job", "oops")
    with connect(running) as other:
        other.reload()
    with connect(running) as client:
        lines = client.follow_logs("ticker", lines=0)
        got = [next(lines) for _ in range(3)]
    for entry in got:
        assert set(entry) >= {"time", "unit", "stream", "line"}
        assert entry["unit"] == "ticker"
        assert entry["stream"] == "stdout"
        assert entry["line"].startswith("tick ")
    numbers = [int(entry["line"].split()[1]) for entry in got]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3


def test_unit_not_found_carries_the_daemons_message(running):
    """An unknown unit raises UnitNotFound (a ZinitError) with the daemon's own message."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(30)
    raw.connect(running.socket)
    raw.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"name":"nope"}}\n')
    daemon_message = json.loads(raw.makefile("rb").readline())["error"]["message"]
    raw.close()
    with connect(running) as client:
        with pytest.raises(zinit.UnitNotFound) as caught:
            client.status("nope")
        assert isinstance(caught.value, zinit.ZinitError)
        assert str(caught.value) == daemon_message
        assert caught.value.name == "nope"
        for call in (client.start, client.stop, client.restart, client.why, client.debug_procs):
            with pytest.raises(zinit.UnitNotFound):
                call("nope")
        with pytest.raises(zinit.UnitNotFound):
            client.logs("nope")
        # The connection still works after errors.
        assert client.ping()["pong"] is True


def test_other_errors_are_zinit_errors(running):
    with connect(running) as client:
        with pytest.raises(zinit.UnitStateError) as caught:
            client.kill("idle")  # no process
        assert "idle" in str(caught.value)
        with pytest.raises(zinit.UnitStateError):
            client.add_service('[service]\nexec = "true"\n', "sleeper")  # exists
        with pytest.raises(zinit.RpcError) as rpc:
            client.call("no_such_method")
        assert rpc.value.code == -32601
        assert isinstance(rpc.value, zinit.ZinitError)
        with pytest.raises(zinit.RpcError) as bad:
            client.call("status", {"bogus": 1})
        assert bad.value.code == -32602
        with pytest.raises(zinit.ZinitError):
            client.add_service('[service]\nexec = "true"\nbogus_key = 1\n', "typo")
        assert client.ping()["pong"] is True


def test_a_request_over_the_frame_limit_is_refused_at_once(running, tmp_path):
    """A request the daemon would refuse for its size is a UsageError, not a hang; the CLI
    says so and exits 2; the connection stays usable."""
    big = '[service]\nexec = "true"\n' + "# padding\n" * 120_000
    with connect(running) as client:
        with pytest.raises(zinit.UsageError) as caught:
            client.add_service(big, "big")
        assert "over the daemon's limit of 1048576 bytes" in str(caught.value)
        assert client.ping()["pong"] is True

    async def scenario() -> None:
        client = await zinit.AsyncZinitClient.connect_unix(running.socket)
        try:
            with pytest.raises(zinit.UsageError):
                await client.add_service(big, "big")
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    path = tmp_path / "big.toml"
    path.write_text(big.replace('exec = "true"', 'name = "big"\nexec = "true"'))
    result = running.cli("add-service", str(path), timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "over the daemon's limit" in result.stderr


def test_an_error_the_daemon_cannot_tie_to_an_id_reaches_the_caller(running):
    """An oversized line gets an error with id null; a client waiting on that line raises."""
    with connect(running) as client:
        client._sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping","pad":"' + b"x" * (1 << 20))
        with pytest.raises(zinit.RpcError) as caught:
            client.call("ping")  # completes the oversized line, then waits for its reply
        assert caught.value.code == -32600


def test_async_client_takes_concurrent_calls_in_turn(running):
    """asyncio.gather on one AsyncZinitClient: each call gets its own answer."""

    async def scenario() -> list[str]:
        client = await zinit.AsyncZinitClient.connect_unix(running.socket)
        try:
            units = await asyncio.gather(*(client.status(n) for n in ("sleeper", "job", "idle")))
        finally:
            await client.close()
        return [unit["name"] for unit in units]

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == ["sleeper", "job", "idle"]


def test_daemon_unavailable(tmp_path):
    """No daemon at the socket: DaemonUnavailable, a ZinitError naming the path."""
    path = str(tmp_path / "nothing.sock")
    with pytest.raises(zinit.DaemonUnavailable) as caught:
        zinit.ZinitClient.connect_unix(path)
    assert isinstance(caught.value, zinit.ZinitError)
    assert path in str(caught.value)
    # A socket file with no listener behind it (a dead daemon's) is the same.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(zinit.DaemonUnavailable):
        zinit.ZinitClient.connect_unix(path)


def test_daemon_going_away_mid_connection(running):
    """A call on a connection whose daemon has exited raises DaemonUnavailable."""
    client = connect(running)
    try:
        assert client.ping()["pong"] is True
        running.stop()
        with pytest.raises(zinit.DaemonUnavailable):
            client.ping()
    finally:
        client.close()


async def wait_async(client, name: str, state: str, timeout: float = 20) -> dict:
    """Poll a unit's status through the async client until it reaches ``state``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        unit = await client.status(name)
        if unit["state"] == state:
            return unit
        assert loop.time() < deadline, f"{name} is {unit}, wanted {state}"
        await asyncio.sleep(0.02)


def test_async_client(running, monkeypatch):
    """AsyncZinitClient does the same as ZinitClient through asyncio."""
    monkeypatch.setenv("ZINIT_SOCKET", running.socket)

    async def scenario() -> None:
        client = await zinit.AsyncZinitClient.connect_unix()
        async with client:
            assert (await client.ping())["pid"] == running.proc.pid
            units = await client.list()
            assert [unit["name"] for unit in units] == ["idle", "job", "sleeper"]
            assert (await client.status("sleeper"))["state"] == "Running"
            await client.start("idle")
            await wait_async(client, "idle", "Running")
            await client.restart("idle")
            await client.stop("idle")
            assert (await client.status("idle"))["state"] == "Exited"
            logs = await client.logs("job")
            assert "hello from job" in [entry["line"] for entry in logs]
            assert (await client.why("job"))["state"] == "Exited"
            assert (await client.tree("job"))[0]["name"] == "job"
            assert (await client.reload())["errors"] == []
            added = await client.add_service('[service]\nexec = "true"\noneshot = true\n', "a1")
            assert added["name"] == "a1"
            assert (await client.remove_service("a1"))["name"] == "a1"
            assert (await client.check())["ok"] is True
            assert "sleeper" in (await client.debug_state())["units"]
            pid = (await client.status("sleeper"))["pid"]
            assert pid in [row["pid"] for row in await client.debug_procs("sleeper")]
            names = {method["name"] for method in (await client.discover())["methods"]}
            assert "rpc.discover" in names
            assert (await client.call("status", ["job"]))["name"] == "job"
            with pytest.raises(zinit.UnitNotFound) as caught:
                await client.status("nope")
            assert caught.value.name == "nope"
            assert "nope" in str(caught.value)
            with pytest.raises(zinit.UnitStateError):
                await client.kill("idle")
            await client.start_all()
            assert set((await client.stop_all())["stopped"]) == {"idle", "job", "sleeper"}
            assert set((await client.delete_all())["deleted"]) == {"idle", "job", "sleeper"}
            assert await client.list() == []

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_async_events_and_follow_logs(daemon):
    """The async events() and follow_logs() streams yield dicts as they happen."""
    daemon.service(
        "flapper",
        "sh -c 'echo flap; exit 3'",
        lifecycle="restart_delay_ms = 50\nrestart_delay_max_ms = 100\n",
    )
    daemon.start()

    async def scenario() -> tuple[list, list]:
        events_client = await zinit.AsyncZinitClient.connect_unix(daemon.socket)
        logs_client = await zinit.AsyncZinitClient.connect_unix(daemon.socket)
        async with events_client, logs_client:
            stream = events_client.events()
            events = [await anext(stream) for _ in range(3)]
            lines_stream = logs_client.follow_logs("flapper", lines=0)
            lines = [await anext(lines_stream) for _ in range(2)]
            await stream.aclose()
            await lines_stream.aclose()
        return events, lines

    events, lines = asyncio.run(asyncio.wait_for(scenario(), 60))
    for event in events:
        assert set(event) >= {"unit", "from", "to", "reason", "time"}
        assert event["unit"] == "flapper"
        assert event["to"] in SEVEN
    for entry in lines:
        assert entry["unit"] == "flapper"
        assert entry["line"] == "flap"


def test_async_daemon_unavailable(tmp_path):
    path = str(tmp_path / "nothing.sock")

    async def scenario() -> None:
        with pytest.raises(zinit.DaemonUnavailable) as caught:
            await zinit.AsyncZinitClient.connect_unix(path)
        assert path in str(caught.value)

    asyncio.run(scenario())
