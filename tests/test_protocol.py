"""The control socket's JSON-RPC 2.0 framing, errors and file permissions (SPEC section 7).

Everything here talks to a real daemon through a raw unix socket, one JSON text per
line, so that what is tested is the wire and not the client library.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import stat
import subprocess

import pytest
from conftest import PYTHON, ZINIT_PY, Daemon, wait_until

import zinit

MIB = 1 << 20


class Wire:
    """A raw connection: send bytes, read one JSON line back."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data if data.endswith(b"\n") else data + b"\n")

    def request(self, method: str, params=None, request_id=1) -> None:
        message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(json.dumps(message))

    def read(self):
        line = self.reader.readline()
        assert line, "the daemon closed the connection"
        return json.loads(line)

    def ping(self, request_id: int = 1000) -> dict:
        """Ping on this connection and return the reply, which must be the pong."""
        self.request("ping", request_id=request_id)
        reply = self.read()
        assert reply["id"] == request_id, reply
        assert reply["result"]["pong"] is True, reply
        return reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def wire(daemon):
    daemon.service("sleeper", "sleep 1000", lifecycle="stop_timeout_ms = 2000\n")
    daemon.start()
    daemon.wait_state("sleeper", "Running")
    connection = Wire(daemon.socket)
    yield connection
    connection.close()


def assert_error(reply: dict, code: int, request_id=None) -> dict:
    assert reply.get("jsonrpc") == "2.0", reply
    assert "result" not in reply, reply
    assert reply["id"] == request_id, reply
    assert reply["error"]["code"] == code, reply
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"], reply
    return reply["error"]


def test_bad_json_gets_parse_error_and_connection_goes_on(wire):
    """Bad JSON → -32700 with id null; the same connection then answers a ping."""
    for frame in (b"{bad json", b'{"jsonrpc": "2.0", "id": 1, "method": "ping"', b"\xff\xfe{}"):
        wire.send(frame)
        assert_error(wire.read(), -32700)
    wire.ping()


@pytest.mark.parametrize("frame", ["42", '"ping"', "null", "true", "3.5"])
def test_json_that_is_not_an_object_is_an_invalid_request(wire, frame):
    """Valid JSON that is not an object (nor a batch) → -32600, and the connection goes on."""
    wire.send(frame)
    assert_error(wire.read(), -32600)
    wire.ping()


def test_missing_jsonrpc_or_method_is_an_invalid_request(wire):
    """A request without "jsonrpc": "2.0", or without a string method → -32600 with its id."""
    wire.send('{"id": 1, "method": "ping"}')
    assert_error(wire.read(), -32600, 1)
    wire.send('{"jsonrpc": "1.0", "id": 2, "method": "ping"}')
    assert_error(wire.read(), -32600, 2)
    wire.send('{"jsonrpc": "2.0", "id": 3}')
    assert_error(wire.read(), -32600, 3)
    wire.send('{"jsonrpc": "2.0", "id": 4, "method": 17}')
    assert_error(wire.read(), -32600, 4)
    wire.ping()


def test_unknown_method_is_method_not_found(wire):
    """An unknown method → -32601 naming it; a handler name is not a method."""
    wire.request("no_such_method", request_id=5)
    error = assert_error(wire.read(), -32601, 5)
    assert "no_such_method" in error["message"]
    wire.request("rpc_ping", request_id=6)
    assert_error(wire.read(), -32601, 6)
    wire.ping()


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({}, "name"),  # missing name
        ({"name": 5}, "name"),  # wrong type
        ({"name": ["sleeper"]}, "name"),  # wrong type
        ({"name": "sleeper", "bogus": 1}, "bogus"),  # unknown param
        (["sleeper", "extra"], "status"),  # too many positional params
        (5, "params"),  # params neither object nor array
    ],
)
def test_bad_params_are_invalid_params(wire, params, needle):
    """Missing, mistyped or unknown params → -32602 with a message naming the problem."""
    wire.request("status", params, request_id=7)
    error = assert_error(wire.read(), -32602, 7)
    assert needle in error["message"], error
    wire.ping()


def test_bad_optional_params_are_invalid_params(wire):
    """Optional params are checked too: logs lines must be a non-negative integer."""
    wire.request("logs", {"name": "sleeper", "lines": "ten"}, request_id=8)
    assert_error(wire.read(), -32602, 8)
    wire.request("logs", {"name": "sleeper", "lines": -1}, request_id=9)
    assert_error(wire.read(), -32602, 9)
    wire.request("kill", {"name": "sleeper", "signal": True}, request_id=10)
    assert_error(wire.read(), -32602, 10)
    wire.ping()


def test_frame_over_one_mib_is_refused_and_connection_goes_on(wire):
    """A line over 1 MiB → -32600; the rest of it is skipped and the connection still answers."""
    padding = "x" * (MIB + 4096)
    wire.send(json.dumps({"jsonrpc": "2.0", "id": 11, "method": "ping", "params": {"p": padding}}))
    error = assert_error(wire.read(), -32600)
    assert "1 MiB" in error["message"] or "large" in error["message"], error
    wire.ping(12)
    # A second oversized frame on the same connection is refused the same way.
    wire.send("[" + "1," * (MIB // 2 + 100) + "1]")
    assert_error(wire.read(), -32600)
    wire.ping(13)


def test_frame_just_under_one_mib_is_parsed(wire):
    """A frame a little under 1 MiB is read and parsed: it reaches param checking."""
    padding = "x" * (MIB - 4096)
    wire.send(json.dumps({"jsonrpc": "2.0", "id": 14, "method": "ping", "params": {"p": padding}}))
    error = assert_error(wire.read(), -32602, 14)
    assert "'p'" in error["message"], error
    wire.ping()


def test_params_by_position(wire):
    """Params may be given by position in the declared order."""
    wire.request("status", ["sleeper"], request_id=15)
    reply = wire.read()
    assert reply["id"] == 15
    assert reply["result"]["name"] == "sleeper"
    assert reply["result"]["state"] == "Running"
    wire.request("logs", ["sleeper", 0], request_id=16)
    reply = wire.read()
    assert reply["id"] == 16
    assert reply["result"] == []


def test_notification_gets_no_reply_but_runs(daemon, wire):
    """A request without id is a notification: it is carried out, and nothing is sent back."""
    wire.send('{"jsonrpc": "2.0", "method": "ping"}')
    wire.send('{"jsonrpc": "2.0", "method": "stop", "params": {"name": "sleeper"}}')
    reply = wire.ping(17)  # the next line read must be this reply, nothing before it
    assert reply["id"] == 17
    assert daemon.status("sleeper")["state"] == "Exited"


def test_issue_2_failing_notification_gets_no_reply(wire):
    """JSON-RPC 2.0 section 4.1: the server MUST NOT reply to a notification, even one that
    fails (unknown method, bad params, unknown unit); only a malformed request is answered."""
    wire.send('{"jsonrpc": "2.0", "method": "no_such_method"}')
    wire.send('{"jsonrpc": "2.0", "method": "status", "params": {"bogus": 1}}')
    wire.send('{"jsonrpc": "2.0", "method": "status", "params": {"name": "nope"}}')
    reply = wire.ping(18)  # the next line read must be this reply, nothing before it
    assert reply["id"] == 18


def test_null_id_is_a_request_not_a_notification(wire):
    """An "id": null is still a request and gets a reply with id null."""
    wire.send('{"jsonrpc": "2.0", "id": null, "method": "ping"}')
    reply = wire.read()
    assert reply["id"] is None
    assert reply["result"]["pong"] is True


def test_string_id_is_echoed(wire):
    wire.send('{"jsonrpc": "2.0", "id": "abc", "method": "ping"}')
    reply = wire.read()
    assert reply["id"] == "abc"
    assert reply["result"]["pong"] is True


def test_batch_gets_an_array(wire):
    """A batch gets one array of replies: one per request, none for notifications."""
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "status", "params": {"name": "sleeper"}},
        {"jsonrpc": "2.0", "method": "ping"},
        {"jsonrpc": "2.0", "id": 3, "method": "no_such_method"},
        42,
    ]
    wire.send(json.dumps(batch))
    replies = wire.read()
    assert isinstance(replies, list)
    assert len(replies) == 4, replies
    by_id = {reply["id"]: reply for reply in replies}
    assert by_id[1]["result"]["pong"] is True
    assert by_id[2]["result"]["name"] == "sleeper"
    assert by_id[3]["error"]["code"] == -32601
    assert by_id[None]["error"]["code"] == -32600
    wire.ping()


def test_a_batch_has_a_size_limit(wire):
    """Up to MAX_BATCH requests are answered; one more and the batch is refused whole."""
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    wire.send(json.dumps([ping] * zinit.MAX_BATCH))
    assert len(wire.read()) == zinit.MAX_BATCH
    wire.send(json.dumps([ping] * (zinit.MAX_BATCH + 1)))
    error = assert_error(wire.read(), -32600)
    assert (
        f"a batch of {zinit.MAX_BATCH + 1} requests: at most {zinit.MAX_BATCH}" in error["message"]
    )
    wire.ping()


def test_batch_of_notifications_and_empty_batch(wire):
    """A batch of notifications only gets no reply; an empty batch is an invalid request."""
    wire.send(json.dumps([{"jsonrpc": "2.0", "method": "ping"}] * 3))
    wire.send("[]")
    assert_error(wire.read(), -32600)
    wire.ping()


def test_a_stream_opened_in_a_batch_delivers(wire, daemon):
    """events.subscribe inside a batch is answered in the array, then its events flow."""
    wire.send(json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "events.subscribe"}]))
    (reply,) = wire.read()
    assert reply["id"] == 1 and "error" not in reply, reply
    daemon.cli("stop", "sleeper")
    event = wire.read()
    assert event["method"] == "event" and event["params"]["unit"] == "sleeper", event


def test_streams_one_connection_may_open_are_bounded(wire, daemon):
    """A batch asking for thousands of log streams gets a few and a clear refusal for the
    rest, and the daemon serves the others meanwhile."""
    limit = zinit.MAX_STREAMS_PER_CONNECTION
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "logs.follow", "params": {"lines": 0}}
        for i in range(limit + 500)
    ]
    wire.send(json.dumps(batch))
    replies = wire.read()
    assert all("result" in reply for reply in replies[:limit]), replies[:limit]
    refused = replies[limit:]
    assert len(refused) == 500 and all(r["error"]["code"] == -32001 for r in refused)
    assert f"at most {limit}" in refused[0]["error"]["message"], refused[0]
    assert daemon.call("ping")["pong"] is True
    assert daemon.call("debug_state")["subscriptions"]["logs"] == limit
    # Daemon-wide, streams asked for count, whether or not their greenlets ran yet.
    others = [Wire(daemon.socket) for _ in range(zinit.MAX_STREAMS // limit)]
    try:
        for other in others:
            other.send(json.dumps(batch[:limit]))
        answers = [reply for other in others for reply in other.read()]
        granted = [reply for reply in answers if "result" in reply]
        assert len(granted) == zinit.MAX_STREAMS - limit, answers
        # Connections are served in turn, so the refusals fall where they fall.
        turned_away = [reply["error"]["message"] for reply in answers if "error" in reply]
        assert len(turned_away) == limit, answers
        assert all(f"serves {zinit.MAX_STREAMS} streams" in m for m in turned_away), turned_away
    finally:
        for other in others:
            other.close()


def test_a_stream_that_ended_frees_its_place(wire, daemon):
    """Streams of a unit that was removed end (log.end) and no longer count."""
    limit = zinit.MAX_STREAMS_PER_CONNECTION
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "logs.follow", "params": {"name": "sleeper"}}
        for i in range(limit)
    ]
    wire.send(json.dumps(batch))
    assert all("result" in reply for reply in wire.read())
    assert daemon.cli("remove-service", "sleeper").returncode == 0
    ends = 0
    while ends < limit:
        message = wire.read()
        ends += message.get("method") == "log.end"
    daemon.service("sleeper", "sleep 1000")
    assert daemon.call("reload")["added"] == ["sleeper"]
    wire.send(json.dumps(batch[0]))
    reply = wire.read()
    while "id" not in reply:  # the new stream's first lines may come first
        reply = wire.read()
    assert "result" in reply, reply


@pytest.mark.parametrize(
    ("raw_id", "why"),
    [("1.5", "1.5 (a number with a fraction part)"), ('{"a": 1}', "{'a': 1} (an object)")],
)
def test_an_id_that_is_not_a_string_integer_or_null_is_refused_saying_why(wire, raw_id, why):
    wire.send(f'{{"jsonrpc": "2.0", "id": {raw_id}, "method": "ping"}}')
    error = assert_error(wire.read(), -32600)
    assert error["message"] == f"id must be a string, an integer or null, got {why}"


def client_rpc_methods() -> set[str]:
    """The RPC method behind each public method of ZinitClient."""
    not_rpc = {"connect_unix", "close", "call", "notifications"}
    renamed = {
        "follow_logs": "logs.follow",
        "events": "events.subscribe",
        "discover": "rpc.discover",
        "xinet_set": "xinet.set",
        "xinet_delete": "xinet.delete",
        "xinet_list": "xinet.list",
        "xinet_status": "xinet.status",
    }
    names = {
        name
        for name in dir(zinit.ZinitClient)
        if not name.startswith("_") and callable(getattr(zinit.ZinitClient, name))
    }
    return {renamed.get(name, name) for name in names - not_rpc}


def test_rpc_discover_lists_every_method(wire):
    """rpc.discover returns an OpenRPC document naming every method the client exposes."""
    wire.request("rpc.discover", request_id=18)
    reply = wire.read()
    assert reply["id"] == 18
    document = reply["result"]
    assert document["openrpc"].startswith("1.")
    assert document["info"]["title"] == "zinit"
    methods = {method["name"]: method for method in document["methods"]}
    assert len(methods) == len(document["methods"]), "a method is listed twice"
    expected = client_rpc_methods()
    assert expected <= set(methods), expected - set(methods)
    assert set(methods) == expected, set(methods) - expected
    for method in methods.values():
        assert isinstance(method["params"], list)
        assert "result" in method
        for param in method["params"]:
            assert {"name", "schema"} <= set(param)
    assert [p["name"] for p in methods["status"]["params"]] == ["name"]
    assert methods["add_service"]["params"][0]["name"] == "toml"


def test_unknown_unit_is_server_error_with_name(wire):
    """An unknown unit → -32000 whose data names the unit."""
    wire.request("status", {"name": "nope"}, request_id=19)
    error = assert_error(wire.read(), -32000, 19)
    assert error["data"]["name"] == "nope"
    assert "nope" in error["message"]
    for method in ("start", "stop", "restart", "why", "debug_procs"):
        wire.request(method, {"name": "nope"}, request_id=20)
        error = assert_error(wire.read(), -32000, 20)
        assert error["data"]["name"] == "nope"
    wire.ping()


def test_strings_that_are_no_valid_unicode_are_answered_escaped(wire, daemon):
    """A lone surrogate (sent by a client, or from a file name's undecodable bytes) cannot
    be UTF-8: replies carry it as a JSON escape, and the connection goes on."""
    wire.send('{"jsonrpc":"2.0","id":"\\ud800","method":"status","params":{"name":"\\udcff"}}')
    error = assert_error(wire.read(), -32000, "\ud800")
    assert error["data"]["name"] == "\udcff"
    wire.ping()
    (daemon.config_dir / os.fsdecode(b"\xff\xfe.toml")).write_text('[service]\nexec = "sleep 1"\n')
    assert daemon.cli("reload").returncode == 1  # not a unit name
    listed = daemon.cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "\\udcff\\udcfe" in listed.stdout, listed.stdout
    assert daemon.cli("check").returncode == 1  # says what is wrong, does not lose the daemon
    wire.request("add_service", {"toml": '[service]\nexec = "sleep 1"\n# \ud800\n', "name": "sur"})
    error = assert_error(wire.read(), -32602, 1)
    assert "not valid Unicode" in error["message"], error
    assert [p.name for p in daemon.config_dir.iterdir() if p.name.startswith("sur")] == []
    wire.ping()


def test_add_service_of_toml_nested_too_deeply_is_a_config_error(wire):
    deep = '[service]\nexec = "sleep 1"\nx = ' + "[" * 3000 + "]" * 3000 + "\n"
    for params in ({"toml": deep}, {"toml": deep, "name": "deep"}):
        wire.request("add_service", params, request_id=5)
        error = assert_error(wire.read(), -32002, 5)
        assert "TOML nested too deeply to read" in error["message"], error
    wire.ping()


def test_many_connections_at_once(daemon):
    """Several connections are served independently; closing one does not affect another."""
    daemon.start()
    first, second = Wire(daemon.socket), Wire(daemon.socket)
    try:
        first.send("{half a fr")  # no newline yet: the daemon waits for the rest
        second.ping(1)
        first.send('ame"}')
        assert_error(first.read(), -32700)
        first.close()
        second.ping(2)
    finally:
        second.close()


def test_socket_is_owner_only(daemon):
    """The control socket is created mode 0600, owned by the daemon's user."""
    daemon.start()
    info = os.stat(daemon.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600, oct(info.st_mode)
    assert info.st_uid == os.getuid()


def test_socket_group_opens_socket_to_a_group(daemon):
    """--socket-group GROUP makes the socket 0660 with that group."""
    group = grp.getgrgid(0).gr_name
    daemon.start("--socket-group", group)
    info = os.stat(daemon.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660, oct(info.st_mode)
    assert info.st_gid == 0


def test_unknown_socket_group_refuses_to_start(daemon):
    """An unknown --socket-group is an error at start, exit 1, naming the group."""
    daemon.start("--socket-group", "no-such-group-zinit", wait=False)
    assert daemon.proc.wait(60) == 1
    assert "no-such-group-zinit" in daemon.log()


def test_second_daemon_on_same_socket_refuses(daemon):
    """A second daemon on a live socket exits 1 naming the socket; the first keeps answering."""
    daemon.start()
    second = subprocess.run(
        [PYTHON, ZINIT_PY, "server", "--config-dir", str(daemon.config_dir),
         "--socket", daemon.socket],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1, second
    assert daemon.socket in second.stderr
    with zinit.ZinitClient.connect_unix(daemon.socket, timeout=30) as client:
        assert client.ping()["pid"] == daemon.proc.pid
    assert stat.S_ISSOCK(os.stat(daemon.socket).st_mode)


def test_second_daemon_on_the_same_config_dir_refuses(daemon, tmp_path):
    """Another socket, the same directory: it would run every unit twice, so it refuses,
    removes its socket, and the first keeps its units alone."""
    daemon.service("only", "sleep 1000")
    daemon.start()
    pid = daemon.wait_state("only", "Running")["pid"]
    other = str(tmp_path / "other.sock")
    second = subprocess.run(
        [PYTHON, ZINIT_PY, "server", "--config-dir", str(daemon.config_dir), "--socket", other],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1, second
    message = f"another zinit daemon (pid {daemon.proc.pid}) supervises the units of"
    assert f"{message} {daemon.config_dir} already" in second.stderr, second
    assert not os.path.exists(other)
    assert daemon.status("only")["pid"] == pid


def test_a_config_dir_made_after_two_daemons_started_is_locked_by_the_first_reload(tmp_path):
    """Both started on a directory that did not exist: the first to reload once it does
    takes it; the other's reload is refused, so no unit runs twice."""
    from conftest import Daemon

    first, second = Daemon(tmp_path / "first"), Daemon(tmp_path / "second")
    shared = tmp_path / "late"
    first.config_dir = second.config_dir = shared
    try:
        first.start()
        second.start()
        shared.mkdir()
        first.service("once", "sleep 1000")
        assert first.call("reload")["added"] == ["once"]
        refused = second.cli("reload")
        assert refused.returncode == 1, refused
        assert f"supervises the units of {shared} already" in refused.stderr, refused.stderr
        assert second.call("list") == []
        assert first.wait_state("once", "Running")["pid"]
    finally:
        second.stop()
        first.stop()


def test_socket_path_that_is_not_a_socket_is_not_replaced(daemon):
    """A regular file at the socket path is left alone: the daemon refuses to start."""
    with open(daemon.socket, "w") as stream:
        stream.write("precious\n")
    daemon.start(wait=False)
    assert daemon.proc.wait(60) == 1
    assert daemon.socket in daemon.log()
    with open(daemon.socket) as stream:
        assert stream.read() == "precious\n"


def test_stale_socket_is_replaced(tmp_path):
    """A socket file left by a SIGKILLed daemon is replaced when a new daemon starts."""
    first = Daemon(tmp_path)
    second = Daemon(tmp_path)
    try:
        first.start()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
        assert stat.S_ISSOCK(os.lstat(first.socket).st_mode), "the socket file should remain"
        with pytest.raises(zinit.DaemonUnavailable):
            zinit.ZinitClient.connect_unix(first.socket, timeout=5)
        second.start()
        with zinit.ZinitClient.connect_unix(second.socket, timeout=30) as client:
            assert client.ping()["pid"] == second.proc.pid
        assert stat.S_IMODE(os.stat(second.socket).st_mode) == 0o600
    finally:
        first.stop()
        second.stop()


def test_socket_removed_on_exit(daemon):
    """An ordered shutdown (SIGTERM) removes the socket file."""
    daemon.start()
    assert daemon.stop() == 0
    wait_until(lambda: not os.path.exists(daemon.socket), timeout=10, what="socket removal")


def _without_clocks(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in ("uptime_s", "next_restart_s")}


def test_list_rows_are_what_status_says(daemon):
    """``list`` and ``status`` (encoded from a per-unit cache) agree field for field with
    a snapshot taken afresh (``list`` with usage, which bypasses the cache)."""
    daemon.service("runner", "sleep 1000", dependencies='wants = ["ghost"]\n')
    daemon.service("failer", "sh -c 'exit 3'", lifecycle='restart = "never"\n')
    daemon.service("waiter", "sleep 1000", dependencies='requires = ["nowhere"]\n')
    daemon.service(
        "backoff", "sh -c 'exit 1'", lifecycle="restart_delay_ms = 60000\nmax_restarts = 5\n"
    )
    daemon.write("broken", "[service]\nexec = 42\n")
    daemon.start()
    daemon.wait_state("runner", "Running")
    daemon.wait_state("failer", "Failed")
    daemon.wait_state("waiter", "Blocked")
    wait_until(lambda: daemon.status("backoff")["next_restart_s"], what="a pending restart")
    with daemon.client() as client:
        rows = client.list()
        fresh = {row["name"]: row for row in client.list(with_usage=True)}
        assert [row["name"] for row in rows] == sorted(row["name"] for row in rows)
        assert {row["name"] for row in rows} >= {"runner", "failer", "waiter", "backoff", "broken"}
        for row in rows:
            status = client.status(row["name"])
            assert _without_clocks(row) == _without_clocks(status), row["name"]
            assert set(row) == set(status)
            usage = {"cpu_percent", "rss_bytes"}
            expected = {k: v for k, v in fresh[row["name"]].items() if k not in usage}
            assert _without_clocks(row) == _without_clocks(expected), row["name"]
            assert set(row) == set(expected)
        by_name = {row["name"]: row for row in rows}
        assert by_name["runner"]["uptime_s"] >= 0
        assert by_name["runner"]["warnings"] == ["wants 'ghost', which is not defined"]
        assert by_name["failer"]["exit_code"] == 3
        assert 0 < by_name["backoff"]["next_restart_s"] <= 60
        assert "config error" in by_name["broken"]["reason"]


def test_list_follows_every_change(daemon):
    """A cached row is encoded again when its unit changes: state, pid, warnings."""
    daemon.service("one", "sleep 1000")
    daemon.start()
    first = daemon.wait_state("one", "Running")
    with daemon.client() as client:
        assert client.list()[0]["pid"] == first["pid"]
        client.restart("one")
        wait_until(
            lambda: (
                (row := client.list()[0])["pid"] not in (None, first["pid"])
                and row["state"] == "Running"
            ),
            what="a new pid in list",
        )
        assert client.list()[0]["restarts"] == client.status("one")["restarts"]
        client.stop("one")
        wait_until(lambda: client.list()[0]["state"] == "Exited", what="Exited in list")
        assert client.list()[0]["pid"] is None
        assert client.list()[0]["exit_code"] == client.status("one")["exit_code"]
        daemon.service("one", "sleep 1000", dependencies='after = ["later"]\n')
        client.reload()
        wait_until(lambda: client.list()[0]["warnings"], what="a warning in list")
        daemon.service("later", "sleep 1000")
        client.reload()
        wait_until(lambda: len(client.list()) == 2, what="the new unit")
        assert client.list()[1]["warnings"] == []


def test_list_in_a_batch_is_an_array_of_units(wire):
    """The pre-encoded list is spliced into batch replies as JSON, not as a string."""
    wire.send(
        json.dumps(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "list"},
                {"jsonrpc": "2.0", "id": 2, "method": "list", "params": {"with_usage": True}},
            ]
        )
    )
    replies = {reply["id"]: reply for reply in wire.read()}
    assert [row["name"] for row in replies[1]["result"]] == ["sleeper"]
    assert replies[1]["result"][0]["state"] == "Running"
    assert replies[2]["result"][0]["rss_bytes"] > 0
