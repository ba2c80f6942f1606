"""deploy/k8s: valid against the Kubernetes schema, and wired to the pipeline's config and ports."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import tomllib
import yaml

from emopipe import config, curve, topology

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
VERSION = "1.30.0"  # the schema the manifests are checked against
METRICS = {stage.name: stage.metrics_port for stage in topology.STAGES}


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text())]


def deployments() -> dict[str, dict[str, Any]]:
    found = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "Deployment"}
    return {name.removeprefix("emopipe-"): d for name, d in found.items()}


def shared_config() -> str:
    (cm,) = [d for d in documents() if d["kind"] == "ConfigMap"]
    return str(cm["data"]["emopipe.toml"])


@pytest.mark.parametrize("index", range(len(documents())))
def test_every_manifest_is_valid_against_the_kubernetes_schema(index: int) -> None:
    kubernetes_validate.validate(documents()[index], VERSION, strict=True)


def test_the_validator_refuses_a_broken_manifest() -> None:
    broken = copy.deepcopy(deployments()["detect"])
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)
    unknown = copy.deepcopy(deployments()["detect"])
    unknown["spec"]["template"]["spec"]["containers"][0]["liveness"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, VERSION, strict=True)


def test_a_deployment_per_stage_of_the_topology_with_replicas_for_the_pools() -> None:
    replicas = {stage: d["spec"]["replicas"] for stage, d in deployments().items()}
    assert replicas == {stage.name: 2 if stage.pooled else 1 for stage in topology.STAGES}


def test_each_container_runs_its_stage_probes_and_annotates_its_metrics_port() -> None:
    for stage, deployment in deployments().items():
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["command"][0] == f"emopipe-{stage}"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == METRICS[stage]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (stage, probe)
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(METRICS[stage])


def test_every_pod_mounts_the_curve_keys_and_only_capture_the_servers_secrets_and_the_cameras() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    secrets = {s["name"]: [Path(f).name for f in s["files"]] for s in kustomization["secretGenerator"]}
    for stage, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        keys = volumes[mounts["/etc/emopipe/keys"]]["secret"]["secretName"]
        files = secrets[keys]
        servers = {f"{link}.key_secret" for link in curve.LINKS}
        if stage == "capture":
            assert servers <= set(files) and "client.key_secret" not in files
            assert "/etc/emopipe/cameras" in mounts
        else:
            assert not servers & set(files) and "client.key_secret" in files
            assert "/etc/emopipe/cameras" not in mounts  # a worker needs no camera URI or credential


def test_the_config_names_the_capture_service_ports_and_capture_binds_them() -> None:
    endpoints = tomllib.loads(shared_config())["endpoints"]
    (service,) = [d for d in documents() if d["kind"] == "Service" and d["metadata"]["name"] == "emopipe-capture"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    binds = {
        e["name"]: e["value"] for e in deployments()["capture"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for link in curve.LINKS:
        url = urlparse(endpoints[link])
        assert (url.hostname, url.port) == ("emopipe-capture", ports[link])
        assert binds[f"EMOPIPE__ENDPOINTS__{link.upper()}"] == f"tcp://0.0.0.0:{ports[link]}"


def test_the_shipped_config_loads_live_for_the_workers_and_with_cameras_for_capture(tmp_path: Path) -> None:
    shared = tmp_path / "emopipe.toml"
    shared.write_text(shared_config())
    worker = config.load(shared, environ={})
    assert worker.pipeline.mode == "live" and not worker.lossless and worker.sources == []
    assert worker.curve.keys == "/etc/emopipe/keys" and worker.pipeline.metrics_host == "0.0.0.0"
    capture = config.load([shared, K8S / "cameras.toml"], environ={})
    assert capture.cameras == ["cam0"] and not capture.lossless
    command = deployments()["capture"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-1] == "/etc/emopipe/cameras/cameras.toml"


def test_every_pod_runs_unprivileged_on_a_read_only_root() -> None:
    for stage, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, stage
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
