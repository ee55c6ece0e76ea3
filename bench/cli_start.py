"""How long the `skillq` command takes for a call that needs no server: `auth token create`
(issue 10: under 0.4 s on our machine), beside `python -c pass` and `skillq --help`.

    .venv/bin/python bench/cli_start.py [--runs 20]

Each command runs `--runs` times in turn (so background load spreads over all three); the
median and best wall time are printed, and the process's own CPU time (user + system, from
`resource.getrusage` of the children), which background load barely moves. It prints and
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SKILLQ = Path(sys.executable).with_name("skillq")


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        settings = Path(directory) / "settings.toml"
        secret = "bench-secret-" + "s" * 32
        settings.write_text(
            f'[server]\ndata_dir = "{directory}"\n[auth]\nmode = "jwt"\n'
            f'[auth.jwt]\nsecret = "{secret}"\n'
        )
        env = {**os.environ, "SKILLQ_SETTINGS": str(settings)}
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "skillq --help": [str(SKILLQ), "--help"],
            "skillq auth token create": [
                str(SKILLQ),
                "auth",
                "token",
                "create",
                "--sub",
                "bench",
                "--role",
                "viewer",
            ],
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                results[name].append(_timed(command, env))
    load = os.getloadavg()[0]
    print(f"{args.runs} runs each, load average {load:.2f}, {os.cpu_count()} cores")
    print(f"{'command':<26} {'median s':>9} {'best s':>8} {'CPU s':>7}")
    for name, runs in results.items():
        walls = [wall for wall, _ in runs]
        cpu = statistics.median(cpu for _, cpu in runs)
        print(f"{name:<26} {statistics.median(walls):9.3f} {min(walls):8.3f} {cpu:7.3f}")


if __name__ == "__main__":
    main()
