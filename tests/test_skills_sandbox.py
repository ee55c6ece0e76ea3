"""Skills and the sandbox, with real subprocesses: limits, timeouts, bad output, escapes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from skillq.engine.sandbox import (
    Limits,
    ToolBadOutput,
    ToolCancelled,
    ToolCrashed,
    ToolTimedOut,
    kill_running,
    run_tool,
    running_jobs,
)
from skillq.engine.skills import SkillError, SkillLibrary
from skillq.errors import InvalidParams, NotFound
from tests.support import ROOT, wait_for

SHIPPED = SkillLibrary([ROOT / "skills"])


def python_tool(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / f"tool_{abs(hash(body))}.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def gone(pid: int) -> bool:
    """Dead, or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_shipped_skills_load_and_run() -> None:
    skills, problems = SHIPPED.all()
    assert problems == []
    assert {"text-stats", "primes"} <= {skill.name for skill in skills}
    kinds = {tool.kind for skill in skills for tool in skill.tools.values()}
    assert kinds == {"fast", "long"}

    skill = SHIPPED.find("text-stats")
    run = run_tool(
        skill.argv(skill.tool("word_count")), {"text": "One two. Three!"}, timeout_secs=30
    )
    assert run.result == {"characters": 15, "words": 3, "lines": 1, "sentences": 2}


def test_long_tool_reports_progress_from_stderr_lines() -> None:
    skill = SHIPPED.find("primes")
    seen: list[tuple[float | None, str | None]] = []
    run = run_tool(
        skill.argv(skill.tool("count_primes")),
        {"limit": 100_000, "segments": 4},
        timeout_secs=60,
        on_progress=lambda fraction, message: seen.append((fraction, message)),
    )
    assert run.result == {"limit": 100_000, "primes_below": 9592}
    assert [fraction for fraction, _ in seen] == [0.25, 0.5, 0.75, 1.0]
    assert seen[-1][1] == "sieved 100000 of 100000"
    assert run.stderr_tail == ""  # progress lines are not log output


def test_a_tool_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    argv = python_tool(
        tmp_path,
        f"""
        import subprocess, time
        child = subprocess.Popen(["sleep", "300"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(300)
        """,
    )
    with pytest.raises(ToolTimedOut, match="timeout of 1 s"):
        run_tool(argv, {}, timeout_secs=1)
    child = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="pid"))
    wait_for(lambda: gone(child), timeout=10, what="the tool's child to be killed")


def test_children_left_behind_by_a_finished_tool_are_killed(tmp_path: Path) -> None:
    argv = python_tool(
        tmp_path,
        """
        import json, subprocess, sys
        child = subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL)
        json.dump({"child": child.pid}, sys.stdout)
        """,
    )
    run = run_tool(argv, {}, timeout_secs=30)
    wait_for(lambda: gone(run.result["child"]), timeout=10, what="the orphan to be killed")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_a_tool_dies_with_a_sigkilled_worker(tmp_path: Path) -> None:
    pid_file = tmp_path / "tool.pid"
    tool = python_tool(
        tmp_path,
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)",
    )
    worker_code = (
        "import sys; from skillq.engine.sandbox import run_tool; "
        f"run_tool({tool!r}, {{}}, timeout_secs=300)"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code], cwd=ROOT)
    try:
        tool_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="pid"))
        assert not gone(tool_pid)
    finally:
        worker.kill()
        worker.wait()
    wait_for(lambda: gone(tool_pid), timeout=10, what="the tool to die with its worker")


def test_a_tool_over_its_memory_limit_fails_cleanly(tmp_path: Path) -> None:
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
        run_tool(argv, {}, timeout_secs=30, limits=limits)
    assert "exited with status 1" in str(failure.value)


def test_output_that_is_not_json_fails_with_a_clear_error(tmp_path: Path) -> None:
    argv = python_tool(tmp_path, 'print("hello, not json")')
    with pytest.raises(ToolBadOutput, match=r"not JSON .*'hello, not json'"):
        run_tool(argv, {}, timeout_secs=30)
    with pytest.raises(ToolBadOutput, match="printed nothing"):
        run_tool(python_tool(tmp_path, "pass"), {}, timeout_secs=30)


def test_output_past_the_cap_is_refused(tmp_path: Path) -> None:
    argv = python_tool(tmp_path, 'import sys; sys.stdout.write("1" * 100_000)')
    with pytest.raises(ToolBadOutput, match="more than 4096 bytes"):
        run_tool(argv, {}, timeout_secs=30, limits=Limits(output_bytes=4096))


def test_non_zero_exit_fails_with_the_tail_of_stderr(tmp_path: Path) -> None:
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
        run_tool(argv, {}, timeout_secs=30)
    assert "log line 1999" in str(failure.value)
    assert "log line 10\n" not in str(failure.value)


def test_the_tool_gets_its_input_and_a_clean_environment(tmp_path: Path) -> None:
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
        run = run_tool(argv, {"big": "x" * 300_000}, timeout_secs=30)
    finally:
        del os.environ["SKILLQ_TEST_SECRET"]
    assert run.result["input"] == {"big": "x" * 300_000}
    assert "SKILLQ_TEST_SECRET" not in run.result["env"]
    assert run.result["env"]["HOME"] == run.result["cwd"]
    assert not Path(run.result["cwd"]).exists()  # the working folder is removed


def test_kill_running_cancels_the_tool_of_a_job(tmp_path: Path) -> None:
    argv = python_tool(tmp_path, "import time; time.sleep(300)")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_tool(argv, {}, timeout_secs=120, job_id="job-1")
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: "job-1" in running_jobs(), what="the tool to start")
    assert kill_running("job-1")
    thread.join(timeout=30)
    assert isinstance(outcome[0], ToolCancelled)
    assert not kill_running("job-1")


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
