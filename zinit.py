"""zinit: a process supervisor with dependency management, in one file.

zinit starts services in dependency order, keeps them alive, stops them in
reverse order, and says why anything is not running.  This one module is the
whole product; it runs as three programs, chosen by the basename of argv[0] or
by a first argument:

    zinit          the CLI, a thin JSON-RPC client of the daemon
    zinit-server   the daemon (``zinit server``)
    zinit-pid1     the PID-1 shim for containers and VMs (``zinit pid1``)

Section map (``grep -n '^# ==== '`` lists the same):

     1. imports              stdlib only; the client half stays light
     2. constants            paths, limits, the unit-name pattern
     3. errors               ZinitError tree and the one fault-code table
     4. utilities            signal names, durations, small helpers
     5. config               frozen unit configs, the TOML loader and validator
     6. graph                pure dependency functions: closure, cycles, order
     7. states               the seven states, allowed transitions, snapshots
     8. protocol             JSON-RPC framing and the method table
     9. client               ZinitClient and AsyncZinitClient
    10. cli                  argparse commands, tables, exit codes; the curses tui
    11. daemon runtime       gevent hub set-up, subreaper, SIGCHLD reaping
    12. log ring             bounded per-unit line buffers and pipe readers
    13. processes            spawn, cgroups, signalling and sweeping groups
    14. health checks        http, tcp and exec probes
    15. service              one greenlet per unit: its whole life
    16. supervisor           registry, dependency gating, cascades, reload
    17. xinet proxy          socket activation: listen, start on demand, splice
    18. rpc server           the control socket and its handlers
    19. server entry         ``zinit-server``
    20. PID-1 shim           ``zinit-pid1``
    21. main dispatch        multi-call entry point

Invariants:

* Sections 1-10 (the client half) import neither gevent nor psutil nor ssl:
  ``import zinit`` has no side effects and patches nothing.  The daemon uses
  gevent's explicit APIs and never monkey-patches.
* One owner of ``waitpid``: libev's SIGCHLD handler.  Nothing here calls
  ``waitpid``, ``Popen.wait`` or ``Popen.poll`` inside the daemon.
* Every state change goes through ``Service._set_state``, which checks the
  transition table, records the reason and publishes an event.
* Only a unit's own greenlet changes that unit; everyone else sends it a
  message and reads snapshots.
"""

# ==== 1. Imports =============================================================
# Cheap standard-library modules only.  gevent, psutil, tomllib, ssl and
# http.client are imported inside the functions of the daemon half.

from __future__ import annotations

import argparse
import collections
import enum
import functools
import heapq
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import stat
import sys
import time
import types


class _ModuleOnFirstUse(types.ModuleType):
    """Stands for a module that is imported (for real) when one of its attributes is read."""

    def __getattr__(self, attribute: str) -> Any:
        module = __import__(self.__name__)  # sys.modules holds the real one, if loaded
        self.__dict__.update(vars(module))
        return getattr(module, attribute)


# dataclasses imports inspect (with ast, dis and tokenize: about 7 ms of every CLI
# start) only to write a signature into the docstring of a class that has none, and
# every dataclass here has one.  So while dataclasses is imported, and only then, a
# stand-in takes inspect's place; whoever imports inspect later gets the real one.
if "dataclasses" in sys.modules or "inspect" in sys.modules:
    import dataclasses
else:
    sys.modules["inspect"] = _ModuleOnFirstUse("inspect")
    try:
        import dataclasses
    finally:
        del sys.modules["inspect"]

# typing costs the CLI a few milliseconds at every start, and annotations are
# never evaluated here (PEP 563), so its names are imported for checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, Self

__all__ = [
    "AsyncZinitClient",
    "ConfigError",
    "DaemonUnavailable",
    "HealthConfig",
    "RpcError",
    "State",
    "UnitConfig",
    "UnitNotFound",
    "UnitStateError",
    "UsageError",
    "ZinitClient",
    "ZinitError",
    "load_config_dir",
    "load_unit_file",
    "main",
    "parse_unit_text",
    "pid1_main",
    "server_main",
]

__version__ = "0.1.0"

# ==== 2. Constants ===========================================================
# Default paths (SPEC section 2), protocol limits and the unit-name pattern.
# Everything tunable lives here so that the rest reads without magic numbers.

#: Unit names: also file stems, so no slash and no leading dot can pass.  The
#: patterns of this file stay strings for re's cache to compile at first use:
#: compiled at import, they would cost every CLI call a few milliseconds.
UNIT_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}"

#: The longest timeout or delay a unit file may set (a day): a larger one is a typo.
_MAX_DURATION_MS = 24 * 3600 * 1000
#: The most lines a unit's log ring may keep (each line may take 64 KiB).
_MAX_BUFFER_LINES = 1_000_000
#: A unit or proxy file is read up to this size (larger is an error, not a long parse).
MAX_UNIT_FILE_BYTES = 256 * 1024
#: One JSON-RPC frame (a line) may not exceed this many bytes.
MAX_FRAME_BYTES = 1 << 20
#: Streams (logs.follow, events.subscribe) one connection, and the daemon, may have
#: open: each queues up to a few thousand notifications for a client that lags.
MAX_STREAMS_PER_CONNECTION = 16
MAX_STREAMS = 256
#: Requests in one JSON-RPC batch: each may build a large reply, all sent at once.
MAX_BATCH = 1000
#: The daemon's log levels below INFO, as numbers: the CLI's path never imports logging.
_LOG_DEBUG = 10  # logging.DEBUG
_LOG_TRACE = 5
#: Log lines longer than this are cut into pieces of this size.
MAX_LOG_LINE_BYTES = 64 * 1024
#: A service Running this long without exiting has its backoff reset.
STABLE_RUN_S = 10.0
#: While Starting, health checks begin this often and double up to the interval.
FIRST_PROBE_INTERVAL_S = 0.05
#: ``zinit logs`` without a unit name returns at most this many lines by default.
MERGED_LOG_LINES = 1000
#: How many past transitions each unit keeps for ``zinit why``.
HISTORY_LENGTH = 16

DEFAULT_LOG_LEVEL = "info"


def _is_root() -> bool:
    return os.geteuid() == 0


#: The service directory of root, and of container mode whoever runs it (SPEC 10).
DEFAULT_SERVICES_DIR = "/etc/zinit/services"


def default_config_dir() -> str:
    """Return the service directory: env override, else the platform default."""
    if os.environ.get("ZINIT_CONFIG_DIR"):
        return os.environ["ZINIT_CONFIG_DIR"]
    if sys.platform.startswith("linux") and _is_root():
        return DEFAULT_SERVICES_DIR
    return os.path.join(os.path.expanduser("~"), "hero", "cfg", "zinit")


def default_socket_path() -> str:
    """Return the control socket path: env override, else the platform default."""
    if os.environ.get("ZINIT_SOCKET"):
        return os.environ["ZINIT_SOCKET"]
    if sys.platform.startswith("linux") and _is_root():
        return "/run/zinit.sock"
    return os.path.join(os.path.expanduser("~"), "hero", "var", "zinit.sock")


DEFAULT_SYSTEM_DIR = "/etc/zinit/system"

# ==== 3. Errors ==============================================================
# One base class; each subclass keeps fields and builds its text in __str__.
# _FAULTS maps each class to its JSON-RPC code and CLI exit code; only the
# edges (RPC server, client, CLI) translate through it.


class ZinitError(Exception):
    """Base of every error zinit reports to a user."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ZinitError):
    """A unit file is wrong: names the file, the key, the position and why.

    One error per file travels through the daemon; the file's other problems,
    if any, ride along in ``also`` (each a ConfigError without ``also``).
    """

    def __init__(
        self,
        path: str,
        reason: str,
        *,
        key: str | None = None,
        line: int | None = None,
        col: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.path = path
        self.key = key
        self.line = line
        self.col = col
        self.reason = reason
        self.also: tuple[ConfigError, ...] = ()
        self.in_proxy_file = False  # an [xinet] file's, not a unit's (set by parse_unit_text)

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        text = f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"
        if self.also:
            text += f" (and {len(self.also)} more in this file)"
        return text

    def every(self) -> list[ConfigError]:
        """This problem and the file's others, in file order, each on its own."""
        first = ConfigError(self.path, self.reason, key=self.key, line=self.line, col=self.col)
        return [first, *self.also] if self.also else [self]

    def with_path(self, path: str) -> ConfigError:
        """The same problems, said of another file (add-service names the user's source)."""
        return ConfigError.joined(
            [ConfigError(path, p.reason, key=p.key, line=p.line, col=p.col) for p in self.every()]
        )

    @staticmethod
    def joined(problems: list[ConfigError]) -> ConfigError:
        """One error for ``problems`` (each alone, as every() gives them): the first, with
        the others in ``also``."""
        first = problems[0]
        joined = ConfigError(
            first.path, first.reason, key=first.key, line=first.line, col=first.col
        )
        joined.also = tuple(problems[1:])
        return joined

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``message`` is this problem alone; ``also`` holds the others."""
        return {
            "file": self.path,
            "key": self.key,
            "line": self.line,
            "col": self.col,
            "reason": self.reason,
            "message": str(self.every()[0]),
            "also": [problem.to_dict() for problem in self.also],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfigError:
        """Rebuild what to_dict() gave (the client's side of an error reply)."""
        error = cls(
            str(data["file"]),
            str(data.get("reason") or data.get("message") or "invalid"),
            key=data.get("key"),
            line=data.get("line"),
            col=data.get("col"),
        )
        also = data.get("also")
        if isinstance(also, list):
            error.also = tuple(
                cls.from_dict(d) for d in also if isinstance(d, dict) and "file" in d
            )
        return error


class UnitNotFound(ZinitError):
    """No unit of that name is known to the daemon."""

    def __init__(self, name: str, kind: str = "unit") -> None:
        super().__init__(f"unknown {kind} {name!r}")
        self.name = name


class UnitStateError(ZinitError):
    """The request does not fit the unit's state or settings."""


class UsageError(ZinitError):
    """The command line or the request parameters are wrong."""


class DaemonUnavailable(ZinitError):
    """Nothing answers at the control socket."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(
            f"no zinit daemon at {path} ({why}); start one with "
            f"'zinit-server --socket {path}' or pass --socket / ZINIT_SOCKET"
        )
        self.path = path


class RpcError(ZinitError):
    """A JSON-RPC error reply, as the client sees it."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


# JSON-RPC 2.0 reserved codes, then ours in the server-error range.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNIT_NOT_FOUND = -32000
UNIT_STATE = -32001
CONFIG_INVALID = -32002

#: error class -> (JSON-RPC code, CLI exit code); the one translation table.
_FAULTS: dict[type[ZinitError], tuple[int, int]] = {
    UnitNotFound: (UNIT_NOT_FOUND, 1),
    UnitStateError: (UNIT_STATE, 1),
    ConfigError: (CONFIG_INVALID, 1),
    UsageError: (INVALID_PARAMS, 2),
    DaemonUnavailable: (INTERNAL_ERROR, 3),
    RpcError: (INTERNAL_ERROR, 1),
}
_CODE_TO_ERROR: dict[int, type[ZinitError]] = {
    UNIT_NOT_FOUND: UnitNotFound,
    UNIT_STATE: UnitStateError,
    CONFIG_INVALID: ConfigError,
}


def _fault_of(error: ZinitError) -> tuple[int, int]:
    for cls in type(error).__mro__:
        if cls in _FAULTS:
            return _FAULTS[cls]
    return (INTERNAL_ERROR, 1)


# ==== 4. Utilities ===========================================================
# Small pure helpers used on both halves: signal names, durations, table
# formatting.  No I/O beyond what the caller hands in.


def parse_signal(value: str | int) -> int:
    """Return the signal number for ``SIGTERM``, ``TERM``, ``sigterm`` or ``15``.

    Raises ValueError with a readable message for anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        # kill(1)'s spellings too: -9, -KILL, and the realtime RTMIN+3 or RTMAX-1.
        text = str(value).strip().removeprefix("-")
        upper = text.upper().removeprefix("SIG") if text.isascii() else ""  # no 'ſIGTERM'
        realtime = re.fullmatch(r"RT(MIN|MAX)(?:([+-])(\d{1,3}))?", upper)
        if _is_decimal(text):
            if len(text) > 5:
                raise ValueError(f"no such signal number {text[:8]}...")
            number = int(text)
        elif realtime and hasattr(signal, "SIGRTMIN"):
            base = signal.SIGRTMIN if realtime[1] == "MIN" else signal.SIGRTMAX
            offset = int(realtime[3] or 0) * (-1 if realtime[2] == "-" else 1)
            number = int(base) + offset
            if not signal.SIGRTMIN <= number <= signal.SIGRTMAX:
                raise ValueError(f"{value!r} is outside SIGRTMIN..SIGRTMAX")
        else:
            member = getattr(signal.Signals, "SIG" + upper, None)
            if member is None:
                raise ValueError(f"expected a signal name or number, got {value!r}")
            return int(member)
    if number == 0:
        raise ValueError("signal 0 only tests that a process exists: it is not sent")
    if number not in signal.valid_signals():
        raise ValueError(f"no such signal number {number}")
    return number


def _is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and '١٢٣', which int() reads or not."""
    return text.isascii() and text.isdigit()


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        if hasattr(signal, "SIGRTMIN") and signal.SIGRTMIN < number < signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"signal {number}"


def describe_exit(code: int | None) -> str:
    """Turn a Popen-style return code into words (negative means a signal)."""
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal_name(-code)}"
    return f"exited with code {code}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def is_unit_name(name: object) -> bool:
    return isinstance(name, str) and re.fullmatch(UNIT_NAME_PATTERN, name) is not None


# ==== 5. Config ==============================================================
# Unit files are TOML (SPEC section 3), one unit per file named <unit>.toml.
# Parsing is strict: unknown keys and wrong types are ConfigErrors that name
# file, line, column and key.  One bad file never stops the others loading.


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """The ``[health]`` table: how to tell that a service works."""

    type: str
    endpoint: str = ""
    command: str = ""
    interval_ms: int = 10_000
    timeout_ms: int = 2_000
    retries: int = 3


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UnitConfig:
    """One unit file, validated; field names follow the TOML keys.

    ``kind`` is "service" or "target"; ``unit_class`` is the TOML ``class``.
    ``start_timeout_ms`` is None when the file does not set it: 30 s for a
    long-running service, no limit for a oneshot (as systemd does).
    """

    name: str
    kind: str = "service"
    path: str = ""
    exec: str = ""
    dir: str | None = None
    oneshot: bool = False
    status: str = "start"
    unit_class: str = "user"
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    group: str | None = None
    critical: bool = False
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    restart: str = "always"
    stop_signal: int = int(signal.SIGTERM)
    start_timeout_ms: int | None = None
    stop_timeout_ms: int = 10_000
    restart_delay_ms: int = 1_000
    restart_delay_max_ms: int = 60_000
    max_restarts: int = 0
    health: HealthConfig | None = None
    buffer_lines: int = 1_000

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.exec)

    @property
    def is_target(self) -> bool:
        return self.kind == "target"

    def effective_start_timeout_s(self) -> float | None:
        if self.start_timeout_ms is not None:
            return self.start_timeout_ms / 1000
        return None if self.oneshot else 30.0

    def edges(self) -> tuple[str, ...]:
        """Every unit this one waits for when starting (requires, wants, after)."""
        return self.requires + self.wants + self.after


_RESTART_POLICIES = ("always", "on-failure", "never")
_STATUSES = ("start", "stop", "ignore")
_CLASSES = ("user", "system")
_HEALTH_TYPES = ("http", "tcp", "exec")
_DEPENDENCY_KEYS = ("requires", "after", "wants", "conflicts")
_TABLES = {
    "service": (
        "name",
        "exec",
        "dir",
        "oneshot",
        "status",
        "class",
        "env",
        "user",
        "group",
        "critical",
    ),
    "target": ("name",),
    "dependencies": _DEPENDENCY_KEYS,
    "lifecycle": (
        "restart",
        "stop_signal",
        "start_timeout_ms",
        "stop_timeout_ms",
        "restart_delay_ms",
        "restart_delay_max_ms",
        "max_restarts",
    ),
    "health": ("type", "endpoint", "command", "interval_ms", "timeout_ms", "retries"),
    "logging": ("buffer_lines",),
    "xinet": (
        "name",
        "listen",
        "backend",
        "service",
        "connect_timeout",
        "idle_timeout",
        "single_connection",
    ),
}
#: The tables a [service] file may hold, in the order a misplaced key's hint looks.
_SERVICE_FILE_TABLES = ("service", "dependencies", "lifecycle", "health", "logging")
_TOML_POSITION_PATTERN = r"\s*\(at line (\d+), column (\d+)\)$"
_TOML_KEY_PATTERN = r"""\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*="""
_TOML_TABLE_PATTERN = r"\s*\[\s*([^\]\[]+?)\s*\]"


def _key_positions(text: str) -> dict[str, tuple[int, int, int]]:
    """Map ``table.key`` to (line, key column, value column), 1-based.

    A light scan, enough to point error messages at the right line: it knows
    table headers and ``key = value`` lines, which is what unit files use.
    """
    positions: dict[str, tuple[int, int, int]] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(_TOML_TABLE_PATTERN, line)
        if header and not line.lstrip().startswith("[["):
            table = header.group(1).replace(" ", "")
            positions.setdefault(table, (number, header.start(1) + 1, header.start(1) + 1))
            continue
        key = re.match(_TOML_KEY_PATTERN, line)
        if key:
            name = key.group(1).strip("\"'").replace(" ", "")
            dotted = f"{table}.{name}" if table else name
            value_col = key.end() + 1 + (len(line[key.end() :]) - len(line[key.end() :].lstrip()))
            positions.setdefault(dotted, (number, key.start(1) + 1, value_col))
    return positions


class _UnitParser:
    """Validate one parsed TOML document into a UnitConfig or XinetConfig.

    Keeps the file's text to point each error at its line and column.  A bad
    value is recorded and parsing goes on with the default, so that one pass
    reports every problem in the file; parse() raises the first with the
    others in its ``also``.
    """

    def __init__(self, path: str, text: str, name: str) -> None:
        self.path = path
        self.name = name
        self.text = text
        self.problems: list[ConfigError] = []
        self.tables: tuple[str, ...] = ()  # the tables this kind of file may hold

    @functools.cached_property
    def positions(self) -> dict[str, tuple[int, int, int]]:
        return _key_positions(self.text)  # only a file with a problem needs them

    def problem(self, key: str, reason: str, *, at_key: bool = False) -> None:
        """Record a problem with ``key``, pointing at the key or at its value."""
        line, key_col, value_col = self.positions.get(key, (None, None, None))
        if line is None and "." in key:
            line, key_col, value_col = self.positions.get(key.split(".")[0], (None, None, None))
        col = key_col if at_key else value_col
        self.problems.append(ConfigError(self.path, reason, key=key, line=line, col=col))

    def check(self) -> None:
        """Raise what was found so far, if anything: the first in the file, the rest in ``also``."""
        if self.problems:
            first, *rest = sorted(self.problems, key=lambda p: (p.line or 0, p.col or 0))
            first.also = tuple(rest)
            raise first

    def table(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.problem(name, "expected a table", at_key=True)
            return {}
        known = {}
        for key, item in value.items():
            if key in _TABLES[name]:
                known[key] = item
            else:
                home = [t for t in self.tables if key in _TABLES[t]]
                if home:
                    reason = f"unknown key here: it belongs in [{home[0]}]"
                else:
                    reason = f"unknown key (allowed: {', '.join(_TABLES[name])})"
                self.problem(f"{name}.{key}", reason, at_key=True)
        return known

    def string(self, table: dict[str, Any], dotted: str, default: str | None = None) -> str | None:
        value = table.get(dotted.split(".")[-1], default)
        if value is not None and not isinstance(value, str):
            self.problem(dotted, f"expected a string, got {value!r}")
            return default
        return value

    def choice(
        self, table: dict[str, Any], dotted: str, choices: tuple[str, ...], default: str
    ) -> str:
        value = table.get(dotted.split(".")[-1], default)
        if value not in choices:
            options = ", ".join(choices[:-1]) + " or " + choices[-1]
            self.problem(dotted, f"expected {options}, got {value!r}")
            return default
        return value

    def boolean(self, table: dict[str, Any], dotted: str, default: bool) -> bool:
        value = table.get(dotted.split(".")[-1], default)
        if not isinstance(value, bool):
            self.problem(dotted, f"expected true or false, got {value!r}")
            return default
        return value

    def integer(
        self,
        table: dict[str, Any],
        dotted: str,
        default: int | None,
        minimum: int = 0,
        maximum: int | None = None,
    ) -> int | None:
        if maximum is None and dotted.endswith("_ms"):
            maximum = _MAX_DURATION_MS
        value = table.get(dotted.split(".")[-1], default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(dotted, f"expected an integer, got {value!r}")
            return default
        if value < minimum:
            self.problem(dotted, f"expected an integer >= {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.problem(dotted, f"expected an integer <= {maximum:_}, got {value}")
            return default
        return value

    def names(self, table: dict[str, Any], dotted: str) -> tuple[str, ...]:
        value = table.get(dotted.split(".")[-1], [])
        if not isinstance(value, list):
            self.problem(dotted, f"expected a list of unit names, got {value!r}")
            return ()
        seen: set[Any] = set()
        unique: list[Any] = []
        for item in value:
            # Items may be unhashable (a list in the list): those are told apart by repr.
            identity = item if isinstance(item, str) else (type(item), repr(item))
            if identity in seen:
                continue
            seen.add(identity)
            unique.append(item)
            if not is_unit_name(item):
                self.problem(dotted, f"{item!r} is not a unit name")
        return tuple(item for item in unique if is_unit_name(item))

    def parse(self, data: dict[str, Any]) -> UnitConfig | XinetConfig:
        if "xinet" in data:
            return self.xinet(data)
        for key, value in data.items():
            if key in _TABLES:
                continue
            if isinstance(value, dict):
                self.problem(key, f"unknown table (allowed: {', '.join(_TABLES)})", at_key=True)
                continue
            home = [t for t in _SERVICE_FILE_TABLES if key in _TABLES[t]]
            where = f"it belongs in [{home[0]}]" if home else "every key goes under a table"
            self.problem(key, f"a key outside any table: {where}", at_key=True)
        kinds = [kind for kind in ("service", "target") if kind in data]
        if len(kinds) != 1:
            self.problems.append(
                ConfigError(self.path, "a unit file needs exactly one [service] or [target] table")
            )
            self.check()
        kind = kinds[0]
        if kind == "target":
            self.tables = ("target", "dependencies")
        else:
            self.tables = _SERVICE_FILE_TABLES
        head = self.table(data, kind)
        if not isinstance(data[kind], dict):
            self.check()  # nothing else can be said about such a file
        declared = self.string(head, f"{kind}.name")
        if declared is not None and declared != self.name:
            self.problem(
                f"{kind}.name", f"must equal the unit's name {self.name!r}, got {declared!r}"
            )
        deps = self.table(data, "dependencies")
        fields: dict[str, Any] = {"name": self.name, "kind": kind, "path": self.path}
        for key in _DEPENDENCY_KEYS:
            fields[key] = self.names(deps, f"dependencies.{key}")
        if kind == "target":
            for table in ("lifecycle", "health", "logging"):
                if table in data:
                    self.problem(table, "a target has no process, so no such table", at_key=True)
            self.check()
            return UnitConfig(**fields, status="start", exec="")
        fields.update(self.service_fields(head))
        fields.update(self.lifecycle_fields(self.table(data, "lifecycle"), fields["oneshot"]))
        if isinstance(data.get("health"), dict):
            fields["health"] = self.health(self.table(data, "health"))
        elif "health" in data:
            self.problem("health", "expected a table", at_key=True)
        logging_table = self.table(data, "logging")
        fields["buffer_lines"] = self.integer(
            logging_table, "logging.buffer_lines", 1000, minimum=1, maximum=_MAX_BUFFER_LINES
        )
        self.check()
        return UnitConfig(**fields)

    def service_fields(self, head: dict[str, Any]) -> dict[str, Any]:
        command = self.string(head, "service.exec")
        if not command:
            if command is not None or "exec" not in head:  # else: its type was reported
                self.problem("service.exec", "required: the command line to run", at_key=True)
        else:
            try:
                if not shlex.split(command):
                    self.problem("service.exec", "the command line is empty")
            except ValueError as error:
                self.problem("service.exec", f"cannot split the command line ({error})")
        env = head.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in env.items()
        ):
            self.problem("service.env", 'expected a table of NAME = "value"')
            env = {}
        for key, value in env.items():
            if not key or "=" in key or "\0" in key:
                self.problem("service.env", f"{key!r} is not an environment variable name")
            elif isinstance(value, str) and "\0" in value:
                self.problem("service.env", f"the value of {key} holds a NUL character")
        for key in ("exec", "dir", "user", "group"):
            if "\0" in str(head.get(key, "")):
                self.problem(
                    f"service.{key}", "holds a NUL character (no command, path or name can)"
                )
        return {
            "exec": command,
            "dir": self.string(head, "service.dir"),
            "oneshot": self.boolean(head, "service.oneshot", False),
            "status": self.choice(head, "service.status", _STATUSES, "start"),
            "unit_class": self.choice(head, "service.class", _CLASSES, "user"),
            "env": tuple((k, _env_text(v)) for k, v in env.items()),
            "user": self.string(head, "service.user"),
            "group": self.string(head, "service.group"),
            "critical": self.boolean(head, "service.critical", False),
        }

    def lifecycle_fields(self, table: dict[str, Any], oneshot: bool) -> dict[str, Any]:
        stop_signal = table.get("stop_signal", "SIGTERM")
        try:
            stop_signal = parse_signal(stop_signal)
        except ValueError as error:
            self.problem("lifecycle.stop_signal", str(error))
        known = len(self.problems)
        fields = {
            "restart": self.choice(
                table, "lifecycle.restart", _RESTART_POLICIES, "never" if oneshot else "always"
            ),
            "stop_signal": stop_signal,
            "start_timeout_ms": self.integer(table, "lifecycle.start_timeout_ms", None, minimum=1),
            "stop_timeout_ms": self.integer(table, "lifecycle.stop_timeout_ms", 10_000),
            "restart_delay_ms": self.integer(table, "lifecycle.restart_delay_ms", 1_000),
            "restart_delay_max_ms": self.integer(table, "lifecycle.restart_delay_max_ms", 60_000),
            "max_restarts": self.integer(table, "lifecycle.max_restarts", 0),
        }
        # Only between two values as written: a bad one was replaced by its default.
        delays_as_written = not any(
            p.key in ("lifecycle.restart_delay_ms", "lifecycle.restart_delay_max_ms")
            for p in self.problems[known:]
        )
        if delays_as_written and fields["restart_delay_max_ms"] < fields["restart_delay_ms"]:
            self.problem(
                "lifecycle.restart_delay_max_ms",
                f"must be >= restart_delay_ms ({fields['restart_delay_ms']}), "
                f"got {fields['restart_delay_max_ms']}",
            )
        return fields

    def health(self, table: dict[str, Any]) -> HealthConfig | None:
        if "type" not in table:
            self.problem("health.type", "required: http, tcp or exec", at_key=True)
            return None
        known = len(self.problems)
        kind = self.choice(table, "health.type", _HEALTH_TYPES, "http")
        endpoint = self.string(table, "health.endpoint", "") or ""
        command = self.string(table, "health.command", "") or ""
        if len(self.problems) == known:  # else the type, or what it needs, is unknown
            self.health_target(kind, endpoint, command)
        return HealthConfig(
            type=kind,
            endpoint=endpoint,
            command=command,
            interval_ms=self.integer(table, "health.interval_ms", 10_000, minimum=1),
            timeout_ms=self.integer(table, "health.timeout_ms", 2_000, minimum=1),
            retries=self.integer(table, "health.retries", 3, minimum=1),
        )

    def health_target(self, kind: str, endpoint: str, command: str) -> None:
        """Check what a probe of type ``kind`` needs: an endpoint or a command."""
        if kind in ("http", "tcp") and not endpoint:
            example = "an http:// URL" if kind == "http" else "host:port"
            self.problem("health.endpoint", f"required for type {kind!r}: {example}", at_key=True)
        elif kind == "http" and not re.match(r"https?://[^/]+", endpoint):
            self.problem(
                "health.endpoint", f"expected an http:// or https:// URL, got {endpoint!r}"
            )
        elif kind == "tcp":
            try:
                split_host_port(endpoint)
            except ValueError as error:
                self.problem("health.endpoint", str(error))
        elif kind == "exec" and not command:
            self.problem("health.command", "required for type 'exec': a command line", at_key=True)
        elif kind == "exec":
            try:
                empty = not shlex.split(command)
            except ValueError:
                empty = True
            if empty:
                self.problem("health.command", f"expected a command line, got {command!r}")

    def xinet(self, data: dict[str, Any]) -> XinetConfig:
        for key in data:
            if key != "xinet":
                self.problem(key, "a file with [xinet] holds nothing else", at_key=True)
        table = self.table(data, "xinet")
        if not isinstance(data["xinet"], dict):
            self.check()
        declared = self.string(table, "xinet.name")
        if declared is not None and declared != self.name:
            self.problem(
                "xinet.name", f"must equal the proxy's name {self.name!r}, got {declared!r}"
            )
        listen = table.get("listen")
        try:
            config = xinet_config(
                name=self.name,
                listen=[listen] if isinstance(listen, str) else listen,
                backend=table.get("backend"),
                service=table.get("service"),
                connect_timeout=table.get("connect_timeout", 30),
                idle_timeout=table.get("idle_timeout", 0),
                single_connection=table.get("single_connection", False),
                path=self.path,
            )
        except _FieldError as error:
            for field in (error, *error.others):
                self.problem(f"xinet.{field.key}", field.reason)
        self.check()
        return config


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise ValueError with the reason."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s]+):(\d+)", text or "")
    if not match:
        raise ValueError(f"expected host:port, got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class XinetConfig:
    """One socket-activation proxy: listen addresses, backend, the unit it starts."""

    name: str
    listen: tuple[str, ...]
    backend: str
    service: str
    connect_timeout_s: float = 30.0
    idle_timeout_s: float = 0.0
    single_connection: bool = False
    path: str = ""  # the declaring file; empty for a proxy set over RPC


class _FieldError(Exception):
    """One bad field of a proxy definition (turned into ConfigError or UsageError)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
        self.others: list[_FieldError] = []  # the definition's other bad fields


def parse_address(text: str) -> tuple[str, Any]:
    """Parse ``host:port``, ``tcp:host:port``, ``[v6]:port`` or ``unix:/path``.

    Returns ("tcp", (host, port)) or ("unix", path); raises ValueError.
    """
    if not isinstance(text, str):
        # ValueError, not TypeError: one error type for every bad value.
        raise ValueError(f"expected an address string, got {text!r}")  # noqa: TRY004
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file name or host can hold it
        raise ValueError(f"expected an address, got {text!r}") from None
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/") or "\0" in path:
            raise ValueError(f"expected unix:/absolute/path, got {text!r}")
        return "unix", path
    host, port = split_host_port(text.removeprefix("tcp:"))
    return "tcp", (host, port)


def xinet_config(
    *,
    name: object,
    listen: object,
    backend: object,
    service: object,
    connect_timeout: object = 30,
    idle_timeout: object = 0,
    single_connection: object = False,
    path: str = "",
) -> XinetConfig:
    """Validate a proxy definition; raise _FieldError naming the bad field.

    Every bad field is found: the first is raised with the others in its ``others``.
    """
    problems: list[_FieldError] = []
    if not is_unit_name(name):
        problems.append(_FieldError("name", f"{name!r} is not a valid name"))
    if listen is None or (isinstance(listen, list | tuple) and not listen):
        problems.append(_FieldError("listen", "required: one or more addresses"))
        listen = ()
    elif not isinstance(listen, list | tuple):
        problems.append(
            _FieldError("listen", f"expected an address or a list of them, got {listen!r}")
        )
        listen = ()
    if backend is None:
        problems.append(_FieldError("backend", "required: the address the service listens on"))
    addresses: dict[Any, str] = {}  # parsed address -> as first written
    repeated: list[str] = []
    bad: set[tuple[str, str]] = set()  # each bad value is reported once
    for field, values in (
        ("listen", list(listen)),
        ("backend", [] if backend is None else [backend]),
    ):
        for value in values:
            try:
                parsed = parse_address(value)  # type: ignore[arg-type]
            except ValueError as error:
                if (field, repr(value)) not in bad:
                    bad.add((field, repr(value)))
                    problems.append(_FieldError(field, str(error)))
                continue
            if field != "listen":
                continue
            if parsed in addresses:
                first = addresses[parsed]
                repeated.append(str(value) if value == first else f"{value} (as {first})")
            else:
                addresses[parsed] = str(value)
    if repeated:
        problems.append(_FieldError("listen", f"listed twice: {', '.join(repeated)}"))
    if service is None:
        problems.append(_FieldError("service", "required: the unit to start"))
    elif not is_unit_name(service):
        problems.append(_FieldError("service", f"expected a unit name, got {service!r}"))
    for field, value, zero_allowed in (
        ("connect_timeout", connect_timeout, False),
        ("idle_timeout", idle_timeout, True),
    ):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < 0 or (not zero_allowed and not value):  # type: ignore[operator]
            least = ">= 0" if zero_allowed else "> 0"
            problems.append(_FieldError(field, f"expected seconds {least}, got {value!r}"))
    if not isinstance(single_connection, bool):
        problems.append(
            _FieldError("single_connection", f"expected true or false, got {single_connection!r}")
        )
    if problems:
        problems[0].others = problems[1:]
        raise problems[0]
    return XinetConfig(
        name=name,  # type: ignore[arg-type]
        listen=tuple(listen),  # type: ignore[arg-type]
        backend=backend,  # type: ignore[arg-type]
        service=service,  # type: ignore[arg-type]
        connect_timeout_s=float(connect_timeout),  # type: ignore[arg-type]
        idle_timeout_s=float(idle_timeout),  # type: ignore[arg-type]
        single_connection=single_connection,
        path=path,
    )


def parse_unit_text(text: str, path: str, name: str) -> UnitConfig | XinetConfig:
    """Parse and validate one unit's TOML text.

    ``path`` is only used in messages; ``name`` is the unit's name (the file
    stem).  Raises ConfigError naming the file, line, column and key, and
    whether the text is a proxy's: an ``[xinet]`` table and no ``[service]``
    or ``[target]`` (a unit file with a stray table stays a unit's).
    """
    try:
        return _parse_unit_text(text, path, name)
    except ConfigError as error:
        headers = re.findall(r"^\s*\[\s*(xinet|service|target)\s*\]", text, re.MULTILINE)
        error.in_proxy_file = "xinet" in headers and not {"service", "target"} & set(headers)
        raise


#: Parts of a dotted key or table name (``a.b.c`` has 3); unit files use 3 at most.
_MAX_KEY_PARTS = 64


def _parse_unit_text(text: str, path: str, name: str) -> UnitConfig | XinetConfig:
    import tomllib

    if not is_unit_name(name):
        raise ConfigError(
            path, f"{name!r} is not a unit name (letters, digits, '_.@-', up to 64 characters)"
        )
    # tomllib takes time quadratic in a dotted key's length: a 40 KB one took 8 s.
    part = r"""(?:[\w-]+|"[^"\n]*"|'[^'\n]*')\s*\.\s*"""
    if re.search(rf"^\s*\[*\s*(?:{part}){{{_MAX_KEY_PARTS}}}", text, re.MULTILINE):
        raise ConfigError(path, f"a dotted key or table name has over {_MAX_KEY_PARTS} parts")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = re.search(_TOML_POSITION_PATTERN, message)
        line = col = None
        if found:
            line, col = int(found.group(1)), int(found.group(2))
            message = message[: found.start()]
        elif message.endswith(" (at end of document)"):
            # tomllib gives no position here: the end is after the last character.
            lines = text.split("\n")
            line, col = len(lines), len(lines[-1]) + 1
            message = message.removesuffix(" (at end of document)")
        message = message[:1].lower() + message[1:]
        # tomllib names a table as a Python tuple: ('service',) is [service] to a reader.
        message = re.sub(r"\((?:(?:'[^']*'|\"[^\"]*\"),?\s*)+\)", _toml_table_name, message)
        raise ConfigError(path, f"TOML syntax error: {message}", line=line, col=col) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise ConfigError(path, "TOML nested too deeply to read") from None
    except ValueError:  # not a syntax error: an integer longer than Python reads
        limit = sys.get_int_max_str_digits()
        raise ConfigError(path, f"a number has more than {limit} digits") from None
    return _UnitParser(path, text, name).parse(data)


def _declared_name(text: str) -> str:
    """Return [service].name or [target].name from TOML text, for add-service."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        parse_unit_text(text, "<add-service>", "unnamed")  # raises with line and column
        raise
    for kind in ("service", "target", "xinet"):
        table = data.get(kind)
        if isinstance(table, dict) and isinstance(table.get("name"), str):
            return table["name"]
    raise UsageError(
        "add-service needs the unit's name: pass one (--name), set [service].name (or "
        "[target].name), or add a file named <name>.toml"
    )


def _toml_table_name(found: re.Match[str]) -> str:
    """A table's key tuple, as tomllib prints it, written as TOML: [a."b.c"]."""
    import ast

    try:
        keys = ast.literal_eval(found[0])
    except (ValueError, SyntaxError):
        return found[0]
    bare = r"[A-Za-z0-9_-]+"
    return "[" + ".".join(k if re.fullmatch(bare, k) else json.dumps(k) for k in keys) + "]"


def load_unit_file(path: str, *, unit_class: str | None = None) -> UnitConfig | XinetConfig:
    """Read and validate one ``<name>.toml`` file.

    ``unit_class`` forces the class (the system directory forces "system").
    Raises ConfigError for unreadable or invalid files.
    """
    name = os.path.basename(path).removesuffix(".toml")
    try:
        # Non-blocking, and regular files only: a FIFO or a kernel pipe file
        # (tracefs) would hold the daemon in read() for good.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(path, "not a regular file")
            raw = os.read(fd, MAX_UNIT_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as error:
        raise ConfigError(path, f"cannot read ({error.strerror})") from None
    if len(raw) > MAX_UNIT_FILE_BYTES:
        raise ConfigError(path, f"larger than {MAX_UNIT_FILE_BYTES // 1024} KiB: not a unit file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    config = parse_unit_text(text, path, name)
    if unit_class and isinstance(config, UnitConfig) and config.unit_class != unit_class:
        config = dataclasses.replace(config, unit_class=unit_class)
    return config


def load_config_dir(
    directory: str, *, unit_class: str | None = None
) -> tuple[dict[str, UnitConfig], dict[str, ConfigError]]:
    """Load every unit ``*.toml`` in a directory (proxy files are left out).

    Returns (units by name, errors by unit name or file stem).  A missing
    directory is an empty one; a broken file is one error, not a failure.
    """
    units, _, errors, _ = load_config_dirs([(directory, unit_class)])
    return units, errors


def load_config_dirs(
    directories: list[tuple[str, str | None]],
) -> tuple[
    dict[str, UnitConfig], dict[str, XinetConfig], dict[str, ConfigError], dict[str, ConfigError]
]:
    """Load several (directory, forced class) in order: units, proxies, and the errors
    of unit files and of proxy files (those holding an ``[xinet]`` table).

    A name defined twice is an error on the later file.
    """
    units: dict[str, UnitConfig] = {}
    proxies: dict[str, XinetConfig] = {}
    errors: dict[str, ConfigError] = {}
    proxy_errors: dict[str, ConfigError] = {}
    for directory, unit_class in directories:
        try:
            entries = sorted(entry for entry in os.listdir(directory) if entry.endswith(".toml"))
        except FileNotFoundError:
            continue
        except OSError as error:
            errors[directory] = ConfigError(directory, f"cannot list directory ({error.strerror})")
            continue
        for entry in entries:
            path = os.path.join(directory, entry)
            name = entry.removesuffix(".toml")
            if not os.path.isfile(path):
                # Hidden entries are editors' (emacs locks are dangling links);
                # anything else is a unit that will not load, so say why.
                if not entry.startswith("."):
                    why = "not a regular file"
                    if os.path.islink(path):
                        what = "something that is not a regular file"
                        why = "a link to " + (what if os.path.exists(path) else "nothing")
                    errors.setdefault(name, ConfigError(path, f"{why}: no unit loaded from it"))
                continue
            earlier = (
                units.get(name) or proxies.get(name) or errors.get(name) or proxy_errors.get(name)
            )
            if earlier is not None:
                errors.setdefault(
                    f"{name} ({path})",
                    ConfigError(path, f"{name!r} is already defined in {earlier.path}"),
                )
                continue
            try:
                config = load_unit_file(path, unit_class=unit_class)
            except ConfigError as error:
                (proxy_errors if error.in_proxy_file else errors)[name] = error
                continue
            if isinstance(config, XinetConfig):
                proxies[name] = config
            else:
                units[name] = config
    return units, proxies, errors, proxy_errors


# ==== 6. Graph ===============================================================
# Pure functions over {name: UnitConfig}: no I/O, no state.  Every one runs
# in time linear in units + edges.  "Edges" are requires, wants and after:
# the relations that order a start; conflicts only exclude.


def strongly_connected(units: dict[str, UnitConfig]) -> dict[str, int]:
    """Return a component id per unit (Tarjan's algorithm, iterative).

    Two units share an id exactly when each can reach the other through
    ordering edges; a component of more than one unit, or a unit with an
    edge to itself, is a cycle.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    component: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = itertools.count()
    components = itertools.count()
    for root, root_config in units.items():
        if root in index:
            continue
        work = [(root, iter(root_config.edges()))]
        index[root] = low[root] = next(counter)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in units:
                    continue
                if child not in index:
                    index[child] = low[child] = next(counter)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(units[child].edges())))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    number = next(components)
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component[member] = number
                        if member == node:
                            break
    return component


def find_cycles(units: dict[str, UnitConfig]) -> dict[str, str]:
    """Return, for each unit on a dependency cycle, the cycle spelled out.

    The text starts and ends at that unit, e.g. ``a → b → a``.
    """
    component = strongly_connected(units)
    sizes = collections.Counter(component.values())
    cycles: dict[str, str] = {}
    for name, config in units.items():
        group = component[name]
        if sizes[group] == 1 and name not in config.edges():
            continue
        # Breadth-first search inside the component back to the start.
        previous: dict[str, str] = {}
        queue = collections.deque([name])
        found = False
        while queue and not found:
            node = queue.popleft()
            for child in units[node].edges():
                if child not in units or component.get(child) != group:
                    continue
                if child == name:
                    previous[name] = node
                    found = True
                    break
                if child not in previous:
                    previous[child] = node
                    queue.append(child)
        path = [name]
        node = previous[name]
        while node != name:
            path.append(node)
            node = previous[node]
        path.append(name)
        path[1:-1] = reversed(path[1:-1])
        cycles[name] = " → ".join(path)
    return cycles


def reverse_edges(units: dict[str, UnitConfig]) -> dict[str, set[str]]:
    """Map every named unit (defined or not) to the units that point at it."""
    dependents: dict[str, set[str]] = collections.defaultdict(set)
    for name, config in units.items():
        for target in config.edges() + config.conflicts:
            dependents[target].add(name)
    return dependents


def requiring_closure(names: list[str], units: dict[str, UnitConfig]) -> set[str]:
    """Return the given units plus every unit that requires them, transitively."""
    return set(requiring_paths(names, units))


def requiring_paths(names: list[str], units: dict[str, UnitConfig]) -> dict[str, str]:
    """Map the given units and every unit that requires them to the unit it was reached from.

    A given name maps to itself; a dependent maps to the unit it requires on
    its shortest path to a given name, so following the map spells out why.
    """
    required_by: dict[str, list[str]] = collections.defaultdict(list)
    for name, config in units.items():
        for target in config.requires:
            required_by[target].append(name)
    via = {name: name for name in names}
    queue = collections.deque(names)
    while queue:
        member = queue.popleft()
        for dependent in required_by.get(member, ()):
            if dependent not in via:
                via[dependent] = member
                queue.append(dependent)
    return via


def pulled_in(names: list[str], units: dict[str, UnitConfig]) -> list[str]:
    """Return the given units plus what they require or want, transitively.

    Undefined names are left out (the gate reports them); ``status=ignore``
    units are never pulled in.  Order: breadth-first from the given names.
    """
    return list(pulled_in_from(names, units))


def pulled_in_from(names: list[str], units: dict[str, UnitConfig]) -> dict[str, str]:
    """Like pulled_in, mapping each unit to the given name that pulled it in."""
    origin = {name: name for name in names if name in units}
    queue = collections.deque(origin)
    while queue:
        member = queue.popleft()
        config = units[member]
        for target in config.requires + config.wants:
            if target in units and target not in origin and units[target].status != "ignore":
                origin[target] = origin[member]
                queue.append(target)
    return origin


def stop_waits(names: set[str], units: dict[str, UnitConfig]) -> dict[str, set[str]]:
    """For each unit in ``names``, the units in ``names`` that must stop first.

    A unit stops after everything in the set that depends on it (requires,
    wants or after).  Edges inside a cycle are dropped so that a cycle
    cannot deadlock a shutdown.
    """
    component = strongly_connected({n: units[n] for n in names if n in units})
    waits: dict[str, set[str]] = {name: set() for name in names}
    for name in names:
        config = units.get(name)
        if config is None:
            continue
        for target in config.edges():
            if target in waits and target != name and component.get(target) != component.get(name):
                waits[target].add(name)
    return waits


def dependency_tree(units: dict[str, UnitConfig], root: str | None = None) -> list[dict[str, Any]]:
    """Return the requires/wants/after forest as nested dicts.

    With ``root``, the tree under that unit; otherwise one tree per unit that
    nothing depends on, then one per unit still not shown (the members of a
    cycle that nothing outside it points at).  Units seen twice on one path
    are marked, not walked.  A unit with dependencies is walked once: met
    again, it is marked ``repeated`` (its subtree is shown above), so the
    forest has one node per unit and edge, not one per path (shared
    dependencies would make those exponential).  Below _TREE_MAX_DEPTH a
    node is marked ``truncated``.
    """
    shown: set[str] = set()
    walked: set[str] = set()

    def build(name: str, relation: str, path: frozenset[str]) -> dict[str, Any]:
        shown.add(name)
        node: dict[str, Any] = {"name": name, "relation": relation, "children": []}
        config = units.get(name)
        if config is None:
            node["undefined"] = True
            return node
        if name in path:
            node["cycle"] = True
            return node
        if not config.edges():
            return node
        if name in walked:
            node["repeated"] = True
            return node
        if len(path) >= _TREE_MAX_DEPTH:
            node["truncated"] = True
            return node
        walked.add(name)
        for kind in ("requires", "wants", "after"):
            for child in getattr(config, kind):
                node["children"].append(build(child, kind, path | {name}))
        return node

    if root is not None:
        return [build(root, "root", frozenset())]
    pointed_at = {t for c in units.values() for t in c.edges()}
    forest = [build(name, "root", frozenset()) for name in sorted(units) if name not in pointed_at]
    for name in sorted(units):
        if name not in shown:
            forest.append(build(name, "root", frozenset()))
    return forest


#: How deep ``zinit tree`` goes (each level is a call here, in the JSON coder and
#: in the CLI, all bounded by Python's recursion limit).
_TREE_MAX_DEPTH = 100


# ==== 7. States ==============================================================
# The seven states of SPEC section 4, the transitions allowed between them,
# and the frozen snapshot that leaves a unit's greenlet for RPC replies.
# Service._set_state (section 15) is the only writer of a unit's state.


class State(enum.StrEnum):
    """A unit's state; the value is the wire and display string."""

    INACTIVE = "Inactive"  # not running, not asked to run
    BLOCKED = "Blocked"  # asked to run, waiting for dependencies
    STARTING = "Starting"  # spawned; waiting for a health check or a oneshot's end
    RUNNING = "Running"
    STOPPING = "Stopping"  # stop signal sent, waiting for the exit
    EXITED = "Exited"  # ended cleanly: a oneshot's success, or a stop
    FAILED = "Failed"  # spawn error, bad exit, timeout, health failure, config error


_S = State
#: from-state -> the states it may move to.  A self-loop only updates the reason.
_ALLOWED: dict[State, frozenset[State]] = {
    _S.INACTIVE: frozenset({_S.INACTIVE, _S.BLOCKED, _S.STARTING, _S.RUNNING, _S.FAILED}),
    _S.BLOCKED: frozenset({_S.BLOCKED, _S.STARTING, _S.RUNNING, _S.INACTIVE, _S.FAILED}),
    _S.STARTING: frozenset({_S.STARTING, _S.RUNNING, _S.STOPPING, _S.EXITED, _S.FAILED}),
    _S.RUNNING: frozenset({_S.RUNNING, _S.STOPPING, _S.EXITED, _S.FAILED, _S.BLOCKED}),
    _S.STOPPING: frozenset({_S.STOPPING, _S.EXITED, _S.FAILED}),
    _S.EXITED: frozenset({_S.EXITED, _S.BLOCKED, _S.STARTING, _S.RUNNING, _S.INACTIVE, _S.FAILED}),
    _S.FAILED: frozenset({_S.FAILED, _S.BLOCKED, _S.STARTING, _S.RUNNING, _S.INACTIVE, _S.EXITED}),
}
#: States in which a unit has no process and nothing is pending.
AT_REST = frozenset({_S.INACTIVE, _S.EXITED, _S.FAILED})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UnitStatus:
    """What ``zinit status`` shows of one unit, taken at one instant."""

    name: str
    kind: str
    state: State
    pid: int | None
    unit_class: str
    status: str
    restarts: int
    exit_code: int | None
    health: str | None
    uptime_s: float | None
    reason: str
    oneshot: bool = False
    next_restart_s: float | None = None
    warnings: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _UNIT_STATUS_FIELDS}
        data["class"] = data.pop("unit_class")
        data["state"] = str(self.state)
        for key in ("warnings", "requires", "after", "wants", "conflicts"):
            data[key] = list(data[key])
        return data


_UNIT_STATUS_FIELDS = tuple(field.name for field in dataclasses.fields(UnitStatus))


# ==== 8. Protocol ============================================================
# JSON-RPC 2.0, one JSON text per line, over a unix stream socket.  Requests
# carry params by name or by position; streams (log follow, events) answer
# once, then send notifications ("log", "event") on the same connection.
# _METHODS is the one list of methods: the server binds rpc_<name> handlers
# from it, the client wraps each, and rpc.discover describes it.


@dataclasses.dataclass(frozen=True, slots=True)
class _Param:
    """One parameter of an RPC method, as rpc.discover describes it."""

    name: str
    schema: dict[str, Any]
    required: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class _Method:
    """One RPC method: its name, summary, parameters and result schema."""

    name: str
    summary: str
    params: tuple[_Param, ...] = ()
    result: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "object"})

    @property
    def handler_name(self) -> str:
        return "rpc_" + self.name.replace(".", "_")


_NAME = _Param("name", {"type": "string"})
_OPTIONAL_NAME = _Param("name", {"type": ["string", "null"]}, required=False)
_LINES = _Param("lines", {"type": ["integer", "null"], "minimum": 0}, required=False)
_UNIT = {"type": "object", "description": "a unit's status (see `status`)"}
_OK = {"type": "object", "properties": {"ok": {"type": "boolean"}}}

_METHODS: tuple[_Method, ...] = (
    _Method("ping", "Answer at once; shows the daemon is alive", result={"type": "object"}),
    _Method(
        "list",
        "Every unit with its status; with_usage adds cpu_percent and rss_bytes (psutil)",
        (_Param("with_usage", {"type": ["boolean", "null"]}, required=False),),
        {"type": "array", "items": _UNIT},
    ),
    _Method("status", "One unit's status", (_NAME,), _UNIT),
    _Method("start", "Start a unit and what it requires or wants", (_NAME,), _OK),
    _Method(
        "stop", "Stop a unit after the units that require it; returns when stopped", (_NAME,), _OK
    ),
    _Method("restart", "Restart a unit and the units that require it", (_NAME,), _OK),
    _Method(
        "kill",
        "Send a signal to a unit's process group",
        (_NAME, _Param("signal", {"type": ["string", "integer"]}, required=False)),
        _OK,
    ),
    _Method(
        "logs",
        "Recent log lines of one unit or of all",
        (_OPTIONAL_NAME, _LINES),
        {"type": "array"},
    ),
    _Method(
        "logs.follow",
        "Recent log lines, then each new one as a 'log' notification",
        (_OPTIONAL_NAME, _LINES),
    ),
    _Method("why", "Why a unit is in its state: reason, blockers, warnings, history", (_NAME,)),
    _Method(
        "tree", "The dependency tree of one unit or of all", (_OPTIONAL_NAME,), {"type": "array"}
    ),
    _Method("reload", "Re-read the config directories and apply the difference"),
    _Method(
        "add_service",
        "Write a new unit file from TOML text, load it, and say what state it reached",
        (_Param("toml", {"type": "string"}), _OPTIONAL_NAME),
    ),
    _Method("remove_service", "Stop a unit, delete its file and forget it", (_NAME,)),
    _Method(
        "start_all",
        "Start every user-class unit; says which started, which failed (not spawned, or "
        "blocked for good) and which yielded to a conflicting unit",
        result={
            "type": "object",
            "properties": {
                "started": {"type": "array", "items": {"type": "string"}},
                "failed": {"type": "object", "additionalProperties": {"type": "string"}},
                "not_started": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    ),
    _Method("stop_all", "Stop every user-class unit; lists those there was something to stop"),
    _Method(
        "delete_all",
        "Stop and delete every user-class unit (only those in names, if given)",
        (_Param("names", {"type": ["array", "null"], "items": {"type": "string"}}, False),),
    ),
    _Method("shutdown", "Stop every unit in reverse dependency order, then exit"),
    _Method("poweroff", "Ordered shutdown, then power off (needs zinit-pid1)"),
    _Method("reboot", "Ordered shutdown, then reboot (needs zinit-pid1)"),
    _Method("check", "Whether every status=start unit is Running or Exited with success"),
    _Method("events.subscribe", "Each state change as an 'event' notification"),
    _Method("debug_state", "The whole graph and every unit's internals"),
    _Method("debug_procs", "The process tree of a unit", (_NAME,)),
    _Method(
        "xinet.set",
        "Create or replace a socket-activation proxy",
        (
            _NAME,
            _Param("listen", {"type": "array", "items": {"type": "string"}}),
            _Param("backend", {"type": "string"}),
            _Param("service", {"type": "string"}),
            _Param(
                "connect_timeout",
                {"type": ["number", "null"], "exclusiveMinimum": 0},
                required=False,
            ),
            _Param("idle_timeout", {"type": ["number", "null"], "minimum": 0}, required=False),
            _Param("single_connection", {"type": ["boolean", "null"]}, required=False),
        ),
    ),
    _Method("xinet.delete", "Close a proxy's listeners and forget it", (_NAME,)),
    _Method("xinet.list", "Every proxy with its status", result={"type": "array"}),
    _Method("xinet.status", "One proxy's status, or every proxy's", (_OPTIONAL_NAME,)),
    _Method("rpc.discover", "This API as an OpenRPC document"),
)
_METHOD_TABLE: dict[str, _Method] = {method.name: method for method in _METHODS}


class _RawJson(str):
    """A result that is JSON text already, spliced into its reply as it is."""


def _to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _encode_message(message: dict[str, Any] | list[Any]) -> str:
    if isinstance(message, list):
        return "[" + ",".join(map(_encode_message, message)) + "]"
    result = message.get("result")
    if isinstance(result, _RawJson):
        return f'{{"jsonrpc":"2.0","id":{_to_json(message.get("id"))},"result":{result}}}'
    return _to_json(message)


def encode_frame(message: dict[str, Any] | list[Any]) -> bytes:
    """Serialise one JSON-RPC message (or batch) as a newline-terminated line."""
    text = _encode_message(message)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        # A string that is no valid Unicode (a file name's undecodable bytes, a lone
        # surrogate a client sent) can only be inside a JSON string: there its
        # backslash escape is the JSON escape of the same character.
        return text.encode("utf-8", "backslashreplace") + b"\n"


def _request_frame(
    request_id: int, method: str, params: dict[str, Any] | list[Any] | None
) -> bytes:
    """One request as a frame; raises UsageError if the daemon would refuse its size."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        request["params"] = params
    frame = encode_frame(request)
    if len(frame) > MAX_FRAME_BYTES:
        raise UsageError(
            f"{method}: the request is {len(frame)} bytes, over the daemon's limit of "
            f"{MAX_FRAME_BYTES} bytes per message"
        )
    return frame


def _answers(message: dict[str, Any], request_id: int) -> bool:
    """Whether a reply belongs to the request: its id, or an error the daemon could not tie
    to any id (the client has one request in flight)."""
    return message["id"] == request_id or (message["id"] is None and "error" in message)


def openrpc_document() -> dict[str, Any]:
    """Describe every method in OpenRPC 1.2 form (what ``rpc.discover`` returns)."""
    return {
        "openrpc": "1.2.6",
        "info": {"title": "zinit", "version": __version__},
        "methods": [
            {
                "name": method.name,
                "summary": method.summary,
                "params": [
                    {"name": p.name, "required": p.required, "schema": p.schema}
                    for p in method.params
                ],
                "result": {"name": "result", "schema": method.result},
            }
            for method in _METHODS
        ],
    }


def _error_from_reply(error: dict[str, Any]) -> ZinitError:
    """Rebuild the ZinitError subclass that the daemon's error code stands for."""
    code = error.get("code", INTERNAL_ERROR)
    message = str(error.get("message", "unknown error"))
    data = error.get("data")
    cls = _CODE_TO_ERROR.get(code)
    result: ZinitError
    if cls is UnitNotFound:
        result = UnitNotFound(data.get("name", "?") if isinstance(data, dict) else "?")
    elif cls is ConfigError and isinstance(data, dict) and "file" in data:
        result = ConfigError.from_dict({"reason": message, **data})
    elif cls is not None and cls is not ConfigError:
        result = cls(message)
    else:
        result = RpcError(code, message, data)
    result.message = message
    result.code = code  # type: ignore[attr-defined]
    return result


# ==== 9. Client ==============================================================
# ZinitClient (blocking, stdlib sockets) and AsyncZinitClient (asyncio).  Both
# inherit the named calls of _Calls, which only build (method, params); the
# subclass's _call sends it.  Notifications that arrive while a reply is
# awaited are kept for the stream iterators.


class _Calls:
    """One wrapper per RPC method, shared by the blocking and async clients."""

    def _call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def ping(self) -> Any:
        return self._call("ping")

    def list(self, with_usage: bool = False) -> Any:
        """Every unit's status, as a list of dicts.

        ``with_usage`` adds ``cpu_percent`` (since the previous such request; None
        the first time) and ``rss_bytes`` of each unit's process and its children.
        """
        return self._call("list", {"with_usage": True} if with_usage else None)

    def status(self, name: str) -> Any:
        return self._call("status", {"name": name})

    def start(self, name: str) -> Any:
        return self._call("start", {"name": name})

    def stop(self, name: str) -> Any:
        return self._call("stop", {"name": name})

    def restart(self, name: str) -> Any:
        return self._call("restart", {"name": name})

    def kill(self, name: str, signal: str | int = "SIGTERM") -> Any:
        return self._call("kill", {"name": name, "signal": signal})

    def logs(self, name: str | None = None, lines: int | None = None) -> Any:
        return self._call("logs", {"name": name, "lines": lines})

    def why(self, name: str) -> Any:
        return self._call("why", {"name": name})

    def tree(self, name: str | None = None) -> Any:
        return self._call("tree", {"name": name})

    def reload(self) -> Any:
        return self._call("reload")

    def add_service(self, toml: str, name: str | None = None) -> Any:
        return self._call("add_service", {"toml": toml, "name": name})

    def remove_service(self, name: str) -> Any:
        return self._call("remove_service", {"name": name})

    def start_all(self) -> Any:
        return self._call("start_all")

    def stop_all(self) -> Any:
        return self._call("stop_all")

    def delete_all(self, names: list[str] | None = None) -> Any:
        """Stop and delete every user-class unit; only those in ``names`` if given
        (a unit added meanwhile stays)."""
        return self._call("delete_all", {"names": names})

    def shutdown(self) -> Any:
        return self._call("shutdown")

    def poweroff(self) -> Any:
        return self._call("poweroff")

    def reboot(self) -> Any:
        return self._call("reboot")

    def check(self) -> Any:
        return self._call("check")

    def debug_state(self) -> Any:
        return self._call("debug_state")

    def debug_procs(self, name: str) -> Any:
        return self._call("debug_procs", {"name": name})

    def discover(self) -> Any:
        return self._call("rpc.discover")

    def xinet_set(
        self,
        name: str,
        listen: list[str],
        backend: str,
        service: str,
        connect_timeout: float | None = None,
        idle_timeout: float | None = None,
        single_connection: bool | None = None,
    ) -> Any:
        """Create or replace a socket-activation proxy (see ``zinit xinet set``)."""
        return self._call(
            "xinet.set",
            {
                "name": name,
                "listen": list(listen),
                "backend": backend,
                "service": service,
                "connect_timeout": connect_timeout,
                "idle_timeout": idle_timeout,
                "single_connection": single_connection,
            },
        )

    def xinet_delete(self, name: str) -> Any:
        return self._call("xinet.delete", {"name": name})

    def xinet_list(self) -> Any:
        return self._call("xinet.list")

    def xinet_status(self, name: str | None = None) -> Any:
        return self._call("xinet.status", {"name": name})


def _log_end_error(params: dict[str, Any]) -> UnitStateError:
    """The error a log follower ends with when its unit is gone ("log.end")."""
    return UnitStateError(f"{params.get('unit')!r} was {params.get('reason')}: no more lines")


class ZinitClient(_Calls):
    """A blocking client of the control socket (standard library only).

    >>> with ZinitClient.connect_unix() as client:
    ...     for unit in client.list(): print(unit["name"], unit["state"])

    Errors come back as ZinitError subclasses carrying the daemon's message.
    A connection can make many calls; after a stream call (follow_logs,
    events) it is given to that stream.
    """

    def __init__(self, sock: socket.socket, path: str = "") -> None:
        self.path = path
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._ids = itertools.count(1)
        self._notifications: collections.deque[dict[str, Any]] = collections.deque()

    @classmethod
    def connect_unix(cls, path: str | None = None, timeout: float | None = None) -> ZinitClient:
        """Connect to the daemon's socket (default: ZINIT_SOCKET or the platform path).

        Raises DaemonUnavailable when nothing listens there.
        """
        path = path or default_socket_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as error:
            sock.close()
            raise DaemonUnavailable(path, cls._describe_failure(path, error)) from None
        return cls(sock, path)

    @staticmethod
    def _describe_failure(path: str, error: OSError) -> str:
        if os.path.exists(path) and not stat.S_ISSOCK(os.stat(path).st_mode):
            return "it is not a socket"
        return error.strerror or str(error)

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_message(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise DaemonUnavailable(self.path, "the daemon closed the connection")
        return json.loads(line)

    def call(
        self,
        method: str,
        params: dict[str, Any] | list[Any] | None = None,
        *,
        on_notification: Callable[[dict[str, Any]], object] | None = None,
    ) -> Any:
        """Send one request and return its result; raises ZinitError on error replies.

        Notifications that arrive meanwhile go to ``on_notification`` if given,
        else they are kept for ``notifications()``.
        """
        request_id = next(self._ids)
        frame = _request_frame(request_id, method, params)
        try:
            self._sock.sendall(frame)
            while True:
                message = self._read_message()
                if "id" not in message:
                    if on_notification is not None:
                        on_notification(message)
                    else:
                        self._notifications.append(message)
                    continue
                if not _answers(message, request_id):
                    continue
                if "error" in message:
                    raise _error_from_reply(message["error"])
                return message.get("result")
        except (BrokenPipeError, ConnectionResetError) as error:
            raise DaemonUnavailable(self.path, error.strerror or str(error)) from None

    def _call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if params is not None:
            params = {key: value for key, value in params.items() if value is not None}
        return self.call(method, params)

    def notifications(self) -> Iterator[dict[str, Any]]:
        """Yield every notification, queued ones first; ends when the daemon closes."""
        while True:
            while self._notifications:
                yield self._notifications.popleft()
            try:
                message = self._read_message()
            except (DaemonUnavailable, ConnectionResetError):
                return
            if "id" not in message:
                yield message

    def follow_logs(self, name: str | None = None, lines: int | None = None) -> Iterator[dict]:
        """Yield recent log lines, then every new one, as dicts (time, unit, stream, line)."""
        self._call("logs.follow", {"name": name, "lines": lines})
        for message in self.notifications():
            if message.get("method") == "log":
                yield message["params"]
            elif message.get("method") == "log.end":
                raise _log_end_error(message["params"])

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield every state change (unit, from, to, reason, time) from now on."""
        self._call("events.subscribe")
        for message in self.notifications():
            if message.get("method") == "event":
                yield message["params"]


class AsyncZinitClient(_Calls):
    """The asyncio twin of ZinitClient: every call is a coroutine.

    Calls made concurrently on one client (``asyncio.gather``) take turns on
    its connection; open one client per task to run them side by side.

    >>> client = await AsyncZinitClient.connect_unix()
    >>> await client.status("web")
    """

    def __init__(self, reader: Any, writer: Any, path: str = "") -> None:
        import asyncio

        self.path = path
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._notifications: collections.deque[dict[str, Any]] = collections.deque()
        self._turn = asyncio.Lock()  # one request in flight on the connection

    @classmethod
    async def connect_unix(cls, path: str | None = None) -> AsyncZinitClient:
        import asyncio

        path = path or default_socket_path()
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=64 * MAX_FRAME_BYTES)
        except OSError as error:
            raise DaemonUnavailable(path, error.strerror or str(error)) from None
        return cls(reader, writer, path)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _read_message(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except (ConnectionError, OSError) as error:
            raise DaemonUnavailable(self.path, str(error) or type(error).__name__) from None
        if not line:
            raise DaemonUnavailable(self.path, "the daemon closed the connection")
        return json.loads(line)

    async def call(self, method: str, params: dict[str, Any] | list[Any] | None = None) -> Any:
        """Send one request and return its result; raises ZinitError on error replies."""
        request_id = next(self._ids)
        frame = _request_frame(request_id, method, params)
        async with self._turn:
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, OSError) as error:
                raise DaemonUnavailable(self.path, str(error) or type(error).__name__) from None
            while True:
                message = await self._read_message()
                if "id" not in message:
                    self._notifications.append(message)
                elif _answers(message, request_id):
                    if "error" in message:
                        raise _error_from_reply(message["error"])
                    return message.get("result")

    def _call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if params is not None:
            params = {key: value for key, value in params.items() if value is not None}
        return self.call(method, params)

    async def notifications(self) -> Any:
        while True:
            while self._notifications:
                yield self._notifications.popleft()
            try:
                message = await self._read_message()
            except DaemonUnavailable:
                return
            if "id" not in message:
                yield message

    async def follow_logs(self, name: str | None = None, lines: int | None = None) -> Any:
        await self._call("logs.follow", {"name": name, "lines": lines})
        async for message in self.notifications():
            if message.get("method") == "log":
                yield message["params"]
            elif message.get("method") == "log.end":
                raise _log_end_error(message["params"])

    async def events(self) -> Any:
        await self._call("events.subscribe")
        async for message in self.notifications():
            if message.get("method") == "event":
                yield message["params"]


# ==== 10. CLI ================================================================
# ``zinit [--socket PATH] [--json] COMMAND ...``: argparse sub-commands, each
# a _cmd_<name> function that talks to the daemon through ZinitClient and
# prints a table or JSON.  Exit codes: 0 ok, 1 the daemon said no, 2 usage,
# 3 no daemon.  Nothing here imports gevent or psutil.  The ``tui`` block at
# the end is the curses view (standard library curses, imported when run).

_STATE_COLOURS = {
    "Running": "32",
    "Starting": "33",
    "Stopping": "33",
    "Blocked": "33",
    "Failed": "31",
    "Exited": "2",
    "Inactive": "2",
}


def _terminal_columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` reckons it.

    shutil imports bz2, lzma and zlib: about 3 ms of every CLI call, and 0.6 MiB
    that the daemon would keep for its whole life for one ``--help``.
    """
    try:
        columns = int(os.environ["COLUMNS"])
        if columns > 0:
            return columns
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Output:
    """Where the CLI writes: colour only on a terminal and without NO_COLOR."""

    def __init__(self, as_json: bool, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.as_json = as_json
        self.terminal = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.colour = not as_json and "NO_COLOR" not in os.environ and self.terminal

    def json(self, data: Any) -> None:
        self.stream.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        self.stream.flush()

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def safe(self, text: str) -> str:
        """Text from a service (a reason quoting its output, a name) as a terminal may
        show it: control characters as \\xNN, so that none drives the terminal."""
        return text.translate(_terminal_safe()) if self.terminal else text

    def state(self, state: str, width: int = 0) -> str:
        text = state.ljust(width)
        if self.colour and state in _STATE_COLOURS:
            return f"\033[{_STATE_COLOURS[state]}m{text}\033[0m"
        return text

    def table(
        self, headers: list[str], rows: list[list[str]], state_column: int | None = None
    ) -> None:
        rows = [[self.safe(cell) for cell in row] for row in rows]
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(headers)
        ]
        limit = None
        if self.colour:
            limit = _terminal_columns()
        self.line("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        for row in rows:
            cells = []
            for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
                last = i == len(row) - 1
                if last and limit is not None:
                    used = sum(widths[:-1]) + 2 * (len(widths) - 1)
                    cell = cell[: max(20, limit - used - 1)]
                cells.append(
                    self.state(cell, width)
                    if i == state_column
                    else (cell if last else cell.ljust(width))
                )
            self.line("  ".join(cells).rstrip())


def _unit_row(unit: dict[str, Any]) -> list[str]:
    pid = str(unit["pid"]) if unit.get("pid") else "-"
    reason = unit.get("reason", "")
    for warning in unit.get("warnings", ()):
        if warning.startswith("config file has an error"):
            reason = f"[{warning}] {reason}"
    return [
        unit["name"],
        unit["kind"],
        unit["state"],
        pid,
        format_duration(unit.get("uptime_s")) if unit.get("uptime_s") is not None else "-",
        str(unit.get("restarts", 0)),
        unit.get("health") or "-",
        reason,
    ]


def _format_time(stamp: float) -> str:
    """Time of day to the millisecond, after the date when that is not today."""
    local = time.localtime(stamp)
    clock = time.strftime("%H:%M:%S", local) + f".{int(stamp % 1 * 1000):03d}"
    if local[:3] != time.localtime()[:3]:
        return time.strftime("%Y-%m-%d ", local) + clock
    return clock


def _print_event(out: _Output, event: dict[str, Any]) -> None:
    if out.as_json:
        out.stream.write(json.dumps(event, ensure_ascii=False) + "\n")
        out.stream.flush()
        return
    unit, reason = out.safe(event["unit"]), out.safe(event["reason"])
    if event["from"] == event["to"]:  # the reason changed, the state did not
        out.line(f"{_format_time(event['time'])} {unit}: {out.state(event['to'])} ({reason})")
        return
    out.line(
        f"{_format_time(event['time'])} {unit}: {event['from']} -> "
        f"{out.state(event['to'])} ({reason})"
    )


@functools.cache
def _terminal_safe() -> dict[int, str]:
    """Control characters but tab, as visible escapes (C0, DEL and C1): a translate table."""
    return {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)] if code != 0x09}


def _print_log(out: _Output, entry: dict[str, Any], with_unit: bool) -> None:
    if out.as_json:
        out.stream.write(json.dumps(entry, ensure_ascii=False) + "\n")
        out.stream.flush()
        return
    prefix = f"{entry['unit']} " if with_unit else ""
    marker = "!" if entry["stream"] == "stderr" else "|"
    # A service's output must not drive the operator's terminal (escape
    # sequences can retitle, recolour or rewrite it): show controls as \xNN.
    out.line(f"{_format_time(entry['time'])} {prefix}{marker} {out.safe(entry['line'])}")


#: Commands that only read answer at once: past this many seconds the daemon is stuck
#: (SIGSTOPped, or hung), and saying so beats hanging.  Those that stop units may
#: rightly take a stop timeout; streams (``logs -f``, ``events``) wait by design.
_QUERY_TIMEOUT_S = 30.0
_QUERIES = frozenset(
    {"list", "status", "why", "tree", "check", "logs", "kill", "debug-state", "debug-procs"}
)


def _query_timeout(args: argparse.Namespace) -> float | None:
    """Seconds the command waits for its answer (ZINIT_TIMEOUT overrides), or None."""
    if getattr(args, "follow", False):
        return None
    if args.command not in _QUERIES and getattr(args, "xinet_command", None) not in (
        "list",
        "status",
    ):
        return None
    return _answer_timeout()


def _answer_timeout() -> float:
    """How long a daemon may take to answer a question (ZINIT_TIMEOUT, default 30 s)."""
    text = os.environ.get("ZINIT_TIMEOUT", "")
    try:
        seconds = float(text) if text else _QUERY_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= _MAX_DURATION_MS / 1000:  # a socket timeout has to fit in time_t
        raise UsageError(f"ZINIT_TIMEOUT: expected seconds > 0, up to a day, got {text!r}")
    return seconds


def _connect(args: argparse.Namespace) -> ZinitClient:
    limit = _query_timeout(args)
    if limit is not None:
        return ZinitClient.connect_unix(args.socket, timeout=limit)
    # A command that may rightly wait long (a stop, a stream) first asks whether the
    # daemon answers at all: a stopped or hung one is told at once, not never.
    client = ZinitClient.connect_unix(args.socket, timeout=_answer_timeout())
    try:
        client.call("ping")
    except BaseException:
        client.close()
        raise
    client._sock.settimeout(None)
    return client


def _cmd_list(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        units = client.list()
    if out.as_json:
        out.json(units)
    elif not units:
        out.line("no units")
    else:
        headers = ["NAME", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "REASON"]
        out.table(headers, [_unit_row(unit) for unit in units], state_column=2)
    return 0


def _cmd_status(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        unit = client.status(args.name)
    if out.as_json:
        out.json(unit)
        return 0
    name = out.safe(unit["name"])
    out.line(f"{name} ({unit['kind']}, class {unit['class']}, status {unit['status']})")
    out.line(f"  state:    {out.state(unit['state'])}")
    out.line(f"  reason:   {out.safe(unit['reason'])}")
    out.line(f"  pid:      {unit['pid'] or '-'}")
    out.line(f"  uptime:   {format_duration(unit['uptime_s'])}")
    out.line(f"  restarts: {unit['restarts']}")
    if unit.get("exit_code") is not None:
        out.line(f"  last exit: {describe_exit(unit['exit_code'])}")
    if unit.get("health"):
        out.line(f"  health:   {unit['health']}")
    if unit.get("next_restart_s") is not None:
        out.line(f"  restart in: {unit['next_restart_s']:.1f}s")
    for kind in ("requires", "wants", "after", "conflicts"):
        if unit.get(kind):
            out.line(f"  {kind}: {', '.join(unit[kind])}")
    for warning in unit.get("warnings", []):
        out.line(f"  warning:  {out.safe(warning)}")
    return 0


def _cmd_start(args: argparse.Namespace, out: _Output) -> int:
    return _start_or_restart("start", args, out)


def _cmd_restart(args: argparse.Namespace, out: _Output) -> int:
    return _start_or_restart("restart", args, out)


def _start_or_restart(method: str, args: argparse.Namespace, out: _Output) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError(f"{method}: --timeout only applies with --wait")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"{method}: --timeout: expected seconds > 0, got {args.timeout:g}")
    if args.settle is not None and not args.wait:
        raise UsageError(f"{method}: --settle only applies with --wait")
    if args.settle is not None and not args.settle >= 0:
        raise UsageError(f"{method}: --settle: expected seconds >= 0, got {args.settle:g}")
    with _connect(args) as client:
        if not args.wait:
            result = client.call(method, {"name": args.name})
            if out.as_json:
                out.json(result)
            return 0
        return _start_and_wait(client, args, out, method)


def _start_and_wait(
    client: ZinitClient, args: argparse.Namespace, out: _Output, method: str = "start"
) -> int:
    """Start (or restart) a unit, print its state changes (and those of what it depends
    on), and return 0 once it is up; 1 when it will not come up, or not within --timeout."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    # Only this unit and what it requires, wants or is ordered after: other
    # units changing meanwhile (a flapping one) are not this command's story.
    relevant: set[str] = set()

    def show(message: dict[str, Any]) -> None:
        event = message.get("params", {})
        if message.get("method") == "event" and event.get("unit") in relevant and not out.as_json:
            _print_event(out, event)

    def limit_wait() -> None:
        """Bound the next read by what is left of --timeout (every call: a daemon that
        stops answering, or a restart's slow stop, must not outlast it)."""
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            client._sock.settimeout(remaining)

    unit: dict[str, Any] | None = None
    verdict: bool | None = None
    try:
        limit_wait()
        nodes = list(client.tree(args.name))
        while nodes:
            node = nodes.pop()
            relevant.add(node["name"])
            nodes.extend(node.get("children", ()))
        limit_wait()
        client.call("events.subscribe")
        # The daemon answers once the unit has acted on the start, so the status
        # read next belongs to this attempt, not to an earlier run.
        limit_wait()
        client.call(method, {"name": args.name}, on_notification=show)
        limit_wait()
        unit = client.call("status", {"name": args.name}, on_notification=show)
        verdict = _start_verdict(unit)
        if verdict is None:
            limit_wait()
            for message in client.notifications():
                show(message)
                event = message.get("params", {})
                if message.get("method") == "event" and event.get("unit") == args.name:
                    unit = client.call("status", {"name": args.name}, on_notification=show)
                    verdict = _start_verdict(unit)
                    if verdict is not None:
                        break
                limit_wait()
    except TimeoutError:
        verdict = False
        silent = " (the daemon had not answered yet)" if unit is None else ""
        print(f"zinit: {args.name} is not up after {args.timeout:g}s{silent}", file=sys.stderr)
        if unit is None:
            return 1
    assert unit is not None
    settle_s = _START_SETTLE_S if args.settle is None else args.settle
    stayed = verdict and _stays_up(client, args.name, unit, settle_s, show, deadline)
    if verdict and not stayed:
        verdict = False
        if stayed is None:  # the timeout came first; the daemon may be what hangs
            why = f"had not been up {settle_s:g}s (--settle) when the {args.timeout:g}s passed"
        else:
            why = f"did not stay up for {settle_s:g}s"
            client._sock.settimeout(None if deadline is None else _START_LAST_READ_S)
            try:
                unit = client.call("status", {"name": args.name}, on_notification=show)
            except TimeoutError:
                pass  # what it was when it left Running says enough
        if not out.as_json:
            print(f"zinit: {args.name} {why}", file=sys.stderr)
    if out.as_json:
        out.json(unit)
    elif verdict:
        out.line(f"{args.name} is {unit['state']}")
    else:
        print(f"zinit: {args.name} is {unit['state']}: {unit['reason']}", file=sys.stderr)
    return 0 if verdict else 1


#: How long ``start --wait`` watches a service without a health check once it
#: is Running (supervisord's startsecs): one that exits meanwhile did not start.
_START_SETTLE_S = 1.0
#: With --timeout, the read of the state a unit left Running for may take this long.
_START_LAST_READ_S = 5.0


def _stays_up(
    client: ZinitClient,
    name: str,
    unit: dict[str, Any],
    settle_s: float,
    show: Callable[[dict[str, Any]], None],
    deadline: float | None = None,
) -> bool | None:
    """False if ``unit``, just come up, leaves Running (or runs another process) before it
    has been up ``settle_s``; None if ``deadline`` (monotonic) comes first.  A health check
    or a oneshot's exit already proved it."""
    if unit["state"] != "Running" or unit.get("oneshot") or unit.get("health") is not None:
        return True
    end = time.monotonic() + settle_s - (unit.get("uptime_s") or 0.0)
    if end <= time.monotonic():
        return True  # up long enough already (or --settle 0), however late it is
    cut_short = deadline is not None and deadline < end
    if cut_short:
        end = deadline
    while (left := end - time.monotonic()) > 0:
        client._sock.settimeout(left)
        try:
            message = next(client.notifications(), None)
        except TimeoutError:  # the window passed quietly (the reader is spent: done with it)
            break
        if message is None:  # the daemon went away: it was up while it could tell
            return True
        show(message)
        event = message.get("params", {})
        if message.get("method") == "event" and event.get("unit") == name:
            # Without a deadline an answer, however slow, decides it.
            client._sock.settimeout(
                None if deadline is None else max(0.01, deadline - time.monotonic())
            )
            try:
                now = client.call("status", {"name": name}, on_notification=show)
            except TimeoutError:
                return None
            if now["state"] != "Running" or now["pid"] != unit["pid"]:
                return False
    return None if cut_short else True


def _start_verdict(unit: dict[str, Any]) -> bool | None:
    """True when up, False when it will not come up by itself, None to keep waiting."""
    state = unit["state"]
    if state == "Running":
        return True
    if state == "Exited":
        return bool(unit.get("oneshot")) and unit.get("exit_code") == 0
    if state in ("Failed", "Inactive"):
        return False if "restarting in" not in unit["reason"] else None
    reason = unit["reason"]
    if state == "Blocked" and ("requires " in reason or "dependency cycle" in reason):
        return False  # blocked by something that will not resolve itself
    return None


def _simple(method: str) -> Callable[[argparse.Namespace, _Output], int]:
    def command(args: argparse.Namespace, out: _Output) -> int:
        with _connect(args) as client:
            result = getattr(client, method)(args.name)
        if out.as_json:
            out.json(result)
        return 0

    command.__name__ = f"_cmd_{method}"
    return command


def _cmd_kill(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        result = client.kill(args.name, args.signal)
    if out.as_json:
        out.json(result)
    return 0


def _cmd_logs(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        if args.follow:
            try:
                for entry in client.follow_logs(args.name, args.lines):
                    _print_log(out, entry, args.name is None)
            except KeyboardInterrupt:
                return 0
            return _stream_lost(args)
        entries = client.logs(args.name, args.lines)
    if out.as_json:
        out.json(entries)
    else:
        for entry in entries:
            _print_log(out, entry, args.name is None)
    return 0


def _cmd_why(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        why = client.why(args.name)
    if out.as_json:
        out.json(why)
        return 0
    safe = out.safe
    out.line(f"{safe(why['name'])} is {out.state(why['state'])}: {safe(why['reason'])}")
    if why.get("blocked_by") and why["blocked_by"] != why["reason"]:
        out.line(f"  blocked by: {safe(why['blocked_by'])}")
    if why.get("cycle"):
        out.line(f"  cycle: {why['cycle']}")
    for dep in why.get("dependencies", []):
        state = out.state(dep["state"]) if dep["state"] else "undefined"
        out.line(f"  {dep['relation']} {dep['name']}: {state} ({safe(dep['reason'])})")
    if why.get("required_by"):
        out.line(f"  required by: {', '.join(why['required_by'])}")
    for warning in why.get("warnings", []):
        out.line(f"  warning: {safe(warning)}")
    for problem in (why.get("config_error") or {}).get("also", []):
        out.line(f"    and {safe(problem['message'])}")
    if why.get("recent_output"):
        out.line("  recent output:")
        for entry in why["recent_output"]:
            line = safe(entry["line"])
            out.line(f"    {_format_time(entry['time'])} {entry['stream']}: {line}")
    if why.get("history"):
        out.line("  history:")
        for entry in why["history"]:
            when = _format_time(entry["time"])
            out.line(f"    {when} {entry['from']} -> {entry['to']}: {safe(entry['reason'])}")
    return 0


def _cmd_tree(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        forest = client.tree(args.name)
    if out.as_json:
        out.json(forest)
        return 0
    for text, state in _tree_lines(forest, ascii_only=False):
        out.line(f"{text}[{out.state(state) if state else 'undefined'}]")
    return 0


def _cmd_reload(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        result = client.reload()
    proxies = result.get("xinet", {})
    failed = bool(result["errors"] or proxies.get("errors"))
    if out.as_json:
        out.json(result)
        return 1 if failed else 0
    for key in ("added", "removed", "changed", "unchanged"):
        out.line(f"{key}: {', '.join(result[key]) or '-'}")
    if result.get("stopped"):  # an older daemon does not say
        out.line(
            f"stopped, as they require a removed unit: {', '.join(result['stopped'])} "
            "(they start again once it is back)"
        )
    for error in result["errors"]:
        for problem in [error, *error.get("also", [])]:
            print(f"zinit: reload: {problem['message']}", file=sys.stderr)
    for key in ("added", "removed", "changed"):
        if proxies.get(key):
            out.line(f"xinet {key}: {', '.join(proxies[key])}")
    for error in proxies.get("errors", []):
        for problem in [error, *error.get("also", [])]:
            print(f"zinit: reload: xinet {error['name']}: {problem['message']}", file=sys.stderr)
    for warning in proxies.get("warnings", []):
        print(
            f"zinit: reload: warning: xinet {warning['name']}: {warning['message']}",
            file=sys.stderr,
        )
    # The rest was applied; a file with an error still makes the command fail.
    return 1 if failed else 0


def _cmd_add_service(args: argparse.Namespace, out: _Output) -> int:
    name = args.name
    if args.source == "-":
        text, source = sys.stdin.read(), "<stdin>"
    elif os.path.isfile(args.source):
        with open(args.source, encoding="utf-8") as stream:
            text, source = stream.read(), args.source
        if name is None and args.source.endswith(".toml"):
            try:
                _declared_name(text)  # a name the file declares wins over the file's name
            except (ZinitError, ValueError):
                name = os.path.basename(args.source).removesuffix(".toml")
    elif (
        "[" in args.source
        or "\n" in args.source
        or ("=" in args.source and not args.source.endswith(".toml"))
    ):
        text, source = args.source, "<text>"
    elif os.path.isdir(args.source):
        raise UsageError(f"add-service: {args.source}: is a directory, not a unit file")
    elif "/" in args.source or args.source.endswith(".toml"):
        raise UsageError(f"add-service: {args.source}: no such file")
    else:
        raise UsageError(f"add-service: {args.source!r} is neither a file, '-' nor TOML text")
    try:
        with _connect(args) as client:
            result = client.add_service(text, name)
    except ConfigError as error:
        # The daemon names the file it would have written; the user knows their source.
        raise error.with_path(source) from None
    if out.as_json:
        out.json(result)
    else:
        state = out.state(result["state"]) if result.get("state") else "?"
        out.line(f"added {result['name']} ({result['path']}): {state}: {result.get('reason')}")
    return 0


def _cmd_remove_service(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        result = client.remove_service(args.name)
    if out.as_json:
        out.json(result)
    else:
        out.line(f"removed {result['name']} ({result['path']})")
        if result.get("stopped"):  # an older daemon does not say
            out.line(
                f"stopped with it, as they require it: {', '.join(result['stopped'])} "
                "(they start again once it is back)"
            )
    return 0


def _bulk(method: str, key: str) -> Callable[[argparse.Namespace, _Output], int]:
    def command(args: argparse.Namespace, out: _Output) -> int:
        with _connect(args) as client:
            result = getattr(client, method)()
        if out.as_json:
            out.json(result)
        else:
            out.line(f"{key}: {', '.join(result[key]) or '-'}")
        return 0

    command.__name__ = f"_cmd_{method}"
    return command


def _cmd_start_all(args: argparse.Namespace, out: _Output) -> int:
    """start-all: exit 1 when a unit could not be spawned, naming each and why."""
    with _connect(args) as client:
        result = client.start_all()
    failed = result.get("failed", {})
    if out.as_json:
        out.json(result)
    else:
        out.line(f"started: {', '.join(result['started']) or '-'}")
        for name, why in sorted(result.get("not_started", {}).items()):
            out.line(f"{name}: {why}")
        for name, error in sorted(failed.items()):
            print(f"zinit: start-all: {name!r} did not start: {error}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_delete_all(args: argparse.Namespace, out: _Output) -> int:
    """delete-all, which deletes unit files: asked for first when typed at a terminal."""
    if not args.yes and sys.stdin is not None and sys.stdin.isatty():
        with _connect(args) as client:
            rows = client.call("list")
        names = sorted(row["name"] for row in rows if row.get("class") == "user")
        if not names:
            if out.as_json:
                out.json({"deleted": []})
            else:
                out.line("deleted: -")
            return 0
        print(
            f"delete-all stops {len(names)} unit(s) and deletes their files: "
            f"{', '.join(names)}\ngo on? [y/N] ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("zinit: delete-all: nothing deleted", file=sys.stderr)
            return 1
        with _connect(args) as client:
            result = client.delete_all(names)  # what was asked about, not what came since
        if out.as_json:
            out.json(result)
        else:
            out.line(f"deleted: {', '.join(result['deleted']) or '-'}")
        return 0
    return _bulk("delete_all", "deleted")(args, out)


def _cmd_shutdown(args: argparse.Namespace, out: _Output, method: str = "shutdown") -> int:
    """Shut down (or power off / reboot), printing each unit's progress."""
    with _connect(args) as client:
        client.call("events.subscribe")
        try:
            client.call(
                method,
                on_notification=lambda m: (
                    m.get("method") == "event" and _print_event(out, m["params"])
                ),
            )
        except DaemonUnavailable:
            pass  # the daemon may exit before its reply reaches us
    if not out.as_json:
        out.line(f"{method}: done")
    return 0


def _cmd_check(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        result = client.check()
    if out.as_json:
        out.json(result)
    elif result["ok"]:
        out.line("ok: every status=start unit is up")
    else:
        for problem in result["problems"]:
            out.line(f"{problem['name']}: {problem['state']} ({problem['reason']})")
    return 0 if result["ok"] else 1


def _cmd_events(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        try:
            for event in client.events():
                _print_event(out, event)
        except KeyboardInterrupt:
            return 0
    return _stream_lost(args)


def _stream_lost(args: argparse.Namespace) -> int:
    """A following command's daemon went away: say so, exit 3 (a script must tell)."""
    print(
        f"zinit: the daemon at {args.socket or default_socket_path()} closed the connection",
        file=sys.stderr,
    )
    return 3


def _cmd_debug_state(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        out.json(client.debug_state())
    return 0


def _cmd_debug_procs(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        rows = client.debug_procs(args.name)
    if out.as_json:
        out.json(rows)
        return 0
    out.table(
        ["PID", "PPID", "PGID", "STATUS", "RSS", "CPU", "COMMAND"],
        [
            [
                str(r["pid"]),
                str(r["ppid"]),
                str(r["pgid"]),
                r["status"],
                f"{r['rss_bytes'] // 1024}K",
                f"{r['cpu_s']:.2f}s",
                shlex.join(r["cmdline"]),
            ]
            for r in rows
        ],
    )
    return 0


def _cmd_validate(args: argparse.Namespace, out: _Output) -> int:
    """Check a config directory offline: every problem with file and line."""
    directory = args.directory or args.config_dir or default_config_dir()
    only = None  # a file: checked with the rest of its directory (what it depends on)
    if directory.endswith(".toml") and os.path.isfile(directory):
        only = os.path.basename(directory).removesuffix(".toml")
        directory = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(directory):
        what = "a directory or a unit file" if directory.endswith(".toml") else "a directory"
        print(f"zinit: validate: {directory!r} is not {what}", file=sys.stderr)
        return 1
    found, warned, units = validate_directory(directory)
    if only is not None:
        found = [(name, problem) for name, problem in found if name == only]
        warned = [(name, warning) for name, warning in warned if name == only]
        units = {name: config for name, config in units.items() if name == only}
        directory = os.path.join(directory, f"{only}.toml")
    problems = [problem for _, problem in found]
    if out.as_json:
        # The shape of reload's reply: one entry per unit, its first problem with the
        # others in "also".
        grouped: dict[str, list[ConfigError]] = {}
        for name, problem in found:
            grouped.setdefault(name, []).append(problem)
        errors = [
            {"unit": name, **ConfigError.joined(problems).to_dict()}
            for name, problems in grouped.items()
        ]
        out.json(
            {
                "ok": not problems,
                "units": sorted(units),
                "errors": errors,
                "warnings": [{"unit": name, **w.to_dict()} for name, w in warned],
            }
        )
    else:
        for problem in problems:
            out.line(f"error: {problem}")
        for _, warning in warned:
            out.line(f"warning: {warning}")
        verdict = "ok" if not problems else f"{len(problems)} error(s)"
        out.line(f"{directory}: {len(units)} unit(s), {verdict}")
    return 1 if problems else 0


def validate_directory(
    directory: str,
) -> tuple[list[tuple[str, ConfigError]], list[tuple[str, ConfigError]], dict[str, UnitConfig]]:
    """Return (errors, warnings, units) for a config directory, without a daemon.

    Errors and warnings come one problem each, with the name of the unit (or
    proxy) they are about.
    """
    units, proxies, unit_errors, proxy_errors = load_config_dirs([(directory, None)])
    errors = {**unit_errors, **proxy_errors}
    problems = [(name, problem) for name, error in errors.items() for problem in error.every()]
    warnings: list[tuple[str, ConfigError]] = []

    def at(config: UnitConfig | XinetConfig, key: str, reason: str) -> ConfigError:
        try:
            with open(config.path, encoding="utf-8") as stream:
                positions = _key_positions(stream.read())
        except OSError:
            positions = {}
        line, _, col = positions.get(key, (None, None, None))
        return ConfigError(config.path, reason, key=key, line=line, col=col)

    for name, cycle in sorted(find_cycles(units).items()):
        problems.append((name, at(units[name], "dependencies", f"dependency cycle: {cycle}")))
    for name, config in sorted(units.items()):
        for kind in _DEPENDENCY_KEYS:
            for dep in getattr(config, kind):
                if dep in units or dep in errors:
                    continue
                issue = at(config, f"dependencies.{kind}", f"{dep!r} is not defined")
                (problems if kind == "requires" else warnings).append((name, issue))
    for name, config in sorted(units.items()):
        for dep in sorted(set(config.requires)):
            other = units.get(dep)
            if dep in config.conflicts or (other is not None and name in other.conflicts):
                reason = f"requires {dep!r}, which it conflicts with: it can never start"
                warnings.append((name, at(config, "dependencies.requires", reason)))
        if config.is_target:
            continue
        program_depends_on_dir = "/" in config.argv[0] and not config.argv[0].startswith("/")
        if config.dir is not None and not os.path.isdir(config.dir):
            reason = f"working directory {config.dir!r} does not exist here"
            warnings.append((name, at(config, "service.dir", reason)))
            if not program_depends_on_dir and (missing := _missing_program(config)):
                warnings.append((name, at(config, "service.exec", missing)))
        elif (missing := _missing_program(config)) is not None:
            warnings.append((name, at(config, "service.exec", missing)))
        for key, value in (("user", config.user), ("group", config.group)):
            if value and not _is_decimal(value) and not _account_exists(key, value):
                reason = f"{key} {value!r} does not exist here"
                warnings.append((name, at(config, f"service.{key}", reason)))
    for name, proxy in sorted(proxies.items()):
        if proxy.service not in units and proxy.service not in errors:
            # The daemon installs it all the same, and warns (a broken file is its own error).
            warning = at(proxy, "xinet.service", f"{proxy.service!r} is not defined")
            warnings.append((name, warning))
    return problems, warnings, units


def _account_exists(kind: str, name: str) -> bool:
    """Whether the user (or group, as ``kind`` says) is known here."""
    import grp
    import pwd

    try:
        (pwd.getpwnam if kind == "user" else grp.getgrnam)(name)
    except KeyError:
        return False
    return True


def _missing_program(config: UnitConfig) -> str | None:
    """Why a service's program could not be run here, or None (a warning: the daemon
    may run elsewhere, or the program be installed by another unit first)."""
    import shutil

    program = config.argv[0]
    if "/" in program:
        path = os.path.join(config.dir or "", program)
        if not os.path.exists(path):
            return f"{program!r} does not exist here"
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return f"{program!r} is not an executable file here"
        return None
    own = dict(config.env).get("PATH")
    if shutil.which(program, path=own or os.environ.get("PATH", os.defpath)) is None:
        return f"{program!r} is not found on {'the PATH its env sets' if own else 'PATH here'}"
    return None


def _cmd_xinet_help(args: argparse.Namespace, out: _Output) -> int:
    raise UsageError("xinet: give an action: set, delete, list or status")


def _cmd_xinet_set(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        result = client.xinet_set(
            args.name,
            args.listen,
            args.backend,
            args.service,
            args.connect_timeout,
            args.idle_timeout,
            args.single_connection or None,
        )
    if out.as_json:
        out.json(result)
    else:
        out.line(
            f"{result['name']}: {', '.join(result['listen'])} -> {result['backend']} "
            f"(starts {result['service']})"
        )
    return 0


def _cmd_xinet_delete(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        result = client.xinet_delete(args.name)
    if out.as_json:
        out.json(result)
    elif result.get("path"):
        print(f"deleted {result['path']}")
    return 0


def _cmd_xinet_list(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        proxies = client.xinet_list()
    if out.as_json:
        out.json(proxies)
    elif not proxies:
        out.line("no proxies")
    else:
        out.table(
            ["NAME", "LISTEN", "BACKEND", "SERVICE", "STATE", "ACTIVE", "TOTAL"],
            [
                [
                    p["name"],
                    ",".join(p["listen"]) or "-",
                    p["backend"] or "-",
                    p["service"] or "-",
                    "not loaded" if p.get("error") else p["service_state"] or "undefined",
                    str(p["active"]),
                    str(p["total"]),
                ]
                for p in proxies
            ],
            state_column=4,
        )
        for proxy in proxies:
            if proxy.get("error"):
                out.line(f"{proxy['name']}: not loaded: {proxy['error']}")
    return 0


def _cmd_xinet_status(args: argparse.Namespace, out: _Output) -> int:
    with _connect(args) as client:
        result = client.xinet_status(args.name)
    if out.as_json:
        out.json(result)
        return 0
    for proxy in result if isinstance(result, list) else [result]:
        if proxy.get("error"):
            out.line(f"{proxy['name']} (not loaded)")
            out.line(f"  error:       {proxy['error']}")
            continue
        out.line(f"{proxy['name']} ({proxy['source']})")
        out.line(f"  listen:      {', '.join(proxy['listen'])}")
        out.line(f"  backend:     {proxy['backend']}")
        out.line(f"  service:     {proxy['service']} ({proxy['service_state'] or 'undefined'})")
        out.line(
            f"  connections: {proxy['active']} active, {proxy['total']} total, "
            f"{proxy['refused']} refused"
        )
        out.line(f"  bytes:       {proxy['bytes_in']} in, {proxy['bytes_out']} out")
        single = ", single connection" if proxy["single_connection"] else ""
        idle = f"{proxy['idle_timeout']:g}s" if proxy["idle_timeout"] else "never (0)"
        out.line(f"  timeouts:    connect {proxy['connect_timeout']:g}s, idle {idle}{single}")
        if proxy.get("last_error"):
            out.line(f"  last error:  {proxy['last_error']}")
        for warning in proxy.get("warnings", []):
            out.line(f"  warning:     {warning}")
    return 0


class _Unbuilt:
    """Stands in for the parser of a command that is not on the command line.

    Building all thirty subparsers costs a call about 8 ms; only the one named
    is built, unless the name is unknown (then argparse lists them all).
    """

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_defaults(self, **kwargs: Any) -> None:
        pass

    def add_subparsers(self, **kwargs: Any) -> _Unbuilt:
        return self

    def add_parser(self, *args: Any, **kwargs: Any) -> _Unbuilt:
        return self


def _command_word(argv: list[str]) -> str | None:
    """The command named in ``argv``, where the global options let it be found."""
    words = iter(argv)
    for word in words:
        if word == "--socket":
            next(words, None)
        elif word != "--json" and not word.startswith("--socket="):
            return None if word.startswith("-") else word
    return None


def _signal_as_operand(argv: list[str]) -> list[str]:
    """``kill NAME -KILL`` as kill(1) writes it: argparse would take -KILL for an option,
    so it goes on as KILL (which means the same); options may come before or after it."""
    for index, word in enumerate(argv):
        if word == "--":
            break
        if re.fullmatch(r"-(?:SIG)?RT(?:MIN|MAX)(?:[+-]\d+)?|-(?!h$)[A-Za-z][A-Za-z0-9]*", word):
            return [*argv[:index], word[1:], *argv[index + 1 :]]
    return argv


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter, which would import shutil to ask for the width, even
    when no help is printed."""
    return argparse.HelpFormatter(prog, width=max(_terminal_columns(), 20) - 2)


def _cli_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, bool]:
    """The CLI's parser, with every command or with ``only`` that one.

    Returns the parser and whether ``only`` named a command.
    """
    common = argparse.ArgumentParser(add_help=False, formatter_class=_help_formatter)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="control socket path")
    parser = argparse.ArgumentParser(
        prog="zinit",
        formatter_class=_help_formatter,
        description="Control a zinit daemon: a process supervisor with dependency management.",
        epilog="Also: 'zinit server ...' runs the daemon, 'zinit pid1 ...' the PID-1 shim, "
        "'zinit install DIR' links the three program names into DIR.",
    )
    parser.add_argument(
        "--socket", default=None, help="control socket (default: ZINIT_SOCKET or the platform path)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False,
        help="print JSON (works after the command too)",
    )
    parser.add_argument("--version", action="version", version=f"zinit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    found = False

    def add(name: str, handler: Callable[..., int], help_text: str) -> Any:
        nonlocal found
        if only is not None and name != only:
            return _Unbuilt()
        found = True
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            formatter_class=_help_formatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    add("list", _cmd_list, "list every unit with its state")
    add("status", _cmd_status, "show one unit's status").add_argument("name")
    for name, handler, text in (
        ("start", _cmd_start, "start a unit (and what it requires)"),
        ("restart", _cmd_restart, "restart a unit and the units that require it"),
    ):
        start = add(name, handler, text)
        start.add_argument("name")
        start.add_argument(
            "--wait", action="store_true", help="show progress and wait until it is up"
        )
        start.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="with --wait: give up after S seconds (the settle window included)",
        )
        start.add_argument(
            "--settle",
            type=float,
            default=None,
            metavar="S",
            help="with --wait: a service without a health check must stay Running S seconds "
            f"(default {_START_SETTLE_S:g}; 0: do not wait)",
        )
    add("stop", _simple("stop"), "stop a unit, after the units that require it").add_argument(
        "name"
    )
    kill = add("kill", _cmd_kill, "send a signal to a unit's process group")
    kill.add_argument("name")
    kill.add_argument("signal", nargs="?", default="SIGTERM")
    logs = add("logs", _cmd_logs, "show a unit's recent output (all units without a name)")
    logs.add_argument("name", nargs="?")
    logs.add_argument("-n", "--lines", type=int, default=None, help="last N lines")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    add("why", _cmd_why, "explain why a unit is in its state").add_argument("name")
    add("tree", _cmd_tree, "show the dependency tree").add_argument("name", nargs="?")
    add("reload", _cmd_reload, "re-read the config directory and apply the difference")
    add_service = add(
        "add-service", _cmd_add_service, "add a unit from a file, '-' (stdin) or TOML text"
    )
    add_service.add_argument("source")
    add_service.add_argument(
        "--name", default=None, help="unit name (default: file stem or [service].name)"
    )
    add("remove-service", _cmd_remove_service, "stop a unit and delete its file").add_argument(
        "name"
    )
    add("start-all", _cmd_start_all, "start every user-class unit")
    add("stop-all", _bulk("stop_all", "stopped"), "stop every user-class unit")
    delete_all = add(
        "delete-all", _cmd_delete_all, "stop every user-class unit and delete its file"
    )
    delete_all.add_argument(
        "-y", "--yes", action="store_true", help="do not ask first (asked only at a terminal)"
    )
    add("shutdown", _cmd_shutdown, "stop everything in order and end the daemon")
    add(
        "poweroff",
        lambda a, o: _cmd_shutdown(a, o, "poweroff"),
        "ordered shutdown, then power off (zinit-pid1)",
    )
    add(
        "reboot",
        lambda a, o: _cmd_shutdown(a, o, "reboot"),
        "ordered shutdown, then reboot (zinit-pid1)",
    )
    add("check", _cmd_check, "exit 0 only if every status=start unit is up (for health probes)")
    add("events", _cmd_events, "print state changes as they happen")
    add("tui", _cmd_tui, "a live view of every unit, with keys to start, stop, restart ...")
    add("debug-state", _cmd_debug_state, "dump the daemon's whole state as JSON")
    add("debug-procs", _cmd_debug_procs, "show a unit's process tree").add_argument("name")
    validate = add("validate", _cmd_validate, "check a config directory offline")
    validate.add_argument("directory", nargs="?")
    validate.add_argument("--config-dir", default=None, help=argparse.SUPPRESS)
    xinet = add("xinet", _cmd_xinet_help, "socket-activation proxies: set, delete, list, status")
    proxies = xinet.add_subparsers(dest="xinet_command", metavar="ACTION")

    def add_proxy(name: str, handler: Callable[..., int], text: str) -> Any:
        sub = proxies.add_parser(
            name, parents=[common], help=text, description=text, formatter_class=_help_formatter
        )
        sub.set_defaults(handler=handler)
        return sub

    set_proxy = add_proxy("set", _cmd_xinet_set, "create or replace a proxy")
    set_proxy.add_argument("name")
    set_proxy.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="ADDR",
        help="host:port, tcp:host:port, [v6]:port or unix:/path (repeatable)",
    )
    set_proxy.add_argument(
        "--backend", required=True, metavar="ADDR", help="where the service listens"
    )
    set_proxy.add_argument("--service", required=True, help="the unit to start on a connection")
    set_proxy.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        metavar="S",
        help="keep retrying the backend this long (default 30)",
    )
    set_proxy.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop the service after S seconds without a connection (0: never)",
    )
    set_proxy.add_argument(
        "--single-connection",
        action="store_true",
        help="refuse a second client while one is connected",
    )
    add_proxy("delete", _cmd_xinet_delete, "close a proxy and forget it").add_argument("name")
    add_proxy("list", _cmd_xinet_list, "list every proxy")
    add_proxy(
        "status", _cmd_xinet_status, "show a proxy's status (all without a name)"
    ).add_argument("name", nargs="?")
    return parser, found


def cli_main(argv: list[str]) -> int:
    """Run one CLI command; return the exit code (0, 1, 2 or 3)."""
    command = _command_word(argv)
    if command == "kill":
        argv = _signal_as_operand(argv)
    parser, found = _cli_parser(command)
    if not found:
        parser, _ = _cli_parser()
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        # A name the daemon could not decode (a file's raw bytes) prints escaped.
        sys.stdout.reconfigure(errors="backslashreplace")
    out = _Output(args.json)
    try:
        return args.handler(args, out)
    except ZinitError as error:
        for problem in error.every() if isinstance(error, ConfigError) else [error]:
            print(f"zinit: {problem}", file=sys.stderr)
        if isinstance(error, RpcError) and error.code in (INVALID_PARAMS, INVALID_REQUEST):
            return 2
        return _fault_of(error)[1]
    except BrokenPipeError:
        return 0
    except TimeoutError:
        where = args.socket or default_socket_path()
        within = f"{_answer_timeout():g}s"
        message = f"the daemon at {where} did not answer within {within} (stopped, or hung?)"
        print(f"zinit: {message}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


# -- tui ---------------------------------------------------------------------
# ``zinit tui`` (SPEC section 8): a curses view of every unit.  The loop sleeps
# in select() on the terminal and a wake-up pipe; reader threads turn the
# daemon's event and log streams into inbox items and write to the pipe.  So a
# change shows at once, and an idle view costs the daemon one ``list`` every
# _TUI_REFRESH_S (uptime, CPU and memory move on without events).

#: Below this many rows or columns the view shows a one-line message instead.
_TUI_MIN_ROWS = 10
_TUI_MIN_COLS = 60
#: Seconds between refreshes when nothing happens.
_TUI_REFRESH_S = 2.0
#: Seconds between attempts to reach a daemon that went away.
_TUI_RETRY_S = 1.0
#: Events closer together than this cost one ``list``.
_TUI_COALESCE_S = 0.05
#: Seconds a call from the view may take before the daemon counts as gone.
_TUI_CALL_TIMEOUT_S = 10.0
#: Log lines asked for, and kept, for the selected unit.
_TUI_LOG_LINES = 200
#: Problems first when sorting by state.
_TUI_STATE_ORDER = ("Failed", "Blocked", "Starting", "Stopping", "Running", "Exited", "Inactive")
#: Sort orders that ``o`` cycles through, each a key of a unit row (busiest first).
_TUI_SORTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "name": lambda u: u["name"],
    "state": lambda u: (_TUI_STATE_ORDER.index(u["state"]), u["name"]),
    "cpu": lambda u: (-(u.get("cpu_percent") or -1.0), u["name"]),
    "memory": lambda u: (-(u.get("rss_bytes") or -1), u["name"]),
    "restarts": lambda u: (-u.get("restarts", 0), u["name"]),
    "uptime": lambda u: (-(u.get("uptime_s") or -1.0), u["name"]),
}
#: The table: key, header, width.  NAME takes what the others leave.
_TUI_COLUMNS = (
    ("name", "NAME", 0),
    ("kind", "KIND", 7),
    ("state", "STATE", 8),
    ("pid", "PID", 7),
    ("uptime", "UPTIME", 7),
    ("restarts", "RESTARTS", 8),
    ("health", "HEALTH", 9),
    ("cpu", "CPU%", 6),
    ("memory", "MEM", 7),
)
#: Dropped, in this order, while NAME would be narrower than _TUI_MIN_NAME.
_TUI_OPTIONAL_COLUMNS = ("kind", "health", "restarts")
_TUI_MIN_NAME = 12
_TUI_HELP = (
    ("up/down j/k", "select a unit (PgUp/PgDn a page, Home/End the ends)"),
    ("s", "start the selected unit"),
    ("S or x", "stop it"),
    ("r", "restart it"),
    ("K", "send it a signal (asks which; Enter alone sends TERM)"),
    ("R", "reload the config directory"),
    ("t", "show or hide the dependency tree"),
    ("/", "filter by name (Enter keeps it, Esc clears it)"),
    ("o", "sort by the next column: " + ", ".join(_TUI_SORTS)),
    ("?", "this help (any key closes it)"),
    ("q", "quit"),
)
#: The bottom line when it has nothing else to say (fits in 80 columns).
_TUI_HINT = "s start S stop r restart K signal R reload t tree / filter o sort ? help q quit"
_ESC = 27


def _format_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for suffix in ("B", "K", "M", "G"):
        if size < 1024 or suffix == "G":
            return f"{size:.0f}{suffix}" if suffix == "B" or size >= 100 else f"{size:.1f}{suffix}"
        size /= 1024
    raise AssertionError("unreachable")


def _tui_cell(unit: dict[str, Any], key: str) -> str:
    """The text of one table cell."""
    match key:
        case "pid":
            return str(unit["pid"]) if unit.get("pid") else "-"
        case "uptime":
            return format_duration(unit.get("uptime_s"))
        case "restarts":
            return str(unit.get("restarts", 0))
        case "cpu":
            cpu = unit.get("cpu_percent")
            return "-" if cpu is None else f"{cpu:.1f}"
        case "memory":
            return _format_bytes(unit.get("rss_bytes"))
        case _:
            return str(unit.get(key) or "-")


def _tui_align(text: str, key: str, size: int) -> str:
    """Clip and pad a cell: numbers to the right, words to the left."""
    text = text[:size]
    return text.rjust(size) if key in ("pid", "restarts", "cpu", "memory") else text.ljust(size)


def _tui_columns(width: int) -> list[tuple[str, str, int]]:
    """The columns that fit in ``width``, NAME widened to fill the rest."""
    columns = list(_TUI_COLUMNS)
    optional = list(_TUI_OPTIONAL_COLUMNS)

    def name_width() -> int:
        return width - sum(w + 1 for _, _, w in columns[1:])

    while name_width() < _TUI_MIN_NAME and optional:
        dropped = optional.pop(0)
        columns = [column for column in columns if column[0] != dropped]
    return [("name", "NAME", max(4, name_width()))] + columns[1:]


def _tui_outcome(result: Any) -> str:
    """Describe the reply of an operation in a few words."""
    if isinstance(result, dict) and "added" in result:  # reload
        changes = [
            f"{key} {', '.join(result[key])}"
            for key in ("added", "removed", "changed")
            if result[key]
        ]
        text = "; ".join(changes) or "nothing changed"
        if result.get("errors"):
            text += f"; {len(result['errors'])} file(s) with errors (see zinit reload)"
        return text
    if isinstance(result, dict) and "signal" in result:
        return f"sent {result['signal']}"
    return "done"


def _tree_lines(forest: list[dict[str, Any]], ascii_only: bool) -> list[tuple[str, str | None]]:
    """Flatten ``zinit tree`` nodes into (text before the state, state) lines."""
    if ascii_only:
        branch, last_branch, pipe = "|- ", "`- ", "|  "
    else:
        branch, last_branch, pipe = "├─ ", "└─ ", "│  "
    lines: list[tuple[str, str | None]] = []

    def walk(node: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        relation = "" if root else f"{node['relation']} "
        mark = " (cycle)" if node.get("cycle") else ""
        mark += " (config error)" if node.get("error") else ""
        mark += " (see above)" if node.get("repeated") else ""
        mark += " (deeper levels not shown)" if node.get("truncated") else ""
        lead = "" if root else (last_branch if last else branch)
        lines.append((f"{prefix}{lead}{relation}{node['name']}{mark} ", node.get("state")))
        children = node.get("children", [])
        deeper = prefix if root else prefix + ("   " if last else pipe)
        for index, child in enumerate(children):
            walk(child, deeper, index == len(children) - 1, False)

    for node in forest:
        walk(node, "", True, True)
    return lines


@dataclasses.dataclass(slots=True)
class _TuiState:
    """What the view shows.  Keys and the daemon's replies change it; _TuiScreen draws it."""

    socket_path: str
    units: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    selected: str | None = None
    sort: str = "name"
    filter_text: str = ""
    #: ``why`` of the selected unit, as last fetched.
    why: dict[str, Any] | None = None
    logs: collections.deque[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=_TUI_LOG_LINES)
    )
    #: The dependency forest while the tree view is shown, else None.
    forest: list[dict[str, Any]] | None = None
    tree_offset: int = 0
    show_help: bool = False
    #: "filter" or "signal" while the bottom line asks for text.
    prompt: str | None = None
    prompt_text: str = ""
    message: str = ""
    connected: bool = False

    def visible(self) -> list[dict[str, Any]]:
        """The units that pass the filter, in the chosen order."""
        wanted = self.filter_text.lower()
        rows = [unit for unit in self.units if wanted in unit["name"].lower()]
        return sorted(rows, key=_TUI_SORTS[self.sort])

    def selected_index(self, rows: list[dict[str, Any]]) -> int:
        names = [row["name"] for row in rows]
        return names.index(self.selected) if self.selected in names else 0

    def move(self, delta: int) -> None:
        rows = self.visible()
        if rows:
            index = min(max(self.selected_index(rows) + delta, 0), len(rows) - 1)
            self.selected = rows[index]["name"]

    def keep_selection(self) -> None:
        """Select the first visible unit when the selected one is filtered out or gone."""
        rows = self.visible()
        if not rows:
            self.selected = None
        elif self.selected not in {row["name"] for row in rows}:
            self.selected = rows[0]["name"]

    def cycle_sort(self) -> None:
        orders = list(_TUI_SORTS)
        self.sort = orders[(orders.index(self.sort) + 1) % len(orders)]


class _TuiStream:
    """A subscribed connection whose notifications a thread hands to the view.

    The thread owns the client: it blocks in readline, puts ``(self, message)``
    on the inbox for each notification and ``(self, None)`` when the connection
    ends, and wakes the view each time.  close() shuts the socket down, which
    ends the read; items of a closed stream are told apart by their source.
    """

    def __init__(self, client: ZinitClient, inbox: Any, wake: Callable[[], None]) -> None:
        import threading

        self._sock = client._sock
        self._sock.settimeout(None)  # the stream may stay quiet for hours
        threading.Thread(
            target=self._pump, args=(client, inbox, wake), name="zinit-tui-stream", daemon=True
        ).start()

    def _pump(self, client: ZinitClient, inbox: Any, wake: Callable[[], None]) -> None:
        try:
            for message in client.notifications():
                inbox.put((self, message))
                wake()
        except (OSError, ValueError):
            pass  # shut down by close(), or a garbled frame: the stream ends either way
        finally:
            client.close()
            inbox.put((self, None))
            wake()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _TuiLink:
    """The view's connections: one for calls, a stream of events, a stream of logs.

    Calls that may take long (stop waits for the unit) run in a thread on a
    connection of their own, so the view stays live; their outcome comes back
    through the inbox as ``("message", text)``.
    """

    def __init__(self, path: str, inbox: Any, wake: Callable[[], None]) -> None:
        self.path = path
        self.inbox = inbox
        self.wake = wake
        self.calls: ZinitClient | None = None
        self.events: _TuiStream | None = None
        self.logs: _TuiStream | None = None
        self.logs_of: str | None = None

    def _open(self) -> ZinitClient:
        return ZinitClient.connect_unix(self.path, timeout=_TUI_CALL_TIMEOUT_S)

    def connect(self) -> None:
        """Connect and subscribe to events.  Raises DaemonUnavailable or OSError."""
        calls = self._open()
        try:
            events = self._open()
            events.call("events.subscribe")
        except BaseException:
            calls.close()
            raise
        self.calls = calls
        self.events = _TuiStream(events, self.inbox, self.wake)

    def close(self) -> None:
        for stream in (self.events, self.logs):
            if stream is not None:
                stream.close()
        if self.calls is not None:
            self.calls.close()
        self.calls = self.events = self.logs = self.logs_of = None

    def follow(self, name: str | None) -> None:
        """Stream the log lines of ``name`` (its recent ones first) instead of the last unit's."""
        if self.logs is not None:
            self.logs.close()
            self.logs = None
        self.logs_of = name
        if name is None:
            return
        client = self._open()
        try:
            client.call("logs.follow", {"name": name, "lines": _TUI_LOG_LINES})
        except DaemonUnavailable:
            client.close()
            raise
        except ZinitError:
            client.close()  # removed meanwhile: the next refresh selects another unit
            return
        self.logs = _TuiStream(client, self.inbox, self.wake)

    def act(self, label: str, operation: Callable[[ZinitClient], Any]) -> None:
        """Run ``operation`` in a thread; its outcome arrives as a message."""
        import threading

        def run() -> None:
            try:
                with ZinitClient.connect_unix(self.path) as client:
                    outcome = _tui_outcome(operation(client))
            except (ZinitError, OSError) as error:
                outcome = str(error)
            self.inbox.put(("message", f"{label}: {outcome}"))
            self.wake()

        threading.Thread(target=run, name="zinit-tui-action", daemon=True).start()


class _TuiScreen:
    """Draws a _TuiState on a curses window, in colour unless NO_COLOR is set."""

    def __init__(self, window: Any, curses: Any, colour: bool) -> None:
        import locale

        self.window = window
        self.curses = curses
        self.ascii_only = "utf" not in locale.getpreferredencoding(False).lower()
        self.attrs = self._palette(colour)

    def _palette(self, colour: bool) -> dict[str, int]:
        curses = self.curses
        attrs = dict.fromkeys(_STATE_COLOURS, curses.A_NORMAL)
        attrs.update(
            Exited=curses.A_DIM,
            Inactive=curses.A_DIM,
            Failed=curses.A_BOLD,
            bar=curses.A_REVERSE,
            banner=curses.A_REVERSE | curses.A_BOLD,
            heading=curses.A_BOLD,
            dim=curses.A_DIM,
        )
        if colour and curses.has_colors():
            try:
                curses.use_default_colors()
                background = -1
            except curses.error:
                background = curses.COLOR_BLACK
            for number, foreground in enumerate(
                (curses.COLOR_GREEN, curses.COLOR_YELLOW, curses.COLOR_RED), 1
            ):
                curses.init_pair(number, foreground, background)
            green, yellow, red = (curses.color_pair(n) for n in (1, 2, 3))
            attrs.update(Running=green, Starting=yellow, Stopping=yellow, Blocked=yellow)
            attrs.update(Failed=red | curses.A_BOLD, banner=red | curses.A_REVERSE | curses.A_BOLD)
        return attrs

    def state_attr(self, state: str | None) -> int:
        return self.attrs.get(state or "", self.curses.A_NORMAL)

    # -- writing -----------------------------------------------------------

    def _clean(self, text: str) -> str:
        """Make text safe to draw: no control characters (log lines may hold escapes)."""
        text = text.replace("\t", "    ")
        text = "".join(ch if ch.isprintable() else "?" for ch in text)
        if self.ascii_only:
            text = text.replace("—", "-").encode("ascii", "replace").decode()
        return text

    def put(self, y: int, x: int, text: str, width: int, attr: int = 0) -> int:
        """Write ``text`` at (y, x), clipped to ``width`` columns; return the columns used."""
        text = self._clean(text)[: max(0, width)]
        if not text:
            return 0
        try:
            self.window.addstr(y, x, text, attr)
        except self.curses.error:
            pass  # the bottom-right cell: curses writes it, then complains
        return len(text)

    def put_segments(self, y: int, segments: list[tuple[str, int]], width: int) -> None:
        x = 0
        for text, attr in segments:
            x += self.put(y, x, text, width - x, attr)

    def bar(self, y: int, text: str, width: int, attr: int) -> None:
        """A whole line in ``attr`` (reverse video for title and headers)."""
        self.put(y, 0, text.ljust(width), width, attr)

    # -- the parts ---------------------------------------------------------

    def draw(self, state: _TuiState) -> None:
        """Redraw everything: title, table and detail (or tree, or help), bottom line."""
        self.window.erase()
        rows, cols = self.window.getmaxyx()
        width = cols - 1  # the last column stays free, so no line wraps
        if rows < _TUI_MIN_ROWS or cols < _TUI_MIN_COLS:
            need = f"{_TUI_MIN_COLS}x{_TUI_MIN_ROWS}"
            self.put(0, 0, f"terminal too small ({cols}x{rows}, need {need})", cols)
        elif state.show_help:
            self._draw_help(rows, width)
        else:
            self._draw_title(state, width)
            body = rows - 2
            if state.forest is not None:
                self._draw_tree(state, 1, body, width)
            else:
                # The table takes what its rows need, up to half; the detail the rest.
                table = max(2, min(len(state.visible()) + 1, max(4, body // 2)))
                self._draw_table(state, 1, table, width)
                self._draw_detail(state, 1 + table, body - table, width)
            self._draw_bottom(state, rows - 1, width)
        self.window.refresh()

    def _draw_title(self, state: _TuiState, width: int) -> None:
        if not state.connected:
            text = f" daemon not reachable at {state.socket_path} — retrying"
            self.bar(0, text, width, self.attrs["banner"])
            return
        shown = len(state.visible())
        count = f"{shown} of {len(state.units)}" if shown != len(state.units) else str(shown)
        text = f" zinit  {count} units  sort: {state.sort}"
        if state.filter_text:
            text += f"  filter: {state.filter_text}"
        text += f"  {state.socket_path}"
        self.bar(0, text, width, self.attrs["bar"])

    def _draw_table(self, state: _TuiState, top: int, height: int, width: int) -> None:
        columns = _tui_columns(width)
        header = " ".join(_tui_align(title, key, size) for key, title, size in columns)
        self.bar(top, header, width, self.attrs["heading"] | self.curses.A_UNDERLINE)
        rows = state.visible()
        if not rows:
            empty = f"no unit matches {state.filter_text!r}" if state.filter_text else "no units"
            self.put(top + 1, 0, empty, width, self.attrs["dim"])
            return
        index = state.selected_index(rows)
        first = max(0, index - (height - 2))
        for y, unit in enumerate(rows[first : first + height - 1], top + 1):
            chosen = self.curses.A_REVERSE if unit["name"] == state.selected else 0
            if chosen:
                self.put(y, 0, " " * width, width, chosen)
            segments = []
            for key, _, size in columns:
                text = _tui_align(_tui_cell(unit, key), key, size)
                attr = self.state_attr(unit["state"]) if key == "state" else 0
                segments += [(text, attr | chosen), (" ", chosen)]
            self.put_segments(y, segments, width)

    def _draw_detail(self, state: _TuiState, top: int, height: int, width: int) -> None:
        unit = next((u for u in state.units if u["name"] == state.selected), None)
        if unit is None or height < 2:
            return
        rule = "-" if self.ascii_only else "─"
        self.put(top, 0, f"{rule * 2} {unit['name']} ".ljust(width, rule), width, self.attrs["dim"])
        why = state.why if state.why and state.why["name"] == unit["name"] else None
        facts = self._facts(unit, why)[: max(1, (height - 1) // 2)]
        for y, segments in enumerate(facts, top + 1):
            self.put_segments(y, segments, width)
        log_top = top + 1 + len(facts)
        room = top + height - log_top - 1
        if room < 1:
            return
        follows = f"log of {unit['name']} (following)" if state.connected else "log"
        self.put(log_top, 0, follows, width, self.attrs["dim"])
        for y, entry in enumerate(list(state.logs)[-room:], log_top + 1):
            marker = "!" if entry["stream"] == "stderr" else "|"
            clock = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
            self.put(y, 0, f"{clock} {marker} {entry['line']}", width)

    def _facts(
        self, unit: dict[str, Any], why: dict[str, Any] | None
    ) -> list[list[tuple[str, int]]]:
        """The detail lines above the log: state and reason, dependencies, warnings."""
        heading = self.attrs["heading"]
        reason = why["reason"] if why else unit.get("reason", "")
        lines = [
            [
                ("state  ", heading),
                (unit["state"], self.state_attr(unit["state"])),
                (f"  {reason}", 0),
            ]
        ]
        if why is None:
            return lines
        if why.get("blocked_by") and why["blocked_by"] != reason:
            lines.append([("blocked by  ", heading), (why["blocked_by"], 0)])
        if why.get("cycle"):
            lines.append([("cycle  ", heading), (why["cycle"], 0)])
        for relation in ("requires", "wants", "after", "conflicts"):
            deps = [dep for dep in why.get("dependencies", []) if dep["relation"] == relation]
            if not deps:
                continue
            segments = [(f"{relation}  ", heading)]
            for dep in deps:
                segments += [
                    (f"{dep['name']} ", 0),
                    (dep["state"] or "undefined", self.state_attr(dep["state"])),
                    ("  ", 0),
                ]
            lines.append(segments)
        if why.get("required_by"):
            lines.append([("required by  ", heading), (", ".join(why["required_by"]), 0)])
        lines += [[("warning  ", heading), (warning, 0)] for warning in why.get("warnings", [])]
        return lines

    def _draw_tree(self, state: _TuiState, top: int, height: int, width: int) -> None:
        self.bar(top, "dependency tree (t to close, j/k to scroll)", width, self.attrs["heading"])
        lines = _tree_lines(state.forest or [], self.ascii_only)
        state.tree_offset = min(state.tree_offset, max(0, len(lines) - (height - 1)))
        for y, (text, unit_state) in enumerate(lines[state.tree_offset :][: height - 1], top + 1):
            label = unit_state or "undefined"
            self.put_segments(y, [(text, 0), (f"[{label}]", self.state_attr(unit_state))], width)

    def _draw_help(self, rows: int, width: int) -> None:
        self.bar(0, " zinit tui: keys", width, self.attrs["bar"])
        for y, (keys, meaning) in enumerate(_TUI_HELP[: rows - 3], 2):
            self.put_segments(y, [(f"  {keys:<14}", self.attrs["heading"]), (meaning, 0)], width)
        self.put(rows - 1, 0, "press any key", width, self.attrs["dim"])

    def _draw_bottom(self, state: _TuiState, y: int, width: int) -> None:
        if state.prompt == "filter":
            self.put(y, 0, f"filter: {state.prompt_text}_", width, self.attrs["heading"])
        elif state.prompt == "signal":
            ask = f"signal for {state.selected} [TERM]: {state.prompt_text}_"
            self.put(y, 0, ask, width, self.attrs["heading"])
        else:
            self.put(
                y, 0, state.message or _TUI_HINT, width, 0 if state.message else self.attrs["dim"]
            )


class _Tui:
    """The loop: wait for a key, a daemon message or a deadline; act; redraw.

    Waiting is one select() on the terminal and the wake-up pipe, with the
    next deadline (refresh, or reconnect) as timeout: no polling.
    """

    def __init__(self, window: Any, curses: Any, socket_path: str, colour: bool) -> None:
        import queue

        self.window = window
        self.curses = curses
        self.state = _TuiState(socket_path=socket_path)
        self.screen = _TuiScreen(window, curses, colour)
        self.inbox: Any = queue.SimpleQueue()
        # Never closed: a reader thread may still write to it as the view ends,
        # and a closed descriptor number could by then name another file.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self.link = _TuiLink(socket_path, self.inbox, self.wake)
        self.changed_at = math.inf  # when events ask for a refresh
        self.usage_at = 0.0  # the next refresh with CPU and memory
        self.retry_at = 0.0
        self.resized = False
        self.running = True

    def wake(self) -> None:
        try:
            os.write(self._wake_write, b".")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is already pending

    def run(self) -> int:
        """Show the view until ``q``; return the exit code."""
        self.window.keypad(True)
        self.window.nodelay(True)
        self.curses.set_escdelay(25)  # Esc alone answers at once, not after a second
        try:
            self.curses.curs_set(0)
        except self.curses.error:
            pass
        # curses' own SIGWINCH handler cannot interrupt select(); this one wakes it.
        signal.signal(signal.SIGWINCH, self._on_resize)
        self.resized = True  # a resize before the handler was in place went unseen
        try:
            while self.running:
                self._sync()
                self.screen.draw(self.state)
                self._wait()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            self.link.close()
        return 0

    # -- the daemon --------------------------------------------------------

    def _sync(self) -> None:
        """Reconnect, refresh and follow the selected unit's log, as due."""
        now = time.monotonic()
        try:
            if not self.state.connected and now >= self.retry_at:
                self.link.connect()
                self.state.connected = True
                self.usage_at = now
            if self.state.connected and now >= min(self.changed_at, self.usage_at):
                self._refresh(with_usage=now >= self.usage_at)
            if self.state.connected and self.link.logs_of != self.state.selected:
                self.state.logs.clear()
                self.link.follow(self.state.selected)
        except (DaemonUnavailable, OSError):
            self._lost()

    def _refresh(self, with_usage: bool) -> None:
        """Fetch the units (and the selected one's ``why``, and the tree if shown)."""
        calls = self.link.calls
        assert calls is not None
        now = time.monotonic()
        units = calls.list(with_usage=with_usage)
        if not with_usage:  # keep the last figures until the next refresh with usage
            usage = {(u["name"], u.get("pid")): u for u in self.state.units}
            for unit in units:
                old = usage.get((unit["name"], unit.get("pid")), {})
                unit["cpu_percent"], unit["rss_bytes"] = (
                    old.get("cpu_percent"),
                    old.get("rss_bytes"),
                )
        self.state.units = units
        self.state.keep_selection()
        self.state.why = self._why(calls, self.state.selected)
        if self.state.forest is not None:
            self.state.forest = calls.tree()
        self.changed_at = math.inf
        if with_usage:
            self.usage_at = now + _TUI_REFRESH_S

    @staticmethod
    def _why(calls: ZinitClient, name: str | None) -> dict[str, Any] | None:
        if name is None:
            return None
        try:
            return calls.why(name)
        except DaemonUnavailable:
            raise
        except ZinitError:
            return None  # removed meanwhile

    def _lost(self) -> None:
        self.link.close()
        self.state.connected = False
        self.retry_at = time.monotonic() + _TUI_RETRY_S

    def _refresh_soon(self) -> None:
        self.changed_at = min(self.changed_at, time.monotonic() + _TUI_COALESCE_S)

    # -- waiting -----------------------------------------------------------

    def _wait(self) -> None:
        """Block until a key, a message or the next deadline; then handle them."""
        import select

        if self.state.connected:
            deadline = min(self.changed_at, self.usage_at)
        else:
            deadline = self.retry_at
        timeout = max(0.0, deadline - time.monotonic())
        terminal = sys.stdin.fileno()
        ready, _, _ = select.select([terminal, self._wake_read], [], [], timeout)
        if self._wake_read in ready:
            try:
                os.read(self._wake_read, 4096)
            except BlockingIOError:
                pass
        self._handle_inbox()
        if self.resized:
            self._resize()
        if terminal in ready:
            selected = self.state.selected
            self._handle_keys()
            self.state.keep_selection()
            if self.state.selected != selected:
                self._refresh_soon()  # its why, and its log stream (in _sync)

    def _handle_inbox(self) -> None:
        import queue

        while True:
            try:
                source, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            if source == "message":
                self.state.message = payload
                self._refresh_soon()
            elif source is self.link.events and source is not None:
                if payload is None:
                    self._lost()  # the daemon went away
                elif payload.get("method") == "event":
                    self._refresh_soon()
            elif source is self.link.logs and payload and payload.get("method") == "log":
                self.state.logs.append(payload["params"])

    def _on_resize(self, signum: int, frame: Any) -> None:
        self.resized = True
        self.wake()

    def _resize(self) -> None:
        self.resized = False
        try:
            size = os.get_terminal_size(sys.stdout.fileno())
        except OSError:
            return
        self.curses.resizeterm(size.lines, size.columns)
        self.window.clear()

    # -- keys --------------------------------------------------------------

    def _handle_keys(self) -> None:
        while self.running and (key := self.window.getch()) != -1:
            if key == self.curses.KEY_RESIZE:
                continue
            if self.state.show_help:
                self.state.show_help = False
            elif self.state.prompt is not None:
                self._prompt_key(key)
            else:
                self._command_key(key)

    def _command_key(self, key: int) -> None:
        curses = self.curses
        page = max(1, self.window.getmaxyx()[0] // 2 - 2)
        moves = {
            curses.KEY_UP: -1, ord("k"): -1, curses.KEY_DOWN: 1, ord("j"): 1,
            curses.KEY_PPAGE: -page, curses.KEY_NPAGE: page,
            curses.KEY_HOME: -(10**6), curses.KEY_END: 10**6,
        }  # fmt: skip
        commands: dict[int, Callable[[], None]] = {
            ord("q"): self._quit,
            ord("s"): lambda: self._operate("start"),
            ord("S"): lambda: self._operate("stop"),
            ord("x"): lambda: self._operate("stop"),
            ord("r"): lambda: self._operate("restart"),
            ord("K"): lambda: self._ask("signal"),
            ord("R"): self._reload,
            ord("t"): self._toggle_tree,
            ord("/"): lambda: self._ask("filter"),
            ord("o"): self.state.cycle_sort,
            ord("?"): self._show_help,
            _ESC: self._clear_filter,
        }
        self.state.message = ""
        if key in moves:
            self._move(moves[key])
        elif key in commands:
            commands[key]()

    def _move(self, delta: int) -> None:
        if self.state.forest is not None:
            self.state.tree_offset = max(0, self.state.tree_offset + delta)
        else:
            self.state.move(delta)

    def _quit(self) -> None:
        self.running = False

    def _show_help(self) -> None:
        self.state.show_help = True

    def _clear_filter(self) -> None:
        self.state.filter_text = ""

    def _toggle_tree(self) -> None:
        self.state.forest = None if self.state.forest is not None else []
        self.state.tree_offset = 0
        self._refresh_soon()

    def _ask(self, prompt: str) -> None:
        if prompt == "signal" and self.state.selected is None:
            self.state.message = "no unit selected"
            return
        self.state.prompt = prompt
        self.state.prompt_text = self.state.filter_text if prompt == "filter" else ""

    def _prompt_key(self, key: int) -> None:
        """Edit the bottom line; Enter applies it, Esc drops it (and clears a filter)."""
        state = self.state
        if key in (10, 13, self.curses.KEY_ENTER):
            if state.prompt == "signal":
                self._send_signal(state.prompt_text.strip() or "TERM")
            state.prompt = None
            return
        if key == _ESC:
            if state.prompt == "filter":
                state.filter_text = ""
            state.prompt = None
            return
        if key in (self.curses.KEY_BACKSPACE, 127, 8):
            state.prompt_text = state.prompt_text[:-1]
        elif 32 <= key < 127:
            state.prompt_text += chr(key)
        if state.prompt == "filter":
            state.filter_text = state.prompt_text  # the list narrows as you type

    def _operate(self, method: str) -> None:
        name = self.state.selected
        if name is None or not self.state.connected:
            self.state.message = "no unit selected" if name is None else "not connected"
            return
        self.state.message = f"{method} {name} ..."
        self.link.act(f"{method} {name}", lambda client: getattr(client, method)(name))

    def _send_signal(self, signal_name_: str) -> None:
        name = self.state.selected
        if name is None or not self.state.connected:
            return
        self.state.message = f"kill {name} {signal_name_} ..."
        self.link.act(f"kill {name}", lambda client: client.kill(name, signal_name_))

    def _reload(self) -> None:
        if not self.state.connected:
            self.state.message = "not connected"
            return
        self.state.message = "reload ..."
        self.link.act("reload", lambda client: client.reload())


def _cmd_tui(args: argparse.Namespace, out: _Output) -> int:
    """Run the live view until the user quits (SPEC section 8)."""
    if out.as_json:
        raise UsageError("tui: --json does not apply to the live view")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("tui: needs a terminal")
    import curses

    path = args.socket or default_socket_path()
    colour = "NO_COLOR" not in os.environ
    # curses prefers LINES and COLUMNS to the terminal's real size, and keeps
    # them over a resize; exported by a parent (pytest does), they pin the view.
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    window = curses.initscr()
    try:
        curses.noecho()
        curses.cbreak()
        if colour and curses.has_colors():
            curses.start_color()  # not without colour: it would paint white on black
        return _Tui(window, curses, path, colour).run()
    finally:
        window.keypad(False)
        curses.nocbreak()
        curses.echo()
        curses.endwin()


# ==== 11. Daemon runtime =====================================================
# The daemon half starts here: everything below may use gevent and psutil,
# always imported inside functions.  _Runtime owns the gevent hub set-up: no
# monkey-patching (stdlib Popen deadlocks under patch_all(subprocess=False),
# so we use gevent's explicit APIs), libev's SIGCHLD handler as the one
# reaper, and PR_SET_CHILD_SUBREAPER so that orphans come back to us.


def _log() -> Any:
    import logging

    return logging.getLogger("zinit")


def _set_child_subreaper() -> bool:
    """Ask the kernel to re-parent orphaned descendants to this process."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36  # prctl(2)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        _log().warning("cannot become a subreaper: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


class _Runtime:
    """The gevent hub, child-exit notification and the orphan reaper.

    libev reaps every child (``waitpid(-1)`` in its SIGCHLD handler) and hands
    each status to the watchers of that pid and to the pid-0 watcher; the
    latter wakes whoever waits for "any exit" (a sweep of leftovers).
    """

    def __init__(self) -> None:
        import gevent
        import gevent.event

        self.gevent = gevent
        self.hub = gevent.get_hub()
        self.loop = self.hub.loop
        self.loop.install_sigchld()
        self.is_subreaper = _set_child_subreaper()
        self._exit_waiters: set[Any] = set()
        self.pipe_readers: set[_PipeReader] = set()
        # Looked up once (the level is set before this): hot paths test these flags.
        self.debug = _log().isEnabledFor(_LOG_DEBUG)
        self.trace = _log().isEnabledFor(_LOG_TRACE)
        self._any_child = self.loop.child(0, False)
        self._any_child.start(self._on_any_exit, self._any_child)
        self.clock = time.monotonic

    def _on_any_exit(self, watcher: Any) -> None:
        if self.debug:
            try:
                how = describe_exit(os.waitstatus_to_exitcode(watcher.rstatus))
            except ValueError:
                how = f"wait status {watcher.rstatus}"
            _log().debug("reaped pid %d (%s)", watcher.rpid, how)
        for event in self._exit_waiters:
            event.set()

    def watch_child(self, popen: Any, callback: Callable[[int], None]) -> Any:
        """Call ``callback(returncode)`` in the hub when ``popen``'s process ends.

        Must be called before the caller yields after spawning: libev then
        dispatches the status to this watcher, whoever ran waitpid.  The
        Popen gets its returncode set so that it never lands on
        subprocess._active, where Popen would reap it behind libev's back.
        """
        watcher = self.loop.child(popen.pid, False)

        def exited(watcher: Any = watcher) -> None:
            watcher.stop()
            popen.returncode = os.waitstatus_to_exitcode(watcher.rstatus)
            callback(popen.returncode)

        watcher.start(exited)
        return watcher

    def wait_any_exit(self, timeout: float | None) -> None:
        """Block until some child of the daemon is reaped, or ``timeout`` passes."""
        import gevent.event

        event = gevent.event.Event()
        self._exit_waiters.add(event)
        try:
            event.wait(timeout)
        finally:
            self._exit_waiters.discard(event)


# ==== 12. Log ring ===========================================================
# A bounded ring of lines per unit, fed by one pipe reader per stream.
# Readers are io-watcher callbacks on the hub (no polling, no greenlet) and cut
# lines at MAX_LOG_LINE_BYTES so that memory stays bounded whatever a service writes.


class LogRing:
    """The last ``capacity`` lines of one unit, as (wall time, stream, text)."""

    def __init__(
        self, unit: str, capacity: int, publish: Callable[[str, list[dict]], None]
    ) -> None:
        self.unit = unit
        self.lines: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=capacity)
        self._publish = publish

    def resize(self, capacity: int) -> None:
        if capacity != self.lines.maxlen:
            self.lines = collections.deque(self.lines, maxlen=capacity)

    def extend(self, stream: str, texts: list[str]) -> None:
        """Append lines read at one instant, and hand them to followers."""
        now = time.time()
        entries = [(now, stream, text) for text in texts]
        self.lines.extend(entries)
        self._publish(self.unit, entries)

    def entry_dict(self, entry: tuple[float, str, str]) -> dict[str, Any]:
        return {"time": entry[0], "unit": self.unit, "stream": entry[1], "line": entry[2]}

    def tail(self, count: int | None) -> list[dict[str, Any]]:
        entries = list(self.lines)
        if count is not None:
            entries = entries[-count:] if count else []
        return [self.entry_dict(entry) for entry in entries]


class _BackgroundWriter:
    """Write lines to a stream from an OS thread, so a slow reader never blocks the hub.

    The daemon's stdout and stderr may be a full pipe or a stalled log driver;
    a blocking write on the hub would freeze every unit and the socket.  The
    buffer is bounded: past ``limit`` pending lines the oldest are dropped and
    the drop is reported in the stream.  The thread sleeps on a condition
    variable, so an idle daemon still never wakes up.
    """

    def __init__(self, stream: Any, limit: int = 10_000) -> None:
        import threading

        self._stream = stream
        self._limit = limit
        self._pending: collections.deque[str] = collections.deque()
        self._dropped = 0
        self._closed = False
        self._waiting = False
        self._schedule: Callable[[Callable[[], None]], Any] | None = None
        self._kick_pending = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="zinit-writer", daemon=True)
        self._thread.start()

    def coalesce(self, schedule: Callable[[Callable[[], None]], Any]) -> None:
        """Wake the thread once per turn of the event loop, not once per line.

        ``schedule`` runs a callback at the end of the loop's current turn, from
        any thread; a burst (500 units starting log 1,500 lines) then costs a
        few wake-ups, and each costs a thread switch.
        """
        self._schedule = schedule

    def write_lines(self, lines: list[str]) -> None:
        """Queue newline-terminated lines; never blocks for long."""
        with self._ready:
            self._pending.extend(lines)
            excess = len(self._pending) - self._limit
            for _ in range(max(0, excess)):
                self._pending.popleft()
            self._dropped += max(0, excess)
            # A thread that is awake takes everything pending before it waits again.
            if not self._waiting or self._kick_pending:
                return
            if self._schedule is None:
                self._ready.notify()
                return
            self._kick_pending = True
        self._schedule(self._kick)

    def _kick(self) -> None:
        with self._ready:
            self._kick_pending = False
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._waiting = True
                    self._ready.wait()
                    self._waiting = False
                if not self._pending:
                    return
                batch, self._pending = self._pending, collections.deque()
                dropped, self._dropped = self._dropped, 0
            text = "".join(batch)
            if dropped:
                text = f"zinit | ({dropped} lines dropped: the reader is too slow)\n" + text
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):
                return

    def close(self, timeout: float = 2.0) -> None:
        """Write what is pending (waiting up to ``timeout``) and end the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)


class _PipeReader:
    """Feeds one output pipe of a service into its log ring, line by line, until EOF.

    Driven by an io watcher's callback, not a greenlet: a parked greenlet keeps
    a copy of its stack (about 8 KiB), and every unit has two pipes.  One read
    per readiness, so a service flooding its output gets one chunk per loop
    turn and cannot starve the control socket or the other services.  The fd
    is closed at EOF (every writer gone), on a read error, or by close().
    """

    def __init__(self, runtime: _Runtime, fd: int, ring: LogRing, stream: str) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self.ring = ring
        self.stream = stream
        self.pending = b""
        self.live = runtime.pipe_readers  # holds this reader until its pipe is done
        self.live.add(self)
        self.watcher = runtime.loop.io(fd, 1)
        self.watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        try:
            self._read_once()
        except Exception:  # noqa: BLE001 - whatever it was, the pipe must not stay full
            # A bug here must not leave the pipe full and unread: the service
            # would block on its next write.  Closed, it gets EPIPE instead.
            _log().exception("%s: reading its %s failed", self.ring.unit, self.stream)
            self.close()
        except BaseException:
            self.close()
            raise

    def _read_once(self) -> None:
        if self.fd is None:
            return
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            if self.pending:
                self.ring.extend(self.stream, _split_lines(self.pending))
            self.close()
            return
        pending = self.pending + chunk
        if b"\n" in chunk:
            complete, _, pending = pending.rpartition(b"\n")
            self.ring.extend(self.stream, _split_lines(complete))
        if len(pending) > MAX_LOG_LINE_BYTES:
            # Cut whole 64 KiB pieces off a line that is still growing; keep
            # the rest (at least one byte) for the next read.
            cut = (len(pending) - 1) // MAX_LOG_LINE_BYTES * MAX_LOG_LINE_BYTES
            self.ring.extend(self.stream, _split_lines(pending[:cut]))
            pending = pending[cut:]
        self.pending = pending

    def close(self) -> None:
        """Stop reading and close the fd (what is still in the pipe is dropped)."""
        if self.fd is None:
            return
        self.watcher.close()
        os.close(self.fd)
        self.fd = None
        self.pending = b""
        self.live.discard(self)


def _split_lines(data: bytes) -> list[str]:
    """Decode complete lines, cutting any line longer than MAX_LOG_LINE_BYTES."""
    lines = []
    for line in data.decode("utf-8", "replace").split("\n"):
        line = line.removesuffix("\r")
        if len(line) * 4 <= MAX_LOG_LINE_BYTES:  # short enough whatever its encoding
            lines.append(line)
            continue
        raw = line.encode("utf-8", "replace")
        for start in range(0, max(len(raw), 1), MAX_LOG_LINE_BYTES):
            lines.append(raw[start : start + MAX_LOG_LINE_BYTES].decode("utf-8", "replace"))
    return lines


# ==== 13. Processes ==========================================================
# Spawning a service (own session and process group, optional user/group,
# a per-service cgroup v2 leaf when one is writable), signalling its whole
# tree, and finding what is left of it after the main process ended.


class _SpawnError(Exception):
    """The service could not be started; the text says why, for ``zinit why``.

    ``transient`` when the daemon lacked a resource (file descriptors, memory,
    processes): trying again later may work, so the restart policy applies.
    ``status`` is what a shell would have exited with: 127 for a program not
    found, 126 for one that cannot be run, else 1.
    """

    def __init__(self, message: str, *, transient: bool = False, status: int = 1) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


def _output_pipe() -> tuple[int, int]:
    """A pipe for a service's output, or the _SpawnError that says why there is none."""
    try:
        return os.pipe()
    except OSError as error:
        short = _short_of_resources(error)
        raise short or _SpawnError(f"cannot make a pipe ({error.strerror})") from None


def _short_of_resources(error: OSError) -> _SpawnError | None:
    """A _SpawnError for an error that says the daemon is short of something, else None."""
    import errno

    what = {
        errno.EMFILE: "file descriptors",
        errno.ENFILE: "file descriptors (system-wide)",
        errno.ENOMEM: "memory",
        errno.EAGAIN: "processes (or another resource)",
    }.get(error.errno or 0)
    if what is None:
        return None
    return _SpawnError(f"the daemon is out of {what} ({error.strerror})", transient=True)


def _cgroup2_mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, root inside the hierarchy, super options) of each cgroup2 mount."""
    try:
        with open("/proc/self/mountinfo") as stream:
            mounts = [line.split() for line in stream]
    except OSError:
        return []
    found = []
    for fields in mounts:
        separator = fields.index("-")
        if fields[separator + 1] == "cgroup2":
            found.append((fields[4], fields[3], fields[-1].split(",")))
    return found


def _own_cgroup_dir() -> str | None:
    """Return this process's directory in a writable cgroup v2 mount, if any."""
    try:
        with open("/proc/self/cgroup") as stream:
            own = next((line.strip()[3:] for line in stream if line.startswith("0::")), None)
    except OSError:
        return None
    if own is None:
        return None
    for point, root, _ in _cgroup2_mounts():
        if root == "/":
            directory = os.path.join(point, own.lstrip("/"))
            if os.access(os.path.join(directory, "cgroup.procs"), os.W_OK):
                return directory
    return None


def _slow_cgroup_mount(directory: str) -> str | None:
    """The mount point of ``directory``'s cgroup2 when it lacks favordynmods the kernel offers.

    Without it, moving a process into a cgroup after a quiet spell waits for an
    RCU grace period (7-10 ms): a crash restart or an xinet activation pays it.
    """
    try:
        with open("/sys/kernel/cgroup/features") as stream:
            if "favordynmods" not in stream.read().split():
                return None
    except OSError:
        return None
    inside = [
        (point, options)
        for point, _, options in _cgroup2_mounts()
        if (directory.rstrip("/") + "/").startswith(point.rstrip("/") + "/")
    ]
    if not inside:
        return None
    point, options = max(inside, key=lambda mount: len(mount[0]))  # the innermost mount
    return None if "favordynmods" in options else point


def _delete_unit_file(path: str) -> None:
    """Delete a unit's file; one that cannot go (now a directory, say) is logged, and the
    unit is forgotten all the same (the next reload reports what the path holds)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        _log().warning("cannot delete %s: %s", path, error.strerror)


def _file_identity(path: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a file, or None if it cannot be read."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


def _write_cgroup_file(directory: str, name: str, text: str) -> None:
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


#: How long the services of a dead server get after SIGTERM, and after SIGKILL.
_ORPHAN_STOP_S = 5.0


class _Cgroups:
    """Per-service cgroup v2 leaves under ``<own cgroup>/zinit-<pid>/``.

    To put a new process into its leaf without a preexec_fn (which forces
    Python's slow fork path), the daemon moves itself into the leaf, spawns,
    and moves back; nothing yields in between.  A move costs tens of
    microseconds, except the first after a quiet spell: the kernel's global
    threadgroup lock then waits for an RCU grace period (7-10 ms here), which a
    restart pays unless the hierarchy is mounted with favordynmods.  Threaded
    leaves, where only the spawning thread moves, would spare it too, but
    nothing could then make cgroups below a unit: no nested supervisor, no
    container engine.  So leaves are ordinary cgroups.
    """

    def __init__(self) -> None:
        own = _own_cgroup_dir()
        self.own = own
        self.root: str | None = None
        if own is None:
            return
        # zinit-pid1 names the root, so that it can clean up after a crashed server.
        root = os.environ.get("ZINIT_CGROUP_ROOT") or os.path.join(own, f"zinit-{os.getpid()}")
        if "ZINIT_CGROUP_ROOT" not in os.environ:
            self._end_what_dead_servers_left(own)  # zinit-pid1 does that for its servers
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as error:
            _log().info("no per-service cgroups (%s); using process groups", error.strerror)
            return
        self.root = root
        slow_mount = _slow_cgroup_mount(own)
        if slow_mount is not None:
            _log().info(
                "cgroup2 at %s is mounted without favordynmods: a unit started after a quiet"
                " spell waits about 10 ms for the kernel's threadgroup lock;"
                " `mount -o remount,favordynmods %s` lifts the wait (README: Restart latency)",
                slow_mount,
                slow_mount,
            )

    @staticmethod
    def _end_what_dead_servers_left(own: str) -> None:
        """Stop the services of a zinit-server that was killed (-9) in this same cgroup.

        Its ``zinit-<pid>`` directory outlives it, and so do its services,
        unsupervised: a new daemon would start second copies beside them.
        Only processes that carry the dead server's tag are ended, and a
        directory is left alone when anything in it is out of sight (another
        PID namespace, whose pids read 0 here and mean someone else's, live
        server) or untagged.  SIGTERM, SIGKILL after _ORPHAN_STOP_S; they are
        not our children, so their cgroups are looked at until they empty.
        """
        try:
            mine = os.readlink("/proc/self/ns/pid")
            entries = os.listdir(own)
        except OSError:
            return
        stale: dict[str, list[int]] = {}
        for entry in entries:
            owner = entry.removeprefix("zinit-")
            # zinit-pid1 names its roots with 12 hex digits; pids have at most 7.
            if not entry.startswith("zinit-") or not owner.isdigit() or len(owner) > 7:
                continue
            if int(owner) != os.getpid() and _is_running(int(owner)):
                continue  # its server lives (or the pid is someone else's now)
            directory = os.path.join(own, entry)
            pids = _Cgroups.pids(directory)
            if all(_is_tagged_by(pid, owner, mine) for pid in pids):
                stale[directory] = pids
        left = [pid for pids in stale.values() for pid in pids]
        if left:
            _log().warning(
                "a zinit-server that is gone left %d process(es) in %s: stopping them",
                len(left),
                ", ".join(d for d, pids in stale.items() if pids),
            )
            for signum in (signal.SIGTERM, signal.SIGKILL):
                _stop_signal(functools.partial(_kill_pids, left), signum)
                if _Cgroups._wait_emptied(list(stale), _ORPHAN_STOP_S):
                    break
                left = [pid for d in stale for pid in _Cgroups.pids(d)]
        for directory in stale:
            _Cgroups.remove_tree(directory)

    @staticmethod
    def _wait_emptied(directories: list[str], limit_s: float) -> bool:
        """Wait until no process is left in ``directories`` (or below); False after ``limit_s``.

        Blocks the caller (start-up only).  cgroup.events wakes poll(2) with
        POLLPRI when its "populated" line changes, so this sleeps until then.
        """
        import select

        deadline = time.monotonic() + limit_s
        fds = []
        try:
            for directory in directories:
                try:
                    fds.append(os.open(os.path.join(directory, "cgroup.events"), os.O_RDONLY))
                except OSError:
                    continue  # gone already
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLPRI)
            while True:
                busy = any(b"populated 1" in os.pread(fd, 4096, 0) for fd in fds)
                remaining = deadline - time.monotonic()
                if not busy or remaining <= 0:
                    return not busy
                poller.poll(remaining * 1000)
        finally:
            for fd in fds:
                os.close(fd)

    def leaf(self, name: str) -> str | None:
        if self.root is None:
            return None
        path = os.path.join(self.root, name)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            return None
        return path

    def _enter(self, directory: str) -> None:
        _write_cgroup_file(directory, "cgroup.procs", str(os.getpid()))

    def spawn_in(self, leaf: str | None, spawn: Callable[[], Any]) -> tuple[Any, str | None]:
        """Run ``spawn`` inside ``leaf``; return its result and the leaf it ran in (or None)."""
        if leaf is None or self.own is None:
            return spawn(), None
        try:
            self._enter(leaf)
        except OSError as error:
            _log().warning(
                "cannot enter cgroup %s (%s); tracking the unit by process group",
                leaf,
                error.strerror,
            )
            return spawn(), None
        try:
            return spawn(), leaf
        finally:
            try:
                self._enter(self.own)
            except OSError as error:  # the new process is running: do not lose it
                _log().error("cannot leave cgroup %s (%s)", leaf, error.strerror)

    @staticmethod
    def pids(leaf: str | None) -> list[int]:
        """Every process in the leaf and in cgroups a unit made below it."""
        if leaf is None:
            return []
        found: set[int] = set()
        for directory, _, _ in os.walk(leaf):
            try:
                with open(os.path.join(directory, "cgroup.procs")) as stream:
                    found.update(int(line) for line in stream if line.strip())
            except (OSError, ValueError):
                continue
        # Never the daemon, whatever happens; 0 is a process of another PID namespace.
        return sorted(found - {os.getpid(), 0})

    @staticmethod
    def kill_all(leaf: str | None) -> bool:
        """SIGKILL everything in the leaf (cgroup.kill, Linux 5.14+, or one by one)."""
        if leaf is None:
            return False
        try:
            _write_cgroup_file(leaf, "cgroup.kill", "1")
            return True
        except OSError:
            pass
        pids = _Cgroups.pids(leaf)  # a process forked after this is found by the next look
        _kill_pids(pids, signal.SIGKILL)
        return bool(pids)

    def remove(self, leaf: str | None) -> None:
        if leaf is not None:
            self._remove_below(leaf)

    @staticmethod
    def _remove_below(directory: str) -> None:
        """rmdir a cgroup and those made below it, deepest first (only empty ones go)."""
        for path, _, _ in os.walk(directory, topdown=False):
            try:
                os.rmdir(path)
            except OSError:
                pass

    def close(self) -> None:
        self.remove_tree(self.root)

    @staticmethod
    def remove_tree(root: str | None) -> None:
        """Remove an emptied per-daemon cgroup directory and its leaves."""
        if root is None or not os.path.isdir(root):
            return
        _Cgroups._remove_below(root)


@functools.cache
def _base_environment() -> dict[str, str]:
    """What every service inherits; the daemon never changes its own environment."""
    env = dict(os.environ)
    # The shim's variables are for this server: a zinit started by a unit must
    # not take them (it would share this server's cgroup root).
    for name in ("NOTIFY_SOCKET", "ZINIT_CGROUP_ROOT", "ZINIT_PID1_PID", "ZINIT_PID1_STATUS_FD"):
        env.pop(name, None)
    return env


def _service_environment(config: UnitConfig) -> dict[str, str]:
    env = _base_environment().copy()
    env.update(config.env)
    env["ZINIT_SERVICE"] = config.name
    env["ZINIT_SERVER_PID"] = str(os.getpid())
    return env


def _numeric_id(text: str, what: str) -> int:
    """A uid or gid written as a number; 4294967295 is -1 to the kernel ("no change")."""
    number = int(text)
    if number >= 2**32 - 1:
        raise _SpawnError(f"{what} {text!r} is not a valid {what[0]}id (0 to 4294967294)")
    return number


def _credentials(config: UnitConfig, env: dict[str, str]) -> dict[str, Any]:
    """Return Popen's user/group arguments, updating HOME, USER and LOGNAME."""
    if not (config.user or config.group):
        return {}
    if not _is_root():
        raise _SpawnError("user/group need the daemon to run as root")
    import grp
    import pwd

    arguments: dict[str, Any] = {}
    gid = None
    if config.group:
        try:
            gid = grp.getgrnam(config.group).gr_gid
        except KeyError:
            if not _is_decimal(config.group):
                raise _SpawnError(f"group {config.group!r} does not exist") from None
            gid = _numeric_id(config.group, "group")  # a bare gid needs no group entry
    if config.user:
        try:
            account = pwd.getpwnam(config.user)
        except KeyError:
            if not _is_decimal(config.user):
                raise _SpawnError(f"user {config.user!r} does not exist") from None
            uid = _numeric_id(config.user, "user")
            try:
                account = pwd.getpwuid(uid)
            except KeyError:
                # A uid with no passwd entry (common in containers): no name,
                # no home, no supplementary groups; its gid is the uid unless set.
                env.update(HOME="/", USER=config.user, LOGNAME=config.user)
                arguments["user"] = uid
                arguments["extra_groups"] = []
                arguments["group"] = uid if gid is None else gid
                return arguments
        gid = account.pw_gid if gid is None else gid
        arguments["user"] = account.pw_uid
        arguments["extra_groups"] = os.getgrouplist(account.pw_name, gid)
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    else:
        arguments["extra_groups"] = []
    arguments["group"] = gid
    return arguments


def _spawn_service(
    config: UnitConfig, cgroups: _Cgroups, leaf: str | None
) -> tuple[Any, int, int, str | None]:
    """Start a service's main process in its own session.

    Returns (Popen, stdout read fd, stderr read fd, the cgroup it runs in or
    None).  Raises _SpawnError with a reason that names what is missing
    (binary, directory, user).
    """
    import subprocess

    env = _service_environment(config)
    credentials = _credentials(config, env)
    argv = config.argv
    if config.dir is not None and not os.path.isdir(config.dir):
        raise _SpawnError(f"working directory {config.dir!r} does not exist")
    out_read, out_write = _output_pipe()
    try:
        err_read, err_write = _output_pipe()
    except _SpawnError:
        os.close(out_read)
        os.close(out_write)
        raise
    try:
        popen, leaf = cgroups.spawn_in(
            leaf,
            lambda: subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                cwd=config.dir,
                env=env,
                start_new_session=True,
                close_fds=True,
                **credentials,
            ),
        )
    except FileNotFoundError as error:
        for fd in (out_read, err_read):
            os.close(fd)
        if config.dir is not None and error.filename == config.dir:
            raise _SpawnError(f"working directory {config.dir!r} does not exist") from None
        where = "" if "/" in argv[0] else " on PATH"
        raise _SpawnError(f"executable {argv[0]!r} not found{where}", status=127) from None
    except PermissionError:
        for fd in (out_read, err_read):
            os.close(fd)
        raise _SpawnError(f"permission denied running {argv[0]!r}", status=126) from None
    except OSError as error:
        for fd in (out_read, err_read):
            os.close(fd)
        if (short := _short_of_resources(error)) is not None:
            raise short from None
        raise _SpawnError(
            f"cannot run {argv[0]!r}: {error.strerror or error}", status=126
        ) from None
    except (ValueError, TypeError) as error:  # e.g. a NUL byte in the command line
        for fd in (out_read, err_read):
            os.close(fd)
        raise _SpawnError(f"cannot run {argv[0]!r}: {error}") from None
    finally:
        os.close(out_write)
        os.close(err_write)
    return popen, out_read, err_read, leaf


def _signal_tree(pgid: int | None, leaf: str | None, signum: int) -> None:
    """Send ``signum`` once to every process of a group and of a cgroup leaf.

    Members of the group are skipped in the leaf pass: a second SIGTERM is
    "quit now" to many programs, and realtime signals would be counted twice.
    """
    if pgid is not None:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in _Cgroups.pids(leaf):
        try:
            if pgid is None or os.getpgid(pid) != pgid:
                os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_signal(send: Callable[[int], None], signum: int) -> None:
    """Send a stop signal through ``send``, then SIGCONT (as systemd does): a process
    that was stopped (SIGSTOP, a debugger's ^Z) acts on the signal only once continued."""
    send(signum)
    if signum not in (signal.SIGKILL, signal.SIGCONT):
        send(signal.SIGCONT)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process here (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return stream.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _is_tagged_by(pid: int, server: str, namespace: str) -> bool:
    """Whether ``pid`` is a service of zinit-server ``server`` in our PID namespace."""
    if pid <= 0:
        return False  # a process of another PID namespace
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
            return False
        with open(f"/proc/{pid}/environ", "rb") as stream:
            return f"ZINIT_SERVER_PID={server}".encode() in stream.read().split(b"\0")
    except OSError:
        return False


def _tagged_processes(name: str) -> list[int]:
    """The daemon's children that carry ZINIT_SERVICE=name (no cgroup case).

    Escaped descendants re-parent to the daemon (a subreaper) once their own
    parent is gone, so only direct children need their environment read.
    """
    import psutil

    mine = str(os.getpid())
    found = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return found
    for process in children:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            env = process.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("ZINIT_SERVICE") == name and env.get("ZINIT_SERVER_PID") == mine:
            found.append(process.pid)
    return found


def _process_name(process: Any) -> str:
    import psutil

    try:
        return process.name()
    except psutil.Error:
        return "?"


def _leftovers(name: str, pgid: int, leaf: str | None) -> list[int]:
    """Processes still alive from a service whose main process has ended."""
    if leaf is not None:
        return _Cgroups.pids(leaf)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return _tagged_processes(name)
    return sorted(set(_tagged_processes(name)) | {-pgid})


def _kill_pids(pids: list[int], signum: int) -> None:
    """Signal each pid; a negative one is a process group, 0 is skipped (never our own)."""
    for pid in pids:
        try:
            if pid == 0:
                continue
            if pid < 0:
                os.killpg(-pid, signum)
            else:
                os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


# ==== 14. Health checks ======================================================
# One probe = one bounded attempt: http (2xx/3xx), tcp (connect) or exec
# (exit 0).  Each returns (ok, detail) and never raises; the timeout bounds
# the whole attempt, and an exec probe's process group is killed with it.


def _probe(runtime: _Runtime, config: UnitConfig) -> tuple[bool, str]:
    """Run one health check of a unit.  Blocks (cooperatively) up to ``timeout_ms``."""
    health = config.health
    assert health is not None
    timeout = health.timeout_ms / 1000
    gevent = runtime.gevent
    try:
        with gevent.Timeout(timeout):
            if health.type == "tcp":
                return _probe_tcp(health.endpoint, timeout)
            if health.type == "http":
                return _probe_http(health.endpoint, timeout)
            return _probe_exec(runtime, config)
    except gevent.Timeout:
        return False, f"{health.type} check timed out after {timeout:g}s"
    except Exception as error:  # noqa: BLE001 - a probe must never take the service down
        return False, f"{health.type} check error: {error}"


def _probe_tcp(endpoint: str, timeout: float) -> tuple[bool, str]:
    import gevent.socket

    host, port = split_host_port(endpoint)
    try:
        connection = gevent.socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        return False, f"tcp {endpoint}: {error.strerror or error}"
    connection.close()
    return True, f"tcp {endpoint} accepts connections"


def _probe_http(url: str, timeout: float) -> tuple[bool, str]:
    import http.client
    import urllib.parse

    import gevent.socket

    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    if secure:
        import gevent.ssl

    port = parts.port or (443 if secure else 80)

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = gevent.socket.create_connection((parts.hostname, port), timeout=timeout)
            if secure:
                # A health check asks "does it answer", not "is it who it
                # claims": internal endpoints often use self-signed certs.
                context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = gevent.ssl.CERT_NONE
                self.sock = context.wrap_socket(self.sock, server_hostname=parts.hostname)

    connection = Connection(parts.hostname or "localhost", port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        connection.request("GET", path, headers={"User-Agent": f"zinit/{__version__} health"})
        response = connection.getresponse()
        response.read(65536)
    except (OSError, http.client.HTTPException) as error:
        return (
            False,
            f"GET {url}: {getattr(error, 'strerror', None) or error or type(error).__name__}",
        )
    finally:
        connection.close()
    if 200 <= response.status < 400:
        return True, f"GET {url}: {response.status}"
    return False, f"GET {url}: {response.status} {response.reason}"


def _probe_exec(runtime: _Runtime, config: UnitConfig) -> tuple[bool, str]:
    """Run the check command as the service runs: its user, group, env and dir."""
    import subprocess

    import gevent.event

    assert config.health is not None
    command = config.health.command
    env = _service_environment(config)
    # Untagged: a check still running when the service exits is not its leftover.
    del env["ZINIT_SERVER_PID"]
    try:
        popen = subprocess.Popen(
            shlex.split(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=config.dir,
            env=env,
            start_new_session=True,
            **_credentials(config, env),
        )
    except _SpawnError as error:
        return False, f"cannot run {command!r}: {error}"
    except OSError as error:
        where = f" in {config.dir!r}" if config.dir and error.filename == config.dir else ""
        return False, f"cannot run {command!r}{where}: {error.strerror or error}"
    result = gevent.event.AsyncResult()
    runtime.watch_child(popen, result.set)
    try:
        code = result.get()
    finally:
        if popen.returncode is None:
            # Timed out (gevent.Timeout raised in get): take the whole group down.
            _signal_tree(popen.pid, None, signal.SIGKILL)
    if code == 0:
        return True, f"{command!r} exited 0"
    return False, f"{command!r} {describe_exit(code)}"


# ==== 15. Service ============================================================
# One greenlet per unit runs Service._run, the only code that changes that
# unit.  Others post typed messages (_Start, _Stop, _ChildExited, ...) to its
# mailbox and read UnitStatus snapshots.  ``wanted`` is the one exception:
# the requester sets the intent before posting, so that gates evaluated in
# between already see it.


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Start:
    """Start the unit (or keep it running); ``handled`` is set once it has acted."""

    reason: str
    by_hand: bool = False
    handled: Any = None  # gevent.event.Event set once the unit has acted on it


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Stop:
    """Stop the unit; ``done`` is set once it is at rest."""

    reason: str
    done: Any  # gevent.event.Event, set once the unit is at rest


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _ChildExited:
    """The unit's main process ``pid`` ended with exit code ``code``."""

    pid: int
    code: int


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _HealthResult:
    """The outcome of one health probe of the given generation."""

    generation: int
    ok: bool
    detail: str


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _DepsChanged:
    """A dependency changed state: check the unit's gates again."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Reconfigure:
    """Take ``config`` as the unit's new configuration (reload)."""

    config: UnitConfig


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Note:
    """Keep the state, with ``reason`` as the new why (a start that lost a conflict)."""

    reason: str


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Quit:
    """End the unit's greenlet; ``done`` is set when it has."""

    done: Any


class _Mailbox:
    """A unit's messages in arrival order; only the unit's own greenlet takes them.

    gevent.queue.Queue costs about 3.6 KiB a unit (three deques and an
    Event), for a queue that never has more than one reader: this is a list
    and, while the greenlet waits, its Waiter.  One reader only: a second
    would replace the first's Waiter, and the first would never wake.
    """

    __slots__ = ("_hub", "_waiter", "items")

    def __init__(self, hub: Any) -> None:
        self.items: list[object] = []
        self._hub = hub
        self._waiter: Any = None

    def put(self, message: object) -> None:
        self.items.append(message)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:  # only the hub may switch to a waiter: wake it from there
            self._hub.loop.run_callback(waiter.switch, None)

    def get(self, timeout: float | None) -> object | None:
        """The next message; None if ``timeout`` seconds pass without one."""
        if not self.items:
            from gevent.hub import Waiter

            waiter = self._waiter = Waiter(self._hub)
            timer = None
            if timeout is not None:
                timer = self._hub.loop.timer(timeout)
                # From now, not from the loop's cached time: a turn that spawned
                # many units would otherwise fire their deadlines early.
                timer.start(waiter.switch, None, update=True)
            try:
                waiter.get()
            finally:
                self._waiter = None
                if timer is not None:
                    timer.close()
        return self.items.pop(0) if self.items else None


def _is_hopeless(reason: str) -> bool:
    """Whether a Blocked reason names a blocker that will not resolve by itself."""
    hard = ("requires ", "dependency cycle")
    return reason.startswith(hard) or any(f"(Blocked: {h}" in reason for h in hard)


class Service:
    """A unit's life: blocked → spawned → starting → running → stopping → rest.

    Owns the unit's state, process, health and backoff.  Its greenlet takes
    one message at a time, waiting with the next deadline (start timeout,
    stop timeout, restart delay) as the timeout: no polling.
    """

    # Slots, not a __dict__: 1.5 KiB less per unit.
    # fmt: off
    __slots__ = (
        "_deadline", "_leaf", "_mailbox", "_on_deadline", "_pending_config", "_probe",
        "_probe_generation", "_readers", "_restart_at", "_start_after_stop", "_starts_pending",
        "_status_head", "_status_key", "_stop_purpose", "_stop_waiters", "clock", "config",
        "config_error", "exit_code", "failures", "greenlet", "health", "history", "log", "name",
        "pid", "probe_failures", "process", "reason", "restarts", "running_since", "runtime",
        "spawn_error", "spawn_status", "start_error", "started_at", "state", "stop_requests",
        "stopped_by_request", "succeeded", "supervisor", "wanted",
    )
    # fmt: on

    def __init__(self, config: UnitConfig, supervisor: Supervisor) -> None:
        self.config = config
        self.name = config.name
        self.supervisor = supervisor
        self.runtime = supervisor.runtime
        self.clock = supervisor.clock
        self.state = State.INACTIVE
        self.reason = "not started"
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_LENGTH)
        self.wanted = False
        self.succeeded = False
        self.process: Any = None
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.restarts = 0
        self.failures = 0
        self.started_at: float | None = None
        self.running_since: float | None = None
        self.health: str | None = None
        self.probe_failures = 0
        self.config_error: ConfigError | None = None
        self._status_key: tuple[Any, ...] | None = None
        self._status_head = ""
        self.log = LogRing(self.name, config.buffer_lines, supervisor.publish_log)
        self._mailbox = _Mailbox(supervisor.runtime.hub)
        self._deadline: float | None = None
        self._on_deadline: Callable[[], None] | None = None
        self._restart_at: float | None = None
        self._stop_purpose: str | None = None
        self._stop_waiters: list[Any] = []
        self._start_after_stop = False
        self._starts_pending = 0  # _Start messages posted and not yet handled
        self.spawn_error: str | None = None  # why the last spawn failed
        self.spawn_status = 1  # and what a shell would have exited with then (126, 127)
        self.start_error: str | None = None  # a spawn error while handling the last _Start
        self.stopped_by_request = False  # the last exit was a stop's doing
        self.stop_requests = 0  # stops asked of it, not by a cascade: to spot one made meanwhile
        self._pending_config: UnitConfig | None = None
        self._probe_generation = 0
        self._probe: Any = None
        self._readers: list[_PipeReader] = []
        self._leaf: str | None = None
        self.greenlet = supervisor.runtime.gevent.spawn(self._run)

    # -- what others may call ---------------------------------------------

    def post(self, message: object) -> None:
        self._mailbox.put(message)

    def request_start(self, reason: str, *, by_hand: bool = False) -> Any:
        """Ask the unit to start; returns an Event set once it has acted on that."""
        import gevent.event

        handled = gevent.event.Event()
        self.wanted = True
        self._starts_pending += 1
        self.post(_Start(reason, by_hand, handled))
        return handled

    def request_stop(self, reason: str, *, cascade: bool = False) -> Any:
        """Ask the unit to stop; returns an Event set once it is at rest.

        A stop that only follows from another unit's (``cascade``) is not
        counted in ``stop_requests``.
        """
        import gevent.event

        done = gevent.event.Event()
        self.wanted = False
        self.stop_requests += not cascade
        self.post(_Stop(reason, done))
        return done

    def kill(self, signum: int) -> None:
        """Signal the unit's process group (and cgroup); the exit comes as a message."""
        if self.config.is_target:
            raise UnitStateError(f"{self.name!r} is a target: it has no process to signal")
        if self.pid is None:
            raise UnitStateError(f"{self.name!r} has no running process ({self.state})")
        _signal_tree(self.pid, self._leaf, signum)

    def is_on(self) -> bool:
        """Active, or a finished oneshot whose work stands: what a stop undoes and a
        restart does again."""
        return self.is_active() or self.is_up()

    def is_up(self) -> bool:
        """Running, or a oneshot that has finished with success (and is not about to run again)."""
        if self.state == State.RUNNING:
            return True
        done = self.config.oneshot and self.state == State.EXITED and self.succeeded
        return done and not self._is_about_to_start()

    def is_settled(self) -> bool:
        """Its start has ended one way or another (for units that want it)."""
        if not self.wanted:
            return True
        if self._is_about_to_start():
            return False
        if self.state in (State.RUNNING, State.EXITED, State.FAILED):
            return True
        return self.is_hopeless()

    def is_starting(self) -> bool:
        """Being started and not stuck (for units ordered after it)."""
        starting = self.state in (State.BLOCKED, State.STARTING, State.INACTIVE)
        starting = starting or self._is_about_to_start()
        return self.wanted and starting and not self.is_hopeless()

    def _is_about_to_start(self) -> bool:
        # A start asked of a unit at rest (or stopping) that its greenlet has
        # not acted on yet: units started in the same batch must see it as
        # starting, not as the Exited or Failed it still shows.
        if self._start_after_stop:
            return True
        return bool(self._starts_pending) and self.state in AT_REST

    def is_hopeless(self) -> bool:
        """Blocked by something that will not resolve itself (failed, undefined, cycle)."""
        return self.state == State.BLOCKED and _is_hopeless(self.reason)

    def is_active(self) -> bool:
        return self.wanted or self.state not in AT_REST or self._restart_at is not None

    def snapshot(self) -> UnitStatus:
        now = self.clock()
        warnings = list(self.supervisor.warnings_for(self.name))
        if self.config_error is not None:
            warnings.append(
                f"config file has an error, still using the old config: {self.config_error}"
            )
        return UnitStatus(
            name=self.name,
            kind=self.config.kind,
            state=self.state,
            pid=self.pid,
            unit_class=self.config.unit_class,
            status=self.config.status,
            restarts=self.restarts,
            exit_code=self.exit_code,
            # null means "no [health] table"; with one, "unknown" until a result comes.
            health=None if self.config.health is None else (self.health or "unknown"),
            uptime_s=round(now - self.running_since, 3) if self.running_since is not None else None,
            reason=self.reason,
            oneshot=self.config.oneshot,
            next_restart_s=round(max(0.0, self._restart_at - now), 3)
            if self._restart_at is not None
            else None,
            warnings=tuple(warnings),
            requires=self.config.requires,
            after=self.config.after,
            wants=self.config.wants,
            conflicts=self.config.conflicts,
            path=self.config.path,
        )

    def status_json(self) -> str:
        """``snapshot().to_dict()`` as JSON text, for ``list``, the call dashboards repeat.

        Everything but the two clocks is encoded again only when one of its
        inputs changed, which makes a list of 100 units about five times cheaper.
        """
        key = (
            self.state,
            self.reason,
            self.pid,
            self.restarts,
            self.exit_code,
            self.health,
            self.config,
            self.config_error,
            self.supervisor.warnings_for(self.name),
        )
        if key != self._status_key:
            row = self.snapshot().to_dict()
            del row["uptime_s"], row["next_restart_s"]
            self._status_head = _to_json(row)[:-1]
            self._status_key = key
        now = self.clock()
        uptime = next_restart = "null"
        if self.running_since is not None:
            uptime = f"{now - self.running_since:.3f}"
        if self._restart_at is not None:
            next_restart = f"{max(0.0, self._restart_at - now):.3f}"
        return f'{self._status_head},"uptime_s":{uptime},"next_restart_s":{next_restart}}}'

    # -- the one place that changes state ---------------------------------

    def _set_state(self, new: State, reason: str) -> None:
        old = self.state
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"{self.name}: illegal transition {old} -> {new} ({reason})")
        self.state = new
        self.reason = reason
        entry = {"time": time.time(), "from": str(old), "to": str(new), "reason": reason}
        if old != new:
            self.history.append(entry)
            # A failure is what an operator running at level warn wants to see.
            log = _log().warning if new == State.FAILED else _log().info
            log("%s: %s -> %s (%s)", self.name, old, new, reason)
        else:
            _log().debug("%s: %s (%s)", self.name, new, reason)
        self.supervisor.on_transition(self, {"unit": self.name, **entry})
        # A stop is over once the unit is at rest, even if a start is already queued.
        if new in AT_REST and self._restart_at is None:
            self._release_stop_waiters()

    # -- the greenlet ------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = action = None
            if self._deadline is not None:
                timeout = max(0.0, self._deadline - self.clock())
            message = self._mailbox.get(timeout)
            if message is None:
                action, self._deadline, self._on_deadline = self._on_deadline, None, None
            try:
                if message is None:
                    if action is not None:
                        action()
                elif isinstance(message, _Quit):
                    # Removed: nothing of it may outlive the record, even if a
                    # start slipped in after its stop.
                    self._stop_probes()
                    self._kill_everything()
                    self._close_readers()
                    message.done.set()
                    return
                else:
                    self._handle(message)
            except Exception as error:  # noqa: BLE001 - keep the daemon up whatever one unit does
                _log().exception("%s: internal error", self.name)
                self.wanted = False
                self._deadline = self._restart_at = None
                self._kill_everything()
                self._set_state(State.FAILED, f"internal error: {error!r}")

    def _handle(self, message: object) -> None:
        match message:
            case _Start():
                try:
                    self._on_start(message)
                finally:
                    # What the start itself led to; a spawn that fails later
                    # (once a requirement is up) is not this request's answer.
                    self.start_error = self.spawn_error
                    self._starts_pending -= 1
                    if not self._starts_pending and self.state in AT_REST:
                        # Seen as starting until now, it stays at rest after all.
                        self.supervisor.notify_dependents(self)
                    message.handled.set()
            case _Stop():
                self._on_stop(message)
            case _ChildExited():
                self._on_child_exit(message)
            case _HealthResult():
                self._on_health(message)
            case _DepsChanged():
                self._on_deps_changed()
            case _Reconfigure():
                self._pending_config = message.config
                self._apply_pending_config()
            case _Note():
                self._set_state(self.state, message.reason)
            case _:
                raise RuntimeError(f"unexpected message {message!r}")

    def _set_deadline(self, seconds: float | None, action: Callable[[], None]) -> None:
        if seconds is None:
            self._deadline = self._on_deadline = None
        else:
            self._deadline = self.clock() + seconds
            self._on_deadline = action

    # -- starting ----------------------------------------------------------

    def _on_start(self, message: _Start) -> None:
        self.spawn_error = None
        if not self.wanted:  # a stop overtook this start
            return
        if self.state in (State.STARTING, State.RUNNING):
            return
        if self.state == State.STOPPING:
            self._start_after_stop = True
            return
        if message.by_hand:
            self.failures = 0
        if self._restart_at is not None:
            self._restart_at = None
            self._set_deadline(None, lambda: None)
        self._try_start(message.reason)

    def _try_start(self, reason: str) -> None:
        blocker = self.supervisor.gate(self)
        if blocker is not None:
            if self.state != State.BLOCKED or self.reason != blocker:
                self._set_state(State.BLOCKED, blocker)
            return
        if self.config.is_target:
            self._set_state(State.RUNNING, "everything it requires is up")
            self.running_since = self.clock()
            return
        self._spawn(reason)

    def _spawn(self, reason: str) -> None:
        self._apply_pending_config()
        self._leaf = self.supervisor.cgroups.leaf(self.name)
        try:
            popen, out_fd, err_fd, self._leaf = _spawn_service(
                self.config, self.supervisor.cgroups, self._leaf
            )
        except _SpawnError as error:
            self.pid = None
            self.spawn_error = f"spawn failed: {error}"
            self.spawn_status = error.status
            # Where an operator looks first: a program that never ran has no output.
            self.log.extend("stderr", [f"zinit: {self.spawn_error}"])
            if error.transient:
                _log().warning("%s: %s", self.name, self.spawn_error)
                self._after_exit(self.spawn_error, failed=True, uptime=0.0, at_least_s=1.0)
                self.spawn_error = self.reason  # with when it is tried again, if it is
                return
            self.wanted = False
            self._set_state(State.FAILED, self.spawn_error)
            self.supervisor.on_failed_for_good(self)
            return
        self.process = popen
        self.pid = popen.pid
        self.spawn_error = None  # a failure to spawn before this (a retry's) is over
        _log().debug(
            "%s: spawned pid %d: %s (dir %s, user %s, cgroup %s)",
            self.name,
            popen.pid,
            self.config.exec,
            self.config.dir or "inherited",
            self.config.user or "inherited",
            self._leaf or "none",
        )
        self.exit_code = None
        self.succeeded = False
        self.started_at = self.clock()
        self.running_since = None
        self._stop_purpose = None
        pid = popen.pid
        self.runtime.watch_child(popen, lambda code: self.post(_ChildExited(pid, code)))
        self._readers = [
            _PipeReader(self.runtime, out_fd, self.log, "stdout"),
            _PipeReader(self.runtime, err_fd, self.log, "stderr"),
        ]
        timeout = self.config.effective_start_timeout_s()
        if self.config.oneshot:
            self._set_state(State.STARTING, f"{reason}; oneshot running as pid {pid}")
            self._set_deadline(timeout, self._start_timed_out)
        elif self.config.health is not None:
            self.health = "unknown"
            self._set_state(
                State.STARTING, f"{reason}; pid {pid} waiting for its first health check"
            )
            self._set_deadline(timeout, self._start_timed_out)
            self._start_probes()
        else:
            self.running_since = self.clock()
            self._set_state(State.RUNNING, f"{reason}; pid {pid}")

    def _start_timed_out(self) -> None:
        limit = self.config.effective_start_timeout_s()
        what = "finish" if self.config.oneshot else "pass its health check"
        self._begin_stopping("start-timeout", f"start timed out: did not {what} within {limit:g}s")

    def _on_deps_changed(self) -> None:
        if self.state == State.BLOCKED and self.wanted and self._restart_at is None:
            self._try_start("dependencies are up")
        elif self.config.is_target and self.state == State.RUNNING and self.wanted:
            blocker = self.supervisor.gate(self)
            if blocker is not None:
                self.running_since = None
                self._set_state(State.BLOCKED, blocker)

    # -- health ------------------------------------------------------------

    def _start_probes(self) -> None:
        self._probe_generation += 1
        self.probe_failures = 0
        self._probe = self.runtime.gevent.spawn(self._probe_loop, self._probe_generation)

    def _stop_probes(self) -> None:
        self._probe_generation += 1
        if self._probe is not None:
            self._probe.kill(block=False)
            self._probe = None

    def _probe_loop(self, generation: int) -> None:
        health = self.config.health
        assert health is not None
        interval = FIRST_PROBE_INTERVAL_S
        while generation == self._probe_generation:
            ok, detail = _probe(self.runtime, self.config)
            self.post(_HealthResult(generation, ok, detail))
            if self.state == State.STARTING:
                interval = min(interval * 2, health.interval_ms / 1000)
            else:
                interval = health.interval_ms / 1000
            self.runtime.gevent.sleep(interval)

    def _on_health(self, message: _HealthResult) -> None:
        health = self.config.health
        if message.generation != self._probe_generation or health is None:
            return
        _log().debug(
            "%s: health check %s: %s",
            self.name,
            "passed" if message.ok else "failed",
            message.detail,
        )
        if message.ok:
            self.probe_failures = 0
            was = self.health
            self.health = "healthy"
            if self.state == State.STARTING:
                self._set_deadline(None, lambda: None)
                self.running_since = self.clock()
                self._set_state(State.RUNNING, f"health check passed ({message.detail})")
            elif self.state == State.RUNNING and was == "failing":
                self._set_state(State.RUNNING, f"health check passed again ({message.detail})")
            return
        self.probe_failures += 1
        if self.state == State.STARTING:
            reason = f"waiting for its first health check (last: {message.detail})"
            if reason != self.reason:
                self._set_state(State.STARTING, reason)
            return
        if self.state != State.RUNNING:
            return
        if self.probe_failures < health.retries:
            # Still Running, but not to be shown as healthy meanwhile.
            self.health = "failing"
            self._set_state(
                State.RUNNING,
                f"health check failed {self.probe_failures} of {health.retries} times in a row"
                f" ({message.detail})",
            )
        else:
            self.health = "unhealthy"
            self._begin_stopping(
                "unhealthy",
                f"unhealthy: {self.probe_failures} health checks failed in a row "
                f"({message.detail})",
            )

    # -- stopping ----------------------------------------------------------

    def _on_stop(self, message: _Stop) -> None:
        self._stop_waiters.append(message.done)
        self._start_after_stop = False
        if self._restart_at is not None:
            self._restart_at = None
            self._set_deadline(None, lambda: None)
            last = self.reason.rpartition("; restarting ")[0] or self.reason  # no longer true
            self._set_state(self.state, f"{message.reason}; restart cancelled ({last})")
        match self.state:
            case State.BLOCKED:
                self._set_state(State.INACTIVE, message.reason)
            case State.STARTING | State.RUNNING if self.process is not None:
                self._begin_stopping("stop", message.reason)
            case State.RUNNING:
                self.running_since = None
                self._set_state(State.EXITED, message.reason)
            case State.STOPPING:
                self._stop_purpose = "stop"
            case State.EXITED if self.config.oneshot and self.succeeded:
                # Stopped with what it required (or by hand), its work counts as undone:
                # the next start that pulls it in runs it again, as a restart would.
                self.succeeded = False
                self.stopped_by_request = True  # done no more: `check` counts it as stopped
                self._set_state(State.EXITED, message.reason)
                self._release_stop_waiters()
            case _:
                self._release_stop_waiters()

    def _begin_stopping(self, purpose: str, reason: str) -> None:
        self._stop_purpose = purpose
        self._stop_probes()
        _log().debug(
            "%s: sending %s to process group %s%s",
            self.name,
            signal_name(self.config.stop_signal),
            self.pid,
            f" and cgroup {self._leaf}" if self._leaf else "",
        )
        pid, leaf = self.pid, self._leaf
        _stop_signal(lambda signum: _signal_tree(pid, leaf, signum), self.config.stop_signal)
        self._set_state(State.STOPPING, reason)
        self._set_deadline(self.config.stop_timeout_ms / 1000, self._stop_timed_out)

    def _stop_timed_out(self) -> None:
        limit = self.config.stop_timeout_ms / 1000
        _log().warning(
            "%s: still running %gs after the stop signal; sending SIGKILL", self.name, limit
        )
        self._kill_everything()

    def _kill_everything(self) -> None:
        if self.pid is not None:
            _signal_tree(self.pid, self._leaf, signal.SIGKILL)
        _Cgroups.kill_all(self._leaf)

    def _release_stop_waiters(self) -> None:
        waiters, self._stop_waiters = self._stop_waiters, []
        for event in waiters:
            event.set()

    # -- exits and restarts ------------------------------------------------

    def _on_child_exit(self, message: _ChildExited) -> None:
        if message.pid != self.pid:
            return
        code = message.code
        _log().debug("%s: pid %d %s", self.name, message.pid, describe_exit(code))
        pgid = self.pid
        # A stop signalled the whole tree already: the leftovers get no second
        # signal (to many programs a second SIGTERM means "quit now"), only
        # the SIGKILL when the stop's time is up.
        kill_at = self._deadline if self._stop_purpose is not None else None
        self.exit_code = code
        if self.health != "unhealthy":  # kept, to say why it was stopped, until it runs again
            self.health = None  # the status says "unknown": no process is checked now
        self._stop_probes()
        self._set_deadline(None, lambda: None)
        self.process = None
        self.pid = None
        leftovers = _leftovers(self.name, pgid, self._leaf)
        if leftovers and kill_at is None and self.state in (State.STARTING, State.RUNNING):
            # Not Running any more while what it left behind is being stopped.
            self._set_state(State.STOPPING, f"{describe_exit(code)}; stopping what it left behind")
        self._sweep(pgid, leftovers, kill_at)
        purpose, self._stop_purpose = self._stop_purpose, None
        self.stopped_by_request = purpose == "stop"
        since = self.started_at if self.config.oneshot else self.running_since
        uptime = self.clock() - since if since is not None else 0.0
        self.running_since = None
        if purpose == "stop":
            self.succeeded = code == 0
            self._set_state(State.EXITED, f"{self.reason} ({describe_exit(code)})")
            if self._start_after_stop:
                self._start_after_stop = False
                self.wanted = True
                self._try_start("started again after the stop")
            return
        if purpose in ("unhealthy", "start-timeout"):
            self._after_exit(self.reason, failed=True, uptime=uptime)
            return
        failed = code != 0
        if self.config.oneshot and not failed:
            self.succeeded = True
        description = describe_exit(code)
        if self.config.oneshot and not failed:
            description = "oneshot finished successfully"
        self._after_exit(description, failed=failed, uptime=uptime)

    def _sweep(self, pgid: int, leftovers: list[int], kill_at: float | None) -> None:
        """Stop what is left of the service's tree after its main process ended.

        Blocks until nothing is left, waking on each reaped child (orphans
        come back to the subreaper), SIGKILLing after ``stop_timeout_ms``, or
        at ``kill_at`` when a stop has sent the stop signal already.
        """
        if not leftovers:
            self.supervisor.cgroups.remove(self._leaf)
            return
        _log().info("%s: stopping %d leftover process(es)", self.name, len(leftovers))
        if kill_at is None:
            _stop_signal(functools.partial(_kill_pids, leftovers), self.config.stop_signal)
            kill_at = self.clock() + self.config.stop_timeout_ms / 1000
        elif self._leaf is None:
            # Without a cgroup the stop reached the process group only: the
            # descendants that left it (setsid) hear of the stop now.
            escaped = [pid for pid in leftovers if pid > 0 and _pgid(pid) != pgid]
            _stop_signal(functools.partial(_kill_pids, escaped), self.config.stop_signal)
        deadline = kill_at
        for signum in (None, signal.SIGKILL):
            if signum is not None:
                _kill_pids(leftovers, signum)
                _Cgroups.kill_all(self._leaf)
                deadline = self.clock() + 5.0
            while leftovers and self.clock() < deadline:
                self.runtime.wait_any_exit(
                    min(deadline - self.clock(), 0.5 if self._leaf is None else 5.0)
                )
                leftovers = _leftovers(self.name, pgid, self._leaf)
            if not leftovers:
                break
        self.supervisor.cgroups.remove(self._leaf)

    def _after_exit(
        self, description: str, *, failed: bool, uptime: float, at_least_s: float = 0.0
    ) -> None:
        """Decide, after an exit that nobody asked for, between restart and rest.

        ``at_least_s`` bounds the delay from below (a spawn that found the daemon
        short of resources must not be tried again at once).
        """
        if uptime >= STABLE_RUN_S:
            self.failures = 0
        policy = self.config.restart
        restart = self.wanted and (policy == "always" or (policy == "on-failure" and failed))
        if any(isinstance(message, _Stop) for message in self._mailbox.items):
            # A stop arrived while the exit was being handled: honour it, and
            # do not treat the exit as a failure for good (critical units).
            self.wanted = False
            self._set_state(State.FAILED if failed else State.EXITED, description)
            return
        end_state = State.FAILED if failed else State.EXITED
        if not restart:
            self.wanted = False
            self._set_state(end_state, description)
            if failed:
                self.supervisor.on_failed_for_good(self)
            return
        limit = self.config.max_restarts
        if limit and self.failures >= limit:
            self.wanted = False
            self._set_state(
                State.FAILED, f"{description}; gave up after {self.failures} restart(s)"
            )
            self.supervisor.on_failed_for_good(self)
            return
        delay = max(
            at_least_s,
            min(self.config.restart_delay_ms * (2**self.failures), self.config.restart_delay_max_ms)
            / 1000,
        )
        self.failures += 1
        if delay <= 0:
            self._set_state(end_state, f"{description}; restarting now")
            self._restart_now()
            return
        self._restart_at = self.clock() + delay
        self._set_state(
            end_state, f"{description}; restarting in {delay:g}s (attempt {self.failures})"
        )
        self._set_deadline(delay, self._restart_now)

    def _restart_now(self) -> None:
        self._restart_at = None
        if not self.wanted:
            return
        self.restarts += 1
        self._try_start(f"restart {self.restarts}")

    # -- config and teardown ----------------------------------------------

    def _apply_pending_config(self) -> None:
        if self._pending_config is None or self.process is not None:
            return
        self.config, self._pending_config = self._pending_config, None
        self.log.resize(self.config.buffer_lines)
        self.failures = 0  # a changed config gets the whole restart budget, as a start by hand

    def _close_readers(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers = []


# ==== 16. Supervisor =========================================================
# The registry of units and the graph over their configs.  It gates starts
# (Supervisor.gate), forwards every transition to the units that depend on
# the one that moved, cascades stops (dependents first, in parallel waves),
# applies reloads as a diff, and runs the ordered shutdown.


class Supervisor:
    """All units of one daemon, their graph, and the operations on them.

    Public methods are called from RPC greenlets; those that stop units block
    until the units are at rest.  Config-changing operations are serialised.
    """

    def __init__(
        self,
        runtime: _Runtime,
        directories: list[tuple[str, str | None]],
        *,
        write_dir: str,
        forward_logs: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import gevent.event
        import gevent.lock

        self.runtime = runtime
        self.clock = clock
        self.directories = directories
        # Each unit's file as it was when its config was read: status warns once it differs.
        self.loaded_files: dict[str, tuple[int, int, int] | None] = {}
        self.dir_locks: _ConfigDirLocks | None = None  # the server entry's, once it holds them
        self.write_dir = write_dir
        #: Writes service lines to stdout as "name | line" (--forward-logs, containers).
        self.forwarder = _BackgroundWriter(sys.stdout) if forward_logs else None
        if self.forwarder is not None:
            self.forwarder.coalesce(runtime.loop.run_callback_threadsafe)
        self.cgroups = _Cgroups()
        self.units: dict[str, Service] = {}
        self.configs: dict[str, UnitConfig] = {}
        self.broken: dict[str, ConfigError] = {}
        #: Proxies declared in the config directories, as last loaded (section 17 runs them).
        self.proxy_configs: dict[str, XinetConfig] = {}
        #: The errors of proxy files (those of unit files are in ``broken``).
        self.proxy_errors: dict[str, ConfigError] = {}
        self.cycles: dict[str, str] = {}
        self.dependents: dict[str, set[str]] = {}
        self.conflicts: dict[str, set[str]] = {}
        self.shutting_down = False
        self.finished = gevent.event.Event()
        self.exit_code = 0
        self.on_critical: Callable[[Service], None] | None = None
        #: Called first thing in shutdown (the server closes its proxies there).
        self.before_shutdown: list[Callable[[], None]] = []
        self._config_lock = gevent.lock.RLock()
        self._event_queues: set[Any] = set()
        self._log_queues: dict[Any, str | None] = {}
        #: main pid -> (clock, CPU seconds of its tree) at the last ``list`` with usage.
        self._cpu_samples: dict[int, tuple[float, float]] = {}

    # -- loading and the graph ---------------------------------------------

    def load(self) -> None:
        """Read the config directories and create a Service per unit (none started)."""
        configs, self.proxy_configs, errors, self.proxy_errors = load_config_dirs(self.directories)
        for error in [*errors.values(), *self.proxy_errors.values()]:
            for problem in error.every():
                _log().error("%s", problem)
        for name, config in configs.items():
            self.configs[name] = config
            self.units[name] = Service(config, self)
            self.loaded_files[name] = _file_identity(config.path)
        self.broken = errors
        self._rebuild_graph()

    def _rebuild_graph(self) -> None:
        self.cycles = find_cycles(self.configs)
        self.dependents = reverse_edges(self.configs)
        conflicts: dict[str, set[str]] = collections.defaultdict(set)
        for name, config in self.configs.items():
            for other in config.conflicts:
                if other != name:
                    conflicts[name].add(other)
                    conflicts[other].add(name)
        self.conflicts = conflicts
        for name, cycle in self.cycles.items():
            _log().error("%s: dependency cycle: %s", name, cycle)

    def _notify_all(self) -> None:
        for unit in self.units.values():
            unit.post(_DepsChanged())

    def gate(self, unit: Service) -> str | None:
        """Return why ``unit`` cannot start yet, or None when it may."""
        name = unit.name
        if name in self.cycles:
            return f"dependency cycle: {self.cycles[name]}"
        config = self.configs.get(name, unit.config)
        for dep in config.requires:
            other = self.units.get(dep)
            if other is None:
                if dep in self.broken:
                    return f"requires {dep!r}, whose file has an error: {self.broken[dep]}"
                return f"requires {dep!r}, which is not defined"
            if other.is_up():
                continue
            if self.configs[dep].status == "ignore":
                return f"requires {dep!r}, which has status=ignore"
            if not other.wanted and other._restart_at is None:
                return f"requires {dep!r}, which is {other.state} ({other.reason})"
            if other.is_hopeless():
                return f"waiting for {dep!r} (Blocked: {other.reason})"
            return f"waiting for {dep!r} ({other.state})"
        for dep in config.wants:
            other = self.units.get(dep)
            if other is not None and not other.is_settled():
                return f"waiting for wanted {dep!r} to settle ({other.state})"
        for dep in config.after:
            other = self.units.get(dep)
            if other is not None and other.is_starting():
                return f"waiting for {dep!r} to start first ({other.state})"
        return None

    def warnings_for(self, name: str) -> list[str]:
        config = self.configs.get(name)
        if config is None or not (config.wants or config.after or config.conflicts):
            return []
        warnings = []
        for kind in ("wants", "after", "conflicts"):
            for dep in getattr(config, kind):
                if dep not in self.units:
                    warnings.append(f"{kind} {dep!r}, which is not defined")
        return warnings

    # -- events and logs ---------------------------------------------------

    def on_transition(self, unit: Service, event: dict[str, Any]) -> None:
        self._broadcast(self._event_queues, {"method": "event", "params": event})
        self.notify_dependents(unit)

    def notify_dependents(self, unit: Service) -> None:
        """Let the units that depend on ``unit`` look at their gate again."""
        for dependent in self.dependents.get(unit.name, ()):
            other = self.units.get(dependent)
            if other is not None and other is not unit:
                other.post(_DepsChanged())

    def publish_log(self, unit: str, entries: list[tuple[float, str, str]]) -> None:
        if self.forwarder is not None:
            self.forwarder.write_lines([f"{unit} | {entry[2]}\n" for entry in entries])
        messages: list[dict[str, Any]] = []  # built once, shared by every follower
        for queue, wanted in list(self._log_queues.items()):
            if wanted is None or wanted == unit:
                if not messages:
                    messages = [
                        {
                            "method": "log",
                            "params": {"time": t, "unit": unit, "stream": stream, "line": line},
                        }
                        for t, stream, line in entries
                    ]
                for message in messages:
                    self._put(queue, message)

    def _broadcast(self, queues: set[Any], message: dict[str, Any]) -> None:
        for queue in list(queues):
            self._put(queue, message)

    @staticmethod
    def _put(queue: Any, message: dict[str, Any]) -> None:
        """Queue a notification; a subscriber that cannot keep up loses the oldest."""
        import gevent.queue

        try:
            queue.put_nowait(message)
        except gevent.queue.Full:
            try:
                queue.get_nowait()
                queue.put_nowait(message)
            except (gevent.queue.Empty, gevent.queue.Full):
                pass

    def subscribe_events(self) -> Any:
        import gevent.queue

        queue = gevent.queue.Queue(10_000)
        self._event_queues.add(queue)
        return queue

    def subscribe_logs(self, unit: str | None) -> Any:
        import gevent.queue

        queue = gevent.queue.Queue(2_000)
        self._log_queues[queue] = unit
        return queue

    def unsubscribe(self, queue: Any) -> None:
        self._event_queues.discard(queue)
        self._log_queues.pop(queue, None)

    # -- lookups -----------------------------------------------------------

    def unit(self, name: str) -> Service:
        """Return the named unit; raise UnitNotFound, or UnitStateError for a broken file."""
        if name in self.units:
            return self.units[name]
        if name in self.broken:
            raise UnitStateError(f"{name!r} is not loaded: {self.broken[name]}")
        raise UnitNotFound(name)

    def _broken_status(self, name: str, error: ConfigError) -> dict[str, Any]:
        return UnitStatus(
            name=name,
            kind="service",
            state=State.FAILED,
            pid=None,
            unit_class="user",
            status="start",
            restarts=0,
            exit_code=None,
            health=None,
            uptime_s=None,
            reason=f"config error: {error}",
            path=error.path,
        ).to_dict()

    def status_json(self, name: str) -> _RawJson:
        """What ``status`` returns, as JSON text (see Service.status_json)."""
        if name in self.broken and name not in self.units:
            return _RawJson(_to_json(self._broken_status(name, self.broken[name])))
        unit = self.unit(name)
        if (warning := self.file_warning(name)) is not None:
            status = unit.snapshot().to_dict()
            status["warnings"].append(warning)
            return _RawJson(_to_json(status))
        return _RawJson(unit.status_json())

    def file_warning(self, name: str) -> str | None:
        """Whether the unit's file changed, or went, since its config was read (as
        systemctl warns); a file with an error says so in its own warning."""
        unit, config = self.units.get(name), self.configs.get(name)
        if unit is None or config is None or not config.path or unit.config_error is not None:
            return None
        found = _file_identity(config.path)
        if found == self.loaded_files.get(name):
            return None
        if found is None and not os.path.isdir(os.path.dirname(config.path)):
            return "its config directory is gone: a reload is refused until it is back"
        if found is None:
            return "its file is gone: `zinit reload` removes the unit"
        return "its file changed since it was loaded: `zinit reload` applies it"

    def list_json(self) -> _RawJson:
        """What ``list`` returns, as JSON text (see Service.status_json)."""
        rows = [(name, unit.status_json()) for name, unit in self.units.items()]
        rows += [
            (name, _to_json(self._broken_status(name, error)))
            for name, error in self.broken.items()
            if name not in self.units
        ]
        rows.sort()
        return _RawJson("[" + ",".join(text for _, text in rows) + "]")

    def list(self, with_usage: bool = False) -> list[dict[str, Any]]:
        rows = [unit.snapshot().to_dict() for unit in self.units.values()]
        rows += [self._broken_status(n, e) for n, e in self.broken.items() if n not in self.units]
        if with_usage:
            self._add_usage(rows)
        return sorted(rows, key=lambda row: row["name"])

    def _add_usage(self, rows: list[dict[str, Any]]) -> None:
        """Add cpu_percent and rss_bytes of each unit's process and its children.

        CPU % is the tree's CPU time since the previous request with usage over
        the time between, so the first request for a pid gives None.  Only asked
        for (the TUI, every few seconds): a plain ``list`` reads no /proc.
        """
        import psutil

        now = self.clock()
        samples: dict[int, tuple[float, float]] = {}
        # One pass over /proc for every unit's tree (children() per unit would
        # rescan it for each unit).
        children: dict[int, list[int]] = collections.defaultdict(list)
        for process in psutil.process_iter(["ppid"]):
            children[process.info["ppid"]].append(process.pid)
        for row in rows:
            row["cpu_percent"] = row["rss_bytes"] = None
            if row["pid"] is None:
                continue
            tree, stack = [], [row["pid"]]
            while stack:
                pid = stack.pop()
                tree.append(pid)
                stack.extend(children.get(pid, ()))
            cpu_s, rss_bytes = 0.0, 0
            for pid in tree:
                try:
                    process = psutil.Process(pid)
                    with process.oneshot():
                        times = process.cpu_times()
                        cpu_s += times.user + times.system
                        rss_bytes += process.memory_info().rss
                except psutil.Error:
                    continue  # ended between the listing and the reading
            row["rss_bytes"] = rss_bytes
            samples[row["pid"]] = (now, cpu_s)
            previous = self._cpu_samples.get(row["pid"])
            if previous is not None and now > previous[0]:
                used_s = max(0.0, cpu_s - previous[1])
                row["cpu_percent"] = round(used_s / (now - previous[0]) * 100, 1)
        self._cpu_samples = samples

    def why(self, name: str) -> dict[str, Any]:
        if name in self.broken and name not in self.units:
            error = self.broken[name]
            return {
                "name": name,
                "state": "Failed",
                "reason": f"config error: {error}",
                "config_error": error.to_dict(),
                "dependencies": [],
                "warnings": [],
                "history": [],
            }
        unit = self.unit(name)
        config = self.configs[name]
        dependencies = []
        for kind in ("requires", "wants", "after", "conflicts"):
            for dep in getattr(config, kind):
                other = self.units.get(dep)
                dependencies.append(
                    {
                        "name": dep,
                        "relation": kind,
                        "state": str(other.state) if other else None,
                        "reason": other.reason
                        if other
                        else ("config error" if dep in self.broken else "not defined"),
                    }
                )
        status = unit.snapshot()
        return {
            "name": name,
            "state": str(unit.state),
            "reason": unit.reason,
            "blocked_by": self.gate(unit) if unit.state == State.BLOCKED else None,
            "cycle": self.cycles.get(name),
            "dependencies": dependencies,
            "required_by": sorted(
                d for d in self.dependents.get(name, ()) if name in self.configs[d].requires
            ),
            "warnings": [*status.warnings, *filter(None, [self.file_warning(name)])],
            "config_error": unit.config_error.to_dict() if unit.config_error else None,
            "history": list(unit.history),
            "recent_output": unit.log.tail(5),
        }

    def tree(self, name: str | None) -> list[dict[str, Any]]:
        # A unit whose file has an error is shown as list shows it: Failed, and why.
        broken = [
            {"name": n, "relation": "root", "children": [], "state": "Failed", "error": str(e)}
            for n, e in sorted(self.broken.items())
            if n not in self.units and (name is None or n == name)
        ]
        if name is not None:
            if broken:
                return broken
            self.unit(name)

        def annotate(node: dict[str, Any]) -> dict[str, Any]:
            unit = self.units.get(node["name"])
            node["state"] = str(unit.state) if unit else None
            for child in node["children"]:
                annotate(child)
            return node

        return [annotate(node) for node in dependency_tree(self.configs, name)] + broken

    def logs(self, name: str | None, lines: int | None) -> list[dict[str, Any]]:
        if name is not None:
            return self.unit(name).log.tail(lines)
        # Merge the newest lines of every ring, newest first, and stop after
        # ``lines``: the work is bounded by the request, not by all the rings.
        count = MERGED_LOG_LINES if lines is None else lines

        def newest_first(ring: LogRing) -> Iterator[tuple[LogRing, tuple[float, str, str]]]:
            return ((ring, entry) for entry in reversed(ring.lines))

        newest = heapq.merge(
            *[newest_first(unit.log) for unit in self.units.values()],
            key=lambda item: item[1][0],
            reverse=True,
        )
        picked = [ring.entry_dict(entry) for ring, entry in itertools.islice(newest, count)]
        return picked[::-1]

    def check(self) -> dict[str, Any]:
        problems = []
        for name, config in sorted(self.configs.items()):
            unit = self.units[name]
            # SPEC 8: "Running or Exited with success": a unit that ended on its own
            # with code 0 and rests counts; one stopped by hand does not.
            clean = unit.state == State.EXITED and unit.exit_code == 0
            clean = clean and not unit.stopped_by_request and unit._restart_at is None
            up = unit.state == State.RUNNING or (clean and not config.is_target)
            if config.status == "start" and not up:
                problems.append({"name": name, "state": str(unit.state), "reason": unit.reason})
        for name, error in sorted(self.broken.items()):
            problems.append({"name": name, "state": "Failed", "reason": f"config error: {error}"})
        return {"ok": not problems, "problems": problems}

    # -- operations --------------------------------------------------------

    def boot(self) -> None:
        """Start every status=start unit; of two that conflict, the first by name wins."""
        chosen: list[str] = []
        chosen_set: set[str] = set()
        for name in sorted(self.configs):
            if self.configs[name].status != "start":
                continue
            rival = min(self.conflicts.get(name, set()) & chosen_set, default=None)
            if rival is not None:
                self.units[name].post(
                    _Note(
                        f"not started at boot: conflicts with {rival!r}, which starts first by name"
                    )
                )
                continue
            chosen.append(name)
            chosen_set.add(name)
        self.start_many(chosen, reason="status=start at boot")

    def start(
        self, name: str, *, reason: str = "started by request", by_hand: bool = False
    ) -> None:
        """Start a unit and pull in what it requires or wants; stop its conflicts first.

        Raises UnitStateError when the unit could not even be spawned.
        """
        self.start_many([name], reason=reason, by_hand=by_hand)
        error = self.units[name].start_error if name in self.units else None
        if error is not None:
            raise UnitStateError(f"{name!r} did not start: {error}")

    def start_many(
        self, names: list[str], *, reason: str = "started by request", by_hand: bool = False
    ) -> dict[str, Service | str]:
        """Start units together, then return once each named one has acted on it.

        All starts are posted before any is waited for, so that ``after``
        ordering sees every unit of the batch as starting.  Returns, for each
        named unit, the Service asked to start, or why it was not (a conflict).
        """
        if self.shutting_down:
            raise UnitStateError("the daemon is shutting down")
        for name in names:
            self.unit(name)
            if self.configs[name].status == "ignore":
                raise UnitStateError(f"{name!r} has status=ignore: zinit never starts it")
        named = set(names)
        closure = pulled_in_from(names, self.configs)
        losers = self._conflict_losers(closure, named)
        # Each rival stops naming the units it conflicts with, not the ones asked for.
        rivals: dict[str, set[str]] = collections.defaultdict(set)
        for member in closure:
            for rival in self.conflicts.get(member, ()) if member not in losers else ():
                if rival in self.units and rival not in closure and self.units[rival].is_active():
                    rivals[rival].add(member)
        for loser, winner in losers.items():
            if self.units[loser].is_active():
                rivals[loser].add(winner)
        if rivals:
            self.stop_units(
                set(rivals),
                {
                    rival: f"stopped: conflicts with {', '.join(map(repr, sorted(members)))}"
                    for rival, members in rivals.items()
                },
            )
        outcome: dict[str, Service | str] = {}
        for loser, winner in losers.items():
            how = "is running" if self.units[winner].is_up() else "is starting with it"
            note = f"not started: conflicts with {winner!r}, which {how}"
            self.units[loser].post(_Note(note))
            if loser in named:
                outcome[loser] = note
        handled = []
        for member in closure:
            if member in losers:
                continue
            if member not in named and self.units[member].is_up():
                continue  # a finished oneshot stays done when something pulls it in again
            why = reason if member in named else f"pulled in by {closure[member]!r}"
            event = self.units[member].request_start(why, by_hand=by_hand and member in named)
            if member in named:
                handled.append(event)
                outcome[member] = self.units[member]
        for event in handled:
            event.wait()
        return outcome

    def _conflict_losers(self, closure: dict[str, str], named: set[str]) -> dict[str, str]:
        """Units of one start that conflict with another of it, each with the one it yields to.

        Precedence: the named units; then what they require; then units
        already running (a start does not stop what is up for something it
        merely wants); then first by name, as at boot.  A unit that yields
        takes no further part.
        """
        required = set(named)
        queue = collections.deque(named)
        while queue:
            config = self.configs.get(queue.popleft())
            for target in config.requires if config else ():
                if target in closure and target not in required:
                    required.add(target)
                    queue.append(target)

        def precedence(member: str) -> tuple[bool, bool, bool, str]:
            running = self.units[member].is_on()
            return (member not in named, member not in required, not running, member)

        losers: dict[str, str] = {}
        for member in sorted(closure, key=precedence):
            if member in losers:
                continue
            for rival in self.conflicts.get(member, ()):
                if rival in closure and rival not in losers:
                    losers[rival] = member
        return losers

    def stop_units(self, names: set[str] | list[str], reason: str | dict[str, str]) -> None:
        """Stop units, and first every unit that requires them (transitively).

        ``reason`` is one for all, or each named unit's.  Independent units
        stop in parallel; each waits only for the units in the set that depend
        on it.  Blocks until all are at rest.
        """
        import gevent
        import gevent.event

        names = set(names)
        reached_via = requiring_paths(sorted(names), self.configs)
        # A finished oneshot that requires a stopping unit is stopped too: its work
        # (a migration, say) is then done again on the next start.
        targets = {
            n for n in reached_via if n in self.units and (n in names or self.units[n].is_on())
        }
        waits = stop_waits(targets, self.configs)
        done = {name: gevent.event.Event() for name in targets}

        def stop_one(name: str) -> None:
            try:
                for dependent in waits[name]:
                    done[dependent].wait()
                root = name
                if name not in names:
                    chain = [reached_via[name]]
                    while chain[-1] not in names:
                        chain.append(reached_via[chain[-1]])
                    root = chain[-1]
                why = reason[root] if isinstance(reason, dict) else reason
                if name not in names:
                    via = ", which requires ".join(map(repr, chain))
                    why = f"stopped because it requires {via}, which is stopping ({why})"
                unit = self.units.get(name)  # it may have been removed meanwhile
                if unit is not None:
                    unit.request_stop(why, cascade=name not in names).wait()
            finally:
                done[name].set()

        gevent.joinall([gevent.spawn(stop_one, name) for name in targets])

    def stop(self, name: str) -> None:
        self.unit(name)
        self.stop_units({name}, "stopped by request")

    def restart(self, name: str) -> None:
        """Restart a unit, and the active units that require it."""
        self.unit(name)
        if self.configs[name].status == "ignore":
            raise UnitStateError(f"{name!r} has status=ignore: zinit never starts it")
        # A finished oneshot that requires it runs again too.
        dependents = self._requirers([name], Service.is_on)
        stops = self._stop_counts(dependents)
        self.stop_units({name}, "restarting")
        try:
            self.start(name, reason="restarted by request", by_hand=True)
        finally:  # even if it cannot spawn: they wait for it, Blocked, and say why
            dependents = self._not_stopped_since(stops)
            if dependents:
                self.start_many(dependents, reason=f"restarted with {name!r}")

    def start_all(self) -> dict[str, Any]:
        """Start every user-class unit.  Says which started (or wait for what they need),
        which failed (not spawned, or blocked by what will not come), and which yielded
        to a unit they conflict with."""
        names = [
            n
            for n, c in sorted(self.configs.items())
            if c.unit_class == "user" and c.status != "ignore"
        ]
        outcome = self.start_many(names, by_hand=True)
        failed: dict[str, str] = {}
        yielded: dict[str, str] = {}
        for name, unit in outcome.items():  # the Service, held: it may be removed meanwhile
            if isinstance(unit, str):
                yielded[name] = unit
            elif unit.start_error is not None:
                failed[name] = unit.start_error
            elif unit.is_hopeless():
                failed[name] = unit.reason
        started = [n for n in names if n in outcome and n not in failed and n not in yielded]
        return {"started": started, "failed": failed, "not_started": yielded}

    def stop_all(self) -> list[str]:
        """Stop every user-class unit; the ones there was something to stop."""
        names = [n for n, c in self.configs.items() if c.unit_class == "user"]
        busy = [n for n in names if self.units[n].is_on()]
        self.stop_units(names, "stopped by stop-all")
        return sorted(busy)

    def _forget(self, name: str) -> None:
        import gevent.event

        unit = self.units.pop(name)
        self.configs.pop(name, None)
        self.loaded_files.pop(name, None)
        done = gevent.event.Event()
        unit.post(_Quit(done))
        done.wait()
        # Its followers would wait forever, silently: they end, saying why.
        end = {"method": "log.end", "params": {"unit": name, "reason": "removed"}}
        for queue, wanted in list(self._log_queues.items()):
            if wanted == name:
                self._put(queue, end)

    def add_service(self, text: str, name: str | None = None) -> dict[str, Any]:
        """Write ``<name>.toml`` into the config directory, load it, start it if status=start."""
        if name is None:
            name = _declared_name(text)
        if not is_unit_name(name):
            raise UsageError(
                f"{name!r} is not a unit name (letters, digits, '_.@-', up to 64 characters)"
            )
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate: JSON can carry one
            raise UsageError(
                f"the unit's text is not valid Unicode (character {error.start + 1})"
            ) from None
        if len(data) > MAX_UNIT_FILE_BYTES:
            raise UsageError(f"the unit's text is larger than {MAX_UNIT_FILE_BYTES // 1024} KiB")
        with self._config_lock:
            path = os.path.join(self.write_dir, f"{name}.toml")
            if name in self.units or name in self.broken or os.path.exists(path):
                raise UnitStateError(f"unit {name!r} already exists (edit {path} and run reload)")
            config = parse_unit_text(text, path, name)
            if not isinstance(config, UnitConfig):
                raise UsageError(
                    "add-service takes a [service] or [target]; declare a proxy with "
                    "'zinit xinet set' or an [xinet] file in the config directory"
                )
            try:
                os.makedirs(self.write_dir, exist_ok=True)
            except OSError as error:
                raise UnitStateError(
                    f"cannot write into {self.write_dir}: {error.strerror}"
                ) from None
            temporary = f"{path}.{os.getpid()}.tmp"
            try:
                with open(temporary, "wb") as stream:
                    stream.write(data)
                os.replace(temporary, path)
            except OSError:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
                raise
            self.configs[name] = config
            self.units[name] = Service(config, self)
            self.loaded_files[name] = _file_identity(path)
            self._rebuild_graph()
            waiting = self._waiting_for([name])
            if config.status == "start" and not self.shutting_down:
                self.start_many([name], reason="added")  # added even if it cannot spawn
            if waiting and not self.shutting_down:
                # Blocked for want of it: their start pulls it in, status=stop or not.
                self.start_many(waiting, reason=f"{name!r} was added")
            self._notify_all()
        # The start above returned once the unit had acted: this is what came of it.
        unit = self.units[name]
        return {"name": name, "path": path, "state": str(unit.state), "reason": unit.reason}

    def _stop_counts(self, names: list[str]) -> dict[str, int]:
        """How many stops (not cascades) each unit has been asked, before an operation yields."""
        return {n: self.units[n].stop_requests for n in names if n in self.units}

    def _not_stopped_since(self, counts: dict[str, int]) -> list[str]:
        """Those of ``counts`` still defined and not stopped by anyone since (in order)."""
        return [
            n
            for n, count in counts.items()
            if n in self.units and self.units[n].stop_requests == count
        ]

    def _requirers(
        self,
        names: list[str],
        which: Callable[[Service], bool],
        configs: dict[str, UnitConfig] | None = None,
    ) -> list[str]:
        """The units that require one of ``names`` (transitively) and pass ``which``, by name.

        ``configs`` gives the graph to follow (a reload asks about the old one).
        """
        closure = requiring_closure(names, self.configs if configs is None else configs)
        return sorted(d for d in closure - set(names) if d in self.units and which(self.units[d]))

    def _waiting_for(self, names: list[str]) -> list[str]:
        """The wanted units that require one of ``names`` (just defined), to be started again."""
        return self._requirers(names, lambda u: u.wanted and not u.is_up())

    def remove_service(self, name: str) -> dict[str, Any]:
        with self._config_lock:
            stopped: list[str] = []
            if not is_unit_name(name):  # a directory that cannot be listed shows by its path
                raise UnitNotFound(name)
            if name in self.broken and name not in self.units:
                path = self.broken.pop(name).path
            else:
                self.unit(name)
                path = self.configs[name].path
                # A finished oneshot among them is undone: wanted again, it runs once
                # the unit is back.
                orphaned = stopped = self._requirers([name], Service.is_on)
                stops = self._stop_counts(orphaned)
                self.stop_units({name}, "removed")
                self._forget(name)
                self._rebuild_graph()
                orphaned = self._not_stopped_since(stops)
                if orphaned and not self.shutting_down:
                    # They stay wanted: Blocked until the unit is added again.
                    self.start_many(orphaned, reason=f"{name!r} was removed")
                self._notify_all()
            _delete_unit_file(path)
        return {"name": name, "path": path, "stopped": stopped}

    def delete_all(self, only: list[str] | None = None) -> list[str]:
        """Stop and delete every user-class unit (of those in ``only``, if given)."""
        with self._config_lock:
            wanted = None if only is None else set(only)
            names = sorted(
                name
                for name, config in self.configs.items()
                if config.unit_class == "user" and (wanted is None or name in wanted)
            )
            self.stop_units(names, "deleted by delete-all")
            for name in names:
                path = self.configs[name].path
                self._forget(name)
                _delete_unit_file(path)
            self._rebuild_graph()
            self._notify_all()
        return names

    def _check_directories(self) -> None:
        """Refuse a reload that would remove units because their directory is gone (a
        mount missing, a deploy swapping directories): their files were not deleted."""
        for directory, _ in self.directories:
            try:
                os.listdir(directory)
                continue
            except FileNotFoundError:
                problem = "does not exist"
            except NotADirectoryError:
                problem = "is not a directory"
            except OSError as error:
                problem = f"cannot be listed ({error.strerror})"
            inside = directory.rstrip(os.sep) + os.sep
            configs = [*self.configs.values(), *self.proxy_configs.values()]
            if any(config.path.startswith(inside) for config in configs):
                how = (
                    "; to remove them, make it again (empty) and reload"
                    if "exist" in problem
                    else ""
                )
                raise ZinitError(
                    f"config directory {directory} {problem}: nothing reloaded "
                    f"(its units keep running{how})"
                )
        if self.dir_locks is not None:
            self.dir_locks.take(self.directories)  # one made since the daemon started

    def reload(self) -> dict[str, Any]:
        """Re-read the config directories and apply only the difference (SPEC 11)."""
        with self._config_lock:
            self._check_directories()
            new, self.proxy_configs, errors, self.proxy_errors = load_config_dirs(self.directories)
            for name in [n for n in self.proxy_errors if n in self.configs]:
                # A unit's file rewritten as a proxy's, with an error: the unit keeps
                # its old config, as for any broken file (SPEC 11).
                errors[name] = self.proxy_errors.pop(name)
            old = dict(self.configs)
            added = sorted(n for n in new if n not in old)
            removed = sorted(n for n in old if n not in new and n not in errors)
            # A broken file that is gone was listed (as Failed): its going is news too.
            vanished = [n for n in self.broken if n not in old and n not in new and n not in errors]
            gone = sorted(removed + vanished)
            changed = sorted(n for n in new if n in old and new[n] != old[n])
            unchanged = sorted(n for n in new if n in old and new[n] == old[n])
            # A finished oneshot counts as running: changed, it runs again (a new migration).
            restarting = [n for n in changed if self.units[n].is_on()]
            dependents = self._requirers(restarting, Service.is_on, old)
            # Units that need a removed one stop with it, but stay wanted: Blocked
            # until it comes back (SPEC 5, "requires an undefined unit").
            # A finished oneshot among them is undone: wanted again, it runs once it is back.
            orphaned = self._requirers(removed, Service.is_on, old)
            stops = self._stop_counts(dependents + orphaned)
            if removed:
                self.stop_units(set(removed), "removed from the config directory")
            if restarting:
                self.stop_units(set(restarting), "config changed")
            for name in removed:
                self._forget(name)
            for name in changed:
                self.configs[name] = new[name]
                self.units[name].post(_Reconfigure(new[name]))
            for name in added:
                self.configs[name] = new[name]
                self.units[name] = Service(new[name], self)
            for name in [*changed, *added, *unchanged]:
                self.loaded_files[name] = _file_identity(new[name].path)
            self.broken = {n: e for n, e in errors.items() if n not in self.configs}
            for name, unit in self.units.items():
                unit.config_error = errors.get(name)
            self._rebuild_graph()
            to_start = restarting + self._not_stopped_since(stops)
            to_start += self._waiting_for(added)
            to_start += [n for n in added if new[n].status == "start"]
            # Newly status=start, or Failed on the old config: a fixed file is
            # a reason to try again (a unit stopped by hand stays stopped).
            to_start += [
                n
                for n in changed
                if n not in restarting
                and new[n].status == "start"
                and (old[n].status != "start" or self.units[n].state == State.FAILED)
            ]
            to_start = [n for n in to_start if self.configs[n].status != "ignore"]
            if to_start and not self.shutting_down:
                self.start_many(to_start, reason="reload")
            self._notify_all()
        for error in [*errors.values(), *self.proxy_errors.values()]:
            for problem in error.every():
                _log().error("reload: %s", problem)
        _log().info(
            "reload: added %s; removed %s; changed %s; %d unchanged",
            ", ".join(added) or "-",
            ", ".join(gone) or "-",
            ", ".join(changed) or "-",
            len(unchanged),
        )
        return {
            "added": added,
            "removed": gone,
            "changed": changed,
            "unchanged": unchanged,
            "stopped": orphaned,  # with the removed units, as they require one
            "errors": [{"unit": n, **e.to_dict()} for n, e in sorted(errors.items())]
            + self._cycle_errors(),
        }

    def _cycle_errors(self) -> list[dict[str, Any]]:
        """Reload errors for the units on a dependency cycle (each stays Blocked)."""
        return [
            {
                "unit": name,
                "file": self.configs[name].path,
                "key": None,
                "line": None,
                "col": None,
                "reason": f"dependency cycle: {cycle}",
                "message": f"{self.configs[name].path}: dependency cycle: {cycle}",
            }
            for name, cycle in sorted(self.cycles.items())
        ]

    def on_failed_for_good(self, unit: Service) -> None:
        if unit.config.critical and self.on_critical is not None:
            self.on_critical(unit)

    def shutdown(self, reason: str = "shutdown") -> None:
        """Stop every unit, dependents first, user class before system class."""
        if self.shutting_down:
            self.finished.wait()
            return
        self.shutting_down = True
        _log().info("shutting down (%s)", reason)
        for hook in self.before_shutdown:
            hook()
        for unit_class in ("user", "system"):
            names = {n for n, c in self.configs.items() if c.unit_class == unit_class}
            self.stop_units(names, reason)
        self._stop_strays()
        self.cgroups.close()
        if self.forwarder is not None:
            self.forwarder.close()
        self.finished.set()

    def _stop_strays(self) -> None:
        """End what units left where their stops could not reach, once they are all stopped.

        A process that left its unit's process group and cleared its environment,
        on a host without cgroups, is found by nothing else; as a subreaper the
        daemon inherits it once its parent dies, so every child still alive now
        is one of those.  Stop signal, then SIGKILL after _ORPHAN_STOP_S.
        """
        import psutil

        try:
            strays = [p for p in psutil.Process().children() if _is_running(p.pid)]
        except psutil.Error:
            return
        if not strays:
            return
        _log().warning(
            "%d process(es) left behind by units outside their process groups: %s; stopping them",
            len(strays),
            ", ".join(f"{p.pid} ({_process_name(p)})" for p in strays),
        )
        for signum, limit_s in ((signal.SIGTERM, _ORPHAN_STOP_S), (signal.SIGKILL, 30.0)):
            for process in strays:
                try:
                    _stop_signal(process.send_signal, signum)  # psutil checks the pid is ours
                except psutil.Error:
                    pass
            deadline = self.clock() + limit_s
            # libev reaps them (never psutil's wait): look again after each exit.
            while (strays := [p for p in strays if _is_running(p.pid)]) and self.clock() < deadline:
                self.runtime.wait_any_exit(deadline - self.clock())
            if not strays:
                return

    def debug_state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "directories": [d for d, _ in self.directories],
            "subreaper": self.runtime.is_subreaper,
            "cgroup": self.cgroups.root,
            "cycles": self.cycles,
            "broken": {n: e.to_dict() for n, e in self.broken.items()},
            "dependents": {n: sorted(d) for n, d in self.dependents.items()},
            "subscriptions": {"events": len(self._event_queues), "logs": len(self._log_queues)},
            "units": {
                name: {
                    **unit.snapshot().to_dict(),
                    "wanted": unit.wanted,
                    "failures": unit.failures,
                    "succeeded": unit.succeeded,
                    "cgroup": unit._leaf,
                    "mailbox": len(unit._mailbox.items),
                    "history": list(unit.history),
                }
                for name, unit in sorted(self.units.items())
            },
        }

    def debug_procs(self, name: str) -> list[dict[str, Any]]:
        import psutil

        unit = self.unit(name)
        pids = set(_Cgroups.pids(unit._leaf))
        if unit.pid is not None:
            pids.add(unit.pid)
            try:
                pids.update(p.pid for p in psutil.Process(unit.pid).children(recursive=True))
            except psutil.Error:
                pass
        rows = []
        for pid in sorted(pids):
            try:
                process = psutil.Process(pid)
                with process.oneshot():
                    rows.append(
                        {
                            "pid": pid,
                            "ppid": process.ppid(),
                            "pgid": os.getpgid(pid),
                            "status": process.status(),
                            "cmdline": process.cmdline(),
                            "rss_bytes": process.memory_info().rss,
                            "cpu_s": round(sum(process.cpu_times()[:2]), 3),
                        }
                    )
            except (psutil.Error, OSError):
                continue
        return rows


# ==== 17. Xinet proxy ========================================================
# Socket activation: a proxy listens for its unit, starts the unit on the
# first client (holding the client, never refusing it), retries the backend
# until connect_timeout, then forwards both ways with splice(2) through a
# pipe (a copy loop where splice cannot), passing half-closes on.  Idle
# proxies stop their unit.  Uses the supervisor (16) to start and stop units;
# never touches a unit directly.

#: Bytes moved per splice(2) call, and the pipe size asked for (Linux max).
_SPLICE_CHUNK_BYTES = 1 << 20
#: A read shorter than this drained the socket (request/response traffic).
_SMALL_READ_BYTES = 16 * 1024
#: What a new pipe holds on Linux (16 pages); a read this large is bulk traffic.
_DEFAULT_PIPE_BYTES = 16 * 4096
#: The copy loop's buffer, where splice(2) cannot be used.
_COPY_BUFFER_BYTES = 256 * 1024
#: Backend connection retries.  A refused connect costs tens of microseconds,
#: while the time from the backend's listen() to the next attempt is added to
#: the first client's wait.  So the next attempt comes after 0.5% of the time
#: waited so far, within these bounds: a backend that is up in 300 ms is
#: reached 1.5 ms after it at worst, and a slow one costs 20 attempts a second.
_CONNECT_RETRY_MIN_S = 0.001
_CONNECT_RETRY_MAX_S = 0.05
#: Clients accepted per readiness of a listener before the loop turns, so that a
#: burst of new clients cannot starve the connections already being served.
_ACCEPT_BATCH = 64
#: Out of file descriptors, a listener stays readable: accepting pauses this long
#: instead of spinning on it.
_ACCEPT_PAUSE_S = 0.1


def _listen_socket(address: str) -> socket.socket:
    """Bind and listen on ``address``; raise ZinitError saying why not."""
    kind, where = parse_address(address)
    if kind == "unix":
        if os.path.lexists(where):
            if not stat.S_ISSOCK(os.lstat(where).st_mode):
                raise ZinitError(f"{where} exists and is not a socket; refusing to replace it")
            # Non-blocking: a listener that does not accept (a full queue) must
            # not hold the daemon, and counts as one.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            try:
                probe.connect(where)
            except BlockingIOError:
                in_use = True
            except OSError:
                in_use = False
                os.unlink(where)  # stale: nobody listens there any more
            else:
                in_use = True
            finally:
                probe.close()
            if in_use:
                raise ZinitError(f"{where} is in use by another listener")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(where)
            # Like a TCP port, the socket is open to every local user.
            os.chmod(where, 0o666)
        except OSError as error:
            listener.close()
            raise ZinitError(f"cannot listen on {address}: {error.strerror or error}") from None
    else:
        host, port = where
        try:
            family, _, _, _, sockaddr = _getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except (OSError, UnicodeError) as error:  # IDNA refuses some names ("a..b")
            reason = getattr(error, "strerror", None) or error
            raise ZinitError(f"cannot resolve {address}: {reason}") from None
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(sockaddr)
        except OSError as error:
            listener.close()
            raise ZinitError(f"cannot listen on {address}: {error.strerror or error}") from None
    listener.listen(1024)
    return listener


class _Acceptor:
    """Accepts clients on one listening socket, each handed to ``handle`` in a greenlet.

    A plain socket and an io watcher that accepts in its callback: the proxy
    needs only the client's fd, and gevent's StreamServer wraps every client in
    gevent's socket class, which costs more than the accept itself.  Clients
    reach ``handle`` non-blocking; ``handle`` closes them.
    """

    def __init__(
        self,
        runtime: _Runtime,
        listener: socket.socket,
        address: str,
        handle: Callable[[socket.socket], None],
    ) -> None:
        listener.setblocking(False)
        self.runtime = runtime
        self.listener = listener
        self.address = address
        self.handle = handle
        self.watcher = runtime.loop.io(listener.fileno(), 1)
        self.pause: Any = None
        self.starved = False  # out of fds since the last client accepted (warned once)
        self.watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        try:
            self._accept_some()
        except Exception:  # noqa: BLE001 - libev would stop this watcher for good
            _log().exception("accepting clients on %s failed", self.address)
            self._pause()

    def _accept_some(self) -> None:
        import errno

        for attempt in range(_ACCEPT_BATCH):
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    continue  # that client gave up (ECONNABORTED...); the next may not have
                if attempt:
                    # accept(2) takes the fd before it looks at the queue, so after a
                    # client took the last fd this says nothing about a waiting one.
                    # If there is one, the watcher fires again at once.
                    return
                if not self.starved:
                    self.starved = True
                    _log().warning(
                        "cannot accept clients on %s (%s); trying again every %gs",
                        self.address,
                        error.strerror,
                        _ACCEPT_PAUSE_S,
                    )
                self._pause()
                return
            if self.starved:
                self.starved = False
                _log().info("accepting clients on %s again", self.address)
            client.setblocking(False)
            self.runtime.gevent.spawn(self.handle, client)

    def _pause(self) -> None:
        self.watcher.stop()
        self.pause = self.runtime.loop.timer(_ACCEPT_PAUSE_S)
        self.pause.start(self._resume)

    def _resume(self) -> None:
        self.pause.close()
        self.pause = None
        self.watcher.start(self._on_readable)

    def close(self) -> None:
        """Stop accepting and close the listening socket (accepted clients live on)."""
        self.watcher.close()
        if self.pause is not None:
            self.pause.close()
            self.pause = None
        self.listener.close()


def _getaddrinfo(host: str | None, port: int, **options: Any) -> list[Any]:
    """getaddrinfo that never holds the hub: a name goes to gevent's resolver (a DNS
    server that does not answer held every unit for 10 s); an IP literal needs none."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host or "")
        except (OSError, UnicodeError, ValueError):
            continue
        return socket.getaddrinfo(host, port, **options)
    if not host:
        return socket.getaddrinfo(host, port, **options)
    import gevent.socket

    return gevent.socket.getaddrinfo(host, port, **options)


def _resolve(address: str) -> tuple[int, Any]:
    """Return (family, sockaddr) for an address; raise ZinitError if it cannot be resolved."""
    kind, where = parse_address(address)
    if kind == "unix":
        return socket.AF_UNIX, where
    try:
        family, _, _, _, sockaddr = _getaddrinfo(*where, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as error:  # IDNA refuses some names ("a..b")
        reason = getattr(error, "strerror", None) or error
        raise ZinitError(f"cannot resolve {address}: {reason}") from None
    return family, sockaddr


def _connect_socket(runtime: _Runtime, family: int, sockaddr: Any, timeout: float) -> Any:
    """One connection attempt, bounded by ``timeout`` seconds.

    A plain non-blocking socket and one io watcher: gevent's socket wrapper
    costs more than the connect itself, and this runs once per client.
    """
    import errno

    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        error = sock.connect_ex(sockaddr)
        # EAGAIN (a unix backend's accept queue is full) is no connection at all:
        # the socket would poll writable at once.  The caller tries again.
        if error == errno.EINPROGRESS:
            # Over loopback the handshake is usually done by the time connect()
            # returns: asking again is one syscall, waiting is a turn of the loop.
            error = sock.connect_ex(sockaddr)
            if error == errno.EISCONN:
                error = 0
        if error in (errno.EINPROGRESS, errno.EALREADY):
            writable = runtime.loop.io(sock.fileno(), 2)
            try:
                with runtime.gevent.Timeout(timeout):
                    runtime.hub.wait(writable)
            finally:
                writable.close()
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _splice_until_eof(
    source_fd: int,
    target_fd: int,
    wait_readable: Callable[[], None],
    wait_writable: Callable[[], None],
    moved: Callable[[int], None],
) -> bool:
    """Splice ``source_fd`` → pipe → ``target_fd`` until EOF; False if splice(2) cannot.

    The fds are non-blocking, so EAGAIN means "wait for the hub".  The pipe is
    drained completely before the next read.  It keeps the default size until
    a read fills it: request/response traffic never needs more, and a
    connection that only says hello pays for no resize.  False (nothing
    moved) when the kernel refuses to splice these fds, or when no pipe can
    be had because the daemon is out of fds.
    """
    import errno
    import fcntl

    if not hasattr(os, "splice"):
        return False
    try:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.EMFILE, errno.ENFILE):
            return False  # out of fds: the copy loop needs none
        raise
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    grown = started = False
    try:
        while True:
            try:
                count = os.splice(source_fd, write_end, _SPLICE_CHUNK_BYTES, flags=flags)
            except BlockingIOError:
                wait_readable()
                continue
            except OSError as error:
                if not started and error.errno in (errno.EINVAL, errno.ENOSYS):
                    return False
                raise
            started = True
            if count == 0:
                return True
            total = count
            while count:
                try:
                    count -= os.splice(read_end, target_fd, count, flags=flags)
                except BlockingIOError:
                    wait_writable()
            moved(total)
            if total < _SMALL_READ_BYTES:
                # The socket is most likely drained: wait for more instead of
                # paying for a failed splice (this is the round-trip path).
                wait_readable()
            elif not grown and total >= _DEFAULT_PIPE_BYTES:
                grown = True  # bulk traffic: fewer, larger splices
                try:
                    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _SPLICE_CHUNK_BYTES)
                except OSError:
                    pass  # over the user's pipe quota: the default pipe still works
    finally:
        os.close(read_end)
        os.close(write_end)


def _copy_until_eof(
    source_fd: int,
    target_fd: int,
    wait_readable: Callable[[], None],
    wait_writable: Callable[[], None],
    moved: Callable[[int], None],
) -> None:
    """Copy ``source_fd`` to ``target_fd`` until EOF through one buffer (splice's fallback)."""
    buffer = bytearray(_COPY_BUFFER_BYTES)
    view = memoryview(buffer)
    while True:
        try:
            count = os.readv(source_fd, [buffer])
        except BlockingIOError:
            wait_readable()
            continue
        if count == 0:
            return
        sent = 0
        while sent < count:
            try:
                sent += os.write(target_fd, view[sent:count])
            except BlockingIOError:
                wait_writable()
        moved(count)


def _peer_name(sock: socket.socket) -> str:
    """A client's address for the log: host:port, or the unix socket it came through."""
    try:
        peer = sock.getpeername()
        if isinstance(peer, tuple):
            host, port = peer[0], peer[1]
            return f"{host}:{port}" if sock.family == socket.AF_INET else f"[{host}]:{port}"
        return f"a client on {sock.getsockname() or 'a unix socket'}"
    except OSError:
        return "a client"


class XinetProxy:
    """One proxy: its listeners, its connections and their counters."""

    def __init__(self, config: XinetConfig, supervisor: Supervisor, source: str) -> None:
        import gevent.pool

        self.config = config
        self.supervisor = supervisor
        self.runtime = supervisor.runtime
        self.source = source  # "config" (a file in the config directory) or "rpc"
        self.acceptors: list[_Acceptor] = []
        self.unix_paths: list[str] = []
        self.connections = gevent.pool.Group()
        self.active = 0
        self.total = 0
        self.refused = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_error: str | None = None
        self.file_error: str | None = None  # its file's error, while the old config runs
        self._idle: Any = None
        self._backend: tuple[int, Any] | None = None  # resolved once, not per client

    def open(self) -> None:
        """Start listening on every address; all or nothing."""
        try:
            self._backend = _resolve(self.config.backend)
        except ZinitError as error:
            self._fail(f"{error}; will try again on the first client")

        try:
            for address in self.config.listen:
                listener = _listen_socket(address)
                if address.startswith("unix:"):
                    self.unix_paths.append(address[len("unix:") :])
                self.acceptors.append(_Acceptor(self.runtime, listener, address, self._serve))
        except ZinitError:
            self.close()
            raise

    def close(self) -> None:
        """Close the listeners and every connection of this proxy."""
        self.close_listeners()
        self.connections.kill(block=False)

    def close_listeners(self) -> None:
        for acceptor in self.acceptors:
            acceptor.close()
        self.acceptors = []
        for path in self.unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.unix_paths = []
        if self._idle is not None:
            self._idle.kill(block=False)

    def undefined_service_message(self) -> str:
        """Why a client cannot be served while the proxy's unit is not loaded."""
        name = self.config.service
        if name in self.supervisor.broken:
            return f"service {name!r} is not loaded (its file has an error); clients are closed"
        return f"service {name!r} is not defined; clients are closed until it is"

    def status(self) -> dict[str, Any]:
        unit = self.supervisor.units.get(self.config.service)
        last_error = self.last_error
        if unit is not None and last_error == self.undefined_service_message():
            last_error = None  # the unit has been added since: no longer true
        return {
            "name": self.config.name,
            "listen": list(self.config.listen),
            "backend": self.config.backend,
            "service": self.config.service,
            "service_state": str(unit.state) if unit is not None else None,
            "active": self.active,
            "total": self.total,
            "refused": self.refused,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "last_error": last_error,
            "warnings": [self.file_error] if self.file_error else [],
            "connect_timeout": self.config.connect_timeout_s,
            "idle_timeout": self.config.idle_timeout_s,
            "single_connection": self.config.single_connection,
            "source": self.source,
            "path": self.config.path or None,
            "error": None,
        }

    def _fail(self, message: str) -> None:
        self.last_error = message
        _log().warning("xinet %s: %s", self.config.name, message)

    # -- one client ----------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        import gevent

        if self.config.single_connection and self.active:
            self.refused += 1
            client.close()
            return
        self.connections.add(gevent.getcurrent())
        self.active += 1
        self.total += 1
        if self._idle is not None:
            self._idle.kill(block=False)
            self._idle = None
        backend = None
        moved = {"bytes_in": 0, "bytes_out": 0}
        peer = ""
        try:
            if self.runtime.debug:
                peer = _peer_name(client)
            if client.family != socket.AF_UNIX:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            backend = self._activate()
            if backend is not None:
                if self.runtime.debug:
                    _log().debug("xinet %s: %s connected to the backend", self.config.name, peer)
                self._forward(client, backend, moved)
        finally:
            client.close()
            if backend is not None:
                backend.close()
            if self.runtime.debug:
                _log().debug(
                    "xinet %s: %s closed (%d bytes in, %d out)",
                    self.config.name,
                    peer,
                    moved["bytes_in"],
                    moved["bytes_out"],
                )
            self.active -= 1
            if not self.active and self.config.idle_timeout_s > 0 and self.acceptors:
                self._idle = gevent.spawn(self._stop_when_idle)

    def _activate(self) -> Any:
        """Start the unit if needed and connect to the backend; None after a failure.

        Blocks until connected or until connect_timeout; the client waits.
        """
        import gevent

        name = self.config.service
        deadline = self.runtime.clock() + self.config.connect_timeout_s
        unit = self.supervisor.units.get(name)
        if unit is None:
            self._fail(self.undefined_service_message())
            return None
        if not unit.is_up() and not (unit.wanted and unit.state not in AT_REST):
            try:
                self.supervisor.start(name, reason=f"activated by xinet {self.config.name!r}")
            except ZinitError as error:
                self._fail(f"cannot start {name!r}: {error}")
                return None
        if self._backend is None:
            try:
                self._backend = _resolve(self.config.backend)
            except ZinitError as error:
                self._fail(str(error))
                return None
        started = self.runtime.clock()
        last = "no attempt"
        while True:
            now = self.runtime.clock()
            remaining = deadline - now
            if remaining <= 0:
                self._fail(
                    f"backend {self.config.backend} did not accept a connection within "
                    f"{self.config.connect_timeout_s:g}s ({last}; {name} is {unit.state})"
                )
                return None
            if unit.state == State.STOPPING:
                # The old instance may still accept while it drains; this client
                # is for the one that starts after it.
                last = f"{name} was still stopping"
            else:
                try:
                    return _connect_socket(self.runtime, *self._backend, remaining)
                except (OSError, gevent.Timeout) as error:
                    last = getattr(error, "strerror", None) or str(error) or type(error).__name__
            if unit.state == State.FAILED and not unit.wanted and unit._restart_at is None:
                self._fail(f"{name} failed ({unit.reason}); closing the client")
                return None
            delay = min(max(_CONNECT_RETRY_MIN_S, (now - started) / 200), _CONNECT_RETRY_MAX_S)
            gevent.sleep(min(delay, max(0.0, remaining)))

    def _forward(self, client: Any, backend: Any, moved: dict[str, int]) -> None:
        """Pump client → backend in a greenlet of its own, backend → client in this one.

        Counts the bytes in ``moved`` (this connection's) and in the proxy's totals.
        """
        import gevent

        upstream = gevent.spawn(self._pump, client, backend, "bytes_in", moved)
        try:
            self._pump(backend, client, "bytes_out", moved)
            upstream.join()
        finally:
            upstream.kill(block=True)

    def _pump(self, source: Any, target: Any, counter: str, moved_here: dict[str, int]) -> None:
        """Move bytes one way until EOF, then pass the half-close on.

        splice(2) moves them inside the kernel; where it refuses the sockets,
        a copy loop does (a 256 KiB buffer, one read and write per chunk).
        """
        readable = self.runtime.loop.io(source.fileno(), 1)
        writable = self.runtime.loop.io(target.fileno(), 2)
        wait = self.runtime.hub.wait

        def moved(count: int) -> None:
            setattr(self, counter, getattr(self, counter) + count)
            moved_here[counter] += count

        try:
            ends = (
                source.fileno(),
                target.fileno(),
                lambda: wait(readable),
                lambda: wait(writable),
            )
            if not _splice_until_eof(*ends, moved):
                _copy_until_eof(*ends, moved)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset or a vanished peer: end both directions now.
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        finally:
            readable.close()
            writable.close()

    def _stop_when_idle(self) -> None:
        import gevent

        gevent.sleep(self.config.idle_timeout_s)
        if self.active or not self.acceptors:
            return
        self._idle = None
        unit = self.supervisor.units.get(self.config.service)
        if unit is not None and unit.is_active():
            _log().info(
                "xinet %s: no connection for %gs; stopping %s",
                self.config.name,
                self.config.idle_timeout_s,
                self.config.service,
            )
            self.supervisor.stop_units(
                {self.config.service},
                f"idle for {self.config.idle_timeout_s:g}s (xinet {self.config.name!r})",
            )


def _unloaded_proxy_status(name: str, path: str, error: str) -> dict[str, Any]:
    """A proxy status row for a file that never loaded: an error in it, or one installing it."""
    return {
        "name": name,
        "listen": [],
        "backend": None,
        "service": None,
        "service_state": None,
        "active": 0,
        "total": 0,
        "refused": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "last_error": None,
        "warnings": [],
        "connect_timeout": None,
        "idle_timeout": None,
        "single_connection": False,
        "source": "config",
        "path": path,
        "error": error,
    }


class _Xinet:
    """Every proxy of the daemon, by name."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.proxies: dict[str, XinetProxy] = {}
        #: Proxy files that parsed but could not be installed (an address taken), and why.
        self.install_errors: dict[str, tuple[str, str]] = {}

    def statuses(self) -> list[dict[str, Any]]:
        """Every proxy's status, and a row for each proxy file that never loaded."""
        rows = {name: proxy.status() for name, proxy in self.proxies.items()}
        for name, error in self.supervisor.proxy_errors.items():
            rows.setdefault(name, _unloaded_proxy_status(name, error.path, str(error)))
        for name, (path, message) in self.install_errors.items():
            rows.setdefault(name, _unloaded_proxy_status(name, path, message))
        return [rows[name] for name in sorted(rows)]

    def get(self, name: str) -> XinetProxy:
        if name not in self.proxies:
            if name in self.supervisor.proxy_errors:
                error = self.supervisor.proxy_errors[name]
                raise UnitStateError(f"proxy {name!r} is not loaded: {error}")
            if name in self.install_errors:
                path, message = self.install_errors[name]
                raise UnitStateError(f"proxy {name!r} is not loaded: {path}: {message}")
            raise UnitNotFound(name, "proxy")
        return self.proxies[name]

    def set(self, config: XinetConfig, source: str) -> XinetProxy:
        """Create or replace a proxy.

        The old proxy's listeners close first, so that the same addresses can
        be bound again; if the new ones cannot be, the old proxy is restored.
        An address another proxy listens on is refused, naming that proxy.
        """
        wanted = {parse_address(address): address for address in config.listen}
        for other in self.proxies.values():
            if other.config.name == config.name:
                continue
            taken = [wanted[a] for a in map(parse_address, other.config.listen) if a in wanted]
            if taken:
                raise ZinitError(
                    f"{', '.join(taken)}: proxy {other.config.name!r} listens there already"
                )
        old = self.proxies.get(config.name)
        if old is not None:
            old.close_listeners()
        proxy = XinetProxy(config, self.supervisor, source)
        try:
            proxy.open()
        except ZinitError:
            if old is not None:
                try:
                    old.open()
                except ZinitError as error:
                    _log().error("xinet %s: cannot restore the old proxy: %s", config.name, error)
                    self.proxies.pop(config.name).close()
            raise
        if old is not None:
            old.close()
        self.proxies[config.name] = proxy
        _log().info(
            "xinet %s: %s -> %s (starts %s)",
            config.name,
            ", ".join(config.listen),
            config.backend,
            config.service,
        )
        return proxy

    def delete(self, name: str) -> str | None:
        """Close a proxy; one declared in a file loses its file too (as remove-service does).

        Returns the path of the deleted file, if any.  A proxy file with an error
        that never loaded is deleted too (the way to be rid of it from the CLI).
        """
        if name not in self.proxies and name in self.supervisor.proxy_errors:
            path = self.supervisor.proxy_errors.pop(name).path
            _delete_unit_file(path)
            return path
        if name not in self.proxies and name in self.install_errors:
            path = self.install_errors.pop(name)[0]
            self.supervisor.proxy_configs.pop(name, None)
            _delete_unit_file(path)
            return path
        self.get(name)
        proxy = self.proxies.pop(name)
        proxy.close()
        if proxy.source != "config" or not proxy.config.path:
            return None
        self.supervisor.proxy_configs.pop(name, None)
        _delete_unit_file(proxy.config.path)
        return proxy.config.path

    def apply(
        self, configs: dict[str, XinetConfig], broken: dict[str, ConfigError]
    ) -> dict[str, Any]:
        """Bring the proxies declared in files in line with ``configs``.

        A proxy whose file now has an error (``broken``) keeps running as it was,
        and says so in its status.
        """
        current = {
            n: p for n, p in self.proxies.items() if p.source == "config" and n not in broken
        }
        result: dict[str, Any] = {
            "added": [],
            "removed": [],
            "changed": [],
            "unchanged": [],
            "errors": [],
            "warnings": [],
        }
        for name in sorted(set(current) - set(configs)):
            self.proxies.pop(name).close()
            result["removed"].append(name)
        self.install_errors = {n: e for n, e in self.install_errors.items() if n in configs}
        for name, config in sorted(configs.items()):
            if name in current and current[name].config == config:
                self.install_errors.pop(name, None)
                result["unchanged"].append(name)
                continue
            try:
                self.set(config, "config")
            except ZinitError as error:
                _log().error("xinet %s: %s", name, error)
                result["errors"].append({"name": name, "message": str(error)})
                self.install_errors[name] = (config.path, str(error))
                if name in current:
                    current[name].file_error = (
                        f"its file's new config could not be installed ({error}); "
                        "still using the old config"
                    )
                continue
            self.install_errors.pop(name, None)
            result["changed" if name in current else "added"].append(name)
        for name, error in sorted(broken.items()):
            result["errors"].append({"name": name, **error.to_dict()})
            proxy = self.proxies.get(name)
            if proxy is not None and proxy.source == "config":
                proxy.file_error = f"config file has an error, still using the old config: {error}"
        for name, config in sorted(configs.items()):
            proxy = self.proxies.get(name)
            if proxy is None or proxy.config != config:
                continue  # not installed (its error is reported): the old one still runs
            proxy.file_error = None
            if config.service not in self.supervisor.units:
                # Installed all the same: it works once the unit is added.
                message = proxy.undefined_service_message()
                if proxy.last_error != message:
                    proxy._fail(message)
                result["warnings"].append({"name": name, "message": message})
        return result

    def close_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
        self.proxies = {}


# ==== 18. RPC server =========================================================
# The control socket: a unix socket served by the proxy's acceptor (mode 0600, or
# 0660 with --socket-group), one greenlet per connection.  Frames are bounded
# at MAX_FRAME_BYTES; every malformed frame gets its JSON-RPC error and the
# connection goes on.  Handlers are bound by name from _METHODS, never built
# from wire input; errors are translated to codes here and nowhere else.


class _Connection:
    """One client connection: serialised writes, and the streams it follows."""

    def __init__(self, sock: Any) -> None:
        import gevent
        import gevent.lock

        self.greenlet = gevent.getcurrent()  # the one serving it
        self.sock = sock
        self._write_lock = gevent.lock.Semaphore()
        self.streams: list[Any] = []
        self.streams_asked = 0  # streams opened by its requests, running or about to

    def send(self, message: dict[str, Any] | list[Any]) -> None:
        with self._write_lock:
            self.sock.sendall(encode_frame(message))


def _loggable(arguments: dict[str, Any]) -> str:
    """RPC parameters for the debug log: a unit file's text (it may hold secrets in its
    env) is given by its size only, and any long value is cut."""
    shown = {}
    for key, value in arguments.items():
        if key == "toml" and isinstance(value, str):
            value = f"<{len(value)} characters of TOML>"
        elif isinstance(value, str) and len(value) > 200:
            value = value[:200] + "..."
        elif isinstance(value, list | dict) and len(value) > 20:
            value = f"<{len(value)} items>"
        shown[key] = value
    return json.dumps(shown, default=str)


class _RpcServer:
    """JSON-RPC 2.0 over the control socket, dispatching to the supervisor."""

    def __init__(
        self, supervisor: Supervisor, xinet: _Xinet, path: str, group: str | None = None
    ) -> None:
        self.supervisor = supervisor
        self.xinet = xinet
        self.path = path
        self.group = group
        self.acceptor: _Acceptor | None = None
        self.clients: set[_Connection] = set()
        self.on_shutdown: Callable[[str], None] | None = None
        self.handlers = {method.name: getattr(self, method.handler_name) for method in _METHODS}

    # -- the socket --------------------------------------------------------

    def listen(self) -> None:
        """Bind the control socket.  Raises ZinitError if another daemon owns it."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(self.path) or os.path.islink(self.path):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise ZinitError(f"{self.path} exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale: its daemon is gone
            else:
                raise ZinitError(f"another zinit daemon is listening on {self.path}")
            finally:
                probe.close()
        gid = None
        if self.group is not None:
            import grp

            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                if not _is_decimal(self.group):
                    raise ZinitError(f"--socket-group: no group named {self.group!r}") from None
                gid = int(self.group)  # a bare gid, as for a unit's group
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which the socket is wider than 0600
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        if gid is not None:
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)
        listener.listen(128)
        # The proxy's acceptor: at the fd limit it pauses and says so once,
        # where gevent's StreamServer would print a traceback every second.
        runtime = self.supervisor.runtime
        self.acceptor = _Acceptor(runtime, listener, f"unix:{self.path}", self._accepted)

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            self.supervisor.runtime.gevent.killall([c.greenlet for c in self.clients], timeout=1)
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _accepted(self, client: socket.socket) -> None:
        import gevent.socket

        self._serve(gevent.socket.socket(client.family, client.type, fileno=client.detach()))

    def _serve(self, sock: Any) -> None:
        connection = _Connection(sock)
        self.clients.add(connection)
        reader = sock.makefile("rb")
        try:
            while True:
                line = reader.readline(MAX_FRAME_BYTES + 1)
                if not line:
                    break
                if len(line) > MAX_FRAME_BYTES:
                    connection.send(
                        _error_reply(None, INVALID_REQUEST, "request larger than 1 MiB")
                    )
                    while line and not line.endswith(b"\n"):
                        line = reader.readline(MAX_FRAME_BYTES + 1)
                    continue
                if not line.strip():
                    continue
                if self.supervisor.runtime.trace:
                    line_text = line[:500].decode("utf-8", "replace").rstrip()
                    _log().log(_LOG_TRACE, "rpc <- %s", line_text)
                reply, follows = self._handle_frame(line, connection)
                if self.supervisor.runtime.trace and reply is not None:
                    _log().log(_LOG_TRACE, "rpc -> %s", json.dumps(reply, default=str)[:500])
                if reply is not None:
                    connection.send(reply)
                for follow in follows:  # streams start after the reply that opens them
                    connection.streams.append(self.supervisor.runtime.gevent.spawn(follow))
                # A client that sends requests without waiting for replies would keep
                # the hub (reading from a full buffer never yields): let the others
                # run between two of its requests.  (gevent.idle() would wait for a
                # quiet loop, which a unit flooding its output never leaves.)
                self.supervisor.runtime.gevent.sleep(0)
        except OSError:
            pass
        finally:
            self.clients.discard(connection)
            for stream in connection.streams:
                stream.kill(block=False)
            reader.close()
            sock.close()

    # -- dispatch ----------------------------------------------------------

    def _handle_frame(self, line: bytes, connection: _Connection) -> tuple[Any, list[Any]]:
        """Answer one frame: its reply (None for notifications) and the streams it opened."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as error:
            return _error_reply(None, PARSE_ERROR, f"parse error: {error}"), []
        except RecursionError:
            return _error_reply(None, PARSE_ERROR, "parse error: nested too deeply"), []
        if isinstance(request, list):
            if not request:
                return _error_reply(None, INVALID_REQUEST, "empty batch"), []
            if len(request) > MAX_BATCH:
                why = f"a batch of {len(request)} requests: at most {MAX_BATCH}"
                return _error_reply(None, INVALID_REQUEST, why), []
            answers = []
            for item in request:
                answers.append(self._handle_request(item, connection))
                self.supervisor.runtime.gevent.sleep(0)  # the others' turn, as between frames
            replies = [reply for reply, _ in answers if reply is not None]
            return replies or None, [follow for _, follow in answers if follow is not None]
        reply, follow = self._handle_request(request, connection)
        return reply, [follow] if follow is not None else []

    def _handle_request(self, request: Any, connection: _Connection) -> tuple[Any, Any]:
        if not isinstance(request, dict):
            return _error_reply(None, INVALID_REQUEST, "a request must be a JSON object"), None
        request_id = request.get("id")
        if not isinstance(request_id, str | int | type(None)) or isinstance(request_id, bool):
            kinds = {float: "a number with a fraction part", dict: "an object", list: "an array"}
            why = kinds.get(type(request_id), type(request_id).__name__)
            return _error_reply(
                None,
                INVALID_REQUEST,
                f"id must be a string, an integer or null, got {request_id!r} ({why})",
            ), None
        if request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
            return _error_reply(
                request_id, INVALID_REQUEST, 'expected "jsonrpc": "2.0" and a method'
            ), None
        reply, follow = self._call_method(request, connection)
        if "id" not in request:
            return None, follow  # JSON-RPC 2.0 §4.1: never reply to a notification
        return reply, follow

    def _call_method(self, request: dict[str, Any], connection: _Connection) -> tuple[Any, Any]:
        request_id = request.get("id")
        method = _METHOD_TABLE.get(request["method"])
        if method is None:
            return _error_reply(
                request_id, METHOD_NOT_FOUND, f"unknown method {request['method']!r}"
            ), None
        try:
            arguments = _bind_params(method, request.get("params"))
            if self.supervisor.runtime.debug:
                _log().debug("rpc %s %s", method.name, _loggable(arguments))
            result = self.handlers[method.name](connection, **arguments)
        except ZinitError as error:
            if self.supervisor.runtime.debug:
                _log().debug("rpc %s: error: %s", method.name, error)
            data = error.to_dict() if isinstance(error, ConfigError) else None
            if isinstance(error, UnitNotFound):
                data = {"name": error.name}
            return _error_reply(request_id, _fault_of(error)[0], str(error), data), None
        except Exception as error:  # noqa: BLE001 - one bad request must not end the connection
            _log().exception("rpc %s failed", method.name)
            return _error_reply(request_id, INTERNAL_ERROR, f"internal error: {error!r}"), None
        if isinstance(result, _Stream):
            connection.streams_asked += 1
            follow = result.follow

            def counted() -> None:
                try:
                    follow()
                finally:  # an ended stream (log.end) frees its place
                    connection.streams_asked -= 1

            return {"jsonrpc": "2.0", "id": request_id, "result": result.result}, counted
        return {"jsonrpc": "2.0", "id": request_id, "result": result}, None

    # -- handlers: one per entry of _METHODS --------------------------------

    def rpc_ping(self, connection: _Connection) -> Any:
        return {"pong": True, "version": __version__, "pid": os.getpid()}

    def rpc_list(self, connection: _Connection, with_usage: bool | None = None) -> Any:
        if with_usage:
            return self.supervisor.list(with_usage=True)
        return self.supervisor.list_json()

    def rpc_status(self, connection: _Connection, name: str) -> Any:
        return self.supervisor.status_json(name)

    def rpc_start(self, connection: _Connection, name: str) -> Any:
        self.supervisor.start(name, by_hand=True)
        return {"ok": True}

    def rpc_stop(self, connection: _Connection, name: str) -> Any:
        self.supervisor.stop(name)
        return {"ok": True}

    def rpc_restart(self, connection: _Connection, name: str) -> Any:
        self.supervisor.restart(name)
        return {"ok": True}

    def rpc_kill(self, connection: _Connection, name: str, signal: str | int = "SIGTERM") -> Any:
        try:
            signum = parse_signal(signal)
        except ValueError as error:
            raise UsageError(str(error)) from None
        self.supervisor.unit(name).kill(signum)
        return {"ok": True, "signal": signal_name(signum)}

    def rpc_logs(
        self, connection: _Connection, name: str | None = None, lines: int | None = None
    ) -> Any:
        return self.supervisor.logs(name, lines)

    def _may_open_stream(self, connection: _Connection) -> None:
        """Refuse a stream over the limits: each one queues notifications for its client."""
        if connection.streams_asked >= MAX_STREAMS_PER_CONNECTION:
            raise UnitStateError(
                f"this connection follows {connection.streams_asked} streams already "
                f"(at most {MAX_STREAMS_PER_CONNECTION}); open another connection"
            )
        # Counted as asked for, not as subscribed: subscribing waits for the reply.
        if sum(client.streams_asked for client in self.clients) >= MAX_STREAMS:
            raise UnitStateError(
                f"the daemon serves {MAX_STREAMS} streams already; try again later"
            )

    def rpc_logs_follow(
        self, connection: _Connection, name: str | None = None, lines: int | None = None
    ) -> Any:
        if name is not None:
            self.supervisor.unit(name)
        self._may_open_stream(connection)

        def follow() -> None:
            # Subscribe here, not in the handler: a client gone before this
            # greenlet runs must leave no subscription behind.
            try:
                backlog = self.supervisor.logs(name, 10 if lines is None else lines)
            except UnitNotFound:  # removed since the request was checked
                end = {"unit": name, "reason": "removed"}
                try:
                    connection.send({"jsonrpc": "2.0", "method": "log.end", "params": end})
                except OSError:
                    pass
                return
            queue = self.supervisor.subscribe_logs(name)
            try:
                for entry in backlog:
                    connection.send({"jsonrpc": "2.0", "method": "log", "params": entry})
                for message in queue:
                    connection.send({"jsonrpc": "2.0", **message})
                    if message["method"] == "log.end":
                        break
            except OSError:
                pass
            finally:
                self.supervisor.unsubscribe(queue)

        return _Stream({"subscribed": "logs", "unit": name}, follow)

    def rpc_events_subscribe(self, connection: _Connection) -> Any:
        self._may_open_stream(connection)

        def follow() -> None:
            queue = self.supervisor.subscribe_events()
            try:
                for message in queue:
                    connection.send({"jsonrpc": "2.0", **message})
            except OSError:
                pass
            finally:
                self.supervisor.unsubscribe(queue)

        return _Stream({"subscribed": "events"}, follow)

    def rpc_why(self, connection: _Connection, name: str) -> Any:
        return self.supervisor.why(name)

    def rpc_tree(self, connection: _Connection, name: str | None = None) -> Any:
        return self.supervisor.tree(name)

    def rpc_reload(self, connection: _Connection) -> Any:
        return self.reload()

    def reload(self) -> dict[str, Any]:
        """Reload units, then the proxies declared in the config directories."""
        result = self.supervisor.reload()
        result["xinet"] = self.xinet.apply(
            self.supervisor.proxy_configs, self.supervisor.proxy_errors
        )
        return result

    def rpc_xinet_set(
        self,
        connection: _Connection,
        name: str,
        listen: list[str],
        backend: str,
        service: str,
        connect_timeout: float | None = None,
        idle_timeout: float | None = None,
        single_connection: bool | None = None,
    ) -> Any:
        try:
            config = xinet_config(
                name=name,
                listen=listen,
                backend=backend,
                service=service,
                connect_timeout=30 if connect_timeout is None else connect_timeout,
                idle_timeout=idle_timeout or 0,
                single_connection=bool(single_connection),
            )
        except _FieldError as error:
            fields = "; ".join(f"{e.key}: {e.reason}" for e in (error, *error.others))
            raise UsageError(f"xinet set: {fields}") from None
        self.supervisor.unit(service)
        existing = self.xinet.proxies.get(name)
        error = self.supervisor.proxy_errors.get(name)
        path = existing.config.path if existing is not None else error.path if error else None
        path = path or self.xinet.install_errors.get(name, ("", ""))[0]
        if path:  # the next reload would put the file's proxy back, silently
            raise UnitStateError(
                f"xinet set: proxy {name!r} is declared in {path}: edit the file and reload"
                " (or `xinet delete` it first)"
            )
        return self.xinet.set(config, "rpc").status()

    def rpc_xinet_delete(self, connection: _Connection, name: str) -> Any:
        return {"ok": True, "path": self.xinet.delete(name)}

    def rpc_xinet_list(self, connection: _Connection) -> Any:
        return self.xinet.statuses()

    def rpc_xinet_status(self, connection: _Connection, name: str | None = None) -> Any:
        if name is None:
            return self.rpc_xinet_list(connection)
        return self.xinet.get(name).status()

    def rpc_add_service(self, connection: _Connection, toml: str, name: str | None = None) -> Any:
        return self.supervisor.add_service(toml, name)

    def rpc_remove_service(self, connection: _Connection, name: str) -> Any:
        return self.supervisor.remove_service(name)

    def rpc_start_all(self, connection: _Connection) -> Any:
        return self.supervisor.start_all()

    def rpc_stop_all(self, connection: _Connection) -> Any:
        return {"stopped": self.supervisor.stop_all()}

    def rpc_delete_all(self, connection: _Connection, names: list[str] | None = None) -> Any:
        return {"deleted": self.supervisor.delete_all(names)}

    def rpc_shutdown(self, connection: _Connection) -> Any:
        self.supervisor.shutdown("shutdown requested")
        if self.on_shutdown is not None:
            self.on_shutdown("shutdown")
        return {"ok": True}

    def rpc_poweroff(self, connection: _Connection) -> Any:
        return self._power("poweroff")

    def rpc_reboot(self, connection: _Connection) -> Any:
        return self._power("reboot")

    def _power(self, action: str) -> Any:
        shim = os.environ.get("ZINIT_PID1_PID")
        if not shim:
            raise UnitStateError(f"{action} needs zinit-pid1 (this daemon was not started by it)")
        signum = signal.SIGINT if action == "reboot" else signal.SIGTERM
        os.kill(int(shim), signum)
        return {"ok": True, "action": action}

    def rpc_check(self, connection: _Connection) -> Any:
        return self.supervisor.check()

    def rpc_debug_state(self, connection: _Connection) -> Any:
        return self.supervisor.debug_state()

    def rpc_debug_procs(self, connection: _Connection, name: str) -> Any:
        return self.supervisor.debug_procs(name)

    def rpc_rpc_discover(self, connection: _Connection) -> Any:
        return openrpc_document()


@dataclasses.dataclass(frozen=True, slots=True)
class _Stream:
    """A handler's answer that also starts notifications after the reply."""

    result: Any
    follow: Callable[[], None]


def _error_reply(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


_JSON_TYPES = {
    "string": str,
    "integer": int,
    "boolean": bool,
    "null": type(None),
    "object": dict,
    "array": list,
    "number": (int, float),
}


def _bind_params(method: _Method, params: Any) -> dict[str, Any]:
    """Check params (by name or by position) against the method's declaration."""
    if params is None:
        params = {}
    if isinstance(params, list):
        if len(params) > len(method.params):
            raise UsageError(f"{method.name}: takes at most {len(method.params)} parameter(s)")
        params = {spec.name: value for spec, value in zip(method.params, params, strict=False)}
    if not isinstance(params, dict):
        raise UsageError(f"{method.name}: params must be an object or an array")
    known = {spec.name: spec for spec in method.params}
    for key in params:
        if key not in known:
            raise UsageError(f"{method.name}: unknown parameter {key!r}")
    for spec in method.params:
        if spec.name not in params:
            if spec.required:
                raise UsageError(f"{method.name}: missing parameter {spec.name!r}")
            continue
        value = params[spec.name]
        types = spec.schema["type"]
        types = [types] if isinstance(types, str) else types
        if not any(
            isinstance(value, _JSON_TYPES[t]) and not (isinstance(value, bool) and t != "boolean")
            for t in types
        ):
            raise UsageError(
                f"{method.name}: {spec.name} must be {' or '.join(types)}, got {value!r}"
            )
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value < spec.schema.get("minimum", value)
        ):
            raise UsageError(f"{method.name}: {spec.name} must be >= {spec.schema['minimum']}")
        item_type = spec.schema.get("items", {}).get("type")
        if isinstance(value, list) and item_type is not None:
            for item in value:
                wrong = isinstance(item, bool) and item_type != "boolean"
                if wrong or not isinstance(item, _JSON_TYPES[item_type]):
                    raise UsageError(
                        f"{method.name}: {spec.name} must hold {item_type}s, got {item!r}"
                    )
    return params


# ==== 19. Server entry =======================================================
# ``zinit-server``: set up the hub, load the config directories, bind the
# socket, boot the units, then sleep until a shutdown (RPC, SIGTERM, SIGINT).
# SIGHUP reloads.  The main greenlet waits on an event: no periodic wake-up.


def _configure_logging(level_name: str) -> _BackgroundWriter:
    """Send the daemon's log to stderr through a writer thread; returns the writer."""
    import logging

    levels = {
        "trace": _LOG_TRACE,
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warn": logging.WARNING,
        "warning": logging.WARNING,
        "error": logging.ERROR,
    }
    logging.addLevelName(_LOG_TRACE, "TRACE")
    level = levels.get(level_name.lower())
    if level is None:
        print(
            f"zinit-server: ZINIT_LOG_LEVEL: expected trace, debug, info, warn or error, "
            f"got {level_name!r}; using info",
            file=sys.stderr,
        )
        level = logging.INFO
    # Nothing this log prints needs the caller's frame, thread or process, and
    # looking them up costs every record (the logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    writer = _BackgroundWriter(sys.stderr)

    class Handler(logging.Handler):
        """Hands formatted records to the writer thread (stderr may block)."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                writer.write_lines([self.format(record) + "\n"])
            except Exception:  # noqa: BLE001 - logging must never raise into the daemon
                self.handleError(record)

    logging.basicConfig(
        level=level,
        handlers=[Handler()],
        format="%(asctime)s zinit %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    return writer


def _server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zinit-server",
        description="The zinit daemon: supervises the units of a config directory.",
        formatter_class=_help_formatter,
    )
    parser.add_argument(
        "--config-dir",
        default=None,
        help="service directory (default: ZINIT_CONFIG_DIR or the platform path)",
    )
    parser.add_argument(
        "--socket", default=None, help="control socket (default: ZINIT_SOCKET or the platform path)"
    )
    parser.add_argument(
        "--pid1-mode", action="store_true", help="also load the system directory (class=system)"
    )
    parser.add_argument(
        "--system-dir",
        default=DEFAULT_SYSTEM_DIR,
        help=f"system service directory (default: {DEFAULT_SYSTEM_DIR})",
    )
    parser.add_argument(
        "--forward-logs",
        action="store_true",
        help="also write every service line to stdout as 'name | line'",
    )
    parser.add_argument(
        "--socket-group", default=None, help="let this group use the control socket (mode 0660)"
    )
    parser.add_argument("--version", action="version", version=f"zinit {__version__}")
    return parser


def server_main(argv: list[str] | None = None) -> int:
    """Run the daemon until it is shut down; return its exit status."""
    args = _server_parser().parse_args(argv)
    _raise_fd_limit()
    directories = _config_directories(args)
    _reserve_fd_table(directories)
    writer = _configure_logging(os.environ.get("ZINIT_LOG_LEVEL", DEFAULT_LOG_LEVEL))
    try:
        return _serve(args, directories, writer)
    finally:
        writer.close()


class _ConfigDirLocks:
    """A lock on each config directory, held for the daemon's life (the fds stay open,
    closed on exec): a second daemon on the same directory would run every unit twice.

    A directory that does not exist yet is locked by the first reload that finds it.
    """

    def __init__(self) -> None:
        self.held: set[tuple[int, int]] = set()  # opened twice, one would lock out the other

    def take(self, directories: list[tuple[str, str | None]]) -> None:
        """Lock the directories not locked yet; ZinitError if another daemon holds one."""
        import fcntl

        for directory, _ in directories:
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue  # no such directory: no units to run twice
            found = os.fstat(fd)
            identity = (found.st_dev, found.st_ino)
            if identity in self.held:
                os.close(fd)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._holder(found)
                who = f" (pid {holder})" if holder is not None else ""
                raise ZinitError(
                    f"another zinit daemon{who} supervises the units of {directory} already"
                ) from None
            except OSError:
                os.close(fd)  # a file system without locks: nothing to hold
            self.held.add(identity)

    @staticmethod
    def _holder(found: os.stat_result) -> int | None:
        """The pid holding a flock on the file, from /proc/locks (dev as hex major:minor)."""
        where = f"{os.major(found.st_dev):02x}:{os.minor(found.st_dev):02x}:{found.st_ino}"
        try:
            with open("/proc/locks") as stream:
                for line in stream:
                    fields = line.split()
                    if "FLOCK" in fields and len(fields) > 5 and fields[5] == where:
                        return int(fields[4])
        except (OSError, ValueError):
            pass
        return None


def _pyz_python_version(archive: str) -> str | None:
    """The Python version a .pyz's C extensions were built for ("3.11"), if it tells."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as pyz:
            for name in pyz.namelist():
                if found := re.search(r"\.cpython-(\d)(\d+)-", name):
                    return f"{found[1]}.{found[2]}"
    except (OSError, zipfile.BadZipFile):
        pass
    return None


def _serve(
    args: argparse.Namespace,
    directories: list[tuple[str, str | None]],
    writer: _BackgroundWriter,
) -> int:
    """The daemon's life after argument parsing: load, listen, boot, wait, stop."""
    try:
        runtime = _Runtime()
    except ImportError as error:
        if "failed to map segment" in str(error):  # the loader's words for a noexec mount
            why = "its unpacked C extensions may not be executed there (mounted noexec?); "
            why += "set SHIV_ROOT to an exec-allowed directory"
        elif getattr(__loader__, "archive", None) is None:  # not a .pyz: an install or a copy
            why = (
                f"install the daemon's dependencies for {sys.executable}: pip install gevent psutil"
            )
        else:
            version = f"{sys.version_info[0]}.{sys.version_info[1]}"
            built = _pyz_python_version(__loader__.archive) or "another"  # type: ignore[name-defined]
            why = (
                f"a zinit.pyz runs only on the Python version it was built for ({built}); "
                f"this is {version}"
            )
        print(f"zinit-server: cannot load gevent ({error}); {why}", file=sys.stderr)
        return 1
    writer.coalesce(runtime.loop.run_callback_threadsafe)
    import gevent

    config_dir, _ = directories[-1]  # the user directory: where RPC-made units are written
    container = bool(os.environ.get("ZINIT_CONTAINER"))
    supervisor = Supervisor(
        runtime, directories, write_dir=config_dir, forward_logs=args.forward_logs or container
    )
    xinet = _Xinet(supervisor)
    server = _RpcServer(supervisor, xinet, args.socket or default_socket_path(), args.socket_group)
    try:
        server.listen()
    except (ZinitError, OSError) as error:
        print(f"zinit-server: {error}", file=sys.stderr)
        supervisor.cgroups.close()
        return 1
    try:
        supervisor.dir_locks = _ConfigDirLocks()
        supervisor.dir_locks.take(directories)
    except ZinitError as error:
        print(f"zinit-server: {error}", file=sys.stderr)
        server.close()
        supervisor.cgroups.close()
        return 1

    causes: list[str] = []

    def shut_down(reason: str, code: int = 0) -> None:
        if not causes:  # the first cause decides the exit status
            supervisor.exit_code = code
        causes.append(reason)
        gevent.spawn(supervisor.shutdown, reason)

    def critical_failed(unit: Service) -> None:
        code = unit.exit_code if unit.exit_code and unit.exit_code > 0 else 1
        if unit.spawn_error is not None:  # its last start did not spawn (an old exit code lingers)
            code = unit.spawn_status  # as a shell would: 127 not found, 126 not runnable
        elif unit.exit_code is not None and unit.exit_code < 0:
            code = 128 - unit.exit_code
        _log().error("critical unit %s failed (%s): shutting down", unit.name, unit.reason)
        shut_down(f"critical unit {unit.name!r} failed", code)

    # SPEC 3: `critical` takes effect in container mode only.
    supervisor.on_critical = critical_failed if container else None
    gevent.signal_handler(signal.SIGTERM, shut_down, "shutdown on SIGTERM")
    gevent.signal_handler(signal.SIGINT, shut_down, "shutdown on SIGINT")
    gevent.signal_handler(signal.SIGQUIT, shut_down, "shutdown on SIGQUIT")
    # zinit-pid1 forwards what it receives; these must not end the daemon.  A
    # handler (not SIG_IGN) keeps services from inheriting an ignored signal.
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        gevent.signal_handler(signum, _log().info, "ignoring %s", signal_name(signum))

    def reload_on_sighup() -> None:
        try:
            server.reload()
        except ZinitError as error:
            _log().error("reload on SIGHUP: %s", error)
        except Exception:  # noqa: BLE001 - a bug, logged as one; the daemon serves on
            _log().exception("reload on SIGHUP failed")

    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(reload_on_sighup))
    _log().info(
        "zinit %s listening on %s; units from %s",
        __version__,
        server.path,
        ", ".join(d for d, _ in directories),
    )
    supervisor.before_shutdown.append(xinet.close_all)
    for directory, _ in directories:
        if not os.path.isdir(directory):
            problem = "is not a directory" if os.path.exists(directory) else "does not exist"
            _log().warning("config directory %s %s: no units from it", directory, problem)
    supervisor.load()
    xinet.apply(supervisor.proxy_configs, supervisor.proxy_errors)
    supervisor.boot()
    supervisor.finished.wait()
    server.close()
    _log().info("stopped")
    _report_to_pid1(supervisor.exit_code)
    return supervisor.exit_code


def _report_to_pid1(code: int) -> None:
    """Tell zinit-pid1 (if it started us) that this exit is an orderly one."""
    fd = os.environ.get("ZINIT_PID1_STATUS_FD")
    if fd and fd.isdigit():
        try:
            os.write(int(fd), f"exit {code}\n".encode())
        except OSError:
            pass


def _config_directories(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The directories units load from, with the class each forces (or None)."""
    directories: list[tuple[str, str | None]] = []
    if args.pid1_mode:
        directories.append((args.system_dir, "system"))
    directories.append((args.config_dir or default_config_dir(), None))
    # Absolute, so that every path the daemon reports means the same from anywhere.
    return [(os.path.abspath(directory), forced) for directory, forced in directories]


def _reserve_fd_table(directories: list[tuple[str, str | None]]) -> None:
    """Size the fd table for the units about to start, while the daemon has one thread.

    Linux doubles the table as fds are opened; once threads share it, each
    doubling waits for an RCU grace period (7-10 ms here), five of them on the
    way to a 500-unit start.  A unit holds two pipes' read ends.
    """
    import resource

    units = 0
    for directory, _ in directories:
        try:
            with os.scandir(directory) as entries:
                units += sum(1 for entry in entries if entry.name.endswith(".toml"))
        except OSError:
            continue
    slots = min(4 * units + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if slots <= 256:
        return
    try:
        os.fstat(slots - 1)
        return  # open already (inherited): the table is that large
    except OSError:
        pass
    placeholder = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.dup2(placeholder, slots - 1, inheritable=False)
        os.close(slots - 1)
    except OSError:
        pass  # a smaller table only costs time
    finally:
        os.close(placeholder)


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


# ==== 20. PID-1 shim =========================================================
# ``zinit-pid1``: standard library only, so that PID 1 stays small and never
# depends on gevent.  It blocks the signals it handles and takes them with
# sigwaitinfo (no handlers, no polling), runs zinit-server as its child,
# reaps every zombie, forwards signals, restarts a crashed server, and at the
# end exits (container) or powers off / reboots through reboot(2) (VM).

#: Signals the shim takes synchronously; the server gets them unblocked.
_PID1_SIGNALS = frozenset(
    {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
    }
)
#: reboot(2) commands.
_RB_POWER_OFF = 0x4321FEDC
_RB_AUTOBOOT = 0x01234567
#: Grace between SIGTERM and SIGKILL for whatever is left at the very end.
_PID1_SWEEP_GRACE_S = 2.0


def _pid1_say(message: str) -> None:
    print(f"zinit-pid1: {message}", file=sys.stderr, flush=True)


def _pid1_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zinit-pid1",
        description="PID-1 shim: runs zinit-server, reaps zombies, forwards signals.",
        epilog="ZINIT_PID1_DRY_RUN=1 (VM mode, for tests) exits and names the action "
        "instead of calling reboot(2).",
    )
    parser.add_argument(
        "--container",
        action="store_true",
        help="container mode (also ZINIT_CONTAINER): exit after shutdown",
    )
    parser.add_argument("--config-dir", default=None, help="service directory for the server")
    parser.add_argument(
        "--system-dir", default=DEFAULT_SYSTEM_DIR, help="system service directory (VM mode)"
    )
    parser.add_argument("--socket", default=None, help="control socket for the server")
    return parser


def _own_command() -> list[str]:
    """The command line that runs this zinit again: its .pyz, or this file."""
    archive = getattr(__loader__, "archive", None)  # imported from inside a .pyz
    # Resolved, so that a link named zinit-pid1 does not pick the program.
    return [sys.executable, os.path.realpath(archive or __file__)]


class _Pid1:
    """The shim's state: the server child, the action asked for, the exit code."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.container = args.container or bool(os.environ.get("ZINIT_CONTAINER"))
        self.server_argv = [*_own_command(), "server"]
        if args.config_dir:
            self.server_argv += ["--config-dir", args.config_dir]
        elif self.container and not os.environ.get("ZINIT_CONFIG_DIR"):
            # An image's services live there even under a Docker USER.
            self.server_argv += ["--config-dir", DEFAULT_SERVICES_DIR]
        if args.socket:
            self.server_argv += ["--socket", args.socket]
        if not self.container:
            self.server_argv += ["--pid1-mode", "--system-dir", args.system_dir]
        self.server: int | None = None
        self.action: str | None = None  # "exit", "poweroff" or "reboot"
        self.status_read: int | None = None
        self.cgroup_root: str | None = None
        self.restart_delay_s = 1.0
        self.server_started = 0.0  # monotonic: a server that ends soon after never started
        self.start_failures = 0  # such ends in a row

    def spawn_server(self) -> None:
        read, write = os.pipe()
        os.set_inheritable(write, True)
        env = dict(os.environ, ZINIT_PID1_PID=str(os.getpid()), ZINIT_PID1_STATUS_FD=str(write))
        own = _own_cgroup_dir()
        # A random name: shims in different PID namespaces may all be pid 1.
        self.cgroup_root = os.path.join(own, f"zinit-{os.urandom(6).hex()}") if own else None
        if self.cgroup_root:
            env["ZINIT_CGROUP_ROOT"] = self.cgroup_root
        if self.container:
            env["ZINIT_CONTAINER"] = "1"
        self.server = os.posix_spawn(self.server_argv[0], self.server_argv, env, setsigmask=())
        self.server_started = time.monotonic()
        os.close(write)
        self.status_read = read
        _pid1_say(f"started zinit-server as pid {self.server}")

    def server_report(self) -> str:
        """What the server wrote on its status pipe before exiting ("" if it crashed)."""
        if self.status_read is None:
            return ""
        os.set_blocking(self.status_read, False)
        try:
            return os.read(self.status_read, 4096).decode(errors="replace").strip()
        except OSError:
            return ""
        finally:
            os.close(self.status_read)
            self.status_read = None

    def reap(self) -> int | None:
        """Reap every zombie; return the server's exit code if it was among them."""
        server_code = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == self.server:
                server_code = os.waitstatus_to_exitcode(status)
                self.server = None
        return server_code

    def forward(self, signum: int) -> None:
        if self.server is not None:
            try:
                os.kill(self.server, signum)
            except ProcessLookupError:
                pass

    def on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.container:
                self.action = "exit"
            else:
                self.action = "reboot" if signum == signal.SIGINT else "poweroff"
            _pid1_say(f"{signal_name(signum)}: ordered shutdown, then {self.action}")
            self.forward(signum)  # both shut the server down; its log then names the signal
        else:
            self.forward(signum)

    def wait_signals(self, seconds: float) -> None:
        """Handle signals and reap for ``seconds`` (or until an action is asked)."""
        deadline = time.monotonic() + seconds
        while self.action is None and (remaining := deadline - time.monotonic()) > 0:
            info = signal.sigtimedwait(_PID1_SIGNALS, remaining)
            if info is not None and info.si_signo != signal.SIGCHLD:
                self.on_signal(info.si_signo)
            self.reap()

    def kill_orphans(self, server_pid: int) -> None:
        """End the services a crashed server left behind (tagged with its pid)."""
        _Cgroups.kill_all(self.cgroup_root)
        namespace = os.readlink("/proc/self/ns/pid")
        tagged = [
            int(entry)
            for entry in os.listdir("/proc")
            if entry.isdigit() and _is_tagged_by(int(entry), str(server_pid), namespace)
        ]
        _kill_pids(tagged, signal.SIGKILL)

    def sweep(self) -> None:
        """As PID 1 of a namespace: end every process left, then reap them."""
        if os.getpid() != 1:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(-1, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + _PID1_SWEEP_GRACE_S
            while time.monotonic() < deadline:
                self.reap()
                try:
                    os.kill(-1, 0)
                except ProcessLookupError:
                    return
                signal.sigtimedwait([signal.SIGCHLD], max(0.0, deadline - time.monotonic()))

    def finish(self, code: int) -> int:
        self.sweep()
        if self.container:
            _pid1_say(f"exiting with status {code}")
            return code
        action = self.action or "poweroff"
        if os.getpid() != 1:
            # Not the machine's init (a terminal, a container without --container):
            # reboot(2) would take the host down, or fail and leave this halted.
            _pid1_say(f"not PID 1: no {action}; exiting with status {code}")
            return code
        os.sync()
        if os.environ.get("ZINIT_PID1_DRY_RUN"):
            _pid1_say(f"would {action} now (ZINIT_PID1_DRY_RUN is set)")
            return 0
        import ctypes
        import errno

        libc = ctypes.CDLL(None, use_errno=True)
        libc.reboot(_RB_AUTOBOOT if action == "reboot" else _RB_POWER_OFF)
        error = ctypes.get_errno()
        if error == errno.EPERM:  # PID 1 of a namespace without CAP_SYS_BOOT: a container
            _pid1_say(f"reboot(2) not permitted here; exiting with status {code}")
            return code
        _pid1_say(f"reboot(2) failed: {os.strerror(error)}; halting here")
        while True:  # PID 1 must never exit: the kernel would panic
            signal.sigwaitinfo(_PID1_SIGNALS)
            self.reap()


def pid1_main(argv: list[str] | None = None) -> int:
    """Run as PID 1 (or a container entrypoint) until shutdown; return the exit code."""
    args = _pid1_parser().parse_args(argv)
    shim = _Pid1(args)
    signal.pthread_sigmask(signal.SIG_BLOCK, _PID1_SIGNALS)
    if os.getpid() != 1:
        _set_child_subreaper()
    while True:
        try:
            return _pid1_loop(shim)
        except Exception as error:  # noqa: BLE001 - PID 1 exiting would panic the kernel
            _pid1_say(f"internal error: {error!r}; carrying on in 1s")
            shim.wait_signals(1.0)


#: A server that ends within this many seconds of its start did not start; after this
#: many such ends in a row a container's shim gives up (exit status: the server's).
_PID1_START_FAILURE_S = 5.0
_PID1_START_FAILURES = 3


def _pid1_loop(shim: _Pid1) -> int:
    """Run the server until an orderly end; return the shim's exit code."""
    while True:
        if shim.server is None:
            shim.spawn_server()
        info = signal.sigwaitinfo(_PID1_SIGNALS)
        if info.si_signo != signal.SIGCHLD:
            shim.on_signal(info.si_signo)
            continue
        crashed_pid = shim.server
        code = shim.reap()
        if code is None:
            continue
        report = shim.server_report()
        if report.startswith("exit "):
            return shim.finish(int(report.split()[1]))
        if shim.action is not None:
            return shim.finish(code)
        early = time.monotonic() - shim.server_started < _PID1_START_FAILURE_S
        shim.start_failures = shim.start_failures + 1 if early else 0
        # One that cannot start (a wrong Python, a locked directory) would be retried
        # for ever behind a container that looks up; only the machine's init keeps on.
        if shim.start_failures >= _PID1_START_FAILURES and (shim.container or os.getpid() != 1):
            _pid1_say(
                f"zinit-server {describe_exit(code)}, {shim.start_failures} times in a row"
                f" within {_PID1_START_FAILURE_S:g}s of starting: giving up"
            )
            if crashed_pid is not None:
                shim.kill_orphans(crashed_pid)
            _Cgroups.remove_tree(shim.cgroup_root)
            shim.sweep()
            return code or 1
        _pid1_say(f"zinit-server {describe_exit(code)}; restarting it in {shim.restart_delay_s:g}s")
        if crashed_pid is not None:
            shim.kill_orphans(crashed_pid)
        shim.wait_signals(shim.restart_delay_s)
        _Cgroups.remove_tree(shim.cgroup_root)
        if shim.action is not None:
            return shim.finish(0)
        shim.restart_delay_s = min(shim.restart_delay_s * 2, 30.0)


# ==== 21. Main dispatch ======================================================
# One file, three programs: the basename of argv[0] (zinit, zinit-server,
# zinit-pid1, with or without .py/.pyz) or a first argument (server, pid1)
# picks the entry point.


def main(argv: list[str] | None = None) -> int:
    """Entry point of every program name; returns the exit status."""
    program, args = _program(sys.argv if argv is None else ["zinit", *argv])
    if program == "server":
        return server_main(args)
    if program == "pid1":
        return pid1_main(args)
    if program == "install":
        return _install(args)
    return cli_main(args)


def _program(argv: list[str]) -> tuple[str, list[str]]:
    """Which program a command line asks for (cli, server, pid1 or install), and its arguments.

    The .pyz entry asks this too: only the server needs gevent and psutil
    unpacked, so everything else runs straight from the archive.
    """
    name = os.path.basename(argv[0]).removesuffix(".pyz").removesuffix(".py")
    args = argv[1:]
    if name in ("zinit-server", "zinit-pid1"):
        return name.removeprefix("zinit-"), args
    if args and args[0] in ("server", "pid1", "install"):
        return args[0], args[1:]
    return "cli", args


def _install(args: list[str]) -> int:
    """``zinit install DIR``: link zinit, zinit-server and zinit-pid1 in DIR to this file."""
    parser = argparse.ArgumentParser(
        prog="zinit install", description="Link the three program names to this zinit."
    )
    parser.add_argument("directory")
    options = parser.parse_args(args)
    target = os.path.realpath(sys.argv[0])
    if not os.access(target, os.X_OK) or not os.path.isfile(target):
        print(
            f"zinit install: {target} is not an executable file; run install from a "
            "zinit.pyz or an installed 'zinit' script",
            file=sys.stderr,
        )
        return 1
    try:
        os.makedirs(options.directory, exist_ok=True)
    except OSError as error:
        print(f"zinit install: {options.directory}: {error.strerror}", file=sys.stderr)
        return 1
    links = [os.path.join(options.directory, n) for n in ("zinit", "zinit-server", "zinit-pid1")]
    # Links (an older zinit's) are replaced; a real file there is someone's program.
    taken = [
        link
        for link in links
        if os.path.lexists(link) and not os.path.islink(link) and os.path.realpath(link) != target
    ]
    if taken:
        print(
            f"zinit install: {', '.join(taken)} exists and is not a link; "
            "remove it or choose another directory",
            file=sys.stderr,
        )
        return 1
    for link in links:
        if os.path.realpath(link) == target:
            continue
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
        print(f"{link} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
