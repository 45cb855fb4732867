"""xinet socket activation (SPEC section 9) with real clients, real backends and a real daemon.

Backends are services run by zinit: one small inline Python server (BACKEND) with three modes,
on TCP 127.0.0.1 or a unix socket: "echo" (echo until EOF, then close), "count" (read until
EOF, reply with the byte count) and "greet" (send a greeting, shut down the write side, go on
reading, log what arrived).  Services are status=stop: the proxy starts them.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import struct
import subprocess
import threading
import time

import psutil
import pytest
from conftest import PYTHON, ROOT, wait_until

QUICK = 'restart = "never"\nstop_timeout_ms = 2000\n'
STOPPED = 'status = "stop"\n'
STOPPED_TOML = '[service]\nexec = "sleep 1000"\nstatus = "stop"\n'
STATUS_KEYS = {
    "name", "listen", "backend", "service", "service_state", "active", "total", "refused",
    "bytes_in", "bytes_out", "last_error", "warnings", "connect_timeout", "idle_timeout",
    "single_connection", "source", "path", "error",
}  # fmt: skip

BACKEND = r"""
import os, socket, sys, threading, time
mode, address, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(delay)  # a service's own start-up time: the proxy must hold its client meanwhile
if address.startswith("unix:"):
    path = address[len("unix:"):]
    if os.path.lexists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
else:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host, port = address.rsplit(":", 1)
    server.bind((host, int(port)))
server.listen(512)
print("listening on", address, flush=True)

def handle(conn):
    with conn:
        if mode == "echo":
            while chunk := conn.recv(65536):
                conn.sendall(chunk)
        elif mode == "count":
            total = 0
            while chunk := conn.recv(65536):
                total += len(chunk)
            conn.sendall(str(total).encode())
        elif mode == "greet":
            conn.sendall(b"hello\n")
            conn.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            print("got:", data.decode(), flush=True)

while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


# -- helpers ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tcp() -> str:
    return f"127.0.0.1:{free_port()}"


def backend(daemon, name, mode, address, delay=0.0):
    """A status=stop service running BACKEND in ``mode`` on ``address``."""
    command = shlex.join([PYTHON, "-c", BACKEND, mode, address, str(delay)])
    return daemon.service(name, command, service=STOPPED, lifecycle=QUICK)


def connect(address: str, timeout: float = 30) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address[len("unix:") :])
        except BaseException:
            sock.close()
            raise
        return sock
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def round_trip(address: str, payload: bytes, timeout: float = 30) -> bytes:
    """Send ``payload``, half-close, and return everything read until EOF."""
    with connect(address, timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock)


def xstatus(daemon, name="px"):
    return daemon.call("xinet_status", name=name)


def proxy(daemon, listen, backend_address, service, name="px", **options):
    """Set a proxy over the client library; ``listen`` is one address or a list."""
    listen = [listen] if isinstance(listen, str) else listen
    return daemon.call(
        "xinet_set", name=name, listen=listen, backend=backend_address, service=service, **options
    )


def settle(daemon, name="px"):
    """Wait until the proxy has no connection left; return its status."""
    return wait_until(
        lambda: (s := xstatus(daemon, name))["active"] == 0 and s, timeout=20, what="active == 0"
    )


def fd_count(daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def steady_fd_count(daemon) -> int:
    """The daemon's fd count once it holds still (the last RPC connection has closed)."""
    samples: list[int] = []

    def steady() -> int | None:
        samples.append(fd_count(daemon))
        recent = samples[-10:]
        return recent[0] if len(recent) == 10 and len(set(recent)) == 1 else None

    return wait_until(steady, what="a steady fd count")


# -- activation -----------------------------------------------------------------


def test_first_client_activates_a_stopped_service(daemon):
    """The first client is held while the service starts (its backend binds ~0.3 s late)."""
    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back, delay=0.3)
    daemon.start()
    assert daemon.status("echo")["state"] == "Inactive"
    status = proxy(daemon, listen, back, "echo", connect_timeout=20)
    assert status["service_state"] == "Inactive" and status["total"] == 0
    payload = b"ping " * 1000
    assert round_trip(listen, payload) == payload
    assert daemon.wait_state("echo", "Running")["pid"]
    status = settle(daemon)
    assert status["total"] == 1
    assert status["bytes_in"] == len(payload)
    assert status["bytes_out"] == len(payload)
    assert status["service_state"] == "Running"
    assert status["last_error"] is None
    assert status["refused"] == 0


def test_all_four_pairings(daemon, tmp_path):
    """TCP→TCP, unix→unix, TCP→unix and unix→TCP each carry an echo round trip."""
    back_tcp, back_unix = tcp(), f"unix:{tmp_path}/echo.sock"
    backend(daemon, "echo-tcp", "echo", back_tcp)
    backend(daemon, "echo-unix", "echo", back_unix)
    daemon.start()
    pairs = {
        "tt": (tcp(), back_tcp, "echo-tcp"),
        "uu": (f"unix:{tmp_path}/uu.sock", back_unix, "echo-unix"),
        "tu": (tcp(), back_unix, "echo-unix"),
        "ut": (f"unix:{tmp_path}/ut.sock", back_tcp, "echo-tcp"),
    }
    for name, (listen, back, service) in pairs.items():
        proxy(daemon, listen, back, service, name=name, connect_timeout=20)
    for name, (listen, _, _) in pairs.items():
        payload = f"hello through {name}\n".encode() * 100
        assert round_trip(listen, payload) == payload, name
        status = settle(daemon, name)
        assert (status["total"], status["bytes_in"], status["bytes_out"]) == (
            1,
            len(payload),
            len(payload),
        ), status
    assert sorted(p["name"] for p in daemon.call("xinet_list")) == sorted(pairs)


# -- half-close -------------------------------------------------------------------


def test_half_close_from_the_client(daemon):
    """Client sends then SHUT_WR; the backend sees EOF, replies with the count; client reads."""
    listen, back = tcp(), tcp()
    backend(daemon, "count", "count", back)
    daemon.start()
    proxy(daemon, listen, back, "count", connect_timeout=20)
    payload = os.urandom(300_000)
    assert round_trip(listen, payload) == str(len(payload)).encode()
    status = settle(daemon)
    assert status["bytes_in"] == len(payload)
    assert status["bytes_out"] == len(str(len(payload)))


def test_half_close_from_the_backend(daemon, tmp_path):
    """Backend greets and SHUT_WRs; the client gets EOF yet can still send, and it arrives."""
    listen, back = f"unix:{tmp_path}/px.sock", tcp()
    backend(daemon, "greet", "greet", back)
    daemon.start()
    proxy(daemon, listen, back, "greet", connect_timeout=20)
    with connect(listen) as sock:
        assert read_to_eof(sock) == b"hello\n"
        sock.sendall(b"late data")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    daemon.wait_log("greet", "got: late data")
    status = settle(daemon)
    assert (status["bytes_in"], status["bytes_out"]) == (len(b"late data"), len(b"hello\n"))


def test_bulk_data_arrives_intact_both_ways(daemon):
    """16 MiB of random bytes, echoed through the proxy while still being sent, come back unchanged.

    Large enough that the proxy's pipes switch to bulk mode (they grow on the first full read).
    """
    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    proxy(daemon, listen, back, "echo", connect_timeout=20)
    payload = os.urandom(16 << 20)
    echoed = bytearray()
    with connect(listen, timeout=60) as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        while chunk := sock.recv(1 << 20):
            echoed += chunk
        sender.join()
    assert len(echoed) == len(payload)
    assert echoed == payload
    status = settle(daemon)
    assert status["bytes_in"] == status["bytes_out"] == len(payload)


# -- failures -------------------------------------------------------------------------
COPY_PROBE = r"""
import hashlib, os, socket, sys, threading
import gevent
sys.path.insert(0, sys.argv[1])
import zinit

runtime = zinit._Runtime()
client, source = socket.socketpair()
target, backend = socket.socketpair()
for end in (source, target):
    end.setblocking(False)
readable = runtime.loop.io(source.fileno(), 1)
writable = runtime.loop.io(target.fileno(), 2)
waits = (lambda: runtime.hub.wait(readable), lambda: runtime.hub.wait(writable))
counted = []

# splice(2) refuses an eventfd: the pump must learn that before moving anything.
event = os.eventfd(1, os.EFD_NONBLOCK)
print("splice-eventfd", zinit._splice_until_eof(event, target.fileno(), *waits, counted.append))

payload = os.urandom(3 << 20)
received = []

def send():
    client.sendall(payload)
    client.shutdown(socket.SHUT_WR)

def receive():
    chunks = []
    while chunk := backend.recv(1 << 20):
        chunks.append(chunk)
    received.append(b"".join(chunks))

threads = [threading.Thread(target=send), threading.Thread(target=receive)]
for thread in threads:
    thread.start()
zinit._copy_until_eof(source.fileno(), target.fileno(), *waits, counted.append)
target.shutdown(socket.SHUT_WR)
for thread in threads:
    thread.join()
print("copied", received[0] == payload, sum(counted) == len(payload))
"""


def test_the_copy_loop_carries_what_splice_refuses(tmp_path):
    """splice(2) reports "cannot" before moving a byte; the copy loop moves 3 MiB intact to EOF."""
    result = subprocess.run(
        [PYTHON, "-c", COPY_PROBE, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["splice-eventfd False", "copied True True"]


FULL_BACKLOG = r"""
import os, socket, sys, threading, time
path = sys.argv[1]
if os.path.lexists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(0)
filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
filler.connect(path)  # the accept queue is full now: a connect gets EAGAIN
print("listening, accept queue full", flush=True)
time.sleep(1.0)

def handle(conn):
    with conn:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)

while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


def test_a_unix_backend_with_a_full_accept_queue_is_retried(daemon, tmp_path):
    """EAGAIN from a unix backend is no connection: the client waits until it is accepted."""
    path = f"{tmp_path}/full.sock"
    command = shlex.join([PYTHON, "-c", FULL_BACKLOG, path])
    daemon.service("full", command, service=STOPPED, lifecycle=QUICK)
    daemon.start()
    listen = tcp()
    proxy(daemon, listen, f"unix:{path}", "full", connect_timeout=20)
    daemon.cli("start", "full")
    daemon.wait_log("full", "accept queue full")
    assert round_trip(listen, b"hello\n") == b"hello\n"
    status = settle(daemon)
    assert (status["bytes_in"], status["bytes_out"]) == (6, 6)


def test_backend_that_never_comes_up(daemon):
    """connect_timeout 1: the client is closed after about 1 s, and last_error says why."""
    listen, back = tcp(), tcp()
    daemon.service("never", "sleep 1000", service=STOPPED, lifecycle=QUICK)
    daemon.start()
    proxy(daemon, listen, back, "never", connect_timeout=1)
    with connect(listen) as sock:
        began = time.monotonic()
        try:
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - began
    assert data == b""
    assert 0.8 <= elapsed < 15, elapsed
    status = settle(daemon)
    assert status["last_error"], status
    assert back in status["last_error"] and "backend" in status["last_error"], status
    assert "1s" in status["last_error"] or "timeout" in status["last_error"].lower(), status
    assert status["bytes_in"] == status["bytes_out"] == 0
    assert daemon.status("never")["state"] == "Running"


def test_idle_timeout_stops_and_a_client_reactivates(daemon):
    """idle_timeout 1: the service stops after the last client leaves; a new one restarts it."""
    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    proxy(daemon, listen, back, "echo", connect_timeout=20, idle_timeout=1)
    assert round_trip(listen, b"one") == b"one"
    first = daemon.wait_state("echo", "Running")["pid"]
    stopped = daemon.wait_state("echo", "Exited", "Inactive")
    assert "idle" in stopped["reason"], stopped
    assert round_trip(listen, b"two") == b"two"
    second = daemon.wait_state("echo", "Running")["pid"]
    assert second != first
    assert settle(daemon)["total"] == 2


DRAINING_BACKEND = r"""
import os, signal, socket, sys, threading, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
host, port = sys.argv[1].rsplit(":", 1)
server.bind((host, int(port)))
server.listen(64)
stopping = []
# Like many servers, it keeps answering for a while after SIGTERM.
signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))

def serve():
    while True:
        conn, _ = server.accept()
        with conn:
            conn.sendall(f"{os.getpid()} {'stopping' if stopping else 'up'}".encode())

threading.Thread(target=serve, daemon=True).start()
while not stopping or time.monotonic() - stopping[0] < 3:
    time.sleep(0.05)
"""


def test_a_client_during_an_idle_stop_reaches_the_next_instance(daemon):
    """A client that arrives while the idle stop drains the backend waits for the new one."""
    listen, back = tcp(), tcp()
    command = shlex.join([PYTHON, "-c", DRAINING_BACKEND, back])
    daemon.service(
        "drainer", command, service=STOPPED, lifecycle='restart = "never"\nstop_timeout_ms = 8000\n'
    )
    daemon.start()
    proxy(daemon, listen, back, "drainer", connect_timeout=30, idle_timeout=1)
    first_pid, state = round_trip(listen, b"").decode().split()
    assert state == "up"
    daemon.wait_state("drainer", "Stopping")
    pid, state = round_trip(listen, b"").decode().split()
    assert (pid, state) != (first_pid, "stopping"), "served by the instance being stopped"
    assert state == "up" and pid != first_pid
    assert daemon.wait_state("drainer", "Running")["pid"] == int(pid)


def test_single_connection_refuses_a_second_client(daemon):
    """With single_connection a second concurrent client is closed at once; the first works."""
    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    proxy(daemon, listen, back, "echo", connect_timeout=20, single_connection=True)
    with connect(listen) as first:
        first.sendall(b"a")
        assert first.recv(16) == b"a"
        with connect(listen, timeout=10) as second:
            began = time.monotonic()
            try:
                data = second.recv(16)
            except ConnectionResetError:
                data = b""
            assert data == b""
            assert time.monotonic() - began < 5
        first.sendall(b"b")
        assert first.recv(16) == b"b"
        status = xstatus(daemon)
        assert status["refused"] == 1 and status["active"] == 1, status
    settle(daemon)
    assert round_trip(listen, b"third") == b"third"  # the slot is free again
    status = settle(daemon)
    assert status["refused"] == 1 and status["total"] == 2, status


# -- replacing, listen paths, bad input -------------------------------------------


def test_set_twice_replaces_on_the_same_port(daemon, tmp_path):
    """A second `xinet set` of the same name and port rebinds it; the new backend answers."""
    listen, back_echo, back_count = tcp(), tcp(), f"unix:{tmp_path}/count.sock"
    backend(daemon, "echo", "echo", back_echo)
    backend(daemon, "count", "count", back_count)
    daemon.start()
    common = ["xinet", "set", "px", "--listen", listen, "--connect-timeout", "20"]
    result = daemon.cli(*common, "--backend", back_echo, "--service", "echo")
    assert result.returncode == 0, result.stderr
    assert round_trip(listen, b"abc") == b"abc"
    result = daemon.cli(*common, "--backend", back_count, "--service", "count")
    assert result.returncode == 0, result.stderr
    assert "in use" not in result.stderr
    assert round_trip(listen, b"abc") == b"3"
    proxies = daemon.call("xinet_list")
    assert [(p["name"], p["backend"], p["service"]) for p in proxies] == [
        ("px", back_count, "count")
    ]


def test_stale_unix_socket_is_replaced_and_a_regular_file_is_refused(daemon, tmp_path):
    """A dead socket file at the listen path is replaced; a regular file there is refused."""
    back = tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # closed without unlink: nobody listens there
    assert stale.is_socket()
    proxy(daemon, f"unix:{stale}", back, "echo", connect_timeout=20)
    assert round_trip(f"unix:{stale}", b"fresh") == b"fresh"

    regular = tmp_path / "regular.file"
    regular.write_text("keep me\n")
    result = daemon.cli(
        "xinet", "set", "other", "--listen", f"unix:{regular}", "--backend", back,
        "--service", "echo",
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert str(regular) in result.stderr
    assert regular.read_text() == "keep me\n"
    assert [p["name"] for p in daemon.call("xinet_list")] == ["px"]


def test_bad_input(daemon):
    """Unknown service, bad address, port in use and an unknown proxy are refused clearly."""
    back = tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    listen = tcp()

    def set_(*args):
        return daemon.cli("xinet", "set", "px", *args)

    result = set_("--listen", listen, "--backend", back, "--service", "nope")
    assert result.returncode == 1, result
    assert "nope" in result.stderr

    result = set_("--listen", "not-an-address", "--backend", back, "--service", "echo")
    assert result.returncode in (1, 2), result
    assert "not-an-address" in result.stderr and "listen" in result.stderr

    result = set_("--listen", listen, "--backend", "unix:relative", "--service", "echo")
    assert result.returncode in (1, 2), result
    assert "unix:relative" in result.stderr and "backend" in result.stderr

    with socket.socket() as taken:
        host, port = listen.rsplit(":", 1)
        taken.bind((host, int(port)))
        taken.listen(1)
        result = set_("--listen", listen, "--backend", back, "--service", "echo")
    assert result.returncode == 1, result
    assert listen in result.stderr and "in use" in result.stderr.lower(), result.stderr

    result = daemon.cli("xinet", "status", "nope")
    assert result.returncode == 1, result
    assert "nope" in result.stderr

    result = daemon.cli("xinet", "delete", "nope")
    assert result.returncode == 1, result
    assert daemon.call("xinet_list") == []


def test_a_proxy_file_reports_every_problem_and_an_undefined_service_warns(daemon, tmp_path):
    """validate lists every bad field of an [xinet] file; a proxy for a unit that does not
    exist is installed with a warning (validate, reload, status), not silently."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "px.toml").write_text(
        '[xinet]\nlisten = ["127.0.0.1:1", "tcp:127.0.0.1:1", 5, 5]\nbackend = 8750\n'
        'service = "web"\nconnect_timeout = 0\nidle_timeout = -1\nsingle_connection = "yes"\n'
    )
    result = daemon.cli("validate", str(bad))
    assert result.returncode == 1, result
    assert [line.split(": ", 2)[2] for line in result.stdout.splitlines()[:-1]] == [
        "xinet.listen: expected an address string, got 5",
        "xinet.listen: listed twice: tcp:127.0.0.1:1 (as 127.0.0.1:1)",
        "xinet.backend: expected an address string, got 8750",
        "xinet.connect_timeout: expected seconds > 0, got 0",
        "xinet.idle_timeout: expected seconds >= 0, got -1",
        "xinet.single_connection: expected true or false, got 'yes'",
    ], result.stdout

    listen = tcp()
    daemon.write("px", f'[xinet]\nlisten = "{listen}"\nbackend = "{tcp()}"\nservice = "ghost"\n')
    result = daemon.cli("validate", str(daemon.config_dir))
    assert result.returncode == 0, result
    assert "warning: " in result.stdout and "xinet.service: 'ghost' is not defined" in result.stdout
    daemon.start()
    message = "service 'ghost' is not defined; clients are closed until it is"
    assert xstatus(daemon)["last_error"] == message
    result = daemon.cli("reload")
    assert result.returncode == 0, result
    assert f"zinit: reload: warning: xinet px: {message}" in result.stderr
    assert daemon.log().count(message) == 1  # a reminder in reload's reply, not a new warning

    # A change that cannot be installed (its address is another proxy's) reports that
    # error alone: the old proxy, still running, gets no warning about the new file.
    other = tcp()
    daemon.write("other", f'[xinet]\nlisten = "{other}"\nbackend = "{tcp()}"\nservice = "px"\n')
    daemon.write("px", f'[xinet]\nlisten = "{other}"\nbackend = "{tcp()}"\nservice = "ghost2"\n')
    result = daemon.cli("reload")
    assert result.returncode == 1, result
    assert "proxy 'other' listens there already" in result.stderr
    assert "ghost2" not in result.stderr and "ghost2" not in daemon.log()
    assert xstatus(daemon)["listen"] == [listen]

    # Once the unit exists, the warning is no longer shown as the proxy's last error.
    daemon.write("px", f'[xinet]\nlisten = "{listen}"\nbackend = "{tcp()}"\nservice = "ghost"\n')
    assert daemon.cli("reload").returncode == 0
    assert daemon.cli("add-service", "-", "--name", "ghost", input=STOPPED_TOML).returncode == 0
    assert xstatus(daemon)["last_error"] is None

    # A unit whose file is broken is not "not defined": the warning says what it is.
    daemon.write("broken", "[service]\nexec = 5\n")
    daemon.write("px", f'[xinet]\nlisten = "{listen}"\nbackend = "{tcp()}"\nservice = "broken"\n')
    result = daemon.cli("reload")
    broken = "service 'broken' is not loaded (its file has an error); clients are closed"
    assert f"zinit: reload: warning: xinet px: {broken}" in result.stderr, result.stderr
    assert xstatus(daemon)["last_error"] == broken


def test_an_address_of_another_proxy_is_refused_by_name(daemon):
    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    proxy(daemon, listen, back, "echo", name="first")
    result = daemon.cli(
        "xinet", "set", "second", "--listen", tcp(), "--listen", f"tcp:{listen}",
        "--backend", back, "--service", "echo",
    )  # fmt: skip
    assert result.returncode == 1, result
    assert result.stderr == f"zinit: tcp:{listen}: proxy 'first' listens there already\n"
    assert [p["name"] for p in daemon.call("xinet_list")] == ["first"]
    assert round_trip(listen, b"still first") == b"still first"


def test_failed_replace_keeps_the_old_proxy(daemon):
    """A `xinet set` that cannot listen (port taken) leaves the proxy of that name working."""
    listen, back, taken_address = tcp(), tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    proxy(daemon, listen, back, "echo", connect_timeout=20)
    assert round_trip(listen, b"before") == b"before"
    with socket.socket() as taken:
        host, port = taken_address.rsplit(":", 1)
        taken.bind((host, int(port)))
        taken.listen(1)
        result = daemon.cli(
            "xinet", "set", "px", "--listen", taken_address, "--backend", back,
            "--service", "echo",
        )  # fmt: skip
    assert result.returncode == 1, result
    assert taken_address in result.stderr
    assert [p["listen"] for p in daemon.call("xinet_list")] == [[listen]]
    assert round_trip(listen, b"after") == b"after"


# -- robustness ----------------------------------------------------------------------


def test_client_vanishing_mid_transfer_leaks_nothing(daemon):
    """A client that sends a lot and then resets: fds and the active count return to before."""
    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    proxy(daemon, listen, back, "echo", connect_timeout=20)
    assert round_trip(listen, b"warm up") == b"warm up"
    warm = settle(daemon)["bytes_in"]
    before = steady_fd_count(daemon)

    sock = connect(listen)
    chunk = b"x" * 65536
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 20
    while sent < 64 << 20 and time.monotonic() < deadline:  # until every buffer is full
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            if xstatus(daemon)["bytes_in"] > warm:
                break
    assert sent > 0
    wait_until(lambda: xstatus(daemon)["bytes_in"] > warm, what="data through the proxy")
    assert xstatus(daemon)["active"] == 1
    assert fd_count(daemon) > before  # the count does see the connection's fds
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST

    settle(daemon)
    wait_until(lambda: fd_count(daemon) == before, what=f"fd count back to {before}")
    assert round_trip(listen, b"still fine") == b"still fine"


def test_out_of_fds_the_proxy_copies_then_pauses_accepting_and_recovers(daemon):
    """At the daemon's fd limit a client is carried by the copy loop (no pipe can be had),
    the next one waits in the accept queue (one warning, no spinning), and is served once
    fds are free again."""
    import resource

    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    proxy(daemon, listen, back, "echo", connect_timeout=20)
    assert round_trip(listen, b"warm up") == b"warm up"
    steady_fd_count(daemon)
    pid = daemon.proc.pid
    taken = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    free = sorted(set(range(max(taken) + 3)) - taken)
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # Room for exactly two more fds (the lowest free numbers, which the kernel hands
    # out first): the first client and its backend connection.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (free[1] + 1, limits[1]))
    try:
        with connect(listen) as first:
            first.sendall(b"first")
            assert first.recv(64) == b"first"  # forwarded without a splice pipe
            with connect(listen) as second:
                second.sendall(b"second")
                # No RPC here: the control socket needs an fd too.
                wait_until(lambda: f"cannot accept clients on {listen}" in daemon.log())
                # The listener stays readable: a daemon that kept trying would burn a core.
                # A window to watch, not a wait for something (nothing is to happen).
                cpu = psutil.Process(pid).cpu_times
                spent = sum(cpu()[:2])
                time.sleep(1.0)
                spent = sum(cpu()[:2]) - spent
                assert spent < 0.3, f"{spent:.2f} s of CPU in 1 s while no fd was free"
                first.shutdown(socket.SHUT_WR)
                assert read_to_eof(first) == b""
                first.close()
                second.shutdown(socket.SHUT_WR)
                assert read_to_eof(second) == b"second"
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    assert daemon.log().count("cannot accept clients on") == 1
    wait_until(lambda: f"accepting clients on {listen} again" in daemon.log())
    assert round_trip(listen, b"still fine") == b"still fine"
    status = settle(daemon)
    assert status["total"] == 4 and status["last_error"] is None, status


def test_two_hundred_concurrent_clients(daemon):
    """200 clients at once, each an echo round trip through the proxy: all succeed."""
    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    proxy(daemon, listen, back, "echo", connect_timeout=30)
    count = 200
    results: dict[int, object] = {}
    barrier = threading.Barrier(count)

    def client(index: int) -> None:
        payload = f"client {index} ".encode() * 50
        try:
            with connect(listen, timeout=60) as sock:
                barrier.wait(timeout=60)
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                results[index] = read_to_eof(sock) == payload
        except (OSError, threading.BrokenBarrierError) as error:  # reported below
            results[index] = repr(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    failures = {i: r for i, r in results.items() if r is not True}
    assert len(results) == count and not failures, failures
    status = settle(daemon)
    assert status["total"] == count and status["refused"] == 0


# -- config files ----------------------------------------------------------------------


def test_proxy_from_a_config_file_restart_and_reload(daemon, tmp_path):
    """An [xinet] file: there at start, still there after a daemon restart, reloaded, removed."""
    listen, back_echo, back_count = tcp(), tcp(), f"unix:{tmp_path}/count.sock"
    backend(daemon, "echo", "echo", back_echo)
    backend(daemon, "count", "count", back_count)
    path = daemon.write(
        "px",
        f"""\
        [xinet]
        name = "px"
        listen = "{listen}"
        backend = "{back_echo}"
        service = "echo"
        connect_timeout = 20
        idle_timeout = 0
        single_connection = false
        """,
    )
    daemon.start()
    status = xstatus(daemon)
    assert status["source"] == "config" and status["path"] == str(path), status
    assert status["listen"] == [listen] and status["backend"] == back_echo
    assert status["connect_timeout"] == 20 and status["single_connection"] is False
    assert "px" not in [unit["name"] for unit in daemon.call("list")]
    assert round_trip(listen, b"one") == b"one"

    daemon.stop()
    daemon.start()
    assert xstatus(daemon)["source"] == "config"
    assert round_trip(listen, b"two") == b"two"

    unix_listen = f"unix:{tmp_path}/px.sock"
    daemon.write(
        "px",
        f"""\
        [xinet]
        listen = ["{listen}", "{unix_listen}"]
        backend = "{back_count}"
        service = "count"
        connect_timeout = 20
        """,
    )
    reply = daemon.call("reload")
    assert reply["xinet"]["changed"] == ["px"], reply
    assert reply["xinet"]["added"] == reply["xinet"]["removed"] == reply["xinet"]["errors"] == []
    assert round_trip(listen, b"abcd") == b"4"
    assert round_trip(unix_listen, b"ab") == b"2"

    reply = daemon.call("reload")
    assert reply["xinet"]["unchanged"] == ["px"], reply

    path.unlink()
    reply = daemon.call("reload")
    assert reply["xinet"]["removed"] == ["px"], reply
    assert daemon.call("xinet_list") == []
    with pytest.raises(ConnectionRefusedError):
        connect(listen, timeout=10).close()

    # `xinet delete` of a proxy from a file deletes the file, as remove-service does,
    # so that the next reload does not bring it back.
    path.write_text(f'[xinet]\nlisten = "{listen}"\nbackend = "{back_echo}"\nservice = "echo"\n')
    assert daemon.call("reload")["xinet"]["added"] == ["px"]
    result = daemon.cli("xinet", "delete", "px")
    assert result.returncode == 0 and result.stdout == f"deleted {path}\n", result
    assert not path.exists()
    assert daemon.call("reload")["xinet"]["added"] == []
    assert daemon.call("xinet_list") == []
    assert not os.path.exists(unix_listen[len("unix:") :])


def test_broken_proxy_file_keeps_the_old_proxy_on_reload(daemon):
    """SPEC 11: a file with an error keeps its proxy on the old config (listening, working)."""
    listen, back = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    text = f'[xinet]\nlisten = "{listen}"\nbackend = "{back}"\nservice = "echo"\n'
    path = daemon.write("px", text + "connect_timeout = 20\n")
    daemon.start()
    assert round_trip(listen, b"before") == b"before"
    path.write_text(text + "connect_timeout = 20\ntypo = 1\nbogus = 2\n")
    reply = daemon.call("reload")
    assert reply["errors"] == [], reply  # a proxy's file, not a unit's
    [error] = reply["xinet"]["errors"]
    assert (error["name"], error["key"], error["line"]) == ("px", "xinet.typo", 6), error
    assert [problem["key"] for problem in error["also"]] == ["xinet.bogus"], error
    assert "px" not in reply["xinet"]["removed"], reply
    assert [p["name"] for p in daemon.call("xinet_list")] == ["px"]
    assert round_trip(listen, b"after") == b"after"
    # No unit shows for it, so it cannot fail a health probe.
    assert "px" not in [unit["name"] for unit in daemon.call("list")]
    assert daemon.cli("check").returncode == 0
    [warning] = xstatus(daemon)["warnings"]
    assert warning.startswith("config file has an error, still using the old config: ")
    assert "xinet.typo" in warning and "(and 1 more in this file)" in warning
    result = daemon.cli("reload")
    assert result.returncode == 1, result
    assert f"zinit: reload: xinet px: {path}:6:1: xinet.typo: " in result.stderr, result.stderr
    assert f"zinit: reload: xinet px: {path}:7:1: xinet.bogus: " in result.stderr, result.stderr
    assert "warning:     config file has an error" in daemon.cli("xinet", "status").stdout

    # A proxy file that never loaded says so where the proxy would be.
    daemon.write("px2", "[xinet]\nlisten = 5\n")
    assert daemon.cli("reload").returncode == 1
    result = daemon.cli("xinet", "status", "px2")
    assert result.returncode == 1, result
    assert "proxy 'px2' is not loaded: " in result.stderr, result.stderr
    assert "xinet.backend: required: the address the service listens on" in result.stderr
    listed = daemon.cli("xinet", "list")
    assert listed.returncode == 0, listed
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("px2 ")]
    assert row.split()[1:5] == ["-", "-", "-", "not"], listed.stdout
    assert f"px2: not loaded: {daemon.config_dir / 'px2.toml'}:" in listed.stdout, listed.stdout
    [unloaded] = [p for p in daemon.call("xinet_list") if p["name"] == "px2"]
    assert set(unloaded) == STATUS_KEYS, unloaded
    assert unloaded["listen"] == [] and "xinet.backend: required" in unloaded["error"], unloaded
    assert [p["error"] for p in daemon.call("xinet_list") if p["name"] == "px"] == [None]
    every = daemon.cli("xinet", "status").stdout
    assert "px2 (not loaded)\n  error:       " in every and "px (config)" in every, every
    assert "  timeouts:    connect 20s, idle never (0)\n" in every, every
    problems = daemon.cli("validate", str(daemon.config_dir)).stdout
    assert "px2.toml:1:2: xinet.service: required: the unit to start\n" in problems
    assert "px2.toml:2:10: xinet.listen: expected an address or a list of them, got 5" in problems
    deleted = daemon.cli("xinet", "delete", "px2")  # the way to be rid of it from the CLI
    assert deleted.returncode == 0, deleted
    assert not (daemon.config_dir / "px2.toml").exists()

    path.write_text(text + "connect_timeout = 20\n")  # fixed
    reply = daemon.call("reload")
    assert reply["xinet"]["unchanged"] == ["px"] and reply["removed"] == [], reply
    assert reply["xinet"]["errors"] == [], reply
    assert xstatus(daemon)["warnings"] == []
    # The file is where it is changed: a set would be undone by the next reload.
    refused = daemon.cli(
        "xinet", "set", "px", "--listen", tcp(), "--backend", back, "--service", "echo"
    )
    assert refused.returncode == 1, refused
    assert f"proxy 'px' is declared in {path}: edit the file and reload" in refused.stderr
    assert round_trip(listen, b"still") == b"still"


def test_host_names_are_resolved_without_holding_the_daemon(daemon):
    """localhost is a name, not an IP: it goes through gevent's resolver, and works."""
    back, listen = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    daemon.start()
    named = "localhost:" + back.rsplit(":", 1)[1]
    proxy(daemon, listen, named, "echo")
    assert round_trip(listen, b"by name") == b"by name"


def test_a_proxy_file_that_cannot_be_installed_is_listed_as_not_loaded(daemon):
    """Its address taken by another proxy: xinet list and status show it, with why;
    xinet delete removes its file."""
    back, listen = tcp(), tcp()
    backend(daemon, "echo", "echo", back)
    text = f'[xinet]\nlisten = "{listen}"\nbackend = "{back}"\nservice = "echo"\n'
    daemon.write("first", text)
    daemon.start()
    path = daemon.write("second", text)
    result = daemon.cli("reload")
    assert result.returncode == 1 and "proxy 'first' listens there already" in result.stderr
    [row] = [p for p in daemon.call("xinet_list") if p["name"] == "second"]
    assert row["path"] == str(path) and "proxy 'first' listens there already" in row["error"]
    assert "second: not loaded: " in daemon.cli("xinet", "list").stdout
    status = daemon.cli("xinet", "status", "second")
    assert status.returncode == 1 and "proxy 'second' is not loaded: " in status.stderr
    assert daemon.cli("xinet", "delete", "second").returncode == 0
    assert not path.exists()
    assert [p["name"] for p in daemon.call("xinet_list")] == ["first"]


def test_a_host_name_the_resolver_refuses_is_the_proxys_error_not_the_daemons(daemon):
    """IDNA refuses "a..b" with a UnicodeError: the proxy says so; the daemon boots."""
    back = tcp()
    backend(daemon, "echo", "echo", back)
    daemon.write(
        "bad", '[xinet]\nlisten = "tcp:a..b:80"\nbackend = "127.0.0.1:1"\nservice = "echo"\n'
    )
    daemon.start()
    assert daemon.status("echo")["state"] in ("Inactive", "Running")
    result = daemon.cli("reload")
    assert "cannot resolve tcp:a..b:80" in result.stdout + result.stderr, result
    listen = tcp()  # a backend is resolved per client: the client is closed, saying why
    ok = daemon.cli("xinet", "set", "other", "--listen", listen, "--backend", "tcp:a..b:80",
                    "--service", "echo")  # fmt: skip
    assert ok.returncode == 0, ok
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.settimeout(30)
        assert client.recv(1) == b""
    wait_until(
        lambda: "cannot resolve tcp:a..b:80" in (xstatus(daemon, "other")["last_error"] or "")
    )


def test_json_output_of_list_and_status(daemon, tmp_path):
    """`--json` on xinet list and status prints the status objects with every key."""
    back, listen = tcp(), f"unix:{tmp_path}/px.sock"
    backend(daemon, "echo", "echo", back)
    daemon.start()
    result = daemon.cli("--json", "xinet", "list")
    assert result.returncode == 0 and json.loads(result.stdout) == [], result
    proxy(daemon, listen, back, "echo", connect_timeout=7, idle_timeout=3)

    result = daemon.cli("xinet", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert isinstance(listed, list) and len(listed) == 1
    assert set(listed[0]) == STATUS_KEYS

    result = daemon.cli("xinet", "status", "px", "--json")
    assert result.returncode == 0, result.stderr
    one = json.loads(result.stdout)
    assert set(one) == STATUS_KEYS
    assert one["name"] == "px" and one["listen"] == [listen] and one["backend"] == back
    assert one["service"] == "echo" and one["service_state"] == "Inactive"
    assert one["source"] == "rpc" and one["path"] is None
    assert (one["connect_timeout"], one["idle_timeout"], one["single_connection"]) == (7, 3, False)
    assert (one["active"], one["total"], one["refused"]) == (0, 0, 0)

    result = daemon.cli("--json", "xinet", "status")
    assert result.returncode == 0, result.stderr
    assert [p["name"] for p in json.loads(result.stdout)] == ["px"]

    result = daemon.cli("xinet", "status", "px")
    assert result.returncode == 0 and "backend:" in result.stdout and back in result.stdout
