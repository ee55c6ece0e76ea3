"""Skills and the sandbox, with real subprocesses: limits, timeouts, bad output, escapes.

The tool tests run in each sandbox mode (`sandbox_mode`: bwrap, process); what a hostile
tool can and cannot reach in each is in test_sandbox_escapes.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from skillq.engine.bubblewrap import Isolation
from skillq.engine.sandbox import (
    CancelSwitch,
    Limits,
    SandboxUnavailable,
    ToolBadOutput,
    ToolCancelled,
    ToolCrashed,
    ToolRun,
    ToolTimedOut,
    run_tool,
)
from skillq.engine.skills import SkillError, SkillLibrary
from skillq.errors import InvalidParams, NotFound
from tests.support import ROOT, host_processes, process_gone, sleep_marker, wait_for

SHIPPED = SkillLibrary([ROOT / "skills"])


def python_tool(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / f"tool_{abs(hash(body))}.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def run_in(mode: str, folder: Path, argv: list[str], input: Any, **options: Any) -> ToolRun:
    """`run_tool` in `mode`, the tool reading its script from `folder` (its skill's folder)."""
    return run_tool(argv, input, isolation=Isolation(mode, (folder,)), **options)


def test_shipped_skills_load_and_run(sandbox_mode: str) -> None:
    skills, problems = SHIPPED.all()
    assert problems == []
    assert {"text-stats", "primes"} <= {skill.name for skill in skills}
    kinds = {tool.kind for skill in skills for tool in skill.tools.values()}
    assert kinds == {"fast", "long"}

    skill = SHIPPED.find("text-stats")
    argv = skill.argv(skill.tool("word_count"))
    run = run_in(sandbox_mode, skill.directory, argv, {"text": "One two. Three!"}, timeout_secs=30)
    assert run.result == {"characters": 15, "words": 3, "lines": 1, "sentences": 2}


def test_long_tool_reports_progress_from_stderr_lines(sandbox_mode: str) -> None:
    skill = SHIPPED.find("primes")
    seen: list[tuple[float | None, str | None]] = []
    run = run_in(
        sandbox_mode,
        skill.directory,
        skill.argv(skill.tool("count_primes")),
        {"limit": 100_000, "segments": 4},
        timeout_secs=60,
        on_progress=lambda fraction, message: seen.append((fraction, message)),
    )
    assert run.result == {"limit": 100_000, "primes_below": 9592}
    assert [fraction for fraction, _ in seen] == [0.25, 0.5, 0.75, 1.0]
    assert seen[-1][1] == "sieved 100000 of 100000"
    assert run.stderr_tail == ""  # progress lines are not log output


def test_a_tool_past_its_timeout_is_killed_with_its_children(
    sandbox_mode: str, tmp_path: Path
) -> None:
    marker = sleep_marker()
    argv = python_tool(
        tmp_path,
        f"""
        import subprocess, time
        child = subprocess.Popen(["sleep", {marker!r}])
        time.sleep(300)
        """,
    )
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_in(sandbox_mode, tmp_path, argv, {}, timeout_secs=3)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    (child,) = wait_for(lambda: host_processes(marker), what="the tool's child to start")
    thread.join(timeout=60)
    assert isinstance(outcome[0], ToolTimedOut) and "timeout of 3 s" in str(outcome[0])
    wait_for(lambda: process_gone(child), timeout=10, what="the tool's child to be killed")


def test_children_left_behind_by_a_finished_tool_are_killed(
    sandbox_mode: str, tmp_path: Path
) -> None:
    marker = sleep_marker()
    argv = python_tool(
        tmp_path,
        f"""
        import json, subprocess, sys, time
        child = subprocess.Popen(["sleep", {marker!r}], stdout=subprocess.DEVNULL)
        time.sleep(0.5)  # so the test sees it from the host before the tool exits
        json.dump({{"child": child.pid}}, sys.stdout)
        """,
    )
    seen: list[int] = []
    watcher = threading.Thread(target=lambda: seen.extend(wait_for(lambda: host_processes(marker))))
    watcher.start()
    run_in(sandbox_mode, tmp_path, argv, {}, timeout_secs=30)
    watcher.join(timeout=30)
    assert seen, "the tool's child was never seen running"
    wait_for(lambda: process_gone(seen[0]), timeout=10, what="the orphan to be killed")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_a_tool_dies_with_a_sigkilled_worker(sandbox_mode: str, tmp_path: Path) -> None:
    marker = sleep_marker()
    tool = python_tool(tmp_path, f"import os; os.execvp('sleep', ['sleep', {marker!r}])")
    worker_code = (
        "from pathlib import Path; from skillq.engine.bubblewrap import Isolation; "
        "from skillq.engine.sandbox import run_tool; "
        f"run_tool({tool!r}, {{}}, timeout_secs=300, "
        f"isolation=Isolation({sandbox_mode!r}, (Path({str(tmp_path)!r}),)))"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code], cwd=ROOT)
    try:
        (tool_pid,) = wait_for(lambda: host_processes(marker), what="the tool to start")
        assert not process_gone(tool_pid)
    finally:
        worker.kill()
        worker.wait()
    wait_for(lambda: process_gone(tool_pid), timeout=10, what="the tool to die with its worker")


def test_a_tool_over_its_memory_limit_fails_cleanly(sandbox_mode: str, tmp_path: Path) -> None:
    argv = python_tool(
        tmp_path,
        """
        import json
        hog = bytearray(1024 * 1024 * 1024)
        print(json.dumps({"allocated": len(hog)}))
        """,
    )
    limits = Limits(memory_bytes=256 * 2**20)
    with pytest.raises(ToolCrashed, match="MemoryError") as failure:
        run_in(sandbox_mode, tmp_path, argv, {}, timeout_secs=30, limits=limits)
    assert "exited with status 1" in str(failure.value)


def test_output_that_is_not_json_fails_with_a_clear_error(
    sandbox_mode: str, tmp_path: Path
) -> None:
    argv = python_tool(tmp_path, 'print("hello, not json")')
    with pytest.raises(ToolBadOutput, match=r"not JSON .*'hello, not json'"):
        run_in(sandbox_mode, tmp_path, argv, {}, timeout_secs=30)
    with pytest.raises(ToolBadOutput, match="printed nothing"):
        run_in(sandbox_mode, tmp_path, python_tool(tmp_path, "pass"), {}, timeout_secs=30)


def test_output_past_the_cap_is_refused(sandbox_mode: str, tmp_path: Path) -> None:
    argv = python_tool(tmp_path, 'import sys; sys.stdout.write("1" * 100_000)')
    with pytest.raises(ToolBadOutput, match="more than 4096 bytes"):
        run_in(sandbox_mode, tmp_path, argv, {}, timeout_secs=30, limits=Limits(output_bytes=4096))


def test_a_tool_killed_by_a_signal_says_which(sandbox_mode: str, tmp_path: Path) -> None:
    argv = python_tool(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGXCPU)")
    with pytest.raises(ToolCrashed, match="stopped: it used up its CPU time limit"):
        run_in(sandbox_mode, tmp_path, argv, {}, timeout_secs=30)


def test_non_zero_exit_fails_with_the_tail_of_stderr(sandbox_mode: str, tmp_path: Path) -> None:
    argv = python_tool(
        tmp_path,
        """
        import sys
        for i in range(2000):
            print(f"log line {i}", file=sys.stderr)
        sys.exit(3)
        """,
    )
    with pytest.raises(ToolCrashed, match="status 3") as failure:
        run_in(sandbox_mode, tmp_path, argv, {}, timeout_secs=30)
    assert "log line 1999" in str(failure.value)
    assert "log line 10\n" not in str(failure.value)


def test_the_tool_gets_its_input_and_a_clean_environment(sandbox_mode: str, tmp_path: Path) -> None:
    argv = python_tool(
        tmp_path,
        """
        import json, os, sys
        json.dump({"input": json.load(sys.stdin), "env": dict(os.environ), "cwd": os.getcwd()},
                  sys.stdout)
        """,
    )
    os.environ["SKILLQ_TEST_SECRET"] = "leak"
    try:
        run = run_in(sandbox_mode, tmp_path, argv, {"big": "x" * 300_000}, timeout_secs=30)
    finally:
        del os.environ["SKILLQ_TEST_SECRET"]
    assert run.result["input"] == {"big": "x" * 300_000}
    assert "SKILLQ_TEST_SECRET" not in run.result["env"]
    assert run.result["env"]["HOME"] == run.result["cwd"]
    assert not Path(run.result["cwd"]).exists()  # the working folder is removed


def test_a_cancel_switch_cancels_the_running_tool(sandbox_mode: str, tmp_path: Path) -> None:
    marker = sleep_marker()
    argv = python_tool(tmp_path, f"import os; os.execvp('sleep', ['sleep', {marker!r}])")
    outcome: list[BaseException] = []
    switch = CancelSwitch()

    def run() -> None:
        try:
            run_in(sandbox_mode, tmp_path, argv, {}, timeout_secs=120, cancel=switch)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    (tool_pid,) = wait_for(lambda: host_processes(marker), what="the tool's process")
    assert switch.fire()
    thread.join(timeout=30)
    assert isinstance(outcome[0], ToolCancelled)
    assert not switch.fire()  # the run is over: nothing to kill
    wait_for(lambda: process_gone(tool_pid), timeout=10, what="the cancelled tool to be killed")


def test_an_explicit_bwrap_that_cannot_run_refuses_to_start_the_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No quiet fallback: `skills.sandbox = "bwrap"` without a working bwrap runs nothing."""
    from skillq.engine import bubblewrap

    broken = bubblewrap.BwrapProbe(None, False, "bwrap is not installed")
    monkeypatch.setattr(bubblewrap, "probe_bwrap", lambda: broken)
    marker = tmp_path / "ran"
    argv = python_tool(tmp_path, f"open({str(marker)!r}, 'w').write('ran'); print('{{}}')")
    with pytest.raises(SandboxUnavailable, match="bwrap cannot run here: bwrap is not installed"):
        run_in("bwrap", tmp_path, argv, {}, timeout_secs=30)
    assert not marker.exists()
    assert run_in("auto", tmp_path, argv, {}, timeout_secs=30).result == {}  # auto: process
    assert marker.exists()
    status = bubblewrap.status("auto")
    assert (status.mode, status.usable) == ("process", True)
    assert "bwrap cannot run here (bwrap is not installed)" in status.describe()
    status = bubblewrap.status("bwrap")
    assert (status.mode, status.usable) == ("bwrap", False)
    assert "skill tools will refuse to run" in status.describe()


@pytest.mark.parametrize("name", ["../skills", "..", "/etc", "a/b", "", ".hidden", "x" * 65])
def test_path_escaping_skill_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidParams, match="invalid skill name"):
        SHIPPED.find(name)


def test_a_symlink_out_of_the_skills_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "evil"
    outside.mkdir(parents=True)
    (outside / "skill.toml").write_text('name = "evil"\n')
    root = tmp_path / "skills"
    root.mkdir()
    (root / "evil").symlink_to(outside)
    with pytest.raises(InvalidParams, match="leads out"):
        SkillLibrary([root]).find("evil")
    with pytest.raises(NotFound):
        SkillLibrary([root]).find("missing")


def test_a_command_that_leads_out_of_its_skill_is_refused(tmp_path: Path) -> None:
    skill_dir = tmp_path / "skills" / "sneaky"
    skill_dir.mkdir(parents=True)
    (skill_dir / "skill.toml").write_text(
        'name = "sneaky"\n[[tools]]\nname = "t"\n'
        'command = ["{python}", "{skill_dir}/../../outside.py"]\n'
    )
    skill = SkillLibrary([tmp_path / "skills"]).find("sneaky")
    with pytest.raises(SkillError, match="leads out"):
        skill.argv(skill.tool("t"))


def test_a_broken_manifest_names_the_problem(tmp_path: Path) -> None:
    skill_dir = tmp_path / "broken"
    skill_dir.mkdir()
    (skill_dir / "skill.toml").write_text(
        'name = "broken"\n[[tools]]\nname = "t"\ncommand = ["x"]\nkind = "slow"\n'
    )
    with pytest.raises(SkillError, match=r"tools\[0\] \(t\): kind must be one of fast, long"):
        SkillLibrary([tmp_path]).find("broken")
    skills, problems = SkillLibrary([tmp_path]).all()
    assert skills == [] and "kind must be one of" in problems[0]
