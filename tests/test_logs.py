"""Logs: streams, tails, the ring bound, following, line cutting, forwarding, floods.

Real daemon, real children writing to their stdout and stderr.
"""

import queue
import shlex
import subprocess
import textwrap
import threading
import time

from conftest import PYTHON, ZINIT_PY, wait_until

FAST_STOP = "stop_timeout_ms = 1000\n"
ONESHOT = "oneshot = true\n"


def py(code: str) -> str:
    return shlex.join([PYTHON, "-c", textwrap.dedent(code)])


def entries(daemon, name, lines=None):
    return daemon.call("logs", name=name, lines=lines)


def test_stdout_and_stderr_lines_keep_their_stream(daemon):
    daemon.service(
        "talker", "sh -c 'echo to-out; echo to-err >&2; echo again-out'", service=ONESHOT
    )
    daemon.start()
    daemon.wait_state("talker", "Exited")
    wait_until(lambda: len(entries(daemon, "talker")) >= 3, what="three lines")
    got = {(e["line"], e["stream"]) for e in entries(daemon, "talker")}
    assert got == {("to-out", "stdout"), ("to-err", "stderr"), ("again-out", "stdout")}
    for entry in entries(daemon, "talker"):
        assert entry["unit"] == "talker"
        assert isinstance(entry["time"], float)


def test_cli_logs_n_gives_the_last_n_lines(daemon):
    daemon.service(
        "counter", "sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; done'", service=ONESHOT
    )
    daemon.start()
    daemon.wait_state("counter", "Exited")
    daemon.wait_log("counter", "line-10")
    result = daemon.cli("logs", "counter", "-n", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    for line, want in zip(lines, ["line-8", "line-9", "line-10"], strict=True):
        assert line.endswith(f"| {want}"), lines
    as_json = daemon.cli("--json", "logs", "counter", "-n", "2")
    assert as_json.returncode == 0, as_json.stderr
    assert '"line-9"' in as_json.stdout and '"line-10"' in as_json.stdout
    assert '"line-8"' not in as_json.stdout


def test_buffer_lines_bounds_the_ring(daemon):
    daemon.service(
        "chatty",
        "sh -c 'i=0; while [ $i -lt 50 ]; do i=$((i+1)); echo n-$i; done'",
        service=ONESHOT,
        logging="buffer_lines = 5\n",
    )
    daemon.start()
    daemon.wait_state("chatty", "Exited")
    daemon.wait_log("chatty", "n-50")
    lines = [e["line"] for e in entries(daemon, "chatty")]
    assert lines == [f"n-{i}" for i in range(46, 51)]


def test_logs_follow_of_a_removed_unit_ends_saying_so(daemon):
    """logs -f NAME does not wait forever for a unit that is gone: exit 1, naming it;
    a follower of every unit goes on."""
    daemon.service("doomed", "sh -c 'echo hello; exec sleep 1000'", lifecycle=FAST_STOP)
    daemon.service("other", "sleep 1000", lifecycle=FAST_STOP)
    daemon.start()
    daemon.wait_log("doomed", "hello")
    command = [PYTHON, ZINIT_PY, "--socket", daemon.socket, "logs", "-f"]
    one = subprocess.Popen([*command, "doomed"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    every = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: daemon.call("debug_state")["subscriptions"]["logs"] == 2)
        assert daemon.cli("remove-service", "doomed").returncode == 0
        out, err = one.communicate(timeout=30)
        assert one.returncode == 1, (out, err)
        assert b"zinit: 'doomed' was removed: no more lines" in err, err
        assert b"hello" in out
        assert every.poll() is None
    finally:
        for process in (one, every):
            if process.poll() is None:
                process.terminate()
                process.wait(10)


def test_logs_follow_shows_new_lines(daemon, tmp_path):
    trigger = tmp_path / "go"
    script = (
        f"echo first-line; while [ ! -f {trigger} ]; do sleep 0.05; done; "
        "echo second-line; exec sleep 1000"
    )
    daemon.service("slow", f"sh -c {shlex.quote(script)}", lifecycle=FAST_STOP)
    daemon.start()
    daemon.wait_log("slow", "first-line")
    follower = subprocess.Popen(
        [PYTHON, ZINIT_PY, "--socket", daemon.socket, "logs", "slow", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in follower.stdout], daemon=True
    )
    reader.start()

    def next_line(timeout=30.0):
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from logs -f within {timeout}s") from None

    try:
        assert "first-line" in next_line()  # the backlog comes first
        trigger.write_text("")
        assert "second-line" in next_line()
        assert follower.poll() is None, "logs -f should keep following"
    finally:
        follower.terminate()
        follower.wait(10)


def test_long_line_is_cut_at_64_kib(daemon):
    size = 64 * 1024
    code = f"import sys; sys.stdout.write('a' * {2 * size} + 'b' * 100 + '\\n'); print('after')"
    daemon.service("wide", py(code), service=ONESHOT)
    daemon.start()
    daemon.wait_state("wide", "Exited")
    daemon.wait_log("wide", "after")
    lines = [e["line"] for e in entries(daemon, "wide")]
    assert [len(line) for line in lines] == [size, size, 100, 5], [len(x) for x in lines]
    assert lines[0] == lines[1] == "a" * size
    assert lines[2] == "b" * 100


def test_issue_2_line_of_exactly_64_kib_is_one_entry(daemon):
    """A line of exactly 64 KiB is kept whole: no empty piece after it."""
    size = 64 * 1024
    code = f"import sys; sys.stdout.write('c' * {size} + '\\n'); print('after')"
    daemon.service("edge", py(code), service=ONESHOT)
    daemon.start()
    daemon.wait_state("edge", "Exited")
    daemon.wait_log("edge", "after")
    lines = [e["line"] for e in entries(daemon, "edge")]
    assert [len(line) for line in lines] == [size, 5], [len(x) for x in lines]


def test_issue_2_long_line_written_in_pieces_is_cut_at_64_kib(daemon):
    """A long line is cut at 64 KiB boundaries however the writer splits its writes.

    The child writes a 100 000-byte line in 1000-byte pieces, each after the daemon has
    drained the pipe (FIONREAD == 0), so the daemon sees many small reads.
    """
    size = 64 * 1024
    code = """
        import fcntl, os, struct, termios, time

        def queued():
            return struct.unpack("i", fcntl.ioctl(1, termios.FIONREAD, b"0000"))[0]

        for _ in range(100):
            os.write(1, b"d" * 1000)
            deadline = time.monotonic() + 5
            while queued() and time.monotonic() < deadline:
                time.sleep(0.001)
        os.write(1, b"\\nafter\\n")
    """
    daemon.service("pieces", py(code), service=ONESHOT)
    daemon.start()
    daemon.wait_state("pieces", "Exited", timeout=30)
    daemon.wait_log("pieces", "after")
    lines = [e["line"] for e in entries(daemon, "pieces")]
    assert [len(line) for line in lines] == [size, 100_000 - size, 5], [len(x) for x in lines]


def test_forward_logs_prints_name_and_line(daemon):
    daemon.service("fwd", "sh -c 'echo hello-forward; echo oops-forward >&2'", service=ONESHOT)
    daemon.start("--forward-logs")
    daemon.wait_state("fwd", "Exited")

    def forwarded():
        text = daemon.stdout_path.read_text(errors="replace")
        return "fwd | hello-forward" in text and "fwd | oops-forward" in text and text

    text = wait_until(forwarded, what="forwarded lines on the daemon's stdout")
    assert "fwd | hello-forward\n" in text


def test_flooding_service_does_not_stall_the_control_socket(daemon):
    daemon.service("flood", "yes flooding-the-ring", lifecycle=FAST_STOP)
    daemon.service("quiet", "sleep 1000", lifecycle=FAST_STOP)
    daemon.start()
    daemon.wait_state("flood", "Running")
    daemon.wait_log("flood", "flooding-the-ring")
    latencies = []
    with daemon.client() as client:
        for _ in range(20):
            began = time.monotonic()
            units = client.list()
            latencies.append(time.monotonic() - began)
            assert {u["name"] for u in units} == {"flood", "quiet"}
    for _ in range(5):  # fresh connections too
        began = time.monotonic()
        daemon.call("status", name="quiet")
        latencies.append(time.monotonic() - began)
    print(
        f"list/status latency under flood: max {max(latencies) * 1000:.1f} ms, "
        f"mean {sum(latencies) / len(latencies) * 1000:.1f} ms over {len(latencies)} calls"
    )
    assert max(latencies) < 2.0, latencies
    assert len(entries(daemon, "flood")) <= 1000
    result = daemon.cli("stop", "flood")
    assert result.returncode == 0, result.stderr


def _daemon_log_test_setup(daemon, level):
    """A unit with an exec health check, a TCP proxy in front of an echo service; returns
    the proxy's address.  Runs one RPC error, one xinet round trip and one stop."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{probe.getsockname()[1]}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        back_port = probe.getsockname()[1]
    echo = (
        "import socket\n"
        f"s = socket.create_server(('127.0.0.1', {back_port}))\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        "    c.sendall(c.recv(100))\n"
        "    c.close()\n"
    )
    daemon.service(
        "web",
        shlex.join([PYTHON, "-c", echo]),
        health='type = "exec"\ncommand = "true"\ninterval_ms = 60000\n',
        lifecycle="stop_timeout_ms = 5000\n",
    )
    daemon.start(env={"ZINIT_LOG_LEVEL": level})
    daemon.wait_state("web", "Running")
    daemon.call(
        "xinet_set", name="px", listen=[listen], backend=f"127.0.0.1:{back_port}", service="web"
    )
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"
    assert daemon.cli("status", "nosuch").returncode == 1
    daemon.call("stop", name="web")
    daemon.wait_state("web", "Exited", "Inactive")
    return listen


def test_debug_log_says_what_the_daemon_did(daemon):
    """ZINIT_LOG_LEVEL=debug: the command spawned, the health checks, the RPC calls, the
    proxy's connections, the signal sent to stop and how the process ended."""
    _daemon_log_test_setup(daemon, "debug")
    secret = '[service]\nexec = "sleep 100"\nstatus = "stop"\nenv = { TOKEN = "hunter2" }\n'
    assert daemon.cli("add-service", "-", "--name", "withenv", input=secret).returncode == 0
    expected = [
        f'rpc add_service {{"toml": "<{len(secret)} characters of TOML>", "name": "withenv"}}',
        "web: spawned pid ",
        "(dir inherited, user inherited, cgroup ",
        "web: health check passed: ",
        'DEBUG rpc status {"name": "nosuch"}',
        "DEBUG rpc status: error: unknown unit 'nosuch'",
        "xinet px: 127.0.0.1:",
        "connected to the backend",
        "closed (5 bytes in, 5 out)",
        "web: sending SIGTERM to process group ",
        "killed by SIGTERM",
        "reaped pid ",
    ]
    wait_until(
        lambda: all(text in daemon.log() for text in expected),
        what="every debug line",
    )
    assert "rpc <- " not in daemon.log()  # frames are for trace
    assert "hunter2" not in daemon.log()  # a unit's env may hold secrets


def test_info_log_has_no_debug_lines(daemon):
    _daemon_log_test_setup(daemon, "info")
    wait_until(lambda: "web: Stopping -> " in daemon.log(), what="the stop in the log")
    log = daemon.log()
    assert "web: Running -> Stopping" in log
    for text in ("DEBUG", "spawned pid", "rpc status", "health check passed:", "reaped pid"):
        assert text not in log, text


def test_trace_log_shows_rpc_frames(daemon):
    daemon.start(env={"ZINIT_LOG_LEVEL": "trace"})
    assert daemon.call("ping")["pong"] is True
    wait_until(lambda: 'TRACE rpc <- {"jsonrpc":"2.0"' in daemon.log(), what="the request frame")
    wait_until(lambda: 'TRACE rpc -> {"jsonrpc": "2.0"' in daemon.log(), what="the reply frame")
    assert '"pong": true' in daemon.log()
