"""`skillq up`: runs the API, the workers and the scheduler as child processes.

A child that dies on its own is restarted with a growing back-off (reset once it has stayed
up for a while), so one crash does not take the rest of the system down. Each child leads
its own process group, and whatever is left of a group when its leader dies (dramatiq's
worker processes outlive a SIGKILLed dramatiq main process) is killed before the restart.
SIGINT or SIGTERM stops every child: SIGTERM first, so workers finish or requeue their
jobs, then SIGKILL after the grace period. Children also get SIGTERM from the kernel if
this process itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

logger = logging.getLogger("skillq.cli.supervisor")

_PR_SET_PDEATHSIG = 1
#: A child up for this long is considered healthy again, and its back-off starts over.
HEALTHY_AFTER_SECS = 30.0
MAX_BACKOFF_SECS = 30.0


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when the supervisor dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start_at: float = 0.0
    backoff_secs: float = field(default=1.0)

    def kill_leftovers(self) -> None:
        """SIGKILL what remains of the child's process group once its leader has exited."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, preexec_fn=_die_with_parent, start_new_session=True
        )
        self.started_at = time.monotonic()
        logger.info("started %s (pid %d): %s", self.name, self.process.pid, " ".join(self.command))


class Supervisor:
    def __init__(self, children: list[Child], *, grace_secs: float = 30.0) -> None:
        self.children = children
        self.grace_secs = grace_secs
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        for child in self.children:
            child.start()
        while not self.stopping:
            self._restart_dead_children()
            time.sleep(0.2)
        return self._stop_all()

    def _request_stop(self, signum: int, frame: object) -> None:
        if not self.stopping:
            logger.info("received %s, stopping all processes", signal.Signals(signum).name)
        self.stopping = True

    def _restart_dead_children(self) -> None:
        now = time.monotonic()
        for child in self.children:
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                if now - child.started_at > HEALTHY_AFTER_SECS:
                    child.backoff_secs = 1.0
                continue
            if child.next_start_at == 0.0:
                child.kill_leftovers()
                child.next_start_at = now + child.backoff_secs
                logger.warning(
                    "%s (pid %d) %s; restarting in %.0f s (restart %d)",
                    child.name,
                    child.process.pid,
                    exit_reason(code),
                    child.backoff_secs,
                    child.restarts + 1,
                )
            elif now >= child.next_start_at:
                child.next_start_at = 0.0
                child.backoff_secs = min(child.backoff_secs * 2, MAX_BACKOFF_SECS)
                child.restarts += 1
                child.start()

    def _stop_all(self) -> int:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_secs
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s did not stop within %.0f s; killing it", child.name, self.grace_secs
                )
                child.process.kill()
                child.process.wait()
        for child in self.children:
            child.kill_leftovers()
        logger.info("all processes stopped")
        return 0


def exit_reason(code: int) -> str:
    """Why a child ended, for the log: a signal's name (SIGKILL is often the OOM killer)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory, or by hand)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]
