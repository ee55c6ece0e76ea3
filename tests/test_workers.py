"""Self-healing under `skillq up`: a SIGKILLed worker process is replaced without a person,
its job runs again, the registry shows the dead one, and the supervisor logs why."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.reliability import settings_sections
from tests.support import ROOT, child_env, free_port, wait_for, write_settings


def test_up_replaces_a_sigkilled_worker_and_its_job_runs_again(tmp_path: Path) -> None:
    port = free_port()
    sections = settings_sections("sqlite", tmp_path)
    sections["server"].update(host="127.0.0.1", port=port)
    settings_path = write_settings(tmp_path, sections)
    log_path = tmp_path / "up.log"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "skillq", "up", "--no-scheduler"],
        cwd=ROOT,
        env=child_env(settings_path),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:

        def answers() -> bool:
            assert supervisor.poll() is None, log_path.read_text()
            try:
                # One worker process per queue (ai, index, skill, default, maintenance).
                return httpx.get(f"{base}/workers", timeout=1).json()["counts"]["alive"] == 5
            except (httpx.HTTPError, KeyError, ValueError):
                return False

        wait_for(answers, timeout=60, what="the API and a live worker per queue")
        job = httpx.post(f"{base}/jobs", json={"type": "sleep", "params": {"seconds": 4}}).json()
        running = wait_for(
            lambda: (j := httpx.get(f"{base}/jobs/{job['id']}").json())["state"] == "running" and j,
            what="the job to run",
        )
        # The process running the job: a dramatiq worker process, child of `skillq worker`.
        pid = int(running["worker_id"].rsplit(":", 1)[1])
        subprocess.run(["kill", "-KILL", str(pid)], check=True)

        done = wait_for(
            lambda: (
                (j := httpx.get(f"{base}/jobs/{job['id']}").json())["state"] == "completed" and j
            ),
            timeout=90,
            what="the job to run again and complete",
        )
        assert done["attempts"] == 2 and done["worker_id"] != running["worker_id"]
        log = log_path.read_text()
        assert "worker:default (pid" in log and "restarting in" in log, log
        workers = httpx.get(f"{base}/workers").json()
        by_id = {w["id"]: w for w in workers["workers"]}
        assert by_id[running["worker_id"]]["status"] == "dead", json.dumps(workers)
        assert by_id[done["worker_id"]]["status"] == "alive"

        # The CLI shows the same registry.
        status = subprocess.run(
            [sys.executable, "-m", "skillq", "workers", "status", "--json"],
            cwd=ROOT,
            env=child_env(settings_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["counts"]["dead"] == 1
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
