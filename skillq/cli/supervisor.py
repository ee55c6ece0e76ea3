"""`skillq up`: runs the API, the workers and the scheduler as child processes.

A child that dies on its own is restarted with a growing back-off (reset once it has stayed
up for a while), so one crash does not take the rest of the system down. A child that keeps
failing at start (`MAX_QUICK_FAILURES` times in a row, each within `HEALTHY_AFTER_SECS`) will
not start by being retried: the supervisor prints that child's last stderr lines, stops the
others and exits with the child's status, instead of looping forever while nothing answers.
Each child's stderr passes through the supervisor (a thread per child) to keep those lines.

Each child leads its own process group, and whatever is left of a group when its leader dies
(dramatiq's worker processes outlive a SIGKILLed dramatiq main process) is killed before
the restart. SIGINT or SIGTERM stops every child: SIGTERM first, so workers finish or
requeue their jobs, then SIGKILL after the grace period. Children also get SIGTERM from the
kernel if this process itself is killed.

A reconciler (`skillq.cli.worker_pools.WorkerPools`) may change the set of children while
they run: every `reconcile_every_secs` it may `retire` a child (SIGTERM to it alone; it
drains, is SIGKILLed after the grace period if still running, and is not restarted) and
`add` its replacement at once, so a queue is never without a pool during a resize.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

logger = logging.getLogger("skillq.cli.supervisor")

_PR_SET_PDEATHSIG = 1
#: A child up for this long is considered healthy again, and its back-off starts over.
HEALTHY_AFTER_SECS = 30.0
MAX_BACKOFF_SECS = 30.0
#: Consecutive failures at start (each within HEALTHY_AFTER_SECS) after which we give up.
MAX_QUICK_FAILURES = 5
#: Lines of a child's stderr kept to explain why it was given up.
LAST_LINES = 20


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
    #: Seconds before the first restart; doubles with each restart up to MAX_BACKOFF_SECS.
    first_backoff_secs: float = 1.0
    backoff_secs: float = field(init=False)
    #: Failures in a row of a child that never stayed up for HEALTHY_AFTER_SECS.
    quick_failures: int = 0
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES))
    _relay_thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.backoff_secs = self.first_backoff_secs

    def kill_leftovers(self) -> None:
        """SIGKILL what remains of the child's process group once its leader has exited."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            preexec_fn=_die_with_parent,
            start_new_session=True,
            stderr=subprocess.PIPE,
        )
        self.started_at = time.monotonic()
        # A fresh deque per run: the previous run's relay may still be draining its pipe.
        self.last_lines = deque(maxlen=LAST_LINES)
        self._relay_thread = threading.Thread(
            target=_relay,
            args=(self.process.stderr, self.last_lines),
            name=f"stderr-{self.name}",
            daemon=True,
        )
        self._relay_thread.start()
        logger.info("started %s (pid %d): %s", self.name, self.process.pid, " ".join(self.command))

    def wait_for_stderr(self, timeout: float) -> None:
        """Let the relay take in the child's last words (its pipe closes when it exits)."""
        if self._relay_thread is not None:
            self._relay_thread.join(timeout)


def _relay(stream: IO[bytes], last_lines: deque[str]) -> None:
    """Pass a child's stderr on to ours line by line, keeping the last few."""
    out = getattr(sys.stderr, "buffer", None)
    with stream:
        for line in stream:
            last_lines.append(line.decode(errors="replace").rstrip())
            if out is not None:
                with contextlib.suppress(OSError, ValueError):
                    out.write(line)
                    out.flush()


class Supervisor:
    def __init__(
        self,
        children: list[Child],
        *,
        grace_secs: float = 30.0,
        reconcile: Callable[[Supervisor], None] | None = None,
        reconcile_every_secs: float = 2.0,
    ) -> None:
        self.children = children
        self.grace_secs = grace_secs
        self.stopping = False
        self.reconcile = reconcile
        self.reconcile_every_secs = reconcile_every_secs
        #: Retired children finishing their jobs, each with the time it gets SIGKILL.
        self.draining: list[tuple[Child, float]] = []

    def add(self, child: Child) -> None:
        """Start a new child and supervise it like the others."""
        child.start()
        self.children.append(child)

    def retire(self, child: Child) -> None:
        """Stop supervising a child and let it drain: SIGTERM now, SIGKILL after the grace."""
        self.children.remove(child)
        if child.process is None or child.process.poll() is not None:
            child.kill_leftovers()
            return
        logger.info("stopping %s (pid %d) gracefully", child.name, child.process.pid)
        child.process.send_signal(signal.SIGTERM)
        self.draining.append((child, time.monotonic() + self.grace_secs))

    def run(self) -> int:
        """Run until asked to stop (0) or until a child keeps failing at start (its status)."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in _STOP_SIGNALS}
        try:
            for child in self.children:
                child.start()
            failed: Child | None = None
            next_reconcile = time.monotonic() + self.reconcile_every_secs
            while not self.stopping and failed is None:
                failed = self._restart_dead_children()
                self._reap_draining()
                if self.reconcile is not None and time.monotonic() >= next_reconcile:
                    self._reconcile()
                    next_reconcile = time.monotonic() + self.reconcile_every_secs
                time.sleep(0.2)
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failed is None:
            return 0
        assert failed.process is not None
        code = failed.process.returncode
        return code if 0 < code < 256 else 1

    def _reconcile(self) -> None:
        assert self.reconcile is not None
        try:
            self.reconcile(self)
        except Exception:
            # The store may be down for a while: the pools keep their sizes meanwhile.
            logger.warning("could not reconcile the worker pools; retrying", exc_info=True)

    def _reap_draining(self) -> None:
        now = time.monotonic()
        for entry in list(self.draining):
            child, deadline = entry
            assert child.process is not None
            if child.process.poll() is not None:
                child.kill_leftovers()
                self.draining.remove(entry)
                logger.info("%s (pid %d) stopped", child.name, child.process.pid)
            elif now >= deadline:
                logger.warning(
                    "%s did not stop within %.0f s; killing it", child.name, self.grace_secs
                )
                child.process.kill()

    def _request_stop(self, signum: int, frame: object) -> None:
        if not self.stopping:
            logger.info("received %s, stopping all processes", signal.Signals(signum).name)
        self.stopping = True

    def _restart_dead_children(self) -> Child | None:
        """Restart what died; returns a child that keeps failing at start, if any."""
        now = time.monotonic()
        for child in self.children:
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                if now - child.started_at > HEALTHY_AFTER_SECS:
                    child.backoff_secs = child.first_backoff_secs
                    child.quick_failures = 0
                continue
            if child.next_start_at == 0.0:
                child.kill_leftovers()
                quick = now - child.started_at <= HEALTHY_AFTER_SECS
                child.quick_failures = child.quick_failures + 1 if quick else 0
                if child.quick_failures >= MAX_QUICK_FAILURES:
                    _give_up(child, code)
                    return child
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
        return None

    def _stop_all(self) -> None:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        # Retired children already had their SIGTERM; they get the same grace as the rest.
        running += [c for c, _ in self.draining]
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
        for child in [*self.children, *(c for c, _ in self.draining)]:
            child.kill_leftovers()
        self.draining.clear()
        logger.info("all processes stopped")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _give_up(child: Child, code: int) -> None:
    child.wait_for_stderr(timeout=2.0)
    last = "\n".join(f"  | {line}" for line in child.last_lines) or "  | (nothing on stderr)"
    logger.error(
        "%s %s at start %d times in a row; giving up and stopping everything. "
        "Its last lines on stderr:\n%s",
        child.name,
        exit_reason(code),
        child.quick_failures,
        last,
    )


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
    """This interpreter, run safe-path (`-P`): `python -m` would put the working directory
    first on `sys.path`, and from a clone's root its source `skillq/` folder (which holds
    only part of the package; the rest is mapped in from the top-level folders at install)
    would hide the installed package."""
    return [sys.executable, "-P", *args]
