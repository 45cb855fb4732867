"""A first end-to-end run: a service starts, shows in list, stops."""

from conftest import pid_alive


def test_service_runs_and_stops(daemon):
    daemon.service("sleeper", "sleep 1000")
    daemon.start()
    pid = daemon.wait_state("sleeper", "Running")["pid"]
    assert pid_alive(pid)
    result = daemon.cli("stop", "sleeper")
    assert result.returncode == 0, result.stderr
    unit = daemon.status("sleeper")
    assert unit["state"] == "Exited"
    assert unit["pid"] is None
    assert not pid_alive(pid)
