"""The package's shape: one top-level package, arrows pointing down, quick CLI commands.

These walk the source (for imports anywhere in a module, lazy ones included) and import
modules in fresh interpreters (for what an import really drags in).
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import ROOT, fresh_venv

#: Source folder of each sub-package of `skillq` that maps onto a top-level folder.
FOLDERS = {
    "skillq.actors": ROOT / "actors",
    "skillq.api": ROOT / "api",
    "skillq.brokers": ROOT / "brokers",
    "skillq.storage": ROOT / "storage",
}
OLD_TOP_LEVEL = {"actors", "api", "brokers", "storage", "skills"}


def modules() -> dict[str, Path]:
    """Every module of the distribution by its dotted name."""
    found: dict[str, Path] = {}
    roots = {"skillq": ROOT / "skillq", **FOLDERS}
    for package, folder in roots.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imported_names(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at top level or inside functions, absolute names."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imports_of(prefix: str) -> dict[str, set[str]]:
    return {
        name: imported_names(path, name)
        for name, path in modules().items()
        if name == prefix or name.startswith(prefix + ".")
    }


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_every_folder() -> None:
    found = modules()
    for package in [*FOLDERS, "skillq.cli", "skillq.engine", "skillq.jobs"]:
        assert package in found, package
    assert imported_names(found["skillq.api.app"], "skillq.api.app"), "the walk found no imports"


def test_nothing_below_the_api_imports_it() -> None:
    offenders = {
        module: sorted(n for n in names if under(n, "skillq.api"))
        for module, names in imports_of("skillq").items()
        if not under(module, "skillq.api", "skillq.cli")
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def test_the_store_imports_no_broker_actor_or_dramatiq() -> None:
    banned = (
        "skillq.brokers",
        "skillq.actors",
        "skillq.jobs",
        "skillq.api",
        "dramatiq",
        "periodiq",
    )
    offenders = {
        module: sorted(n for n in names if under(n, *banned) or n == "skillq.settings")
        for module, names in imports_of("skillq.storage").items()
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def test_brokers_do_not_reach_into_the_engine_or_up() -> None:
    banned = ("skillq.engine", "skillq.actors", "skillq.api", "skillq.cli", "skillq.jobs")
    offenders = {
        module: sorted(n for n in names if under(n, *banned))
        for module, names in imports_of("skillq.brokers").items()
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def test_the_engine_imports_only_the_ground_floor_and_the_store() -> None:
    # The store sits below the engine: collections live in it when it is PostgreSQL.
    banned = ("skillq.brokers", "skillq.actors", "skillq.api", "skillq.cli", "skillq.jobs")
    offenders = {
        module: sorted(n for n in names if under(n, *banned))
        for module, names in imports_of("skillq.engine").items()
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def test_no_module_imports_the_old_top_level_names() -> None:
    offenders = {
        module: sorted(n for n in names if n.split(".")[0] in OLD_TOP_LEVEL)
        for module, names in imports_of("skillq").items()
        if module != "skillq.actors"  # its hand-over from `dramatiq actors` names no package
    }
    assert {m: n for m, n in offenders.items() if n} == {}


def loaded_after(code: str, *, env: dict[str, str] | None = None) -> set[str]:
    """The modules loaded in a fresh interpreter after running `code`."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_importing_the_store_loads_no_broker_or_dramatiq() -> None:
    loaded = loaded_after(
        "import skillq.storage, skillq.storage.jobs, skillq.storage.migrations,"
        " skillq.storage.workers, skillq.storage.schedules, skillq.storage.api_keys"
    )
    assert not {m for m in loaded if under(m, "dramatiq", "periodiq", "skillq.brokers")}
    assert "skillq.storage.jobs" in loaded


def test_minting_a_token_loads_no_web_framework(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text('[auth]\nmode = "jwt"\n[auth.jwt]\nsecret = "s3cret-for-tests-only"\n')
    code = (
        "import sys\n"
        f"sys.argv = ['skillq', '--settings', {str(settings)!r},"
        " 'auth', 'token', 'create', '--sub', 'me', '--role', 'admin']\n"
        "from skillq.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
    )
    loaded = loaded_after(code)
    assert "jwt" in loaded  # it did mint
    heavy = {m for m in loaded if under(m, "starlette", "mcp", "uvicorn", "skillq.api")}
    assert heavy == set()


def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["skillq"]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"skillq"}
    # Every module of the source tree ships (a package missing from pyproject's list would
    # work in a checkout and break every installed copy).
    shipped = {n[: -len(".py")].replace("/", ".").removesuffix(".__init__") for n in names}
    assert set(modules()) - shipped == set()
    for expected in [
        "skillq/actors/__init__.py",
        "skillq/api/mcp/server.py",
        "skillq/brokers/sqlite.py",
        "skillq/storage/jobs.py",
        "skillq/example_skills/primes/skill.toml",
        "skillq/example_skills/text-stats/text_stats.py",
        "skillq/api/static/index.html",
        "skillq/api/static/dashboard.js",
        "skillq/api/static/api.js",
        "skillq/api/static/dashboard.css",
    ]:
        assert expected in names


#: What a source distribution of skillq holds, copied so the build leaves the checkout clean.
SOURCES = ["pyproject.toml", "README.md", "actors", "api", "brokers", "skillq", "skills", "storage"]


def build_wheel(directory: Path) -> Path:
    source = directory / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(directory), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = directory.glob("skillq-*.whl")
    return wheel


def test_an_application_with_its_own_storage_and_api_packages(tmp_path: Path) -> None:
    """A fresh venv with only the wheel of skillq (dependencies borrowed from this venv,
    not skillq itself), run from an application folder whose own `storage/` and `api/`
    packages would shadow top-level names of ours."""
    wheel = build_wheel(tmp_path / "dist")
    python = fresh_venv(tmp_path, install=wheel, with_skillq_checkout=False)
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    app = tmp_path / "myapp"
    for package in ("storage", "api", "actors", "brokers"):
        (app / package).mkdir(parents=True)
        (app / package / "__init__.py").write_text("raise ImportError('the application\\'s own')\n")
    settings = app / "settings.toml"
    settings.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    env = {"PATH": "/usr/bin:/bin", "SKILLQ_SETTINGS": str(settings), "HOME": str(tmp_path)}

    where = subprocess.run(
        [python, "-c", "import skillq.actors, skillq.storage; print(skillq.storage.__file__)"],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(site)), where.stdout

    listed = subprocess.run(
        [python, "-m", "skillq", "jobs", "list"],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr

    # A folder named `skillq` too, as a clone's root has (its source `skillq/` is only part
    # of the package): the processes `skillq worker` starts must still import the installed
    # one (they run safe-path, and dramatiq's `--path` points at the install).
    (app / "skillq").mkdir()
    (app / "skillq" / "__init__.py").write_text("raise ImportError('a source folder')\n")
    worker = subprocess.Popen(
        # As the `skillq` script starts (`-P`: not from the working directory); the wheel
        # went in with `pip --target`, which leaves the script out.
        [python, "-P", "-m", "skillq", "worker", "--processes", "1", "--threads", "1"],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        assert worker.stdout is not None
        for line in worker.stdout:
            lines.append(line)
            if "Worker process is ready" in line or len(lines) > 200:
                break
        assert any("Worker process is ready" in line for line in lines), "".join(lines)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


def test_the_python_client_loads_no_server_parts() -> None:
    loaded = loaded_after("import skillq.client")
    heavy = {m for m in loaded if under(m, "starlette", "dramatiq", "peewee", "mcp", "skillq.api")}
    assert heavy == set()
    assert "httpx" in loaded
