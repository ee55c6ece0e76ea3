"""CLI commands of the skill engine: `skills list|show|examples`, `index`, `search`, `run`,
`enhance`.

`index`, `run` and `enhance` submit a job through the jobs coordinator (like the REST API)
and, by default, wait for it with a progress bar; `--background` prints the job id and how
to follow it instead. `search` and `skills ...` read the files directly: no job involved.

The CLI is the operator's (it reads the settings and the store directly), so it acts as an
admin: its jobs are owned by `local`, and `index`/`search` take `--owner` to reach another
owner's collection. Errors are raised and end the command with `skillq.cli.exit_status`'s
status.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from skillq.cli.exit_status import JOB_NOT_COMPLETED
from skillq.errors import InvalidRequest, NotFound

skills_app = typer.Typer(help="The skills found under skills.paths.", no_args_is_help=True)

_OWNER_HELP = "Whose collection (default: local, the owner of the CLI's jobs)."
_TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ".markdown"}


def _settings() -> Any:
    """Just the settings: listing skills or searching needs no broker or job store."""
    from skillq.settings import load_settings

    return load_settings()


def _submit(job_type: str, params: dict[str, Any], background: bool) -> None:
    """Submits through the coordinator; waits with a progress bar unless `background`."""
    from skillq import actors
    from skillq.jobs.coordinator import JobCoordinator
    from skillq.jobs.fields import job_to_dict

    coordinator = JobCoordinator(actors.broker, actors.settings)
    job = coordinator.submit_job({"type": job_type, "params": params}, any_owner=True).job
    if background:
        typer.echo(job.id)
        typer.echo(f"follow it with: skillq jobs show {job.id}", err=True)
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(job_type, total=1.0)
        while True:
            job = coordinator.get_job(job.id)
            bar.update(task, completed=job.progress or 0.0, description=job.message or job.state)
            if job.job_state.is_terminal:
                break
            time.sleep(0.2)
    if job.state == "completed":
        typer.echo(json.dumps(job.result, indent=2))
        return
    typer.echo(json.dumps(job_to_dict(job), indent=2))
    raise typer.Exit(JOB_NOT_COMPLETED)


def _json_option(raw: str, name: str) -> Any:
    from skillq.json_values import parse_json

    return parse_json(raw, name)


@skills_app.command("list")
def skills_list() -> None:
    """List the skills and their tools."""
    from rich.console import Console
    from rich.table import Table

    from skillq.engine.skills import SkillLibrary

    skills, problems = SkillLibrary(_settings().skills.paths).all()
    table = Table("skill", "tool", "kind", "timeout", "description")
    for skill in skills:
        for tool in skill.tools.values():
            timeout = f"{tool.timeout_secs:g} s"
            table.add_row(skill.name, tool.name, tool.kind, timeout, tool.description)
    console = Console()
    console.print(table)
    for problem in problems:
        typer.echo(f"skipped: {problem}", err=True)


@skills_app.command("show")
def skills_show(name: Annotated[str, typer.Argument(help="Skill name.")]) -> None:
    """Show one skill, its tools and their input schemas, as JSON."""
    from skillq.engine.skills import SkillLibrary

    skill = SkillLibrary(_settings().skills.paths).find(name)
    typer.echo(json.dumps(skill.to_dict(), indent=2))


@skills_app.command("examples")
def skills_examples(name: Annotated[str, typer.Argument(help="Skill name.")]) -> None:
    """Show the stored example inputs of a skill (made by `skillq enhance NAME`)."""
    from skillq.engine.examples import ExampleStore

    stored = ExampleStore(_settings().skills.examples_dir).load(name)
    if not stored.get("tools"):
        raise NotFound(f"no examples for {name!r} yet; make some with: skillq enhance {name}")
    typer.echo(json.dumps(stored, indent=2))


def read_documents(source: Path) -> list[dict[str, Any]]:
    """Documents from a JSON file (an array, or {"documents": [...]}), a JSON Lines file,
    or a folder of text files (id = path inside the folder)."""
    if source.is_dir():
        return [
            {"id": str(path.relative_to(source)), "text": path.read_text(errors="replace")}
            for path in sorted(source.rglob("*"))
            if path.is_file() and path.suffix.lower() in _TEXT_SUFFIXES
        ]
    from skillq.json_values import parse_json

    try:
        text = source.read_text(encoding="utf-8")
        if source.suffix == ".jsonl":
            lines = enumerate(text.splitlines(), 1)
            name = source.name
            return [parse_json(line, f"{name} line {i}") for i, line in lines if line.strip()]
        parsed = parse_json(text, source.name)
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"cannot read documents from {source}: {error}") from None
    return parsed.get("documents", []) if isinstance(parsed, dict) else parsed


def index(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    source: Annotated[
        Path | None, typer.Argument(help="JSON / JSONL file of {id, text, metadata}, or a folder.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-index unchanged documents.")] = False,
    delete: Annotated[list[str] | None, typer.Option("--delete", help="Remove this id.")] = None,
    owner: Annotated[str | None, typer.Option(help=_OWNER_HELP)] = None,
    background: Annotated[bool, typer.Option(help="Print the job id, don't wait.")] = False,
) -> None:
    """Index documents into a search collection (an index_documents job)."""
    params: dict[str, Any] = {"collection": collection, "force_reindex": force}
    if owner is not None:
        params["owner"] = owner
    params["documents"] = read_documents(source) if source is not None else []
    if source is not None and not params["documents"]:
        suffixes = ", ".join(sorted(_TEXT_SUFFIXES))
        typer.echo(f"warning: no documents in {source} (folders: {suffixes} files)", err=True)
    params["delete_ids"] = delete or []
    _submit("index_documents", params, background)


def search(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    query: Annotated[str, typer.Argument(help="Search text.")],
    k: Annotated[int, typer.Option("-k", help="How many hits (1-100).")] = 10,
    owner: Annotated[str | None, typer.Option(help=_OWNER_HELP)] = None,
) -> None:
    """Search a collection now (no job): ranked hits with scores and metadata, as JSON."""
    from skillq.engine.collection_files import LEGACY_OWNER
    from skillq.engine.embeddings import embedder_from_settings
    from skillq.engine.search import Collections

    search_settings = _settings().search
    collections = Collections(search_settings.path, embedder_from_settings(search_settings))
    hits = collections.search(collection, query, k, owner=owner or LEGACY_OWNER)
    typer.echo(json.dumps([hit.__dict__ for hit in hits], indent=2))


def run(
    skill: Annotated[str, typer.Argument(help="Skill name.")],
    tool: Annotated[str, typer.Argument(help="Tool name.")],
    input: Annotated[str, typer.Option("--input", help="The tool's input, JSON.")] = "{}",
    timeout: Annotated[float | None, typer.Option(help="Timeout in seconds.")] = None,
    background: Annotated[bool, typer.Option(help="Print the job id, don't wait.")] = False,
) -> None:
    """Run a skill's tool in the sandbox (an execute_skill job)."""
    params: dict[str, Any] = {"skill": skill, "tool": tool, "input": _json_option(input, "--input")}
    if timeout is not None:
        params["timeout_secs"] = timeout
    _submit("execute_skill", params, background)


def enhance(
    skill: Annotated[str, typer.Argument(help="Skill name.")],
    tools: Annotated[list[str] | None, typer.Option("--tool", help="Only this tool.")] = None,
    per_tool: Annotated[int, typer.Option(help="Examples per tool.")] = 5,
    seed: Annotated[int, typer.Option(help="Same seed, same examples.")] = 0,
    background: Annotated[bool, typer.Option(help="Print the job id, don't wait.")] = False,
) -> None:
    """Generate example inputs for a skill's tools (a generate_examples job)."""
    params: dict[str, Any] = {"skill": skill, "examples_per_tool": per_tool, "seed": seed}
    if tools:
        params["tool_names"] = tools
    _submit("generate_examples", params, background)


def register(app: typer.Typer) -> None:
    """Adds these commands to the `skillq` app."""
    app.add_typer(skills_app, name="skills")
    for command in (index, search, run, enhance):
        app.command(command.__name__)(command)
