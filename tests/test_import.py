"""`import zinit` is light and patches nothing; the daemon never monkey-patches (SPEC section 1).

The import checks run in a fresh interpreter so that what this test process has
imported (psutil, through conftest) cannot hide or fake a result.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import time

import psutil
from conftest import PYTHON, ROOT, ZINIT_PY, wait_until

import zinit

HEAVY = ("gevent", "psutil", "ssl", "_ssl", "greenlet")

#: Run in a fresh interpreter: snapshot stdlib objects a patcher would replace, import
#: zinit, run the given calls, then report what is loaded and what changed.
PROBE = r"""
import json, os, queue, select, signal, socket, subprocess, sys, threading, time

watched = {
    "socket.socket": socket.socket,
    "socket.create_connection": socket.create_connection,
    "socket.getaddrinfo": socket.getaddrinfo,
    "socket.socketpair": socket.socketpair,
    "select.select": select.select,
    "time.sleep": time.sleep,
    "threading.Thread": threading.Thread,
    "threading.Lock": threading.Lock,
    "threading.Event": threading.Event,
    "threading.local": threading.local,
    "queue.Queue": queue.Queue,
    "os.fork": os.fork,
    "os.waitpid": os.waitpid,
    "subprocess.Popen": subprocess.Popen,
    "signal.signal": signal.signal,
}
handlers = {n: signal.getsignal(n) for n in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT,
                                             signal.SIGHUP, signal.SIGPIPE)}
import zinit
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(zinit.main(argv))
    except SystemExit as exit:
        codes.append(exit.code)
objects = {"socket.socket": socket.socket, "socket.create_connection": socket.create_connection,
           "socket.getaddrinfo": socket.getaddrinfo, "socket.socketpair": socket.socketpair,
           "select.select": select.select, "time.sleep": time.sleep,
           "threading.Thread": threading.Thread, "threading.Lock": threading.Lock,
           "threading.Event": threading.Event, "threading.local": threading.local,
           "queue.Queue": queue.Queue, "os.fork": os.fork, "os.waitpid": os.waitpid,
           "subprocess.Popen": subprocess.Popen, "signal.signal": signal.signal}
print(json.dumps({
    "codes": codes,
    "modules": sorted(sys.modules),
    "patched": sorted(k for k, v in watched.items() if objects[k] is not v),
    "handlers": sorted(str(n) for n, h in handlers.items() if signal.getsignal(n) is not h),
    "threads": threading.active_count(),
}))
"""


def probe(*argvs: list[str]) -> dict:
    result = subprocess.run(
        [PYTHON, "-c", PROBE, json.dumps(list(argvs))],
        check=False, capture_output=True, text=True, timeout=60, cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def heavy_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


def test_import_and_help_load_no_gevent_and_patch_nothing():
    """import zinit and zinit.main(["--help"]) leave gevent, psutil and ssl unloaded and
    every stdlib object a patcher would touch in place (socket.socket is the original)."""
    report = probe(["--help"])
    assert report["codes"] == [0]
    assert heavy_modules(report["modules"]) == []
    assert report["patched"] == []
    assert report["handlers"] == []
    assert report["threads"] == 1


def test_cli_path_loads_no_gevent(tmp_path):
    """Running CLI commands (here against no daemon, and validate) imports no gevent or psutil."""
    socket_path = str(tmp_path / "none.sock")
    config_dir = tmp_path / "services"
    config_dir.mkdir()
    (config_dir / "web.toml").write_text('[service]\nexec = "sleep 1"\n')
    report = probe(
        ["--socket", socket_path, "list"],
        ["--socket", socket_path, "--json", "status", "web"],
        ["validate", str(config_dir)],
        ["--version"],
    )
    assert report["codes"] == [3, 3, 0, 0]
    assert heavy_modules(report["modules"]) == []
    assert report["patched"] == []


def test_cli_script_imports_no_gevent():
    """`python zinit.py --help` (the __main__ path) imports neither gevent nor psutil nor ssl."""
    result = subprocess.run(
        [PYTHON, "-X", "importtime", ZINIT_PY, "--help"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "json" in imported  # the probe itself works
    assert heavy_modules(imported) == []


# -- the daemon never monkey-patches and never calls waitpid ----------------------


def source_tree() -> ast.Module:
    with open(ZINIT_PY, encoding="utf-8") as stream:
        return ast.parse(stream.read())


def docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the Constant nodes that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.add(id(first.value))
    return found


def code_words(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, text) of every identifier, attribute, import name and non-docstring string."""
    skip = docstring_nodes(tree)
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.alias):
            words.append((node.lineno, node.name))
        elif isinstance(node, ast.ImportFrom):
            words.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in skip:
                words.append((node.lineno, node.value))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            words.append((node.lineno, node.name))
    return words


def section_of_line() -> list[tuple[int, str]]:
    """(first line, title) of each `# ==== N. Title ====` banner."""
    sections = []
    with open(ZINIT_PY, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if line.startswith("# ==== "):
                title = line.strip("# =\n").split(". ", 1)[1]
                sections.append((number, title))
    return sections


def test_source_never_monkey_patches():
    """No code (outside comments and docstrings) mentions gevent.monkey or patch_all."""
    hits = [
        (line, word)
        for line, word in code_words(source_tree())
        if "monkey" in word.lower() or "patch_all" in word
    ]
    assert hits == []


def test_daemon_never_calls_waitpid():
    """Outside the stdlib-only PID-1 shim, nothing calls waitpid, wait3/4 or waitid: libev's
    SIGCHLD handler is the one reaper of the daemon."""
    sections = section_of_line()
    shim = next(i for i, (_, title) in enumerate(sections) if "PID-1" in title or "pid1" in title)
    shim_start = sections[shim][0]
    shim_end = sections[shim + 1][0] if shim + 1 < len(sections) else 10**9
    reapers = {"waitpid", "wait3", "wait4", "waitid"}
    hits = [
        (line, word)
        for line, word in code_words(source_tree())
        if word in reapers and not shim_start <= line < shim_end
    ]
    assert hits == []


def zombies_of(pid: int) -> list[int]:
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def test_daemon_reaps_hundreds_of_children_while_answering(daemon):
    """300 children (short-lived oneshots, oneshots that orphan a grandchild, long sleeps)
    are spawned by one reload while a client keeps pinging: every ping is answered, every
    exit status is collected, and no zombie or leftover is behind."""
    daemon.start()
    daemon_pid = daemon.proc.pid
    quick = [f"quick{i:03d}" for i in range(200)]
    orphaning = [f"orphan{i:02d}" for i in range(50)]
    sleepers = [f"sleep{i:02d}" for i in range(50)]
    for name in quick:
        daemon.service(name, "sh -c 'exit 0'", service="oneshot = true\n")
    for name in orphaning:
        daemon.service(name, "sh -c 'sleep 0.2 & exit 0'", service="oneshot = true\n")
    for name in sleepers:
        daemon.service(name, "sleep 1000", lifecycle="stop_timeout_ms = 2000\n")

    def settled(client: zinit.ZinitClient) -> bool:
        units = {unit["name"]: unit for unit in client.list()}
        return all(units[name]["state"] == "Exited" for name in quick + orphaning) and all(
            units[name]["state"] == "Running" for name in sleepers
        )

    pings = 0
    deadline = time.monotonic() + 60
    with (
        zinit.ZinitClient.connect_unix(daemon.socket, timeout=30) as pinger,
        zinit.ZinitClient.connect_unix(daemon.socket, timeout=30) as other,
    ):
        assert len(other.reload()["added"]) == 300  # starts them; the spawns follow
        while True:
            reply = pinger.ping()
            assert reply["pong"] is True and reply["pid"] == daemon_pid
            pings += 1
            if pings % 50 == 0 and settled(other):
                break
            assert time.monotonic() < deadline, "the units did not settle within 60 s"
        units = {unit["name"]: unit for unit in other.list()}
    for name in quick + orphaning:
        assert units[name]["exit_code"] == 0, units[name]
        assert units[name]["pid"] is None
    wait_until(lambda: not zombies_of(daemon_pid), timeout=30, what="no zombie children")
    sleeper_pids = {units[name]["pid"] for name in sleepers}

    def only_sleepers_left() -> bool:
        return {child.pid for child in psutil.Process(daemon_pid).children()} == sleeper_pids

    wait_until(only_sleepers_left, timeout=30, what="only the 50 sleepers as children")
    assert daemon.stop() == 0


def test_the_running_daemon_maps_no_compression_libraries(daemon):
    """argparse would import shutil (and bz2, lzma with their C libraries) to size --help:
    the daemon keeps whatever it imports, so it tells argparse the width itself."""
    daemon.start()
    assert daemon.call("ping")["pong"]
    with open(f"/proc/{daemon.proc.pid}/maps") as stream:
        mapped = stream.read()
    for library in ("_bz2", "_lzma", "libbz2", "liblzma"):
        assert library not in mapped, library


def test_server_help_fits_the_terminal_width():
    for columns in ("60", "120"):
        result = subprocess.run(
            [PYTHON, ZINIT_PY, "server", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=dict(os.environ, COLUMNS=columns),
        )
        widest = max(len(line) for line in result.stdout.splitlines())
        assert 40 < widest <= int(columns), (columns, widest)
