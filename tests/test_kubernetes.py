"""The Kubernetes manifests (deploy/kubernetes/): valid against the Kubernetes schemas, and
consistent with what the code serves (commands, ports, probe paths, settings).

No cluster runs here: `kubernetes-validate` checks each resource offline against the
OpenAPI schemas of a Kubernetes release, strictly (unknown fields are errors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

from skillq.api.probes import routes as probe_routes
from skillq.cli.main import app as cli_app
from skillq.settings import load_settings
from tests.support import ROOT, bound_store
from tests.test_store import new_job

MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"
#: What the Secret provides, so the ConfigMap's settings load as a container would load them.
SECRET_ENVIRONMENT = {
    "SKILLQ_BROKER": "rabbitmq",
    "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "DATABASE_URL": "postgresql://skillq@127.0.0.1:5432/skillq",
    "JWT_SECRET": "x" * 40,
}


def resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        found += [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [r for r in resources() if r["kind"] == kind]


def containers() -> list[dict[str, Any]]:
    return [c for d in of_kind("Deployment") for c in d["spec"]["template"]["spec"]["containers"]]


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize(
    "resource", resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_each_resource_is_valid_kubernetes(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_broken_resource() -> None:
    (api,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "skillq-api"]
    api["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES_VERSION, strict=True)


def test_every_command_parses_with_the_skillq_cli() -> None:
    command = typer.main.get_command(cli_app)
    for container in containers():
        program, *args = container["command"]
        assert program == "skillq"
        # Resolves the sub-command and parses its options, as the real start would (a
        # misspelt option or a missing value raises click's usage error here).
        name, *rest = args
        with command.make_context("skillq", [name, "--help"], resilient_parsing=True) as top:
            sub = command.get_command(top, name)
            assert sub is not None, f"no command {name!r}"
            sub.make_context(name, rest, parent=top)


def test_one_worker_deployment_per_queue_of_the_actors() -> None:
    from skillq import actors

    queues = {actor.queue_name for actor in actors.broker.actors.values()}
    served = [
        c["command"][c["command"].index("--queue") + 1]
        for c in containers()
        if "--queue" in c["command"]
    ]
    assert sorted(served) == sorted(queues)


def test_probes_and_ports_match_what_the_api_serves(tmp_path: Path, monkeypatch) -> None:
    paths = {route.path for route in probe_routes}
    settings = loaded_settings(tmp_path, monkeypatch)
    (api,) = [c for c in containers() if c["command"] == ["skillq", "api"]]
    (port,) = api["ports"]
    assert port["containerPort"] == settings.server.port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert api[probe]["httpGet"]["path"] in paths
        assert api[probe]["httpGet"]["port"] == port["name"]
    (service,) = of_kind("Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"] == api_labels()


def api_labels() -> dict[str, str]:
    (api,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "skillq-api"]
    return api["spec"]["template"]["metadata"]["labels"]


def loaded_settings(tmp_path: Path, monkeypatch):
    (config,) = of_kind("ConfigMap")
    path = tmp_path / "settings.toml"
    path.write_text(config["data"]["settings.toml"])
    for name, value in SECRET_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    return load_settings(path)


def test_settings_load_and_fit_several_api_replicas(tmp_path: Path, monkeypatch) -> None:
    settings = loaded_settings(tmp_path, monkeypatch)
    assert settings.server.mode == "remote"
    assert settings.storage.backend == "postgres"
    assert settings.mcp.stateless, "several API replicas need MCP's stateless mode"
    mounted = {m["mountPath"] for c in containers() for m in c.get("volumeMounts", [])}
    assert str(settings.server.data_dir) in mounted
    secret_keys = set(of_kind("Secret")[0]["stringData"])
    assert secret_keys == set(SECRET_ENVIRONMENT)


def test_exactly_one_scheduler_even_during_a_rollout() -> None:
    (scheduler,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "skillq-scheduler"]
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"]["type"] == "Recreate"


def test_the_autoscaler_targets_a_worker_deployment_and_a_metric_we_export(
    tmp_path: Path,
) -> None:
    from skillq.api.metrics import Metrics

    (hpa,) = of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]["name"]
    (worker,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == target]
    queue = worker["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    assert metric["selector"]["matchLabels"] == {"queue": queue, "state": "pending"}
    with bound_store("sqlite", tmp_path):
        new_job(queue=queue)
        exported = Metrics().exposition().decode()
    labels = {"queue": queue, "state": "pending"}
    sample = [
        line
        for line in exported.splitlines()
        if line.startswith(metric["name"] + "{")
        and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]
    assert sample and sample[0].endswith(" 1.0"), exported
