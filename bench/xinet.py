"""xinet proxy against a direct connection, socat and systemd-socket-proxyd, in one run.

    python bench/xinet.py [--quick] [--runs N]

Everything listens on 127.0.0.1.  One backend process (this file with
--backend) serves three modes chosen by the first byte: sink (count bytes
until EOF, then reply the count), echo (64-byte ping-pongs) and connect
(one byte each way).  The same backend sits behind every proxy; the client
is this process.  Modes are measured alternately, and the table shows the
median of the runs (min-max) and the ratio to direct.

socat is installed with apt-get when missing (as root); a peer that cannot be
had is skipped with a note.  Every process started here is ended by pid.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# zinit and bench/core.py (which loads psutil) are imported where they are used:
# the backend runs this file too, and its start-up time is measured.

ZINIT_PY = str(ROOT / "zinit.py")
PROXYD = next(
    (
        p
        for p in ("/lib/systemd/systemd-socket-proxyd", "/usr/lib/systemd/systemd-socket-proxyd")
        if os.path.exists(p)
    ),
    None,
)


# -- the backend (runs in its own process) -----------------------------------


def serve_backend(port: int, delay_s: float, say_ready: bool) -> None:
    time.sleep(delay_s)  # simulates a service's own start-up time
    listener = socket.create_server(("127.0.0.1", port), backlog=1024, reuse_port=False)
    if say_ready:
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            mode = conn.recv(1)
            if mode == b"L":  # length-prefixed bulk: no half-close needed
                remaining = total = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "big")
                buffer = bytearray(1 << 20)
                while remaining and (count := conn.recv_into(buffer, min(remaining, len(buffer)))):
                    remaining -= count
                conn.sendall(str(total - remaining).encode())
            elif mode == b"S":
                total = 0
                buffer = bytearray(1 << 20)
                while count := conn.recv_into(buffer):
                    total += count
                conn.sendall(str(total).encode())
            elif mode == b"E":
                while data := conn.recv(65536):
                    conn.sendall(data)
            elif mode == b"C":
                conn.sendall(b"c")

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# -- the client ---------------------------------------------------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def throughput(port: int, total_bytes: int) -> float:
    chunk = b"x" * (1 << 20)
    with connect(port) as sock:
        started = time.perf_counter()
        sock.sendall(b"L" + total_bytes.to_bytes(8, "big"))
        sent = 0
        while sent < total_bytes:
            sock.sendall(chunk)
            sent += len(chunk)
        reply = b""
        while len(reply) < len(str(total_bytes)) and (data := sock.recv(64)):
            reply += data
        elapsed = time.perf_counter() - started
    assert reply and int(reply) == sent, f"port {port}: backend counted {reply!r}, sent {sent}"
    return sent / elapsed / 1e9


def passes_half_close(port: int) -> bool:
    """Send, shut down the write side, and expect the backend's reply after that EOF."""
    with connect(port) as sock:
        sock.sendall(b"S" + b"y" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while data := sock.recv(64):
                reply += data
        except OSError:
            return False
    return reply == b"100000"


def round_trip(port: int, count: int) -> float:
    message = b"p" * 64
    with connect(port) as sock:
        sock.sendall(b"E")
        started = time.perf_counter()
        for _ in range(count):
            sock.sendall(message)
            received = 0
            while received < len(message):
                received += len(sock.recv(64))
        elapsed = time.perf_counter() - started
    return elapsed / count * 1e6


def connection_rate(port: int, seconds: float) -> float:
    """Connections/s, each one byte each way, closed by the backend first.

    The client waits for the backend's FIN before it closes, so the TIME-WAIT
    entries stay on the listening side.  Closed from the client side, each
    connection would hold an ephemeral port for 60 s, and every connect()
    gets slower as they pile up: the modes measured later would pay for the
    earlier ones (the rate fell by 3-6x over a few runs).
    """
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        with connect(port) as sock:
            sock.sendall(b"C")
            assert sock.recv(1) == b"c"
            assert sock.recv(1) == b"", "the backend closes first"
        done += 1
    return done / (time.perf_counter() - started)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the peers ----------------------------------------------------------------


class Peers:
    """The backend, zinit (backend service + proxy), socat and proxyd, all started here."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []
        self.notes: list[str] = []
        self.base = tempfile.mkdtemp(prefix="zinit-xinet-bench.")
        self.ports: dict[str, int] = {}

    def spawn(self, argv: list[str], stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
        process = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def backend_argv(self, port: int, delay_s: float = 0.0) -> list[str]:
        return [sys.executable, __file__, "--backend", str(port), "--delay", str(delay_s)]

    def start(self, cold_delay_s: float) -> None:
        backend = free_port()
        self.ports["direct"] = backend
        services = os.path.join(self.base, "services")
        os.mkdir(services)
        self.ports["zinit"] = free_port()
        self.ports["cold"] = free_port()
        cold_backend = free_port()
        self.cold_backend = cold_backend
        units = {
            "backend": f'[service]\nexec = "{" ".join(self.backend_argv(backend))}"\n',
            "coldbackend": '[service]\nstatus = "stop"\n'
            f'exec = "{" ".join(self.backend_argv(cold_backend, cold_delay_s))}"\n'
            "[lifecycle]\nstop_timeout_ms = 2000\n",
            "warm": f'[xinet]\nlisten = ["127.0.0.1:{self.ports["zinit"]}"]\n'
            f'backend = "127.0.0.1:{backend}"\nservice = "backend"\n',
            "cold": f'[xinet]\nlisten = ["127.0.0.1:{self.ports["cold"]}"]\n'
            f'backend = "127.0.0.1:{cold_backend}"\nservice = "coldbackend"\n',
        }
        for name, text in units.items():
            with open(os.path.join(services, f"{name}.toml"), "w") as stream:
                stream.write(text)
        self.socket = os.path.join(self.base, "zinit.sock")
        self.spawn(
            [sys.executable, ZINIT_PY, "server", "--config-dir", services, "--socket", self.socket]
        )
        wait_port(backend)
        wait_port(self.ports["zinit"])
        socat = shutil.which("socat") or self.install_socat()
        if socat:
            self.ports["socat"] = free_port()
            self.spawn(
                [
                    socat,
                    f"TCP-LISTEN:{self.ports['socat']},bind=127.0.0.1,reuseaddr,fork",
                    f"TCP:127.0.0.1:{backend},nodelay",
                ]
            )
            wait_port(self.ports["socat"])
        activate = shutil.which("systemd-socket-activate")
        if PROXYD and activate:
            self.ports["proxyd"] = free_port()
            self.spawn(
                [
                    activate,
                    "-l",
                    f"127.0.0.1:{self.ports['proxyd']}",
                    PROXYD,
                    f"127.0.0.1:{backend}",
                ]
            )
            wait_port(self.ports["proxyd"])
        else:
            self.notes.append("systemd-socket-proxyd: not installed (Debian package systemd)")

    def install_socat(self) -> str | None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            self.notes.append("socat: not installed, and apt-get needs root")
            return None
        result = subprocess.run(
            ["apt-get", "install", "-y", "-q", "socat"], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            self.notes.append(f"socat: apt-get failed: {result.stderr.strip()[-200:]}")
            return None
        return shutil.which("socat")

    def client(self) -> Any:
        import zinit

        return zinit.ZinitClient.connect_unix(self.socket)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.base, ignore_errors=True)


def cold_activation(peers: Peers, runs: int, delay_s: float) -> tuple[list[float], list[float]]:
    """(the backend's own start to first answer, zinit: connect to stopped unit → answer).

    The backend alone is timed without polling: it prints a line once it
    listens, and the client connects when that line arrives.  So the
    difference of a pair is all zinit's: starting the unit, and the time
    between the backend's listen() and the proxy's next connect attempt.
    (The ready line and this process's wake-up on it cost the backend alone
    some tens of microseconds that the run through zinit does not pay.)
    """
    own, through = [], []
    for _ in range(runs):
        port = free_port()
        started = time.perf_counter()
        process = peers.spawn([*peers.backend_argv(port, delay_s), "--say-ready"], subprocess.PIPE)
        assert process.stdout.readline() == b"ready\n", "the backend did not start"
        with connect(port) as sock:
            sock.sendall(b"C")
            sock.recv(1)
        own.append(time.perf_counter() - started)
        process.terminate()
        process.wait(30)
        process.stdout.close()
        with peers.client() as client:
            client.stop("coldbackend")
        started = time.perf_counter()
        with connect(peers.ports["cold"]) as sock:
            sock.sendall(b"C")
            assert sock.recv(1) == b"c"
        through.append(time.perf_counter() - started)
    with peers.client() as client:
        client.stop("coldbackend")
    return own, through


def fmt(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (smoke test)")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--say-ready", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        serve_backend(args.backend, args.delay, args.say_ready)
        return 0
    runs = args.runs or (1 if args.quick else 5)
    size = (64 << 20) if args.quick else (1 << 30)
    pings = 2_000 if args.quick else 20_000
    seconds = 0.5 if args.quick else 2.0
    cold_delay = 0.2
    peers = Peers()
    try:
        peers.start(cold_delay)
        modes = [m for m in ("direct", "zinit", "socat", "proxyd") if m in peers.ports]
        results: dict[str, dict[str, list[float]]] = {
            m: {"gbps": [], "rtt": [], "cps": []} for m in modes
        }
        for _ in range(runs):
            for mode in modes:  # alternate, so that noise hits every mode alike
                port = peers.ports[mode]
                results[mode]["gbps"].append(throughput(port, size))
                results[mode]["rtt"].append(round_trip(port, pings))
                results[mode]["cps"].append(connection_rate(port, seconds))
        half_close = {mode: passes_half_close(peers.ports[mode]) for mode in modes}
        own, through = cold_activation(peers, 3 * runs, cold_delay)
    finally:
        peers.stop()
    print(
        f"interpreter: {sys.executable}; {runs} run(s); {size >> 20} MiB per throughput run; "
        f"{pings} ping-pongs; {seconds:g} s of connects"
    )
    from core import cgroup_note  # bench/core.py, next to this file

    print(cgroup_note())
    print(
        f"{'mode':8} {'throughput GB/s':>22} {'x direct':>8} {'round trip us':>22} "
        f"{'x direct':>8} {'connections/s':>22} {'x direct':>8}  half-close"
    )
    base = {key: statistics.median(results["direct"][key]) for key in ("gbps", "rtt", "cps")}
    for mode in modes:
        row = results[mode]
        print(
            f"{mode:8} {fmt(row['gbps']):>22} {statistics.median(row['gbps']) / base['gbps']:8.2f} "
            f"{fmt(row['rtt'], 1):>22} {statistics.median(row['rtt']) / base['rtt']:8.2f} "
            f"{fmt(row['cps'], 0):>22} {statistics.median(row['cps']) / base['cps']:8.2f}"
            f"  {'passed on' if half_close[mode] else 'LOST'}"
        )
    own_ms, through_ms = [v * 1000 for v in own], [v * 1000 for v in through]
    added = [t - o for o, t in zip(own_ms, through_ms)]
    print(
        f"cold activation ({len(own)} pairs): backend alone {fmt(own_ms, 1)} ms; through zinit"
        f" (unit stopped) {fmt(through_ms, 1)} ms; added by zinit, median of the pairs"
        f" {statistics.median(added):+.1f} ms (difference of medians"
        f" {statistics.median(through_ms) - statistics.median(own_ms):+.1f} ms)"
    )
    for note in peers.notes:
        print(f"skipped: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
