"""zinit against supervisord and s6, in one run: python bench/run.py [--quick] [--only NAMES]

zinit is installed from this tree into a venv of the run's own (under its
temporary directory), and a .pyz is built from it, so that it runs as an
operator's copy does.  Peers are installed when the registries allow:
supervisord from PyPI into a venv, s6 with apt-get (as root) when s6-svscan
is missing.  A peer that cannot be had is skipped
with a note.  Supervisors are measured alternately within each repetition,
and everything is observed from outside through /proc: a unit counts as up
when a descendant of the supervisor runs ``sleep``.

The table shows medians (min-max) and the zinit/peer ratios of the medians;
the goals of issue 5 follow, reported as met / not met (never asserted).
Every process started here is ended by pid.  The exit status is non-zero
only when a measurement failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
import traceback
from collections.abc import Callable

import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core import cgroup_note, connect_when_up  # bench/core.py, next to this file

import zinit

#: As in bench/core.py: the daemon and the CLI import zinit from the repository
#: with bytecode caching on, as an installed zinit runs.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPATH"] = str(ROOT)

SLEEP = "sleep 100000"
WAIT_LIMIT = 120.0  # seconds before a start-up counts as failed
MIB, KIB = 2**20, 2**10


# --------------------------------------------------------------------------- /proc


def read_stat(pid: str) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            data = stream.read().decode(errors="replace")
    except OSError:
        return None
    close = data.rindex(")")
    fields = data[close + 2 :].split(" ", 2)
    return data[data.index("(") + 1 : close], fields[0], int(fields[1])


class SleepCounter:
    """Counts the live ``sleep`` processes below one pid, rereading little of /proc."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.ppid: dict[str, int] = {}
        self.sleeping: set[str] = set()

    def count(self) -> int:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        alive = set(pids)
        self.sleeping &= alive
        for pid in pids:
            if pid in self.sleeping:
                continue
            stat = read_stat(pid)
            if stat is None:
                continue
            comm, state, ppid = stat
            self.ppid[pid] = ppid
            if comm == "sleep" and state != "Z":
                self.sleeping.add(pid)
        return sum(self.below_root(pid) for pid in self.sleeping)

    def below_root(self, pid: str) -> bool:
        for _ in range(8):
            parent = self.ppid.get(pid)
            if parent is None or parent <= 1:
                return False
            if parent == self.root:
                return True
            pid = str(parent)
        return False


def wait_for_sleepers(root: int, count: int, proc: subprocess.Popen | None) -> None:
    """Wait until ``count`` sleeps run below ``root``; ``proc`` is the supervisor, if any."""
    counter = SleepCounter(root)
    deadline = time.monotonic() + WAIT_LIMIT
    while counter.count() < count:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"supervisor exited with {proc.returncode} during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} units running after {WAIT_LIMIT:.0f} s")
        time.sleep(0.0005)


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every thread of a process."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as stream:
                for line in stream:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------- peers


class Peer:
    """One supervisor over a fresh directory: configure, launch, observe, stop."""

    name = ""

    def __init__(self, tmp: str) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}.", dir=tmp)
        self.proc: subprocess.Popen | None = None
        self.names: list[str] = []

    def configure(self, units: dict[str, list[str]], crash: bool = False) -> None:
        """``units`` maps each unit name to the names it requires (zinit only)."""
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def cli_status(self, name: str) -> list[str]:
        raise NotImplementedError

    def launch(self) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        return started

    def wait_running(self) -> None:
        wait_for_sleepers(self.proc.pid, len(self.names), self.proc)

    def supervisor_pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        """SIGTERM the supervisor, then SIGKILL by pid whatever it left behind."""
        if self.proc is None:
            return
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for process in tree:
            try:
                process.kill()  # psutil checks the pid still names the same process
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        self.proc = None


class Zinit(Peer):
    name = "zinit"

    def configure(self, units: dict[str, list[str]], crash: bool = False) -> None:
        self.config_dir = os.path.join(self.dir, "services")
        self.socket = os.path.join(self.dir, "zinit.sock")
        os.mkdir(self.config_dir)
        self.names = list(units)
        for name, requires in units.items():
            text = f'[service]\nexec = "{SLEEP}"\n'
            if requires:
                quoted = ", ".join(f'"{r}"' for r in requires)
                text += f"[dependencies]\nrequires = [{quoted}]\n"
            if crash:
                text += "[lifecycle]\nrestart_delay_ms = 0\n"
            with open(os.path.join(self.config_dir, f"{name}.toml"), "w") as stream:
                stream.write(text)

    #: Set by install_zinit(): a venv with zinit installed from this tree (not
    #: editable, which would load an import hook into every interpreter start).
    venv = ""
    pyz = ""  # and the .pyz built from it

    def program(self, name: str) -> list[str]:
        if self.venv:
            return [os.path.join(self.venv, "bin", name)]
        entry = "server_main" if name == "zinit-server" else "main"
        return [sys.executable, "-c", f"import sys, zinit; sys.exit(zinit.{entry}())"]

    def command(self) -> list[str]:
        return [
            *self.program("zinit-server"),
            "--config-dir",
            self.config_dir,
            "--socket",
            self.socket,
        ]

    def cli_status(self, name: str) -> list[str]:
        return [*self.program("zinit"), "--socket", self.socket, "status", name]

    def pyz_status(self, name: str) -> list[str]:
        python = os.path.join(self.venv, "bin", "python")
        return [python, self.pyz, "--socket", self.socket, "status", name]

    def client(self) -> zinit.ZinitClient:
        return connect_when_up(self.socket)


class Supervisord(Peer):
    name = "supervisord"
    venv = ""  # set by install_supervisord()

    def configure(self, units: dict[str, list[str]], crash: bool = False) -> None:
        self.conf = os.path.join(self.dir, "supervisord.conf")
        self.names = list(units)
        sections = [
            f"[unix_http_server]\nfile={self.dir}/supervisor.sock\n",
            (
                f"[supervisord]\nnodaemon=true\nlogfile={self.dir}/supervisord.log\n"
                f"pidfile={self.dir}/supervisord.pid\nchildlogdir={self.dir}\n"
            ),
            (
                "[rpcinterface:supervisor]\n"
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            ),
            f"[supervisorctl]\nserverurl=unix://{self.dir}/supervisor.sock\n",
        ]
        sections += [
            f"[program:{name}]\ncommand={SLEEP}\nautostart=true\nstartsecs=0\nautorestart=true\n"
            for name in units
        ]
        with open(self.conf, "w") as stream:
            stream.write("\n".join(sections))

    def command(self) -> list[str]:
        return [os.path.join(self.venv, "bin", "supervisord"), "-c", self.conf]

    def cli_status(self, name: str) -> list[str]:
        return [os.path.join(self.venv, "bin", "supervisorctl"), "-c", self.conf, "status", name]


class S6(Peer):
    name = "s6"

    def configure(self, units: dict[str, list[str]], crash: bool = False) -> None:
        self.scan = os.path.join(self.dir, "scan")
        os.mkdir(self.scan)
        self.names = list(units)
        for name in units:
            os.mkdir(os.path.join(self.scan, name))
            run = os.path.join(self.scan, name, "run")
            with open(run, "w") as stream:
                stream.write(f"#!/bin/sh\nexec {SLEEP}\n")
            os.chmod(run, 0o755)

    def command(self) -> list[str]:
        return ["s6-svscan", "-c", str(max(1000, 2 * len(self.names))), self.scan]

    def cli_status(self, name: str) -> list[str]:
        return ["s6-svstat", os.path.join(self.scan, name)]

    def supervisor_pids(self) -> list[int]:
        scanner = psutil.Process(self.proc.pid)
        return [self.proc.pid] + [
            child.pid for child in scanner.children() if child.name() == "s6-supervise"
        ]


def install_zinit(tmp: str) -> str | None:
    """Install this tree into a venv of the run's own and build the .pyz; None or why not."""
    venv, source = os.path.join(tmp, "zinit-venv"), os.path.join(tmp, "zinit-src")
    os.mkdir(source)
    for name in ("zinit.py", "pyproject.toml", "README.md", "build_pyz.sh"):
        shutil.copy2(ROOT / name, source)
    python = os.path.join(venv, "bin", "python")
    try:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", source],
            check=True,
            capture_output=True,
            timeout=600,
        )
        pyz = os.path.join(tmp, "zinit.pyz")
        subprocess.run(
            ["bash", os.path.join(source, "build_pyz.sh")],
            check=True,
            capture_output=True,
            timeout=600,
            env={**os.environ, "PYTHON": python, "OUT": pyz},
        )
    except (subprocess.SubprocessError, OSError) as error:
        return f"installing zinit into a venv failed ({error})"
    Zinit.venv, Zinit.pyz = venv, pyz
    ENV.pop("PYTHONPATH", None)
    ENV["SHIV_ROOT"] = os.path.join(tmp, "shiv")  # where the .pyz unpacks, removed with tmp
    return None


def install_supervisord(tmp: str) -> str | None:
    """Make a venv with supervisor from PyPI; return None or why it failed."""
    venv = os.path.join(tmp, "peers-venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
        subprocess.run(
            [os.path.join(venv, "bin", "pip"), "install", "-q", "supervisor"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as error:
        return f"pip install supervisor failed ({error})"
    Supervisord.venv = venv
    return None


def install_s6() -> str | None:
    if shutil.which("s6-svscan"):
        return None
    if os.geteuid() != 0:
        return "s6-svscan missing and not root for apt-get"
    result = subprocess.run(
        ["apt-get", "install", "-y", "s6"], check=False, capture_output=True, env=ENV, timeout=600
    )
    if result.returncode or not shutil.which("s6-svscan"):
        return f"apt-get install s6 failed (exit {result.returncode})"
    return None


# --------------------------------------------------------------------------- results


class Results:
    """Rows of figures: values per peer, printed as median (min-max)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, dict[str, list[float]]]] = {}
        self.failures: list[str] = []

    def add(self, row: str, unit: str, peer: str, value: float) -> None:
        self.rows.setdefault(row, (unit, {}))[1].setdefault(peer, []).append(value)

    def median(self, row: str, peer: str) -> float | None:
        values = self.rows.get(row, ("", {}))[1].get(peer)
        return statistics.median(values) if values else None

    def attempt(self, what: str, function: Callable[[], None]) -> None:
        """Run one measurement; a failure is noted and the suite goes on."""
        try:
            function()
        except Exception as error:  # noqa: BLE001 - every failure is reported, then exit 1
            traceback.print_exc()
            self.failures.append(f"{what}: {error}")


SCALES = {"ms": 1000.0, "MiB": 1 / MIB, "KiB": 1 / KIB, "/s": 1.0, "": 1.0}


def cell(values: list[float] | None, unit: str) -> str:
    if not values:
        return "-"
    scaled = sorted(v * SCALES[unit] for v in values)
    digits = 0 if unit == "/s" or max(scaled) >= 1000 else (2 if unit == "ms" else 1)
    text = f"{statistics.median(scaled):.{digits}f}"
    if len(scaled) > 1:
        text += f" ({scaled[0]:.{digits}f}-{scaled[-1]:.{digits}f})"
    return f"{text} {unit}".rstrip()


def print_table(results: Results, peers: list[str]) -> None:
    others = [p for p in peers if p != "zinit"]
    header = ["measurement", *peers, *[f"zinit/{p}" for p in others]]
    lines = []
    for row, (unit, values) in results.rows.items():
        ratios = []
        for other in others:
            ours, theirs = results.median(row, "zinit"), results.median(row, other)
            ratios.append(f"{ours / theirs:.2f}" if ours is not None and theirs else "-")
        lines.append([row, *[cell(values.get(p), unit) for p in peers], *ratios])
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *lines]:
        print("  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- measurements


def sleepers(count: int) -> dict[str, list[str]]:
    return {f"u{i:04d}": [] for i in range(count)}


def dag(layers: int = 10, width: int = 50) -> dict[str, list[str]]:
    """Layers of ``width`` units, each requiring two units of the layer above."""
    units = {}
    for layer in range(layers):
        for i in range(width):
            above = [f"l{layer - 1:02d}u{j % width:02d}" for j in (i, i + 1)] if layer else []
            units[f"l{layer:02d}u{i:02d}"] = above
    return units


def memory(peer: Peer) -> tuple[int, int]:
    rss = pss = 0
    for pid in peer.supervisor_pids():
        info = psutil.Process(pid).memory_full_info()
        rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


def cold_start(results: Results, kind: type[Peer], tmp: str, units: dict, row: str) -> None:
    peer = kind(tmp)
    peer.configure(units)
    try:
        started = peer.launch()
        peer.wait_running()
        results.add(f"cold start {row}", "ms", peer.name, time.monotonic() - started)
        if row.startswith("N="):
            rss, pss = memory(peer)
            results.add(f"RSS {row}", "MiB", peer.name, rss)
            results.add(f"PSS {row}", "MiB", peer.name, pss)
    finally:
        peer.stop()


def spawn_floor(results: Results, count: int) -> None:
    """The machine's floor for a cold start: ``count`` sleeps and no supervisor.

    One loop of subprocess.Popen in this process, with the options zinit uses
    (own session, stdin from /dev/null, stdout and stderr to pipes), timed up
    to the moment /proc shows them all, as the supervisors are.
    """
    children: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        for _ in range(count):
            children.append(
                subprocess.Popen(
                    SLEEP.split(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            )
        wait_for_sleepers(os.getpid(), count, None)
        results.add(f"cold start N={count}", "ms", "floor", time.monotonic() - started)
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
            child.stdout.close()
            child.stderr.close()


def per_unit_cost(results: Results, peers: list[str], sizes: list[int]) -> None:
    if len(sizes) < 2:
        return
    low, high = sizes[0], sizes[-1]
    for peer in peers:
        a, b = results.median(f"PSS N={low}", peer), results.median(f"PSS N={high}", peer)
        if a is not None and b is not None:
            results.add(f"PSS per extra unit ({low}->{high})", "KiB", peer, (b - a) / (high - low))


def start_all(kinds: list[type[Peer]], tmp: str, units: dict, crash: bool = False) -> list[Peer]:
    peers = []
    try:
        for kind in kinds:
            peer = kind(tmp)
            peer.configure(units, crash=crash)
            peers.append(peer)
            peer.launch()
        for peer in peers:
            peer.wait_running()
    except BaseException:
        stop_all(peers)
        raise
    return peers


def stop_all(peers: list[Peer]) -> None:
    for peer in peers:
        peer.stop()


def idle_cost(results: Results, peers: list[Peer], seconds: float) -> None:
    """CPU time and voluntary switches of the supervisor processes, all idle together."""
    time.sleep(1.0)  # let start-up work drain
    before = {}
    for peer in peers:
        processes = [psutil.Process(pid) for pid in peer.supervisor_pids()]
        before[peer.name] = (
            processes,
            sum(sum(p.cpu_times()[:2]) for p in processes),
            sum(voluntary_switches(p.pid) for p in processes),
        )
    time.sleep(seconds)
    for peer in peers:
        processes, cpu, switches = before[peer.name]
        cpu = sum(sum(p.cpu_times()[:2]) for p in processes) - cpu
        switches = sum(voluntary_switches(p.pid) for p in processes) - switches
        results.add(f"idle CPU, {seconds:.0f} s", "ms", peer.name, cpu)
        results.add("idle wake-ups (vol. switches/s)", "", peer.name, switches / seconds)


def cli_status(results: Results, peers: list[Peer], runs: int) -> None:
    commands = [(peer, "CLI status, one call", peer.cli_status(peer.names[0])) for peer in peers]
    zinit_peer = peers[0]
    if isinstance(zinit_peer, Zinit) and zinit_peer.pyz:
        pyz = zinit_peer.pyz_status(zinit_peer.names[0])
        subprocess.run(pyz, check=True, stdout=subprocess.DEVNULL, env=ENV)  # unpacks once
        commands.append((zinit_peer, "CLI status, one call (.pyz)", pyz))
    for _ in range(runs):
        for peer, row, command in commands:
            started = time.monotonic()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=ENV)
            results.add(row, "ms", peer.name, time.monotonic() - started)


def _rpc_worker(socket_path: str, method: str, seconds: float, go, counts) -> None:
    """Raw JSON-RPC calls on one connection: the request line out, the reply line in.

    The reply is read whole but not decoded (the first one is, and checked):
    the figure is the daemon's, not the JSON decoder's of this client.
    """
    params = {"name": "u0000"} if method == "status" else {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)

        def call(request_id: int) -> bytes:
            request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"{method}: the daemon closed the connection")
                reply += chunk
            return reply

        first = json.loads(call(0))
        assert "result" in first, f"{method}: {first}"
        go.wait()
        done, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            done += 1
            reply = call(done)
            assert reply.startswith(b'{"jsonrpc":"2.0","id":%d,"result":' % done), reply[:200]
    counts.put(done)


def rpc_rate(socket: str, method: str, clients: int, seconds: float) -> float:
    """Calls/s of ``clients`` processes, each on its own persistent connection."""
    context = multiprocessing.get_context("fork")
    go, counts = context.Event(), context.Queue()
    workers = [
        context.Process(target=_rpc_worker, args=(socket, method, seconds, go, counts))
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)  # connected and warmed up
        go.set()
        total = sum(counts.get(timeout=seconds + 30) for _ in workers)
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    if any(worker.exitcode for worker in workers):
        raise RuntimeError(f"an RPC client process failed ({method}, {clients} clients)")
    return total / seconds


def rpc_rates(results: Results, daemon: Zinit, runs: int, seconds: float) -> None:
    for _ in range(runs):
        listing = f"list ({len(daemon.names)} units)"
        for method, label in (("status", "status (1 unit)"), ("list", listing)):
            for clients in (1, 10):
                rate = rpc_rate(daemon.socket, method, clients, seconds)
                results.add(f"RPC {label}, {clients} client(s)", "/s", "zinit", rate)


def status_beside_a_pipelining_client(results: Results, daemon: Zinit, seconds: float) -> None:
    """One client sends pings without waiting for replies; another asks for a status
    now and then: how long it waits (the first must not have the daemon to itself)."""
    stop = threading.Event()
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(daemon.socket)

    def drain() -> None:
        while hog.recv(1 << 20):
            pass

    def flood() -> None:
        burst = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n' * 200
        while not stop.is_set():
            hog.sendall(burst)

    threads = [threading.Thread(target=f, daemon=True) for f in (drain, flood)]
    for thread in threads:
        thread.start()
    latencies = []
    try:
        time.sleep(0.2)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with daemon.client() as client:
                started = time.perf_counter()
                client.status(daemon.names[0])
                latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    finally:
        stop.set()
        threads[1].join()
        hog.shutdown(socket.SHUT_RDWR)  # the drain's recv then reads the end
        threads[0].join()
        hog.close()
    results.add(
        "status beside a pipelining client, median", "ms", "zinit", statistics.median(latencies)
    )
    results.add("status beside a pipelining client, max", "ms", "zinit", max(latencies))


def log_throughput(results: Results, tmp: str, seconds: float) -> None:
    """zinit alone: a unit printing numbered lines as fast as it can.

    Lines/s are read off the numbers of the newest logged line, and one
    client asks for another unit's status back to back meanwhile.
    """
    peer = Zinit(tmp)
    peer.configure({"u0000": [], "flood": []})
    with open(os.path.join(peer.config_dir, "flood.toml"), "w") as stream:
        stream.write('[service]\nexec = "seq 1 1000000000000"\n')
    peer.names = ["u0000"]  # what wait_running counts: the flood is no sleep
    peer.launch()
    try:
        peer.wait_running()
        with peer.client() as client:

            def newest() -> tuple[float, int]:
                (entry,) = client.logs("flood", 1)
                return time.monotonic(), int(entry["line"])

            deadline = time.monotonic() + WAIT_LIMIT
            while not client.logs("flood", 1):
                if time.monotonic() > deadline:
                    raise RuntimeError("the flooding unit logged nothing")
                time.sleep(0.01)
            time.sleep(0.5)
            began, first = newest()
            latencies = []
            while time.monotonic() < began + seconds:
                started = time.perf_counter()
                client.status("u0000")
                latencies.append(time.perf_counter() - started)
            ended, last = newest()
        latencies.sort()
        results.add(
            "log lines taken in while flooded", "/s", "zinit", (last - first) / (ended - began)
        )
        results.add("status while flooded, median", "ms", "zinit", statistics.median(latencies))
        results.add(
            "status while flooded, p99", "ms", "zinit", latencies[int(0.99 * len(latencies))]
        )
    finally:
        peer.stop()


def crash_restart(results: Results, peers: list[Peer], samples: int) -> None:
    """kill -9 of each peer's unit in turn; poll /proc for its new ``sleep`` child."""
    for _ in range(samples):
        for peer in peers:
            counter = SleepCounter(peer.proc.pid)
            counter.count()
            (old,) = [p for p in counter.sleeping if counter.below_root(p)]
            parent = counter.ppid[old]
            known = {p for p in os.listdir("/proc") if p.isdigit()}
            killed = time.perf_counter()
            os.kill(int(old), signal.SIGKILL)
            deadline = killed + 30
            while True:
                new = [p for p in os.listdir("/proc") if p.isdigit() and p not in known]
                stats = [read_stat(p) for p in new]
                if any(s and s[0] == "sleep" and s[2] == parent for s in stats):
                    break
                known.update(p for p, s in zip(new, stats, strict=True) if s and s[2] != parent)
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{peer.name}: no restart within 30 s")
            results.add("crash to restart, median", "ms", peer.name, time.perf_counter() - killed)
        # s6-supervise waits until a service has been up for 1 s before restarting it:
        # space the kills by that for every peer alike.
        time.sleep(1.05)
    for peer in peers:
        values = sorted(results.rows["crash to restart, median"][1][peer.name])
        results.add("crash to restart, p90", "ms", peer.name, values[int(0.9 * len(values)) - 1])


# --------------------------------------------------------------------------- goals


def goals(
    results: Results, sizes: list[int], idle_units: int
) -> list[tuple[str, bool | None, str]]:
    m = results.median
    out: list[tuple[str, bool | None, str]] = []

    def goal(text: str, value: float | None, ok: Callable[[float], bool], shown: str) -> None:
        out.append((text, None if value is None else ok(value), "-" if value is None else shown))

    cold500, s6_500 = m("cold start N=500", "zinit"), m("cold start N=500", "s6")
    goal("cold start N=500 <= 0.6 s", cold500, lambda v: v <= 0.6, f"{(cold500 or 0):.3f} s")
    ratio = cold500 / s6_500 if cold500 and s6_500 else None
    goal("cold start N=500 <= 0.7x s6", ratio, lambda v: v <= 0.7, f"{(ratio or 0):.2f}x")
    cold100 = m("cold start N=100", "zinit")
    goal(
        "cold start N=100 <= 120 ms", cold100, lambda v: v <= 0.12, f"{(cold100 or 0) * 1e3:.1f} ms"
    )
    pss = m("PSS N=100", "zinit")
    goal(
        "daemon PSS, 100 units <= 18 MiB",
        pss,
        lambda v: v <= 18 * MIB,
        f"{(pss or 0) / MIB:.1f} MiB",
    )
    extra = m(f"PSS per extra unit ({sizes[0]}->{sizes[-1]})", "zinit")
    goal(
        "<= 30 KiB per extra unit", extra, lambda v: v <= 30 * KIB, f"{(extra or 0) / KIB:.1f} KiB"
    )
    wakes = m("idle wake-ups (vol. switches/s)", "zinit")
    goal("zero wake-ups/s when idle", wakes, lambda v: v == 0, f"{(wakes or 0):.2f}/s")
    crash = m("crash to restart, median", "zinit")
    goal(
        "crash to restart <= 3 ms median",
        crash,
        lambda v: v <= 0.003,
        f"{(crash or 0) * 1e3:.2f} ms",
    )
    cli = m("CLI status, one call", "zinit")
    goal("CLI status <= 30 ms (module)", cli, lambda v: v <= 0.03, f"{(cli or 0) * 1e3:.1f} ms")
    pyz = m("CLI status, one call (.pyz)", "zinit")
    goal("CLI status <= 60 ms (.pyz)", pyz, lambda v: v <= 0.06, f"{(pyz or 0) * 1e3:.1f} ms")
    for label, floor in (("status (1 unit)", 10_000), (f"list ({idle_units} units)", 2_000)):
        rates = [m(f"RPC {label}, {c} client(s)", "zinit") for c in (1, 10)]
        best = max((r for r in rates if r is not None), default=None)
        if idle_units != 100 and label.startswith("list"):
            best = None  # the goal is for a list of 100
        goal(
            f">= {floor:,} {label.split()[0]} calls/s (best of 1, 10 clients)",
            best,
            lambda v, floor=floor: v >= floor,
            f"{(best or 0):,.0f}/s",
        )
    dag_time, flat = m("cold start DAG 500", "zinit"), m("cold start N=500", "zinit")
    ratio = dag_time / flat if dag_time and flat else None
    goal("500-unit DAG within 1.5x flat 500", ratio, lambda v: v <= 1.5, f"{(ratio or 0):.2f}x")
    return out


def print_goals(results: Results, sizes: list[int], idle_units: int) -> None:
    print("\ngoals (zinit):")
    for text, met, shown in goals(results, sizes, idle_units):
        verdict = "n/a (not measured)" if met is None else ("met" if met else "NOT MET")
        print(f"  {text:<52} {shown:>12}  {verdict}")


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N=5, few repetitions")
    parser.add_argument(
        "--only", default="zinit,supervisord,s6", help="comma-separated supervisors to run"
    )
    args = parser.parse_args()
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(wanted) - {"zinit", "supervisord", "s6"}
    if unknown or "zinit" not in wanted:
        parser.error("--only takes zinit, supervisord, s6 (zinit always included)")
    quick = args.quick
    sizes = [5] if quick else [100, 500, 1000]
    runs = 1 if quick else 5
    idle_units, idle_seconds = (5, 2.0) if quick else (100, 30.0)
    crash_samples, cli_runs = (3, 3) if quick else (20, 20)
    rpc_runs, rpc_seconds = (1, 0.3) if quick else (3, 1.0)
    flood_seconds = 0.5 if quick else 3.0

    # The spawn floor holds two pipe fds per child: 1,000 children pass the
    # usual soft limit of 1,024 open files.
    zinit._raise_fd_limit()
    tmp = tempfile.mkdtemp(prefix="zinit-bench-run.")
    results = Results()
    notes = []
    kinds: list[type[Peer]] = [Zinit]
    if quick:
        notes.append("zinit runs from this tree (a full run installs it into a venv, with a .pyz)")
    elif why := install_zinit(tmp):
        notes.append(f"zinit runs from this tree: {why}")
    if "supervisord" in wanted:
        why = install_supervisord(tmp)
        kinds += [Supervisord] if why is None else []
        notes += [f"supervisord skipped: {why}"] if why else []
    if "s6" in wanted:
        why = install_s6()
        kinds += [S6] if why is None else []
        notes += [f"s6 skipped: {why}"] if why else []
    names = [kind.name for kind in kinds]
    print(f"interpreter: {sys.executable} (Python {sys.version.split()[0]}); peers: {names}")
    print(f"zinit: {'installed in ' + Zinit.venv if Zinit.venv else 'imported from this tree'}")
    print(cgroup_note())
    for note in notes:
        print(f"note: {note}")
    started = time.monotonic()

    try:
        for _ in range(runs):
            for count in sizes:
                for kind in kinds:
                    results.attempt(
                        f"cold start {kind.name} N={count}",
                        lambda k=kind, c=count: cold_start(results, k, tmp, sleepers(c), f"N={c}"),
                    )
                results.attempt(f"spawn floor N={count}", lambda c=count: spawn_floor(results, c))
            if not quick:
                results.attempt(
                    "cold start zinit DAG",
                    lambda: cold_start(results, Zinit, tmp, dag(), "DAG 500"),
                )
        per_unit_cost(results, names, sizes)

        def steady() -> None:
            peers = start_all(kinds, tmp, sleepers(idle_units))
            try:
                results.attempt("idle cost", lambda: idle_cost(results, peers, idle_seconds))
                results.attempt("CLI status", lambda: cli_status(results, peers, cli_runs))
                results.attempt(
                    "RPC rates", lambda: rpc_rates(results, peers[0], rpc_runs, rpc_seconds)
                )
                results.attempt(
                    "pipelining client",
                    lambda: status_beside_a_pipelining_client(results, peers[0], rpc_seconds * 2),
                )
            finally:
                stop_all(peers)

        results.attempt("steady state", steady)

        def crashes() -> None:
            peers = start_all(kinds, tmp, {"crashy": []}, crash=True)
            try:
                crash_restart(results, peers, crash_samples)
            finally:
                stop_all(peers)

        results.attempt("crash to restart", crashes)
        results.attempt("log throughput", lambda: log_throughput(results, tmp, flood_seconds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nmedians (min-max) of {runs} run(s) each; {time.monotonic() - started:.0f} s\n")
    print_table(results, [*names, "floor"])
    print(
        "floor: the same sleeps started by a bare Popen loop, no supervisor (the least a"
        " cold start can cost here)"
    )
    print_goals(results, sizes, idle_units)
    for failure in results.failures:
        print(f"FAILED: {failure}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
