"""Core figures of one zinit daemon on this machine (no peers yet).

    python bench/core.py [--quick]

Prints medians (min-max) of: cold start of N long-running units (launch to
all Running, seen through the daemon's API), daemon RSS/PSS, idle CPU and
context switches, crash-to-restart latency, CLI round trip, and control
socket latency while a unit floods its output.  Every process it starts is
ended by pid.  It asserts nothing: it reports.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import zinit

#: Daemon and CLI import zinit from the repository with bytecode caching on, as an
#: installed zinit (console scripts or the .pyz) runs.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPATH"] = str(ROOT)


def summary(values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    values = sorted(v * scale for v in values)
    return f"{statistics.median(values):.2f} {unit} ({values[0]:.2f}-{values[-1]:.2f})"


def connect_when_up(socket: str, limit_s: float = 30.0) -> zinit.ZinitClient:
    """A client of the daemon at ``socket``, once it listens (it may still be starting)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return zinit.ZinitClient.connect_unix(socket)
        except zinit.DaemonUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def quiet_move_ms(own: str, samples: int = 3, quiet_s: float = 0.3) -> float | None:
    """Median time to move this process into a cgroup after a quiet spell, or None.

    That move is what a crash restart or an xinet activation pays first; the
    kernel may make it wait for an RCU grace period (see README, Restart latency).
    """
    probe = os.path.join(own, f"zinit-bench-probe-{os.getpid()}")
    times = []
    try:
        os.mkdir(probe)
    except OSError:
        return None
    try:
        for _ in range(samples):
            time.sleep(quiet_s)
            started = time.perf_counter()
            zinit._write_cgroup_file(probe, "cgroup.procs", str(os.getpid()))
            times.append(time.perf_counter() - started)
            zinit._write_cgroup_file(own, "cgroup.procs", str(os.getpid()))
    except OSError:
        return None
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass
    return statistics.median(times) * 1000


def cgroup_note() -> str:
    """Which cgroup mode the figures were taken in: restarts and activations depend on it."""
    own = zinit._own_cgroup_dir()
    if own is None:
        return "cgroups: none writable (units tracked by process group)"
    slow = zinit._slow_cgroup_mount(own)
    mode = f"{slow} without favordynmods" if slow else "favordynmods on, or not offered"
    move = quiet_move_ms(own)
    measured = "" if move is None else f"; a move after a quiet spell took {move:.2f} ms here"
    return f"cgroups: {mode}{measured} (about 10 ms where the kernel waits for an RCU grace period)"


class Daemon:
    def __init__(self, units: dict[str, str]) -> None:
        self.dir = tempfile.mkdtemp(prefix="zinit-bench.")
        self.config_dir = os.path.join(self.dir, "services")
        os.mkdir(self.config_dir)
        self.socket = os.path.join(self.dir, "zinit.sock")
        for name, text in units.items():
            with open(os.path.join(self.config_dir, f"{name}.toml"), "w") as stream:
                stream.write(text)
        self.proc: subprocess.Popen | None = None

    def launch(self) -> float:
        started = time.monotonic()
        # Import the module as an installed zinit-server does, so that its
        # compiled form is used: a script is compiled again at every start.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, zinit; sys.exit(zinit.server_main())",
                "--config-dir",
                self.config_dir,
                "--socket",
                self.socket,
            ],
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        return started

    def client(self) -> zinit.ZinitClient:
        return connect_when_up(self.socket)

    def wait_all_running(self, count: int) -> None:
        with self.client() as client:
            while sum(u["state"] == "Running" for u in client.list()) < count:
                time.sleep(0.005)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def sleepers(count: int, extra: str = "") -> dict[str, str]:
    return {f"s{i:04d}": f'[service]\nexec = "sleep 100000"\n{extra}' for i in range(count)}


def cold_start(count: int, runs: int) -> tuple[list[float], list[tuple[int, int]]]:
    times, memory = [], []
    for _ in range(runs):
        daemon = Daemon(sleepers(count))
        try:
            started = daemon.launch()
            daemon.wait_all_running(count)
            times.append(time.monotonic() - started)
            info = psutil.Process(daemon.proc.pid).memory_full_info()
            memory.append((info.rss, info.pss))
        finally:
            daemon.stop()
    return times, memory


def idle_cost(count: int, seconds: float) -> tuple[float, int]:
    daemon = Daemon(sleepers(count))
    try:
        daemon.launch()
        daemon.wait_all_running(count)
        time.sleep(1.0)  # let start-up work drain before measuring
        process = psutil.Process(daemon.proc.pid)
        cpu0, switches0 = sum(process.cpu_times()[:2]), process.num_ctx_switches().voluntary
        time.sleep(seconds)
        cpu1, switches1 = sum(process.cpu_times()[:2]), process.num_ctx_switches().voluntary
        return cpu1 - cpu0, switches1 - switches0
    finally:
        daemon.stop()


def crash_restart(samples: int) -> list[float]:
    daemon = Daemon(
        {"crashy": '[service]\nexec = "sleep 100000"\n[lifecycle]\nrestart_delay_ms = 0\n'}
    )
    latencies = []
    try:
        daemon.launch()
        daemon.wait_all_running(1)
        with daemon.client() as control, daemon.client() as watcher:
            events = watcher.events()
            for _ in range(samples):
                pid = control.status("crashy")["pid"]
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                for event in events:
                    if event["unit"] == "crashy" and event["to"] == "Running":
                        latencies.append(time.monotonic() - killed)
                        break
    finally:
        daemon.stop()
    return latencies


def cli_round_trip(runs: int) -> list[float]:
    daemon = Daemon(sleepers(1))
    times = []
    try:
        daemon.launch()
        daemon.wait_all_running(1)
        command = [
            sys.executable,
            "-c",
            "import sys, zinit; sys.exit(zinit.main())",
            "--socket",
            daemon.socket,
            "status",
            "s0000",
        ]
        for _ in range(runs):
            started = time.monotonic()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=ENV)
            times.append(time.monotonic() - started)
    finally:
        daemon.stop()
    return times


def flood_latency(calls: int) -> tuple[list[float], int]:
    flood = '[service]\nexec = "yes a-line-of-flooding-output"\n'
    daemon = Daemon({"flood": flood, **sleepers(1)})
    latencies = []
    try:
        daemon.launch()
        daemon.wait_all_running(2)
        with daemon.client() as client:
            for _ in range(calls):
                started = time.monotonic()
                client.status("s0000")
                latencies.append(time.monotonic() - started)
            lines = len(client.logs("flood"))
    finally:
        daemon.stop()
    return latencies, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N and few runs (a smoke run)")
    args = parser.parse_args()
    runs = 1 if args.quick else 5
    sizes = (5,) if args.quick else (100, 500)
    print(f"interpreter: {sys.executable} (Python {sys.version.split()[0]})")
    print(cgroup_note())
    for count in sizes:
        times, memory = cold_start(count, runs)
        rss = statistics.median(m[0] for m in memory) / 2**20
        pss = statistics.median(m[1] for m in memory) / 2**20
        print(
            f"cold start, {count} units: {summary(times)}; daemon RSS {rss:.1f} MiB, PSS {pss:.1f} MiB"
        )
    cpu, switches = idle_cost(5 if args.quick else 100, 2.0 if args.quick else 10.0)
    print(
        f"idle, {5 if args.quick else 100} units: {cpu * 1000:.1f} ms CPU, {switches} voluntary switches"
    )
    print(
        f"crash to Running (restart_delay_ms=0): {summary(crash_restart(3 if args.quick else 20))}"
    )
    print(
        f"CLI status round trip (module, this interpreter): {summary(cli_round_trip(3 if args.quick else 20))}"
    )
    latencies, lines = flood_latency(50 if args.quick else 500)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(
        f"status while a unit floods stdout: median {statistics.median(latencies) * 1000:.2f} ms, "
        f"p99 {p99:.2f} ms ({lines} lines kept)"
    )


if __name__ == "__main__":
    main()
