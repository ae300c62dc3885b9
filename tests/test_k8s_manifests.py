"""The Kubernetes and KServe manifests (``deploy/k8s``, ``deploy/kserve``), validated offline: no cluster is
reachable here.

Each kustomization is rendered by kubectl's built-in kustomize (which needs no cluster) and every resource is
checked strictly against the Kubernetes 1.37 schemas of kubernetes-validate (an unknown field is an error).
The InferenceService, a custom resource, is checked against ``tests/schemas/kserve-inferenceservice-v1beta1.json``,
written from KServe 0.20's CRD and webhook, whose pod parts are the same Kubernetes definitions. Then what the
schemas cannot say: probes on the routes and port Clipwise serves, the repository mounted read-only, settings
variables that exist, the Service, autoscaler and disruption budget on their own Deployment's pods, a GPU for
the GPU variants.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from clipwise.service.app import create_app
from clipwise.service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S, KSERVE = ROOT / "deploy" / "k8s", ROOT / "deploy" / "kserve"
KSERVE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "kserve-inferenceservice-v1beta1.json"
KUBERNETES_VERSION = "1.37"
VARIANTS = ("cpu", "gpu")
GPU = "nvidia.com/gpu"

Manifest = dict[str, Any]


@cache
def rendered(kustomization: Path) -> tuple[Manifest, ...]:
    """The resources ``kubectl kustomize`` makes of a kustomization directory (offline)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (its built-in kustomize) renders the manifests: install it (Debian: kubernetes-client)"
    output = subprocess.run([kubectl, "kustomize", str(kustomization)], capture_output=True, text=True, check=True)
    return tuple(yaml.safe_load_all(output.stdout))


def one(manifests: tuple[Manifest, ...], kind: str) -> Manifest:
    (manifest,) = [manifest for manifest in manifests if manifest["kind"] == kind]
    return manifest


def repository_claim() -> Manifest:
    return yaml.safe_load((K8S / "repository.yaml").read_text())


@cache
def kserve_validator() -> jsonschema.Draft202012Validator:
    definitions = schema_contents(f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/_definitions.json", "")
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(json.loads(KSERVE_SCHEMA.read_text()), registry=registry)


def image_environment() -> dict[str, str]:
    """The ``CLIPWISE_*`` variables the Dockerfile sets in the image."""
    return dict(re.findall(r"(CLIPWISE_[A-Z_]+)=(\S+)", (ROOT / "Dockerfile").read_text()))


def pod_of(manifest: Manifest) -> Manifest:
    """The pod spec of a Deployment, or the predictor (a pod spec inline) of an InferenceService."""
    return manifest["spec"]["template"]["spec"] if manifest["kind"] == "Deployment" else manifest["spec"]["predictor"]


def served_resources(variant: str) -> list[Manifest]:
    return [one(rendered(K8S / variant), "Deployment"), one(rendered(KSERVE / variant), "InferenceService")]


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_kubernetes_resource_is_valid_for_kubernetes(variant: str) -> None:
    manifests = [*rendered(K8S / variant), repository_claim()]
    kinds = sorted(manifest["kind"] for manifest in manifests)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_inference_service_is_valid_for_kserve(variant: str) -> None:
    kserve_validator().validate(one(rendered(KSERVE / variant), "InferenceService"))


def test_the_schemas_refuse_misspelt_fields_and_what_kserve_refuses() -> None:
    deployment = one(rendered(K8S / "cpu"), "Deployment")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    service = one(rendered(KSERVE / "cpu"), "InferenceService")
    predictor = service["spec"]["predictor"]
    container = predictor["containers"][0]
    wrong_protocol = {**container, "env": [{"name": "PROTOCOL", "value": "v3"}]}
    refused = [
        {**predictor, "minReplica": 1},
        {**predictor, "containers": [{**container, "imagePolicy": "Always"}]},
        {**predictor, "scaleTarget": 150},
        {**predictor, "containers": [wrong_protocol]},
        {**predictor, "containers": [{**container, "env": [{"name": "PYTHONPATH", "value": "/x"}]}]},
    ]
    for wrong in refused:
        with pytest.raises(jsonschema.ValidationError):
            kserve_validator().validate({**service, "spec": {"predictor": wrong}})
    with pytest.raises(jsonschema.ValidationError):
        kserve_validator().validate({**service, "metadata": {"name": "Clipwise_1"}})


# ---------------------------------------------------------------- what the schemas cannot say


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pods_probe_clipwise_on_its_port_and_read_the_repository_read_only(variant: str) -> None:
    image = image_environment()
    routes = create_app(Settings()).openapi()["paths"]
    claim = repository_claim()
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    for manifest in served_resources(variant):
        pod = pod_of(manifest)
        container = pod["containers"][0]
        (port,) = container["ports"]
        assert port["containerPort"] == int(image["CLIPWISE_PORT"])
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert container[probe]["httpGet"]["path"] == path and path in routes
            assert container[probe]["httpGet"]["port"] in (port["containerPort"], port.get("name"))
        (mount,) = [
            mount for mount in container["volumeMounts"] if mount["mountPath"] == image["CLIPWISE_MODEL_REPOSITORY"]
        ]
        (volume,) = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
        assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pods_set_real_settings_watch_the_repository_and_size_torch_to_their_cpus(variant: str) -> None:
    kserve_variables = {"PROTOCOL"}  # read by KServe, not by Clipwise
    for manifest in served_resources(variant):
        container = pod_of(manifest)["containers"][0]
        env = {variable["name"]: variable["value"] for variable in container["env"]}
        settings = {name.removeprefix("CLIPWISE_").lower() for name in env if name not in kserve_variables}
        assert settings <= Settings.model_fields.keys()
        assert env["CLIPWISE_WATCH"] == "true"
        assert env["CLIPWISE_TORCH_THREADS"] == container["resources"]["requests"]["cpu"]
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        if manifest["kind"] == "InferenceService":
            assert env["PROTOCOL"] == "v2"  # KServe routes the Open Inference Protocol v2 to it


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_service_autoscaler_and_disruption_budget_cover_their_own_deployment(variant: str) -> None:
    manifests = rendered(K8S / variant)
    deployment, service = one(manifests, "Deployment"), one(manifests, "Service")
    autoscaler, budget = one(manifests, "HorizontalPodAutoscaler"), one(manifests, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (service["spec"]["selector"], budget["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    (port,) = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert budget["spec"]["minAvailable"] < autoscaler["spec"]["minReplicas"]
    other = one(rendered(K8S / next(v for v in VARIANTS if v != variant)), "Deployment")
    assert not service["spec"]["selector"].items() <= other["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_gpu_variants_run_the_gpu_image_with_a_gpu_each(variant: str) -> None:
    for manifest in served_resources(variant):
        pod = pod_of(manifest)
        container = pod["containers"][0]
        assert container["image"] == f"clipwise:{variant}"
        gpus = container["resources"]["limits"].get(GPU)
        assert gpus == (1 if variant == "gpu" else None)
        assert any(toleration["key"] == GPU for toleration in pod.get("tolerations", [])) == (variant == "gpu")
