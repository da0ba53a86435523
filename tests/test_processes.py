"""Process tests: `crmbench` commands as real subprocesses, stopped with real signals.

They use the embedded Postgres in a private CRMBENCH_DATA_DIR (DATABASE_URL unset) and
check that nothing of it is left running: a stopped service exits cleanly on SIGTERM
(what Docker, systemd and Kubernetes send) exactly as on Ctrl-C, and a killed process
does not keep the server alive for every later command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from crmbench_clients.serving import free_port

CRMBENCH = str(Path(sys.executable).parent / "crmbench")
START_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data folder for the module (initdb once); no server may outlive a test."""
    directory = tmp_path_factory.mktemp("crmbench-data")
    yield directory
    for proc in postgres_processes(directory):  # a failed test must not leak a server
        proc.kill()


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XDG_RUNTIME_DIR")}
    env.pop("CRMBENCH_ADMIN_KEY", None)
    env["CRMBENCH_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def start(data_dir: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CRMBENCH, *args],
        env=environment(data_dir, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def crmbench(data_dir: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CRMBENCH, *args],
        env=environment(data_dir, **extra),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """The embedded postmaster of `data_dir` (its command line names the folder)."""
    pgdata = str((data_dir / "pgdata").resolve())
    found = []
    for proc in psutil.process_iter(attrs=("name", "cmdline")):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and pgdata in cmdline:
            found.append(proc)
    return found


def assert_no_postgres_left(data_dir: Path) -> None:
    deadline = time.monotonic() + 15
    while postgres_processes(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = postgres_processes(data_dir)
    assert not left, f"embedded postgres still running: {[p.pid for p in left]}"


def handles(data_dir: Path) -> list[int]:
    path = data_dir / "pgdata" / ".handle_pids.json"
    text = path.read_text().strip() if path.exists() else ""
    return list(json.loads(text)) if text else []


def wait_serving(proc: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} before serving:\n{out}\n{err}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{url} did not answer within {START_TIMEOUT:.0f} s")


def stop(proc: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"did not stop within 60 s of signal {signum}:\n{out}\n{err}")
    return proc.returncode, out, err


# ---------------------------------------------------------------------------- issue 12, item 11


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_crm_api_stops_cleanly_on_signal(data_dir: Path, signum: int) -> None:
    port = free_port()
    proc = start(data_dir, "serve", "crm-api", "--port", str(port))
    wait_serving(proc, f"http://127.0.0.1:{port}/health")
    assert postgres_processes(data_dir), "the embedded postgres should run while serving"

    code, out, err = stop(proc, signum)

    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in err
    assert_no_postgres_left(data_dir)
    assert handles(data_dir) == []


def test_serve_finishes_in_flight_requests_on_sigterm(data_dir: Path) -> None:
    from crmbench_corpus.store import load_cases

    case_id = load_cases()[0].case_id
    port = free_port()
    proc = start(data_dir, "serve", "simulated-llm", "--port", str(port), "--latency-ms", "2500")
    wait_serving(proc, f"http://127.0.0.1:{port}/health")
    answers: list[httpx.Response] = []

    def call() -> None:
        answers.append(
            httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "simulated", "messages": [{"role": "user", "content": "hello"}]},
                headers={"X-Crmbench-Case-Id": case_id},
                timeout=30,
            )
        )

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the call is now waiting out its latency in the server
    code, out, err = stop(proc, signal.SIGTERM)
    caller.join(timeout=30)

    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert len(answers) == 1 and answers[0].status_code == 200, answers


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_with_its_own_services_stops_cleanly_on_signal(
    data_dir: Path, tmp_path: Path, signum: int
) -> None:
    """`crmbench run` starts a CRM API, a verifier and the simulated LLM for its duration."""
    out_dir = tmp_path / "run"
    proc = start(
        data_dir,
        "run",
        "--agent",
        "simulated",
        "--limit",
        "40",
        "--concurrency",
        "2",
        "--quiet",
        "--out",
        str(out_dir),
    )
    # The run is created (and its services start) once run.json is written.
    deadline = time.monotonic() + START_TIMEOUT
    while not (out_dir / "run.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the run did not start:\n{out}\n{err}")
        time.sleep(0.2)
    time.sleep(3.0)

    code, out, err = stop(proc, signum)

    # Interrupted, the run is unfinished: the same code for both signals, and how to resume.
    assert code == 130, f"exit {code}\n{out}\n{err}"
    assert "interrupted; resume with: crmbench run --out" in err
    assert "Traceback" not in err
    assert_no_postgres_left(data_dir)
    assert handles(data_dir) == []


# ---------------------------------------------------------------------------- issue 12, item 12


def _killed_server(data_dir: Path) -> None:
    """Leaves the embedded server running with the pid of a killed process in its handles."""
    port = free_port()
    proc = start(data_dir, "serve", "crm-api", "--port", str(port))
    wait_serving(proc, f"http://127.0.0.1:{port}/health")
    proc.kill()
    proc.communicate()
    assert postgres_processes(data_dir)
    assert handles(data_dir) == [proc.pid]


def test_a_killed_process_does_not_keep_the_server_for_later_commands(data_dir: Path) -> None:
    _killed_server(data_dir)

    status = crmbench(data_dir, "db", "status")
    assert status.returncode == 0, status.stderr
    assert "running (pid" in status.stdout
    assert "no process uses it; stop it with: crmbench db stop" in status.stdout
    assert "dropped handles of processes that no longer run" in status.stdout

    migrated = crmbench(data_dir, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert_no_postgres_left(data_dir)
    assert handles(data_dir) == []


def test_db_stop_stops_a_left_over_server(data_dir: Path) -> None:
    _killed_server(data_dir)

    stopped = crmbench(data_dir, "db", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the embedded Postgres in" in stopped.stdout
    assert_no_postgres_left(data_dir)

    again = crmbench(data_dir, "db", "stop")
    assert again.returncode == 0, again.stderr
    assert "no embedded Postgres runs in" in again.stdout
    status = crmbench(data_dir, "db", "status")
    assert "not running" in status.stdout


def test_db_stop_refuses_while_a_service_uses_the_server(data_dir: Path) -> None:
    port = free_port()
    proc = start(data_dir, "serve", "crm-api", "--port", str(port))
    wait_serving(proc, f"http://127.0.0.1:{port}/health")
    try:
        refused = crmbench(data_dir, "db", "stop")
        assert refused.returncode == 1
        assert f"in use by process(es) {proc.pid}" in refused.stderr
        assert "--force" in refused.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        code, out, err = stop(proc, signal.SIGTERM)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert_no_postgres_left(data_dir)


def test_db_status_says_when_database_url_points_elsewhere(data_dir: Path) -> None:
    elsewhere = "postgresql://someone:secret@db.example:5432/crm"
    status = crmbench(data_dir, "db", "status", DATABASE_URL=elsewhere)
    assert status.returncode == 0, status.stderr
    assert "DATABASE_URL is set: commands use postgresql://someone:***@db.example" in status.stdout
    assert "secret" not in status.stdout
    stopped = crmbench(data_dir, "db", "stop", DATABASE_URL=elsewhere)
    assert stopped.returncode == 0, stopped.stderr
    assert "not the embedded Postgres" in stopped.stdout
    assert "no embedded Postgres runs in" in stopped.stdout


# ---------------------------------------------------------------------------- issue 12, item 17


@pytest.mark.parametrize("service", ["crm-api", "verifier", "simulated-llm", "agent-runner"])
def test_serve_on_a_busy_port_fails_before_saying_it_listens(data_dir: Path, service: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = crmbench(data_dir, "serve", service, "--port", str(port))
    assert result.returncode == 1
    assert "listening on" not in result.stdout
    assert result.stderr.startswith(f"error: port {port} on 127.0.0.1 is already in use")
    assert "Traceback" not in result.stderr
    assert_no_postgres_left(data_dir)
