"""Which sandbox a tool runs in, and the bubblewrap (`bwrap`) command line that builds it.

Two modes, chosen by `skills.sandbox`:

- ``bwrap``: Linux namespaces through bubblewrap. The tool gets its own PID namespace (it
  or bwrap's reaper is PID 1: when the tool exits, the kernel kills everything it started,
  `setsid` or not), its own network namespace (no network, loopback included, unless the
  tool declares ``network = true``), IPC, UTS and cgroup namespaces, no capabilities, no
  user namespaces of its own (where bwrap and the kernel allow `--disable-userns`), and
  a mount namespace that holds only: the system's programs and libraries read-only
  (``/usr`` and its ``/bin``, ``/lib`` links), the interpreter's prefix and virtual
  environment read-only, the skill's folder read-only, its own working folder read-write,
  a small private ``/tmp``, a fresh ``/proc`` that shows only its own processes, and a
  minimal ``/dev``. ``/etc`` holds only the dynamic linker's cache (and, for network tools,
  name resolution and CA certificates). Nothing else of the host's file system exists in
  there: not the data dir, the settings file, ``/etc/shadow`` or ``/root``.
- ``process``: a plain subprocess with rlimits, a clean environment and its own session;
  it sees everything its user can see (see the README's security section).

``auto`` (the default) is ``bwrap`` when a probe run of bwrap works on this machine, else
``process``. An explicit ``bwrap`` that cannot run is not quietly weakened: tools refuse to
run (`SandboxUnavailable`) and the worker says why at start.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODES = ("auto", "bwrap", "process")
#: Root folders of the system's programs and libraries, bound read-only (or re-created as
#: the same symlinks on a merged-/usr system).
SYSTEM_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: What of /etc every tool sees: how the dynamic linker finds libraries.
ETC_ALWAYS = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives")
#: What of /etc a tool that declares `network = true` also sees: name resolution and TLS.
ETC_NETWORK = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
)
#: Size of the private /tmp (memory-backed); a tool's real scratch space is its working folder.
TMP_BYTES = 64 * 2**20
_PROBE_TIMEOUT_SECS = 20.0


@dataclass(frozen=True)
class Isolation:
    """How one tool run is isolated.

    `mode` is one of `MODES`; `readable` are folders the tool may read (its skill's folder);
    `network` lets it use the host's network (bwrap mode; in process mode it always can).
    """

    mode: str = "auto"
    readable: tuple[Path, ...] = ()
    network: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sandbox mode must be one of {', '.join(MODES)} (got {self.mode!r})")


@dataclass(frozen=True)
class BwrapProbe:
    """Whether bwrap can build our sandbox on this machine, and if not, why."""

    path: str | None
    works: bool
    problem: str | None
    #: The tool cannot create user namespaces of its own (bwrap 0.8's --disable-userns):
    #: less kernel for it to reach. Used where this bwrap and kernel allow it.
    no_nested_userns: bool = False


@dataclass(frozen=True)
class SandboxStatus:
    """What `skills.sandbox` resolves to here: reported by `/health` and at worker start."""

    setting: str
    mode: str  # bwrap | process: what tools run in (or would refuse to, see `usable`)
    bwrap_works: bool
    problem: str | None

    @property
    def usable(self) -> bool:
        return self.mode == "process" or self.bwrap_works

    def to_dict(self) -> dict[str, object]:
        return {
            "setting": self.setting,
            "mode": self.mode,
            "bwrap": self.bwrap_works,
            "usable": self.usable,
            "problem": self.problem,
        }

    def describe(self) -> str:
        if self.mode == "bwrap" and self.bwrap_works:
            return "tool sandbox: bwrap (namespaces: own PID, network, mount view)"
        if self.mode == "bwrap":
            return (
                f"tool sandbox: skills.sandbox is 'bwrap' but bwrap cannot run here "
                f"({self.problem}); skill tools will refuse to run"
            )
        if self.setting == "process":
            return "tool sandbox: process (rlimits only, chosen by skills.sandbox)"
        return (
            f"tool sandbox: process (rlimits only): bwrap cannot run here ({self.problem}); "
            "tools can read what the worker's user can read"
        )


def status(setting: str) -> SandboxStatus:
    probe = probe_bwrap()
    return SandboxStatus(setting, resolve_mode(setting), probe.works, probe.problem)


def resolve_mode(setting: str) -> str:
    """`bwrap` or `process` for a run; `auto` follows the probe."""
    if setting != "auto":
        return setting
    return "bwrap" if probe_bwrap().works else "process"


@functools.cache
def probe_bwrap() -> BwrapProbe:
    """Runs the interpreter once inside the very sandbox tools get; cached per process.

    Some container runtimes forbid user namespaces or mounting /proc: the probe catches
    those as well as a missing binary.
    """
    path = shutil.which("bwrap", path=os.environ.get("PATH", os.defpath) + ":/usr/bin:/bin")
    if path is None:
        missing = "bwrap is not installed (Debian: apt-get install bubblewrap)"
        return BwrapProbe(None, False, missing)
    problem = None
    for no_nested_userns in ("--disable-userns" in _options(path), False):
        problem = _try_sandbox(path, no_nested_userns)
        if problem is None:
            return BwrapProbe(path, True, None, no_nested_userns)
    return BwrapProbe(path, False, problem)


def _try_sandbox(bwrap: str, no_nested_userns: bool) -> str | None:
    """None if the interpreter starts in the sandbox, else why not."""
    with tempfile.TemporaryDirectory(prefix="skillq-probe-") as work:
        confine = command(bwrap, Isolation("bwrap"), Path(work), no_nested_userns=no_nested_userns)
        try:
            done = subprocess.run(
                [*confine, sys.executable, "-c", "pass"],
                capture_output=True,
                timeout=_PROBE_TIMEOUT_SECS,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{bwrap} did not run: {error}"
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return (lines[-1] if lines else f"exit status {done.returncode}")[:300]
    return None


def interpreter_folders() -> list[Path]:
    """The folders the running interpreter needs: its prefix (stdlib) and its virtual
    environment (packages; `{python}` is its `bin/python`). Those under /usr come with it."""
    folders: list[Path] = []
    for prefix in (sys.base_prefix, sys.prefix, str(Path(sys.executable).resolve().parent.parent)):
        folder = Path(prefix).resolve()
        if folder == Path("/") or _under_system_root(folder) or folder in folders:
            continue
        folders.append(folder)
    return folders


def _under_system_root(path: Path) -> bool:
    return any(path.is_relative_to(root) for root in SYSTEM_ROOTS if Path(root).is_dir())


def _system_mounts() -> list[str]:
    args: list[str] = []
    for root in SYSTEM_ROOTS:
        if os.path.islink(root):
            args += ["--symlink", os.readlink(root), root]
        elif os.path.isdir(root):
            args += ["--ro-bind", root, root]
    return args


@functools.cache
def _options(bwrap: str) -> frozenset[str]:
    """The options this bwrap knows (`--size` is 0.8.0's; Ubuntu 22.04 ships 0.6)."""
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(word for word in (done.stdout + done.stderr).split() if word[:2] == "--")


def command(
    bwrap: str, isolation: Isolation, workdir: Path, *, no_nested_userns: bool = False
) -> list[str]:
    """The bwrap command line, up to and including `--`; the tool's argv follows it.

    Mount order matters: the private /tmp comes first, so folders that live under the
    host's /tmp (a working folder, a skill in a test) are bound on top of it.
    """
    tmp_size = ["--size", str(TMP_BYTES)] if "--size" in _options(bwrap) else []
    args = [
        bwrap,
        "--unshare-all",
        *(["--unshare-user", "--disable-userns"] if no_nested_userns else []),
        *(["--share-net"] if isolation.network else []),
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "skillq-tool",
        *_system_mounts(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        *tmp_size,
        "--tmpfs",
        "/tmp",
    ]
    for path in (*ETC_ALWAYS, *(ETC_NETWORK if isolation.network else ())):
        args += ["--ro-bind-try", path, path]
    for folder in (*interpreter_folders(), *isolation.readable):
        resolved = str(Path(folder).resolve())
        args += ["--ro-bind", resolved, resolved]
    work = str(workdir)
    args += ["--bind", work, work, "--chdir", work, "--"]
    return args
