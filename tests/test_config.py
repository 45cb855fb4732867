"""Unit files (SPEC section 3), in process: a table of TOML text -> exact error message.

Every message reads ``file:line:col: key: reason`` (STYLE: ``where: what (why)``).
"""

import json
import os
import re
import signal
import subprocess
import textwrap

import pytest
from conftest import PYTHON, ROOT, ZINIT_PY

import zinit

# (id, TOML text of web.toml, the exact str() of the ConfigError)
ERRORS = [
    (
        "unknown key",
        """
        [service]
        exec = "sleep 1"
        restat = "always"
        """,
        (
            "web.toml:3:1: service.restat: unknown key (allowed: name, exec, dir, oneshot, status, "
            "class, env, user, group, critical)"
        ),
    ),
    (
        "unknown key, indented, in lifecycle",
        """
        [service]
        exec = "sleep 1"
        [lifecycle]
          restat = "always"
        """,
        (
            "web.toml:4:3: lifecycle.restat: unknown key (allowed: restart, stop_signal, "
            "start_timeout_ms, stop_timeout_ms, restart_delay_ms, restart_delay_max_ms, max_restarts)"
        ),
    ),
    (
        "unknown key in dependencies",
        """
        [service]
        exec = "sleep 1"

        [dependencies]
        require = ["db"]
        """,
        (
            "web.toml:5:1: dependencies.require: unknown key (allowed: requires, after, wants, "
            "conflicts)"
        ),
    ),
    (
        "wrong type: boolean",
        """
        [service]
        exec = "sleep 1"
        oneshot = "yes"
        """,
        "web.toml:3:11: service.oneshot: expected true or false, got 'yes'",
    ),
    (
        "wrong type: exec",
        """
        [service]
        exec = 5
        """,
        "web.toml:2:8: service.exec: expected a string, got 5",
    ),
    (
        "wrong type: float for integer",
        """
        [service]
        exec = "sleep 1"
        [lifecycle]
        stop_timeout_ms = 1.5
        """,
        "web.toml:4:19: lifecycle.stop_timeout_ms: expected an integer, got 1.5",
    ),
    (
        "wrong type: requires not a list",
        """
        [service]
        exec = "sleep 1"
        [dependencies]
        requires = "db"
        """,
        "web.toml:4:12: dependencies.requires: expected a list of unit names, got 'db'",
    ),
    (
        "requires holds a path, not a unit name",
        """
        [service]
        exec = "sleep 1"
        [dependencies]
        requires = ["../db"]
        """,
        "web.toml:4:12: dependencies.requires: '../db' is not a unit name",
    ),
    (
        "wrong type: env",
        """
        [service]
        exec = "sleep 1"
        env = { A = [1] }
        """,
        'web.toml:3:7: service.env: expected a table of NAME = "value"',
    ),
    (
        "bad restart value",
        """
        [service]
        exec = "sleep 1"
        [lifecycle]
        restart = "sometimes"
        """,
        "web.toml:4:11: lifecycle.restart: expected always, on-failure or never, got 'sometimes'",
    ),
    (
        "bad status",
        """
        [service]
        exec = "sleep 1"
        status = "maybe"
        """,
        "web.toml:3:10: service.status: expected start, stop or ignore, got 'maybe'",
    ),
    (
        "bad class",
        """
        [service]
        exec = "sleep 1"
        class = "root"
        """,
        "web.toml:3:9: service.class: expected user or system, got 'root'",
    ),
    (
        "bad signal name",
        """
        [service]
        exec = "sleep 1"
        [lifecycle]
        stop_signal = "SIGFOO"
        """,
        "web.toml:4:15: lifecycle.stop_signal: expected a signal name or number, got 'SIGFOO'",
    ),
    (
        "bad signal number",
        """
        [service]
        exec = "sleep 1"
        [lifecycle]
        stop_signal = 99
        """,
        "web.toml:4:15: lifecycle.stop_signal: no such signal number 99",
    ),
    (
        "missing exec",
        """
        [service]
        oneshot = true
        """,
        "web.toml:1:2: service.exec: required: the command line to run",
    ),
    (
        "blank exec",
        """
        [service]
        exec = "   "
        """,
        "web.toml:2:8: service.exec: the command line is empty",
    ),
    (
        "exec that shlex cannot split",
        """
        [service]
        exec = "sleep '1"
        """,
        "web.toml:2:8: service.exec: cannot split the command line (No closing quotation)",
    ),
    (
        "name is not the file stem",
        """
        [service]
        name = "api"
        exec = "sleep 1"
        """,
        "web.toml:2:8: service.name: must equal the unit's name 'web', got 'api'",
    ),
    (
        "TOML syntax error: unterminated string",
        """
        [service]
        exec = "sleep 1
        """,
        "web.toml:2:16: TOML syntax error: illegal character '\\n'",
    ),
    (
        "TOML syntax error: bad value",
        """
        [service]
        exec = "sleep 1"
        oneshot = tru
        """,
        "web.toml:3:11: TOML syntax error: invalid value",
    ),
    (
        "TOML syntax error at the end of the file still has a position",
        """
        [service]
        exec = "sleep 1"
        ports = [1,
        """,
        "web.toml:4:1: TOML syntax error: invalid value",
    ),
    (
        "TOML syntax error: duplicate key",
        """
        [service]
        exec = "sleep 1"
        exec = "sleep 2"
        """,
        "web.toml:3:17: TOML syntax error: cannot overwrite a value",
    ),
    (
        "TOML syntax error: a table twice, named as a table (not a Python tuple)",
        """
        [service]
        exec = "sleep 1"
        [service]
        """,
        "web.toml:3:9: TOML syntax error: cannot declare [service] twice",
    ),
    (
        "TOML syntax error: a quoted table name keeps its quotes",
        """
        [service.env."it's.here"]
        [service.env."it's.here"]
        """,
        """web.toml:2:25: TOML syntax error: cannot declare [service.env."it's.here"] twice""",
    ),
    (
        "unknown table",
        """
        [service]
        exec = "sleep 1"
        [servce]
        x = 1
        """,
        (
            "web.toml:3:2: servce: unknown table (allowed: service, target, dependencies, lifecycle, "
            "health, logging, xinet)"
        ),
    ),
    (
        "a table given as a plain value",
        """
        dependencies = 3
        [service]
        exec = "sleep 1"
        """,
        "web.toml:1:1: dependencies: expected a table",
    ),
    (
        "neither service nor target",
        """
        [dependencies]
        requires = []
        """,
        "web.toml: a unit file needs exactly one [service] or [target] table",
    ),
    (
        "both service and target",
        """
        [service]
        exec = "sleep 1"
        [target]
        """,
        "web.toml: a unit file needs exactly one [service] or [target] table",
    ),
    (
        "target with a lifecycle table",
        """
        [target]
        [lifecycle]
        restart = "never"
        """,
        "web.toml:2:2: lifecycle: a target has no process, so no such table",
    ),
    (
        "target with a health table",
        """
        [target]
        [dependencies]
        requires = ["db"]
        [health]
        type = "tcp"
        """,
        "web.toml:4:2: health: a target has no process, so no such table",
    ),
    (
        "bad health endpoint: http without a scheme",
        """
        [service]
        exec = "sleep 1"
        [health]
        type = "http"
        endpoint = "localhost:8080"
        """,
        "web.toml:5:12: health.endpoint: expected an http:// or https:// URL, got 'localhost:8080'",
    ),
    (
        "bad health endpoint: tcp without a port",
        """
        [service]
        exec = "sleep 1"
        [health]
        type = "tcp"
        endpoint = "localhost"
        """,
        "web.toml:5:12: health.endpoint: expected host:port, got 'localhost'",
    ),
    (
        "bad health endpoint: tcp port out of range",
        """
        [service]
        exec = "sleep 1"
        [health]
        type = "tcp"
        endpoint = "127.0.0.1:70000"
        """,
        "web.toml:5:12: health.endpoint: port out of range in '127.0.0.1:70000'",
    ),
    (
        "bad health type",
        """
        [service]
        exec = "sleep 1"
        [health]
        type = "udp"
        """,
        "web.toml:4:8: health.type: expected http, tcp or exec, got 'udp'",
    ),
    (
        "health without a type",
        """
        [service]
        exec = "sleep 1"
        [health]
        endpoint = "http://127.0.0.1:8080/"
        """,
        "web.toml:3:2: health.type: required: http, tcp or exec",
    ),
    (
        "exec health without a command",
        """
        [service]
        exec = "sleep 1"
        [health]
        type = "exec"
        """,
        "web.toml:3:2: health.command: required for type 'exec': a command line",
    ),
    (
        "negative integer",
        """
        [service]
        exec = "sleep 1"
        [lifecycle]
        stop_timeout_ms = -5
        """,
        "web.toml:4:19: lifecycle.stop_timeout_ms: expected an integer >= 0, got -5",
    ),
    (
        "zero where at least one is needed",
        """
        [service]
        exec = "sleep 1"
        [logging]
        buffer_lines = 0
        """,
        "web.toml:4:16: logging.buffer_lines: expected an integer >= 1, got 0",
    ),
    (
        "restart delay above its maximum",
        """
        [service]
        exec = "sleep 1"
        [lifecycle]
        restart_delay_ms = 5000
        restart_delay_max_ms = 100
        """,
        "web.toml:5:24: lifecycle.restart_delay_max_ms: must be >= restart_delay_ms (5000), got 100",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [(t, m) for _, t, m in ERRORS], ids=[i for i, _, _ in ERRORS]
)
def test_config_error_message(text, message):
    with pytest.raises(zinit.ConfigError) as caught:
        zinit.parse_unit_text(textwrap.dedent(text).lstrip("\n"), "web.toml", "web")
    assert str(caught.value) == message


def test_config_error_fields():
    text = '[service]\nexec = "sleep 1"\n\n[lifecycle]\nrestart = "allways"\n'
    with pytest.raises(zinit.ConfigError) as caught:
        zinit.parse_unit_text(text, "/etc/zinit/services/web.toml", "web")
    error = caught.value
    assert (error.path, error.key, error.line, error.col) == (
        "/etc/zinit/services/web.toml",
        "lifecycle.restart",
        5,
        11,
    )
    assert error.reason == "expected always, on-failure or never, got 'allways'"
    assert error.to_dict()["message"] == str(error)


def test_a_name_that_is_no_unit_name_is_refused():
    with pytest.raises(zinit.ConfigError) as caught:
        zinit.parse_unit_text('[service]\nexec = "sleep 1"\n', "../evil.toml", "../evil")
    assert str(caught.value) == (
        "../evil.toml: '../evil' is not a unit name (letters, digits, '_.@-', up to 64 characters)"
    )


# -- defaults ----------------------------------------------------------------


def test_service_defaults():
    config = zinit.parse_unit_text('[service]\nexec = "sleep 1"\n', "web.toml", "web")
    assert config.name == "web"
    assert config.kind == "service"
    assert config.argv == ["sleep", "1"]
    assert config.oneshot is False
    assert config.status == "start"
    assert config.unit_class == "user"
    assert config.restart == "always"
    assert config.stop_signal == signal.SIGTERM
    assert config.stop_timeout_ms == 10_000
    assert config.restart_delay_ms == 1_000
    assert config.restart_delay_max_ms == 60_000
    assert config.max_restarts == 0
    assert config.effective_start_timeout_s() == 30.0
    assert config.buffer_lines == 1000
    assert config.health is None
    assert config.requires == config.after == config.wants == config.conflicts == ()
    assert config.critical is False
    assert config.dir is None and config.user is None


def test_oneshot_defaults_to_restart_never():
    config = zinit.parse_unit_text('[service]\nexec = "true"\noneshot = true\n', "web.toml", "web")
    assert config.restart == "never"
    # zinit.py's documented choice: no start limit for a oneshot unless set.
    assert config.effective_start_timeout_s() is None


def test_oneshot_restart_can_be_set():
    text = '[service]\nexec = "true"\noneshot = true\n[lifecycle]\nrestart = "on-failure"\n'
    assert zinit.parse_unit_text(text, "web.toml", "web").restart == "on-failure"


def test_health_defaults():
    text = '[service]\nexec = "sleep 1"\n[health]\ntype = "tcp"\nendpoint = "127.0.0.1:80"\n'
    health = zinit.parse_unit_text(text, "web.toml", "web").health
    assert health == zinit.HealthConfig(
        type="tcp",
        endpoint="127.0.0.1:80",
        command="",
        interval_ms=10_000,
        timeout_ms=2_000,
        retries=3,
    )


def test_full_file_is_read():
    text = """
        [service]
        name = "web"
        exec = "/usr/bin/my-app --daemon 'two words'"
        dir = "/var/lib/my-app"
        status = "stop"
        class = "system"
        env = { KEY = "value", N = 3, FLAG = true }
        critical = true

        [dependencies]
        requires = ["db", "db"]
        after = ["migrate"]
        wants = ["cache"]
        conflicts = ["maintenance"]

        [lifecycle]
        restart = "on-failure"
        stop_signal = "SIGINT"
        start_timeout_ms = 500
        stop_timeout_ms = 0
        restart_delay_ms = 10
        restart_delay_max_ms = 20
        max_restarts = 4

        [health]
        type = "exec"
        command = "pg_isready -q"
        interval_ms = 100
        timeout_ms = 50
        retries = 1

        [logging]
        buffer_lines = 7
    """
    config = zinit.parse_unit_text(textwrap.dedent(text), "web.toml", "web")
    assert config.argv == ["/usr/bin/my-app", "--daemon", "two words"]
    assert config.dir == "/var/lib/my-app"
    assert (config.status, config.unit_class, config.critical) == ("stop", "system", True)
    assert dict(config.env) == {"KEY": "value", "N": "3", "FLAG": "true"}
    assert config.requires == ("db",)  # duplicates dropped
    assert (config.after, config.wants, config.conflicts) == (
        ("migrate",),
        ("cache",),
        ("maintenance",),
    )
    assert config.restart == "on-failure"
    assert config.stop_signal == signal.SIGINT
    assert config.effective_start_timeout_s() == 0.5
    assert (config.stop_timeout_ms, config.restart_delay_ms, config.restart_delay_max_ms) == (
        0,
        10,
        20,
    )
    assert config.max_restarts == 4
    assert config.health == zinit.HealthConfig(
        type="exec", command="pg_isready -q", interval_ms=100, timeout_ms=50, retries=1
    )
    assert config.buffer_lines == 7


def test_target():
    text = '[target]\nname = "app"\n[dependencies]\nrequires = ["web", "worker"]\n'
    config = zinit.parse_unit_text(text, "app.toml", "app")
    assert config.kind == "target" and config.is_target
    assert config.requires == ("web", "worker")
    assert config.exec == ""


@pytest.mark.parametrize("spelling", ["SIGTERM", "TERM", "sigterm", "term", "15", 15])
def test_signal_spellings(spelling):
    value = f'"{spelling}"' if isinstance(spelling, str) else str(spelling)
    text = f'[service]\nexec = "sleep 1"\n[lifecycle]\nstop_signal = {value}\n'
    assert zinit.parse_unit_text(text, "web.toml", "web").stop_signal == signal.SIGTERM


@pytest.mark.parametrize(
    ("spelling", "number"),
    [
        ("SIGKILL", 9), ("hup", 1), ("SIGUSR1", 10), ("INT", 2), (3, 3),
        ("-9", 9), ("-KILL", 9), ("SIGRTMIN+1", signal.SIGRTMIN + 1), ("rtmax-2", signal.SIGRTMAX - 2),
        (str(int(signal.SIGRTMIN) + 5), signal.SIGRTMIN + 5),
    ],
)  # fmt: skip
def test_other_signals(spelling, number):
    """kill(1)'s spellings work too: -9, -KILL, realtime signals by offset or number."""
    assert zinit.parse_signal(spelling) == number
    assert zinit.parse_signal(zinit.signal_name(number)) == number


@pytest.mark.parametrize(
    ("spelling", "why"),
    [
        ("0", "signal 0 only tests that a process exists: it is not sent"),
        ("RTMIN+99", "'RTMIN+99' is outside SIGRTMIN..SIGRTMAX"),
        ("99", "no such signal number 99"),
        ("SIGFOO", "expected a signal name or number, got 'SIGFOO'"),
        ("١٥", "expected a signal name or number, got '١٥'"),  # Arabic-Indic 15
        ("ſIGTERM", "expected a signal name or number, got 'ſIGTERM'"),  # upper() makes S
        ("9" * 5000, "no such signal number 99999999..."),
    ],
)
def test_signals_that_are_not(spelling, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        zinit.parse_signal(spelling)


# -- directories -------------------------------------------------------------


def test_files_that_would_crash_or_hang_a_reader_are_one_error_each(tmp_path):
    """A 5,000-digit number, a key of 70 dotted parts (tomllib is quadratic in them) and
    a FIFO: each is its file's error; the good file loads."""
    (tmp_path / "good.toml").write_text('[service]\nexec = "sleep 1"\n')
    (tmp_path / "digits.toml").write_text(
        '[service]\nexec = "sleep 1"\n[lifecycle]\nstop_timeout_ms = ' + "9" * 5000 + "\n"
    )
    (tmp_path / "dots.toml").write_text("a" + ".a" * 70 + " = 1\n")
    os.mkfifo(tmp_path / "fifo.toml")
    units, proxies, errors, proxy_errors = zinit.load_config_dirs([(str(tmp_path), None)])
    assert list(units) == ["good"] and proxies == {}
    assert set(errors) | set(proxy_errors) == {"digits", "dots", "fifo"}
    assert str(errors["digits"]).endswith("digits.toml: a number has more than 4300 digits")
    assert "a dotted key or table name has over 64 parts" in str(errors["dots"])
    assert "fifo.toml: not a regular file" in str(errors["fifo"])


def test_one_bad_file_never_stops_the_rest(tmp_path):
    (tmp_path / "good.toml").write_text('[service]\nexec = "sleep 1"\n')
    (tmp_path / "bad.toml").write_text('[service]\nexec = "sleep 1"\nrestat = "x"\n')
    (tmp_path / "notes.txt").write_text("not a unit")
    (tmp_path / "bin.toml").write_bytes(b'[service]\nexec = "\xff"\n')
    units, errors = zinit.load_config_dir(str(tmp_path))
    assert list(units) == ["good"]
    assert units["good"].path == str(tmp_path / "good.toml")
    assert sorted(errors) == ["bad", "bin"]
    assert str(errors["bad"]) == (
        f"{tmp_path}/bad.toml:3:1: service.restat: unknown key (allowed: name, exec, dir, "
        "oneshot, status, class, env, user, group, critical)"
    )
    assert str(errors["bin"]) == (
        f"{tmp_path}/bin.toml: not UTF-8 text (invalid start byte at byte 18)"
    )


def test_missing_directory_is_empty(tmp_path):
    assert zinit.load_config_dir(str(tmp_path / "nowhere")) == ({}, {})


def _validate(directory):
    return subprocess.run(
        [PYTHON, ZINIT_PY, "validate", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_reports_every_problem_with_file_and_line(tmp_path):
    (tmp_path / "a.toml").write_text(
        '[service]\nexec = "sleep 1"\n\n[dependencies]\nrequires = ["b"]\n'
    )
    (tmp_path / "b.toml").write_text('[service]\nexec = "sleep 1"\n[dependencies]\nafter = ["a"]\n')
    (tmp_path / "web.toml").write_text(
        '[service]\nexec = "sleep 1"\n[dependencies]\nrequires = ["db"]\nwants = ["cache"]\n'
    )
    (tmp_path / "bad.toml").write_text('[service]\nexec = "sleep 1"\nrestat = 1\n')
    (tmp_path / "ok.toml").write_text('[service]\nexec = "sleep 1"\n')
    result = _validate(tmp_path)
    assert result.returncode == 1, result
    assert result.stdout.splitlines() == [
        (
            f"error: {tmp_path}/bad.toml:3:1: service.restat: unknown key (allowed: name, exec, dir, "
            "oneshot, status, class, env, user, group, critical)"
        ),
        f"error: {tmp_path}/a.toml:4:2: dependencies: dependency cycle: a → b → a",
        f"error: {tmp_path}/b.toml:3:2: dependencies: dependency cycle: b → a → b",
        f"error: {tmp_path}/web.toml:4:12: dependencies.requires: 'db' is not defined",
        f"warning: {tmp_path}/web.toml:5:9: dependencies.wants: 'cache' is not defined",
        f"{tmp_path}: 4 unit(s), 4 error(s)",
    ]


def test_validate_json_has_the_shape_of_reloads_reply(tmp_path):
    """One entry per unit, named, with its first problem and the others in ``also``, as
    ``zinit --json reload`` gives them; warnings one per problem, named too."""
    (tmp_path / "bad.toml").write_text('[service]\nexec = 5\nstatus = "maybe"\n')
    (tmp_path / "web.toml").write_text(
        '[service]\nexec = "sleep 1"\n[dependencies]\nrequires = ["db"]\nwants = ["cache"]\n'
    )
    result = subprocess.run(
        [PYTHON, ZINIT_PY, "validate", "--json", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result
    reply = json.loads(result.stdout)
    assert (reply["ok"], reply["units"]) == (False, ["web"])
    bad, web = reply["errors"]
    assert (bad["unit"], bad["key"], bad["line"]) == ("bad", "service.exec", 2)
    assert [(p["key"], p["line"]) for p in bad["also"]] == [("service.status", 3)]
    assert bad["message"] == f"{tmp_path}/bad.toml:2:8: service.exec: expected a string, got 5"
    assert (web["unit"], web["key"], web["also"]) == ("web", "dependencies.requires", [])
    [warning] = reply["warnings"]
    assert (warning["unit"], warning["key"]) == ("web", "dependencies.wants")


def test_a_file_nested_too_deeply_is_one_error_and_the_others_load(tmp_path):
    """tomllib recurses per nesting level: a small file could exhaust the stack."""
    deep = '[service]\nexec = "sleep 1"\nx = ' + "[" * 5000 + "]" * 5000 + "\n"
    (tmp_path / "deep.toml").write_text(deep)
    (tmp_path / "proxy.toml").write_text("[xinet]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "ok.toml").write_text('[service]\nexec = "sleep 1"\n')
    units, errors = zinit.load_config_dir(str(tmp_path))
    assert list(units) == ["ok"]
    assert str(errors["deep"]) == f"{tmp_path}/deep.toml: TOML nested too deeply to read"
    result = _validate(tmp_path)
    assert result.returncode == 1, result
    assert f"error: {tmp_path}/proxy.toml: TOML nested too deeply to read" in result.stdout


def test_durations_and_buffers_have_an_upper_bound():
    """A timeout past a day or a ring of a trillion lines is a typo, said as such."""
    text = (
        '[service]\nexec = "sleep 1"\n[lifecycle]\nstop_timeout_ms = 99999999999999999999\n'
        "restart_delay_max_ms = 86400000\n[logging]\nbuffer_lines = 1000001\n"
    )
    with pytest.raises(zinit.ConfigError) as caught:
        zinit.parse_unit_text(text, "web.toml", "web")
    stop = "lifecycle.stop_timeout_ms: expected an integer <= 86_400_000"
    assert [str(problem) for problem in caught.value.every()] == [
        f"web.toml:4:19: {stop}, got 99999999999999999999",
        "web.toml:7:16: logging.buffer_lines: expected an integer <= 1_000_000, got 1000001",
    ]


def test_a_nul_character_is_an_error_where_no_command_path_or_name_can_hold_one():
    text = '[service]\nexec = "sleep\\u0000 1"\ndir = "/tmp\\u0000"\nenv = { A = "x\\u0000" }\n'
    with pytest.raises(zinit.ConfigError) as caught:
        zinit.parse_unit_text(text, "web.toml", "web")
    assert [f"{p.key}: {p.reason}" for p in caught.value.every()] == [
        "service.exec: holds a NUL character (no command, path or name can)",
        "service.dir: holds a NUL character (no command, path or name can)",
        "service.env: the value of A holds a NUL character",
    ]


def test_every_problem_in_a_file_is_reported_once(tmp_path):
    """Independent mistakes are all found in one pass, in file order; a wrong value is not
    reported again as a missing one; a key in the wrong table says which table it belongs in."""
    text = textwrap.dedent(
        """\
        [service]
        exec = 5
        restart = "always"
        status = "maybe"

        [lifecycle]
        stop_timeout_ms = -1
        stop_signal = "SIGNOPE"

        [health]
        type = "udp"

        [dependencies]
        requires = ["ok", "no way"]
        """
    )
    with pytest.raises(zinit.ConfigError) as caught:
        zinit.parse_unit_text(text, "web.toml", "web")
    problems = [str(problem) for problem in caught.value.every()]
    assert problems == [  # in file order
        "web.toml:2:8: service.exec: expected a string, got 5",
        "web.toml:3:1: service.restart: unknown key here: it belongs in [lifecycle]",
        "web.toml:4:10: service.status: expected start, stop or ignore, got 'maybe'",
        "web.toml:7:19: lifecycle.stop_timeout_ms: expected an integer >= 0, got -1",
        "web.toml:8:15: lifecycle.stop_signal: expected a signal name or number, got 'SIGNOPE'",
        "web.toml:11:8: health.type: expected http, tcp or exec, got 'udp'",
        "web.toml:14:12: dependencies.requires: 'no way' is not a unit name",
    ]
    assert str(caught.value) == problems[0] + " (and 6 more in this file)"
    assert [p["key"] for p in caught.value.to_dict()["also"]] == [
        p.key for p in caught.value.every()[1:]
    ]

    (tmp_path / "web.toml").write_text(text)
    (tmp_path / "ok.toml").write_text('[service]\nexec = "sleep 1"\n')
    result = _validate(tmp_path)
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    assert lines == [f"error: {tmp_path}/{p}" for p in problems] + [
        f"{tmp_path}: 1 unit(s), 7 error(s)"
    ]


ONE_MISTAKE = [
    ("a wrong type is not also missing", '[service]\nexec = "x"\n[health]\ntype = "tcp"\nendpoint = 5\n',
     "u.toml:5:12: health.endpoint: expected a string, got 5"),
    ("a table that is no table", 'service = "x"\n', "u.toml:1:1: service: expected a table"),
    ("an [xinet] that is no table", "xinet = 5\n", "u.toml:1:1: xinet: expected a table"),
    ("a bad delay is not compared",
     '[service]\nexec = "x"\n[lifecycle]\nrestart_delay_ms = -1\nrestart_delay_max_ms = 500\n',
     "u.toml:4:20: lifecycle.restart_delay_ms: expected an integer >= 0, got -1"),
    ("a target's own table first", "[target]\n[dependencies]\nname = \"u\"\n",
     "u.toml:3:1: dependencies.name: unknown key here: it belongs in [target]"),
    ("no hint at a table a target cannot have", '[target]\nexec = "true"\n',
     "u.toml:2:1: target.exec: unknown key (allowed: name)"),
    ("a name listed twice", '[service]\nexec = "x"\n[dependencies]\nrequires = ["b c", "b c", [1]]\n',
     "u.toml:4:12: dependencies.requires: 'b c' is not a unit name"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "first"), [(t, f) for _, t, f in ONE_MISTAKE], ids=[i for i, _, _ in ONE_MISTAKE]
)
def test_one_mistake_is_reported_once(text, first):
    with pytest.raises(zinit.ConfigError) as caught:
        zinit.parse_unit_text(text, "u.toml", "u")
    problems = [str(problem) for problem in caught.value.every()]
    if "[1]" in text:
        assert problems == [first, "u.toml:4:12: dependencies.requires: [1] is not a unit name"]
    else:
        assert problems == [first]


def test_every_problem_survives_the_rpc_boundary(daemon):
    """add-service of a file with two problems: the CLI prints both, the client gets both."""
    daemon.start()
    text = '[service]\nexec = 5\nstatus = "maybe"\n'
    result = daemon.cli("add-service", "-", "--name", "web", input=text)
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "service.exec: expected a string, got 5" in lines[0], lines
    assert "service.status: expected start, stop or ignore, got 'maybe'" in lines[1], lines
    with pytest.raises(zinit.ConfigError) as caught:
        daemon.call("add_service", toml=text, name="web")
    assert [p.key for p in caught.value.every()] == ["service.exec", "service.status"]
    assert str(caught.value).endswith("(and 1 more in this file)")


def test_validate_names_toml_entries_that_are_no_files(tmp_path):
    """A dangling link or a directory named *.toml is an error; an editor's hidden lock is not."""
    (tmp_path / "ok.toml").write_text('[service]\nexec = "sleep 1"\n')
    (tmp_path / "gone.toml").symlink_to(tmp_path / "nowhere.toml")
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / ".#ok.toml").symlink_to("root@host.1234:0")  # how emacs marks a file it edits
    (tmp_path / "device.toml").symlink_to("/dev/zero")
    (tmp_path / "huge.toml").write_text('[service]\nexec = "sleep 1"\n' + "#" * 300_000 + "\n")
    result = _validate(tmp_path)
    assert result.returncode == 1, result
    device = "a link to something that is not a regular file: no unit loaded from it"
    assert result.stdout.splitlines() == [
        f"error: {tmp_path}/device.toml: {device}",
        f"error: {tmp_path}/dir.toml: not a regular file: no unit loaded from it",
        f"error: {tmp_path}/gone.toml: a link to nothing: no unit loaded from it",
        f"error: {tmp_path}/huge.toml: larger than 256 KiB: not a unit file",
        f"{tmp_path}: 1 unit(s), 4 error(s)",
    ]


def test_validate_a_good_directory():
    result = _validate(ROOT / "examples")
    assert result.returncode == 0, result
    assert result.stdout.strip().endswith("examples: 5 unit(s), ok")
    assert "error" not in result.stdout


def test_validate_warns_of_a_program_or_directory_missing_here(tmp_path):
    """The daemon may run elsewhere, so these are warnings; one it would find is none."""
    (tmp_path / "abs.toml").write_text('[service]\nexec = "/nonexistent/ghostd -x"\n')
    (tmp_path / "bare.toml").write_text('[service]\nexec = "zinit-no-such-program"\n')
    (tmp_path / "own.toml").write_text(
        '[service]\nexec = "sleep 1"\n[service.env]\nPATH = "/nonexistent"\n'
    )
    (tmp_path / "dir.toml").write_text('[service]\nexec = "sleep 1"\ndir = "/nonexistent"\n')
    (tmp_path / "fine.toml").write_text('[service]\nexec = "sh -c true"\ndir = "/"\n')
    result = _validate(tmp_path)
    assert result.returncode == 0, result
    expected = [
        ("abs.toml:2:8", "service.exec", "'/nonexistent/ghostd' does not exist here"),
        ("bare.toml:2:8", "service.exec", "'zinit-no-such-program' is not found on PATH here"),
        ("dir.toml:3:7", "service.dir", "working directory '/nonexistent' does not exist here"),
        ("own.toml:2:8", "service.exec", "'sleep' is not found on the PATH its env sets"),
    ]
    assert result.stdout.splitlines() == [
        *(f"warning: {tmp_path}/{where}: {key}: {why}" for where, key, why in expected),
        f"{tmp_path}: 5 unit(s), ok",
    ]


def test_validate_warns_of_an_unknown_user_a_hopeless_unit_and_checks_one_file(tmp_path):
    """Unknown user or group, requires-and-conflicts, a missing program behind a missing dir;
    and a single file, checked with its directory (where what it requires lives)."""
    deps = '[service]\nexec = "sleep 1"\n[dependencies]\n'
    units = {
        "who": '[service]\nexec = "sleep 1"\nuser = "zinit-nobody-here"\ngroup = "zinit-no-group"\n',
        "both": deps + 'requires = ["who"]\nconflicts = ["who"]\n',
        # Declared on the other side, or by a target: as hopeless; wanting it is fine.
        "jealous": deps + 'conflicts = ["stack"]\n',
        "stack": '[target]\n[dependencies]\nrequires = ["jealous"]\nwants = ["both"]\n',
        "easy": deps + 'wants = ["who"]\nconflicts = ["who"]\n',
        "gone": '[service]\nexec = "/nonexistent/prog"\ndir = "/nonexistent"\n',
    }
    for name, text in units.items():
        (tmp_path / f"{name}.toml").write_text(text)
    result = _validate(tmp_path)
    assert result.returncode == 0, result
    warnings = [line.removeprefix(f"warning: {tmp_path}/") for line in result.stdout.splitlines()]
    assert warnings[:-1] == [
        (
            "both.toml:4:12: dependencies.requires: requires 'who', which it conflicts with: "
            "it can never start"
        ),
        "gone.toml:3:7: service.dir: working directory '/nonexistent' does not exist here",
        "gone.toml:2:8: service.exec: '/nonexistent/prog' does not exist here",
        (
            "stack.toml:3:12: dependencies.requires: requires 'jealous', which it conflicts "
            "with: it can never start"
        ),
        "who.toml:3:8: service.user: user 'zinit-nobody-here' does not exist here",
        "who.toml:4:9: service.group: group 'zinit-no-group' does not exist here",
    ], result.stdout
    one = _validate(tmp_path / "both.toml")
    assert one.returncode == 0, one
    assert one.stdout.splitlines()[-1] == f"{tmp_path}/both.toml: 1 unit(s), ok", one.stdout
    assert "who.toml" not in one.stdout, one.stdout
    (tmp_path / "bad.toml").write_text(
        '[service]\nexec = "sleep 1"\n[dependencies]\nrequires = ["x"]\n'
    )
    bad = _validate(tmp_path / "bad.toml")
    assert (
        bad.returncode == 1
        and "bad.toml:4:12: dependencies.requires: 'x' is not defined" in bad.stdout
    )


def test_validate_only_warnings_is_ok(tmp_path):
    (tmp_path / "web.toml").write_text(
        '[service]\nexec = "sleep 1"\n[dependencies]\nafter = ["db"]\n'
    )
    result = _validate(tmp_path)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        f"warning: {tmp_path}/web.toml:4:9: dependencies.after: 'db' is not defined",
        f"{tmp_path}: 1 unit(s), ok",
    ]
