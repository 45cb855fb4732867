"""The single-file zinit.pyz: built by build_pyz.sh, copied alone, run by any name.

The build needs shiv (in the test extra) and takes a few seconds; it runs
once per module.  Extraction goes to a private SHIV_ROOT.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess

import pytest
from conftest import PYTHON, ROOT, wait_until

import zinit


def _build(out: pathlib.Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "build_pyz.sh")],
        env=dict(os.environ, OUT=str(out), PYTHON=PYTHON),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    base = tmp_path_factory.mktemp("pyz")
    first, second = base / "first" / "zinit.pyz", base / "second" / "zinit.pyz"
    _build(first)
    _build(second)
    return first, second


@pytest.fixture
def lone_pyz(builds, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """The .pyz copied alone into an empty directory, with a private extraction cache."""
    home = tmp_path / "empty"
    home.mkdir()
    target = home / "zinit.pyz"
    shutil.copy2(builds[0], target)
    monkeypatch.setenv("SHIV_ROOT", str(tmp_path / "shiv-cache"))
    return target


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_pyz_tells_which_python_it_was_built_for(builds):
    """What the server names when another Python runs the .pyz and gevent cannot load."""
    here = subprocess.run(
        [PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert zinit._pyz_python_version(str(builds[0])) == here
    assert zinit._pyz_python_version(str(ROOT / "README.md")) is None


def test_issue_4_two_builds_are_byte_identical(builds):
    """build_pyz.sh is reproducible: building twice gives the same bytes."""
    first, second = builds
    digest = [hashlib.sha256(path.read_bytes()).hexdigest() for path in (first, second)]
    assert digest[0] == digest[1]
    assert first.stat().st_size > 1_000_000  # gevent and psutil are inside


def test_issue_4_pyz_runs_cli_server_and_links_alone(lone_pyz, tmp_path):
    """Copied alone: --help, the server on a config dir, the CLI against it, install's links."""
    help_text = _run(PYTHON, str(lone_pyz), "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "usage: zinit" in help_text.stdout
    cache = pathlib.Path(os.environ["SHIV_ROOT"])
    assert not cache.exists(), "the CLI unpacked the archive; only the server needs to"

    services = tmp_path / "services"
    services.mkdir()
    (services / "napper.toml").write_text('[service]\nexec = "sleep 1000"\n')
    sock = str(tmp_path / "zinit.sock")
    log = tmp_path / "server.log"
    with open(log, "wb") as stream:
        server = subprocess.Popen(
            [PYTHON, str(lone_pyz), "server", "--config-dir", str(services), "--socket", sock],
            stdout=stream,
            stderr=stream,
        )
    try:
        wait_until(lambda: _state(sock, "napper") == "Running", timeout=60, what="napper")
        assert cache.is_dir()  # the server unpacked gevent and psutil
        listing = _run(PYTHON, str(lone_pyz), "--socket", sock, "--json", "list")
        assert listing.returncode == 0, listing.stderr
        assert '"napper"' in listing.stdout

        bin_dir = tmp_path / "bin"
        installed = _run(PYTHON, str(lone_pyz), "install", str(bin_dir))
        assert installed.returncode == 0, installed.stderr
        for name in ("zinit", "zinit-server", "zinit-pid1"):
            link = bin_dir / name
            assert link.is_symlink() and link.resolve() == lone_pyz.resolve()
        # Run each name through the interpreter, as its shebang would.
        status = _run(PYTHON, str(bin_dir / "zinit"), "--socket", sock, "status", "napper")
        assert status.returncode == 0 and "Running" in status.stdout, status.stderr
        assert "usage: zinit-server" in _run(PYTHON, str(bin_dir / "zinit-server"), "--help").stdout
        assert "usage: zinit-pid1" in _run(PYTHON, str(bin_dir / "zinit-pid1"), "--help").stdout
        stopped = _run(PYTHON, str(bin_dir / "zinit"), "--socket", sock, "shutdown")
        assert stopped.returncode == 0, stopped.stderr
        assert server.wait(60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)


def _state(sock: str, name: str) -> str | None:
    try:
        with zinit.ZinitClient.connect_unix(sock, timeout=10) as client:
            return client.status(name)["state"]
    except (zinit.ZinitError, OSError):
        return None


def test_pyz_cli_imports_a_compiled_zinit_from_the_archive(builds):
    """The archive holds a compiled zinit that zipimport accepts (no compile at each call)."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1] + '/site-packages'); import zinit; "
        "print(zinit.__loader__.archive, zinit.main.__code__.co_filename)"
    )
    result = _run(PYTHON, "-c", probe, str(builds[0]))
    assert result.returncode == 0, result.stderr
    # Compiled at build time, the code names its place in the archive; compiled
    # from source by zipimport, it would name the full path of the .pyz.
    assert result.stdout.split() == [str(builds[0]), "site-packages/zinit.py"]


def test_pyz_pid1_runs_from_the_archive_and_starts_the_server_through_it(lone_pyz, tmp_path):
    """zinit-pid1 from the .pyz runs without unpacking and starts '<pyz> server' as its child."""
    services = tmp_path / "services"
    services.mkdir()
    (services / "napper.toml").write_text('[service]\nexec = "sleep 1000"\n')
    sock = str(tmp_path / "zinit.sock")
    log = tmp_path / "pid1.log"
    command = [PYTHON, str(lone_pyz), "pid1", "--container", "--config-dir", str(services)]
    with open(log, "wb") as stream:
        shim = subprocess.Popen([*command, "--socket", sock], stdout=stream, stderr=stream)
    try:
        wait_until(lambda: _state(sock, "napper") == "Running", timeout=60, what="napper")
        with open(f"/proc/{shim.pid}/task/{shim.pid}/children") as stream:
            (server,) = stream.read().split()
        with open(f"/proc/{server}/cmdline", "rb") as stream:
            argv = stream.read().decode().split("\0")
        assert argv[1:3] == [str(lone_pyz), "server"], argv
        shim.send_signal(signal.SIGTERM)
        assert shim.wait(60) == 0, log.read_text()
    finally:
        if shim.poll() is None:  # SIGTERM first: it takes the server and napper down with it
            shim.terminate()
            try:
                shim.wait(60)
            except subprocess.TimeoutExpired:
                shim.kill()
                shim.wait(30)


def _older_python() -> str | None:
    """A Python before 3.11 that runs here (pyenv keeps several), or None."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3.*")))
    candidates += [shutil.which(f"python3.{minor}") or "" for minor in (10, 9, 8)]
    for candidate in candidates:
        if not candidate or candidate.endswith("-config"):
            continue
        probe = _run(candidate, "-c", "import sys; print(sys.version_info[:2] < (3, 11))")
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def test_pyz_says_in_one_line_what_cannot_run(lone_pyz, tmp_path):
    """An old Python, an unusable unpack directory and a taken install directory each get
    one line on stderr and exit 1, not a traceback."""
    older = _older_python()
    if older is not None:
        result = _run(older, str(lone_pyz), "--version")
        assert result.returncode == 1, result
        assert result.stderr.startswith("zinit: needs Python 3.11 or later; this is 3."), result
        assert len(result.stderr.splitlines()) == 1, result.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = dict(os.environ, SHIV_ROOT=str(blocker / "shiv"))
    server = subprocess.run(
        [PYTHON, str(lone_pyz), "server", "--socket", str(tmp_path / "s.sock")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert server.returncode == 1, server
    assert server.stderr == (
        f"zinit-server: cannot unpack gevent and psutil into {blocker}/shiv (Not a directory); "
        "set SHIV_ROOT to a writable, exec-allowed directory\n"
    )

    installed = _run(PYTHON, str(lone_pyz), "install", str(blocker))
    assert installed.returncode == 1 and len(installed.stderr.splitlines()) == 1, installed
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zinit").write_text("#!/bin/sh\necho another zinit\n")
    installed = _run(PYTHON, str(lone_pyz), "install", str(bin_dir))
    assert installed.returncode == 1, installed
    assert "exists and is not a link" in installed.stderr
    assert (bin_dir / "zinit").read_text() == "#!/bin/sh\necho another zinit\n"
    assert not (bin_dir / "zinit-server").exists()
