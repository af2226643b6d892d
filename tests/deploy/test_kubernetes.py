"""The Kubernetes manifests (deploy/kubernetes: a Kustomize base and two overlays), checked
offline: each overlay is assembled as Kustomize would (its resources, then its strategic-merge
patches), and every resulting object validates strictly against the Kubernetes 1.30 schemas
(`kubernetes-validate`, schemas packaged with it). Then what the gateway needs of them: probes
on /readyz and /healthz, time to stop gracefully, SQLite with one replica on a volume,
PostgreSQL with several and a disruption budget, the ServiceMonitor finding the metrics."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import ShutdownConfig, load_config
from tests.support.processes import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
VERSION = "1.30.0"
OVERLAYS = ("sqlite", "postgresql")
#: What the configuration's secret references need to load (stand-ins).
STUB_ENVIRONMENT = {
    "GATEWAY_DEMO_API_KEY": "k" * 32,
    "NUONUO_APP_KEY": "app-key",
    "NUONUO_APP_SECRET": "app-secret",
    "NUONUO_USER_TAX": "91110108MA01ABCD2X",
}
#: Custom resources: no schema in the Kubernetes release; checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge as Kustomize does it for these patches: mappings merge, lists of named
    items merge by `name`, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    ):
        merged_list = [copy.deepcopy(item) for item in base]
        names = [item["name"] for item in merged_list]
        for item in patch:
            if item["name"] in names:
                index = names.index(item["name"])
                merged_list[index] = merge(merged_list[index], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def assemble(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k directory` would apply (resources and patches only: what
    these kustomizations use)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "patches", "configMapGenerator"}
    assert set(kustomization) <= known, kustomization
    objects: list[dict[str, Any]] = []
    for generator in kustomization.get("configMapGenerator", []):
        assert generator["options"]["disableNameSuffixHash"] is True  # the name is referenced
        data = {name: (directory / name).read_text() for name in generator["files"]}
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        assert path.exists(), f"{directory}: no {resource}"
        objects += assemble(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load((directory / entry["path"]).read_text())
        targets = [
            index
            for index, obj in enumerate(objects)
            if (obj["kind"], obj["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert 1 == len(targets), f"{entry['path']} patches no object (or several)"
        objects[targets[0]] = merge(objects[targets[0]], patch)
    return objects


def overlay(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (obj["kind"], obj["metadata"]["name"]): obj
        for obj in assemble(KUBERNETES / "overlays" / name)
    }


def container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    [gateway] = objects[("Deployment", "invoice-gateway")]["spec"]["template"]["spec"]["containers"]
    return dict(gateway)


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_object_validates_strictly(name: str) -> None:
    for (kind, _), obj in overlay(name).items():
        if kind in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, VERSION, strict=True)


def test_validation_can_fail() -> None:
    """A misspelt field of a Deployment is refused (strict)."""
    deployment = copy.deepcopy(overlay("sqlite")[("Deployment", "invoice-gateway")])
    deployment["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSION, strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_and_a_stop_long_enough_to_finish_in_flight_work(name: str) -> None:
    objects = overlay(name)
    gateway = container(objects)
    assert "/readyz" == gateway["readinessProbe"]["httpGet"]["path"]
    assert "/healthz" == gateway["livenessProbe"]["httpGet"]["path"]
    pod = objects[("Deployment", "invoice-gateway")]["spec"]["template"]["spec"]
    wait = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > wait + ShutdownConfig().grace_period
    assert pod["securityContext"]["runAsNonRoot"] is True
    configured = yaml.safe_load(objects[("ConfigMap", "invoice-gateway")]["data"]["gateway.yaml"])
    assert "0s" == configured["shutdown"]["drain_delay"]  # the preStop hook waits instead


def test_the_configuration_is_the_default_profile_with_the_admin_listener_on_the_pod() -> None:
    """base/gateway.yaml is valid and differs from config/gateway.yaml only where a pod needs
    it: the admin listener on the pod's network (for the ServiceMonitor) and JSON logs."""
    mine = KUBERNETES / "base" / "gateway.yaml"
    config = load_config(mine, {**STUB_ENVIRONMENT, "GATEWAY_STORE_URL": "sqlite:////tmp/x.db"})
    assert ("0.0.0.0:8081", "json") == (config.admin.listen, config.log.format)
    kubernetes = yaml.safe_load(mine.read_text())
    default = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    for document in (kubernetes, default):
        document["admin"].pop("listen")
        document["log"].pop("format")
    assert default == kubernetes


def test_sqlite_runs_one_replica_with_its_store_on_a_volume() -> None:
    objects = overlay("sqlite")
    deployment = objects[("Deployment", "invoice-gateway")]["spec"]
    assert (1, "Recreate") == (deployment["replicas"], deployment["strategy"]["type"])
    gateway = container(objects)
    url = next(e["value"] for e in gateway["env"] if e["name"] == "GATEWAY_STORE_URL")
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "data")
    assert url.startswith(f"sqlite:///{mount['mountPath']}/")
    [claim] = [v for v in deployment["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert ("PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"]) in objects


def test_postgresql_runs_several_replicas_that_a_drain_leaves_serving() -> None:
    objects = overlay("postgresql")
    deployment = objects[("Deployment", "invoice-gateway")]
    assert deployment["spec"]["replicas"] >= 2
    assert 0 == deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"]
    budget = objects[("PodDisruptionBudget", "invoice-gateway")]["spec"]
    assert 1 <= budget["minAvailable"] < deployment["spec"]["replicas"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    secret = yaml.safe_load((KUBERNETES / "base" / "secret.example.yaml").read_text())
    assert secret["stringData"]["GATEWAY_STORE_URL"].startswith("postgresql://")


def test_services_select_the_pods_and_the_service_monitor_the_metrics() -> None:
    objects = overlay("postgresql")
    pod_labels = objects[("Deployment", "invoice-gateway")]["spec"]["template"]["metadata"][
        "labels"
    ]
    for name in ("invoice-gateway", "invoice-gateway-metrics"):
        assert objects[("Service", name)]["spec"]["selector"].items() <= pod_labels.items()
    monitor = objects[("ServiceMonitor", "invoice-gateway")]
    assert "monitoring.coreos.com/v1" == monitor["apiVersion"]
    metrics = objects[("Service", "invoice-gateway-metrics")]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= metrics["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in metrics["spec"]["ports"]}
    clients = objects[("Service", "invoice-gateway")]["spec"]["ports"]
    assert [8080] == [port["port"] for port in clients]  # the admin listener stays off it
