"""Runs a skill's tool as a sandboxed subprocess: JSON in on stdin, JSON out on stdout.

Isolation comes in two modes (`skillq.engine.bubblewrap` builds the first and says which
one applies): ``bwrap``, Linux namespaces through bubblewrap (own PID and network
namespaces, a read-only view of only the interpreter and the skill's folder), and
``process``, a plain process. Both modes also get:

- its own process group (session), killed as a whole on timeout, cancel, or when the tool's
  main process exits (in bwrap mode the whole PID namespace dies with it, `setsid` or not);
- resource limits set in the child before the tool's command (or bwrap) starts (CPU seconds,
  address space, file size, processes), through a tiny launcher so that no Python code runs
  between fork and exec in our multi-threaded worker;
- a clean environment (PATH, HOME and TMPDIR pointing at a fresh temporary working folder
  that is removed afterwards), and a cap on the bytes read from stdout.

Progress: a tool writes lines like ``PROGRESS 0.25 read 1 of 4 files`` to stderr (a
fraction 0..1, then an optional message). Every other stderr line is log output, of which
the last few kilobytes are kept for the error message when the tool fails.

Cancellation seam: while a tool runs for a job, `kill_running(job_id)` kills its process
group; the run then ends with `ToolCancelled`.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skillq.engine import bubblewrap
from skillq.engine.bubblewrap import Isolation
from skillq.errors import InvalidRequest
from skillq.json_values import parse_json, storable_problems

PROGRESS_PREFIX = b"PROGRESS "
STDERR_TAIL_BYTES = 4096
_CHUNK = 65536
_POLL_SECS = 0.1

# Runs in the child (python -I -S): sets the limits, then becomes the tool's command.
# On Linux it also asks for SIGKILL when the worker dies (PR_SET_PDEATHSIG), since the tool's
# own session would otherwise outlive a SIGKILLed worker.
_LAUNCHER = """
import os, resource, sys
def cap(which, soft, hard):
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(which, (min(soft, hard), hard))
cpu, memory, fsize, nproc, parent = (int(x) for x in sys.argv[1:6])
cap(resource.RLIMIT_CPU, cpu, cpu + 1)
cap(resource.RLIMIT_AS, memory, memory)
cap(resource.RLIMIT_FSIZE, fsize, fsize)
cap(resource.RLIMIT_NPROC, nproc, nproc)
cap(resource.RLIMIT_CORE, 0, 0)
if sys.platform == "linux":
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(137)
try:
    os.execvp(sys.argv[6], sys.argv[6:])
except OSError as error:
    sys.stderr.write(f"cannot start {sys.argv[6]}: {error.strerror}\\n")
    sys.exit(127)
"""


class ToolFailed(Exception):
    """The tool ran but did not produce a result; the job fails with this message."""


class ToolTimedOut(ToolFailed):
    pass


class ToolCancelled(ToolFailed):
    pass


class ToolCrashed(ToolFailed):
    """Non-zero exit status or killed by a signal."""


class ToolBadOutput(ToolFailed):
    """stdout was not one JSON document, or was larger than the cap."""


class SandboxUnavailable(ToolFailed):
    """`skills.sandbox` asks for bwrap and bwrap cannot run here: the tool is not started."""


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits; `cpu_secs` follows the run's timeout."""

    memory_bytes: int = 1024 * 2**20
    file_bytes: int = 64 * 2**20
    processes: int = 512
    output_bytes: int = 2**20

    @classmethod
    def from_settings(cls, skills: Any) -> Limits:
        return cls(
            memory_bytes=skills.memory_mb * 2**20,
            file_bytes=skills.max_file_mb * 2**20,
            processes=skills.max_processes,
            output_bytes=skills.max_output_bytes,
        )


@dataclass(frozen=True)
class ToolRun:
    result: Any
    duration_secs: float
    stderr_tail: str


ProgressCallback = Callable[[float | None, str | None], None]

_running: dict[str, _Run] = {}
_running_lock = threading.Lock()


def kill_running(job_id: str) -> bool:
    """Kills the process group of the tool running for `job_id`; False if none is running.

    Safe to call from any thread (e.g. a cancellation middleware); the run raises
    `ToolCancelled` in the thread that started it.
    """
    with _running_lock:
        run = _running.get(job_id)
    if run is None:
        return False
    run.cancelled = True
    run.kill()
    return True


def running_jobs() -> list[str]:
    with _running_lock:
        return list(_running)


def clean_environment(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


class _Run:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.cancelled = False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


class _Stderr:
    """Splits stderr into progress lines (sent on) and log lines (tail kept)."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress = on_progress
        self.partial = b""
        self.tail = bytearray()

    def feed(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > STDERR_TAIL_BYTES:
            lines.append(self.partial)
            self.partial = b""
        for line in lines:
            if not (line.startswith(PROGRESS_PREFIX) and self._progress(line)):
                self.tail += line + b"\n"
                del self.tail[:-STDERR_TAIL_BYTES]

    def _progress(self, line: bytes) -> bool:
        text = line[len(PROGRESS_PREFIX) :].decode("utf-8", "replace").strip()
        number, _, message = text.partition(" ")
        try:
            fraction = float(number)
        except ValueError:
            return False
        if not 0.0 <= fraction <= 1.0:
            return False
        if self.on_progress is not None:
            self.on_progress(fraction, message.strip() or None)
        return True

    def text(self) -> str:
        if self.partial:
            self.feed(b"\n")
        return self.tail.decode("utf-8", "replace").strip()


def _describe_exit(code: int, stderr: str) -> str:
    if code < 0:
        # `int in signal.Signals` raises TypeError before Python 3.12.
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        why = {
            "SIGXCPU": "it used up its CPU time limit",
            "SIGKILL": "killed (SIGKILL), e.g. by the out-of-memory killer",
            "SIGXFSZ": "it wrote a file larger than the file size limit",
            "SIGSEGV": "it crashed (SIGSEGV), e.g. past its memory limit",
        }.get(name, f"killed by {name}")
        text = f"the tool was stopped: {why}"
    else:
        text = f"the tool exited with status {code}"
    return f"{text}; stderr: {stderr[-2000:]}" if stderr else text


def run_tool(
    argv: list[str],
    input: Any,
    *,
    timeout_secs: float,
    limits: Limits | None = None,
    job_id: str | None = None,
    on_progress: ProgressCallback | None = None,
    isolation: Isolation | None = None,
) -> ToolRun:
    """Runs `argv` with `input` as JSON on stdin and returns its stdout parsed as JSON.

    `isolation` says which sandbox (default: bwrap when it works here, else a plain process)
    and what the tool may read besides the interpreter: in bwrap mode a script outside
    `isolation.readable` does not exist for the tool.

    Raises a `ToolFailed` subclass when it times out, is cancelled, exits non-zero or
    prints something other than one JSON document, and `SandboxUnavailable` when bwrap is
    required but cannot run.
    """
    limits = limits or Limits()
    isolation = isolation or Isolation()
    mode = bubblewrap.resolve_mode(isolation.mode)
    payload = json.dumps(input).encode()
    # A backstop, not the timeout: all cores busy for the whole wall-clock timeout fit in it.
    cpu_secs = int(timeout_secs * (os.cpu_count() or 1)) + 1
    limit_args = [cpu_secs, limits.memory_bytes, limits.file_bytes, limits.processes, os.getpid()]
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, *map(str, limit_args)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="skillq-tool-", ignore_cleanup_errors=True) as work:
        process = subprocess.Popen(
            [*launcher, *_confinement(mode, isolation, Path(work)), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=clean_environment(work),
            start_new_session=True,
            close_fds=True,
        )
        run = _Run(process)
        if job_id is not None:
            with _running_lock:
                _running[job_id] = run
        try:
            stdout, stderr = _communicate(run, payload, timeout_secs, limits, on_progress)
        finally:
            run.kill()  # the whole group, whatever happened: no orphans
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            if job_id is not None:
                with _running_lock:
                    _running.pop(job_id, None)
    tail = stderr.text()
    duration = time.monotonic() - started
    if run.cancelled:
        raise ToolCancelled("the tool was cancelled")
    code = process.returncode
    if mode == "bwrap" and code > 128 and code - 128 in signal.valid_signals():
        code = 128 - code  # bwrap reports a tool killed by signal N as exit status 128 + N
    if code != 0:
        raise ToolCrashed(_describe_exit(code, tail))
    return ToolRun(_parse_output(bytes(stdout)), duration, tail)


def _confinement(mode: str, isolation: Isolation, work: Path) -> list[str]:
    """What the launcher execs before the tool: nothing, or bwrap and its arguments."""
    if mode == "process":
        return []
    probe = bubblewrap.probe_bwrap()
    if not probe.works or probe.path is None:
        raise SandboxUnavailable(
            f"skills.sandbox is 'bwrap' but bwrap cannot run here: {probe.problem}"
        )
    return bubblewrap.command(probe.path, isolation, work, no_nested_userns=probe.no_nested_userns)


def _communicate(
    run: _Run,
    payload: bytes,
    timeout_secs: float,
    limits: Limits,
    on_progress: ProgressCallback | None,
) -> tuple[bytearray, _Stderr]:
    process = run.process
    assert process.stdin and process.stdout and process.stderr
    stdout, stderr = bytearray(), _Stderr(on_progress)
    selector = selectors.DefaultSelector()
    for pipe in (process.stdin, process.stdout, process.stderr):
        os.set_blocking(pipe.fileno(), False)
    if payload:
        selector.register(process.stdin, selectors.EVENT_WRITE)
    else:
        process.stdin.close()
    selector.register(process.stdout, selectors.EVENT_READ)
    selector.register(process.stderr, selectors.EVENT_READ)
    exited_at = None
    deadline = time.monotonic() + timeout_secs
    with selector:
        while selector.get_map():
            now = time.monotonic()
            if run.cancelled:
                break
            if now >= deadline:
                run.kill()
                raise ToolTimedOut(f"the tool ran past its timeout of {timeout_secs:g} s")
            if exited_at is None and process.poll() is not None:
                # The main process is gone: kill what it left behind so the pipes close.
                exited_at = now
                run.kill()
            for key, _ in selector.select(min(deadline - now, _POLL_SECS)):
                if key.fileobj is process.stdin:
                    try:
                        written = os.write(key.fd, payload)
                    except BrokenPipeError:
                        written = len(payload)
                    payload = payload[written:]
                    if not payload:
                        selector.unregister(key.fileobj)
                        process.stdin.close()
                    continue
                data = os.read(key.fd, _CHUNK)
                if not data:
                    selector.unregister(key.fileobj)
                elif key.fileobj is process.stdout:
                    stdout += data
                    if len(stdout) > limits.output_bytes:
                        run.kill()
                        raise ToolBadOutput(
                            f"the tool printed more than {limits.output_bytes} bytes on stdout"
                        )
                else:
                    stderr.feed(data)
    process.wait()
    return stdout, stderr


def _parse_output(stdout: bytes) -> Any:
    text = stdout.decode("utf-8", "replace").strip()
    if not text:
        raise ToolBadOutput("the tool printed nothing on stdout; expected one JSON document")
    try:
        result = parse_json(text, "output")
    except InvalidRequest as error:
        preview = text[:200] + ("..." if len(text) > 200 else "")
        why = error.details[0]["message"]
        raise ToolBadOutput(f"the tool's output is not JSON ({why}): {preview!r}") from None
    problems = storable_problems(result, "output")
    if problems:
        where = "; ".join(f"{p['path']}: {p['message']}" for p in problems)
        raise ToolBadOutput(f"the tool's output cannot be stored: {where}")
    return result
