"""What the bwrap sandbox adds to one tool run, against a plain process (`skills.sandbox`).

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/sandbox_startup.py [--runs 30]

Each row runs the shipped `text-stats/word_count` tool (an interpreter start, a JSON in,
a JSON out) through `run_tool` in one mode, rounds interleaved so drift hits both alike.
"added" is the bwrap row's p50/p90 minus the process row's: namespaces, mounts and the
extra bubblewrap processes, paid once per tool run (a fast tool's whole job).
"""

from __future__ import annotations

import argparse
import statistics
import time

from skillq.engine import bubblewrap
from skillq.engine.bubblewrap import Isolation
from skillq.engine.sandbox import run_tool
from skillq.engine.skills import SkillLibrary
from skillq.settings import SkillsSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    probe = bubblewrap.probe_bwrap()
    if not probe.works:
        print(f"bwrap cannot run here: {probe.problem}")
        return
    skill = SkillLibrary(SkillsSettings().paths).find("text-stats")
    argv = skill.argv(skill.tool("word_count"))
    modes = ("process", "bwrap")
    timings: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(runs):
        for mode in modes:
            isolation = Isolation(mode, (skill.directory,))
            started = time.perf_counter()
            run_tool(argv, {"text": "one two three"}, timeout_secs=30, isolation=isolation)
            timings[mode].append((time.perf_counter() - started) * 1000)

    def quantiles(values: list[float]) -> tuple[float, float]:
        cuts = statistics.quantiles(values, n=10)
        return statistics.median(values), cuts[8]

    print(f"{runs} runs each of text-stats/word_count, ms per run")
    print(f"{'mode':<10}{'p50':>8}{'p90':>8}")
    for mode in modes:
        p50, p90 = quantiles(timings[mode])
        print(f"{mode:<10}{p50:>8.1f}{p90:>8.1f}")
    (base50, base90), (bw50, bw90) = quantiles(timings["process"]), quantiles(timings["bwrap"])
    print(f"{'added':<10}{bw50 - base50:>8.1f}{bw90 - base90:>8.1f}")


if __name__ == "__main__":
    main()
