"""zinit tui as an operator uses it: tmux runs it against a real daemon (SPEC section 8).

Each test starts its own tmux server (``tmux -L`` with a unique name, killed at
teardown), runs ``zinit tui`` in a 100x30 window with TERM=xterm-256color, sends
keys and reads the screen with capture-pane.  Waiting is on the screen's content,
never a fixed sleep; only the idle-cost test measures over a fixed window.  The
pure parts (filter, sort, column fitting) and ``list`` with usage run in process.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable

import psutil
import pytest
from conftest import PYTHON, ZINIT_PY, wait_until

import zinit

FAST_STOP = "stop_timeout_ms = 2000\n"
#: A colour escape as tmux writes it back (SGR 30-37, 90-97 or 38;5;N).
COLOUR_SGR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38;5;\d+)(?:;[0-9;]*)?m")
_servers = itertools.count()


def _tmux_or_install() -> str | None:
    """The tmux binary; when it is missing, try apt-get (as root) once."""
    found = shutil.which("tmux")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    install = ["apt-get", "install", "-y", "-q", "tmux"]

    def quietly(argv: list[str]) -> int:
        return subprocess.run(argv, check=False, capture_output=True, timeout=300).returncode

    if quietly(install) != 0:
        quietly(["apt-get", "update", "-q"])
        quietly(install)
    return shutil.which("tmux")


TMUX = _tmux_or_install()
needs_tmux = pytest.mark.skipif(
    TMUX is None, reason="tmux is missing and could not be installed (.ci/run installs it)"
)


class Terminal:
    """A tmux window running ``zinit tui``, then a shell line that reports the exit code
    and the terminal's modes; keys go in with send-keys, the screen comes out of
    capture-pane."""

    def __init__(self, tmp_path: pathlib.Path, socket: str, width: int, height: int, env: dict):
        self.server = f"zinit-tui-test-{os.getpid()}-{next(_servers)}"
        script = tmp_path / f"{self.server}.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        script.write_text(
            "export TERM=xterm-256color\n"
            f"{exports}"
            f"{shlex.quote(PYTHON)} {shlex.quote(ZINIT_PY)} --socket {shlex.quote(socket)} tui\n"
            'echo "tui exited with $?"\n'
            # The modes a crashed curses program leaves off: -icanon, -echo, -isig, -icrnl.
            "echo modes: $(stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo|isig|icrnl)')\n"
            "exec sleep 600\n"
        )
        self.tmux(
            "new-session", "-d", "-s", "tui", "-x", str(width), "-y", str(height), f"sh {script}"
        )

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            [TMUX, "-L", self.server, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "tui")

    def keys(self, *keys: str) -> None:
        """Send tmux key names (``Enter``, ``Escape``, ``Down``) or single characters."""
        self.tmux("send-keys", "-t", "tui", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "tui", "-l", text)

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", "tui", "-x", str(width), "-y", str(height))

    def wait(self, predicate: Callable[[str], object], what: str, timeout: float = 20) -> str:
        """Return the screen once ``predicate(screen)`` holds."""

        last = [""]

        def matching_screen() -> str | None:
            last[0] = self.screen()
            return last[0] if predicate(last[0]) else None

        try:
            return wait_until(matching_screen, timeout=timeout, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; last screen:\n{last[0]}") from None

    def wait_text(self, text: str, timeout: float = 20) -> str:
        return self.wait(lambda screen: text in screen, f"{text!r} on the screen", timeout)

    def wait_table(self, predicate: Callable[[dict[str, list[str]]], object], what: str) -> str:
        return self.wait(lambda screen: predicate(table(screen)), what)

    def tui_process(self) -> psutil.Process:
        shell = psutil.Process(int(self.tmux("display", "-p", "-t", "tui", "#{pane_pid}")))
        return next(p for p in shell.children() if "tui" in p.cmdline())

    def close(self) -> None:
        """Kill this tmux server (only it: it has its own socket) and remove its socket."""

        def tmux(*args: str) -> str:
            command = [TMUX, "-L", self.server, *args]
            return subprocess.run(command, check=False, capture_output=True, text=True).stdout

        socket_path = tmux("display", "-p", "#{socket_path}").strip()
        tmux("kill-server")
        if socket_path:
            pathlib.Path(socket_path).unlink(missing_ok=True)


def table(screen: str) -> dict[str, list[str]]:
    """The unit rows on the screen: name -> cells (name kind state pid uptime ...)."""
    lines = screen.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("NAME ")), None)
    rows: dict[str, list[str]] = {}
    if start is None:
        return rows
    columns = len(lines[start].split())
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith(("──", "--", "no unit")):
            break
        cells = line.split()
        if len(cells) >= columns:  # a row caught while it is being drawn is left out
            rows[cells[0]] = cells
    return rows


def state_of(rows: dict[str, list[str]], name: str) -> str | None:
    return rows[name][2] if name in rows else None


@pytest.fixture
def running(daemon):
    """A daemon with 'sleeper', 'web' (requires sleeper), a oneshot 'job' and a stopped 'idle'."""
    daemon.service("sleeper", "sleep 1000", lifecycle=FAST_STOP)
    daemon.service(
        "web", "sleep 1000", lifecycle=FAST_STOP, dependencies='requires = ["sleeper"]\n'
    )
    daemon.service("job", "sh -c 'echo hello from job'", service="oneshot = true\n")
    daemon.service("idle", "sleep 1000", service='status = "stop"\n', lifecycle=FAST_STOP)
    daemon.start()
    daemon.wait_state("web", "Running")
    daemon.wait_state("job", "Exited")
    return daemon


@pytest.fixture
def tui(tmp_path, running):
    """Open ``zinit tui`` on the running daemon: tui(width, height, env) -> Terminal."""
    opened: list[Terminal] = []

    def open_terminal(width: int = 100, height: int = 30, env: dict | None = None) -> Terminal:
        terminal = Terminal(tmp_path, running.socket, width, height, env or {})
        opened.append(terminal)
        return terminal

    yield open_terminal
    for terminal in opened:
        terminal.close()


def shows_all_units(rows: dict[str, list[str]]) -> bool:
    return state_of(rows, "sleeper") == "Running" and set(rows) == {"idle", "job", "sleeper", "web"}


def select(terminal: Terminal, name: str) -> None:
    """Filter the table down to ``name`` (which selects it) and wait for it."""
    terminal.keys("/")
    terminal.type(name)
    terminal.keys("Enter")
    terminal.wait(lambda s: set(table(s)) == {name} and f"── {name} " in s, f"only {name}")


# -- the quality bars ---------------------------------------------------------


@needs_tmux
def test_table_shows_every_unit_with_its_state(tui, running):
    terminal = tui()
    screen = terminal.wait_table(shows_all_units, "every unit")
    rows = table(screen)
    assert [state_of(rows, n) for n in ("idle", "job", "sleeper", "web")] == [
        "Inactive", "Exited", "Running", "Running",
    ]  # fmt: skip
    assert rows["sleeper"][3] == str(running.status("sleeper")["pid"])
    assert rows["sleeper"][1] == "service"
    header = next(line for line in screen.splitlines() if line.startswith("NAME "))
    for title in ("KIND", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "CPU%", "MEM"):
        assert title in header


@needs_tmux
def test_a_state_change_appears_without_a_key_press(tui, running):
    terminal = tui()
    terminal.wait_table(shows_all_units, "every unit")
    running.call("start", name="idle")
    terminal.wait_table(lambda rows: state_of(rows, "idle") == "Running", "idle Running")
    running.call("stop", name="idle")
    terminal.wait_table(lambda rows: state_of(rows, "idle") == "Exited", "idle Exited")


@needs_tmux
def test_restart_from_the_tui_changes_the_pid(tui, running):
    terminal = tui()
    terminal.wait_table(shows_all_units, "every unit")
    old_pid = running.status("sleeper")["pid"]
    select(terminal, "sleeper")
    terminal.keys("r")

    def new_pid_shown(rows: dict[str, list[str]]) -> bool:
        row = rows.get("sleeper")
        return bool(row) and row[2] == "Running" and row[3] not in (str(old_pid), "-")

    rows = table(terminal.wait_table(new_pid_shown, "sleeper with a new pid"))
    assert rows["sleeper"][3] == str(running.status("sleeper")["pid"])
    terminal.wait_text("restart sleeper: done")


@needs_tmux
def test_the_filter_narrows_the_list(tui, running):
    terminal = tui()
    terminal.wait_table(shows_all_units, "every unit")
    terminal.keys("/")
    terminal.type("e")  # sleeper, web and idle have an e; job has none
    terminal.wait_table(lambda rows: set(rows) == {"idle", "sleeper", "web"}, "three units")
    terminal.type("b")
    terminal.wait_table(lambda rows: set(rows) == {"web"}, "only web")
    terminal.keys("Enter")
    screen = terminal.wait_text("filter: eb")
    assert "1 of 4 units" in screen
    terminal.keys("Down", "j")  # moving within a one-row list stays on it
    terminal.keys("/", "BSpace", "BSpace")  # the prompt starts from the current filter
    terminal.type("zzz")
    terminal.wait_text("no unit matches 'zzz'")
    terminal.keys("Escape")  # Esc in the prompt clears the filter
    screen = terminal.wait_table(shows_all_units, "every unit again")
    assert "filter:" not in screen


@needs_tmux
def test_the_log_pane_follows_the_selected_unit(tui, running):
    running.service(
        "ticker", "sh -c 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done'"
    )
    running.call("reload")
    running.wait_state("ticker", "Running")
    terminal = tui()
    terminal.wait_table(lambda rows: "ticker" in rows, "ticker")
    select(terminal, "ticker")

    def ticks(screen: str) -> list[int]:
        return [int(n) for n in re.findall(r"\| tick-(\d+)$", screen, re.MULTILINE)]

    first = max(ticks(terminal.wait(ticks, "ticks in the log pane")))
    terminal.wait(lambda screen: max(ticks(screen), default=0) >= first + 3, "newer ticks")
    assert "log of ticker (following)" in terminal.screen()


@needs_tmux
def test_resizing_and_a_terminal_too_small(tui, running):
    terminal = tui()
    terminal.wait_table(shows_all_units, "every unit")
    terminal.resize(80, 24)

    def fits_80x24(screen: str) -> bool:
        lines = screen.splitlines()
        header = next((line for line in lines if line.startswith("NAME ")), "")
        return (
            shows_all_units(table(screen))
            and "MEM" in header
            and len(header) <= 80
            and lines[-1].startswith("s start")  # the bottom line is on the last row
        )

    screen = terminal.wait(fits_80x24, "the whole view in 80x24")
    assert max(len(line) for line in screen.splitlines()) <= 80
    terminal.resize(50, 8)
    terminal.wait_text("terminal too small (50x8, need 60x10)")
    terminal.resize(100, 30)
    terminal.wait_table(shows_all_units, "every unit after growing again")
    assert "too small" not in terminal.screen()


@needs_tmux
def test_quitting_restores_the_terminal(tui, running):
    terminal = tui()
    terminal.wait_table(shows_all_units, "every unit")
    terminal.keys("q")
    screen = terminal.wait_text("tui exited with 0")
    modes = terminal.wait_text("modes:").split("modes:", 1)[1].split()
    assert sorted(modes) == ["echo", "icanon", "icrnl", "isig"], screen  # none is "-echo" ...
    assert "NAME " not in screen  # the alternate screen is gone


@needs_tmux
def test_a_small_terminal_shows_a_message_and_q_still_quits(tui, running):
    terminal = tui(width=50, height=8)
    terminal.wait_text("terminal too small (50x8, need 60x10)")
    terminal.keys("q")
    terminal.wait_text("tui exited with 0")


@needs_tmux
def test_daemon_gone_shows_a_banner_and_reconnects(tui, running):
    terminal = tui()
    terminal.wait_table(shows_all_units, "every unit")
    running.stop()
    terminal.wait_text(f"daemon not reachable at {running.socket}")
    running.start()
    running.wait_state("sleeper", "Running")
    pid = str(running.status("sleeper")["pid"])
    screen = terminal.wait(
        lambda s: "not reachable" not in s and table(s).get("sleeper", [""] * 4)[3] == pid,
        "the table of the new daemon",
    )
    assert shows_all_units(table(screen))


@needs_tmux
def test_start_stop_signal_reload_tree_help_and_sort_keys(tui, running):
    running.service(
        "trapper", """sh -c 'trap "echo got-usr1" USR1; while true; do sleep 0.1; done'"""
    )
    running.call("reload")
    running.wait_state("trapper", "Running")
    terminal = tui()
    terminal.wait_table(lambda rows: "trapper" in rows, "trapper")

    select(terminal, "idle")
    terminal.keys("s")
    terminal.wait_table(lambda rows: state_of(rows, "idle") == "Running", "idle started")
    terminal.keys("S")
    terminal.wait_table(lambda rows: state_of(rows, "idle") == "Exited", "idle stopped")

    terminal.keys("Escape")  # clears the filter
    select(terminal, "trapper")
    terminal.keys("K")
    terminal.wait_text("signal for trapper [TERM]: ")
    terminal.type("USR1")
    terminal.keys("Enter")
    terminal.wait_text("kill trapper: sent SIGUSR1")
    terminal.wait(lambda s: re.search(r"\| got-usr1$", s, re.MULTILINE), "got-usr1 in the log")

    running.service("extra", "sleep 1000", lifecycle=FAST_STOP)
    terminal.keys("Escape", "R")
    terminal.wait_text("reload: added extra")
    terminal.wait_table(lambda rows: state_of(rows, "extra") == "Running", "extra Running")

    terminal.keys("t")
    screen = terminal.wait_text("requires sleeper [Running]")
    assert "dependency tree" in screen and "web [Running]" in screen
    terminal.keys("t")
    terminal.wait_table(lambda rows: "extra" in rows, "the table again")

    terminal.keys("?")
    terminal.wait_text("zinit tui: keys")
    terminal.keys("x")  # any key closes the help, and does nothing else
    terminal.wait_table(lambda rows: "extra" in rows, "the table again")
    assert running.status("extra")["state"] == "Running"

    terminal.keys("o")
    terminal.wait_text("sort: state")
    units = len(running.call("list"))
    screen = terminal.wait_table(lambda rows: len(rows) == units, "every unit, sorted")
    states = [row[2] for row in table(screen).values()]
    assert states == sorted(states, key=zinit._TUI_STATE_ORDER.index)


@needs_tmux
def test_states_are_coloured_unless_no_color(tui, running):
    coloured = tui()
    coloured.wait_table(shows_all_units, "every unit")
    line = next(l for l in coloured.screen(escapes=True).splitlines() if l.startswith("sleeper"))
    assert COLOUR_SGR.search(line), repr(line)
    plain = tui(env={"NO_COLOR": "1"})
    plain.wait_table(shows_all_units, "every unit")
    assert not COLOUR_SGR.search(plain.screen(escapes=True))


@needs_tmux
def test_an_idle_view_costs_the_daemon_nothing(tui, running):
    """One event stream and one log stream; no polling: over 6 s the daemon and the view
    each use a few tens of milliseconds of CPU at most (a refresh every 2 s)."""
    terminal = tui()
    terminal.wait_table(shows_all_units, "every unit")
    subscriptions = running.call("debug_state")["subscriptions"]
    assert subscriptions == {"events": 1, "logs": 1}
    daemon = psutil.Process(running.proc.pid)
    view = terminal.tui_process()

    def cpu_s(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    before = cpu_s(daemon), cpu_s(view)
    time.sleep(6)  # a measuring window, not a wait for a condition
    used = cpu_s(daemon) - before[0], cpu_s(view) - before[1]
    assert used[0] < 0.3 and used[1] < 0.3, used


# -- in process ----------------------------------------------------------------


def test_list_with_usage_adds_cpu_and_memory(running):
    with running.client() as client:
        plain = client.list()
        assert all("cpu_percent" not in unit for unit in plain)
        first = {unit["name"]: unit for unit in client.list(with_usage=True)}
        assert first["sleeper"]["rss_bytes"] > 0 and first["sleeper"]["cpu_percent"] is None
        assert first["idle"]["rss_bytes"] is None and first["idle"]["cpu_percent"] is None
        second = {unit["name"]: unit for unit in client.list(with_usage=True)}
        assert isinstance(second["sleeper"]["cpu_percent"], float)
        assert 0 <= second["sleeper"]["cpu_percent"] < 100


def test_state_filters_sorts_and_keeps_a_selection():
    state = zinit._TuiState(socket_path="/s")
    state.units = [
        {"name": "web", "state": "Running", "restarts": 2, "cpu_percent": 1.0, "rss_bytes": 10},
        {"name": "db", "state": "Failed", "restarts": 0, "cpu_percent": None, "rss_bytes": None},
        {"name": "cache", "state": "Running", "restarts": 5, "cpu_percent": 9.5, "rss_bytes": 5},
    ]
    state.keep_selection()
    assert state.selected == "cache"
    assert [u["name"] for u in state.visible()] == ["cache", "db", "web"]
    state.move(5)
    assert state.selected == "web"
    for order, names in {
        "state": ["db", "cache", "web"],
        "cpu": ["cache", "web", "db"],
        "memory": ["web", "cache", "db"],
        "restarts": ["cache", "web", "db"],
    }.items():
        state.sort = order
        assert [u["name"] for u in state.visible()] == names, order
    state.filter_text = "C"
    state.keep_selection()
    assert [u["name"] for u in state.visible()] == ["cache"] and state.selected == "cache"
    state.filter_text = "nothing"
    state.keep_selection()
    assert state.selected is None


def test_columns_fit_80_and_narrower_terminals():
    for width in (59, 79, 99):
        columns = zinit._tui_columns(width)
        assert sum(size + 1 for _, _, size in columns) - 1 <= width
        assert columns[0][2] >= 12
    assert [key for key, _, _ in zinit._tui_columns(79)] == [
        "name", "kind", "state", "pid", "uptime", "restarts", "health", "cpu", "memory",
    ]  # fmt: skip
    assert zinit._format_bytes(None) == "-"
    assert zinit._format_bytes(512) == "512B"
    assert zinit._format_bytes(3 * 1024 * 1024 + 300_000) == "3.3M"


def test_tui_needs_a_terminal(running):
    result = running.cli("tui")
    assert result.returncode == 2
    assert "tui: needs a terminal" in result.stderr
