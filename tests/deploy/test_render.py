"""Every kustomization builds, and every object in it is valid: Kubernetes kinds against the
API schemas in strict mode (kubernetes-validate), custom resources against written checks."""

from __future__ import annotations

try:
    import kubernetes_validate
except ImportError as exc:  # a failure, not a skip: the deploy checks need it
    raise ImportError("kubernetes-validate is not installed: pip install kubernetes-validate") from exc
import pytest

from tests.deploy.custom_resources import CUSTOM_CHECKS
from tests.deploy.manifests import IMAGE_PLACEHOLDER, Rendered, containers, rendered_secrets

#: The oldest Kubernetes these manifests are for (PodDisruptionBudget.unhealthyPodEvictionPolicy is
#: beta from 1.27; 1.29 is the oldest minor still commonly supported), and the newest the validator knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
#: The Secret prod expects the operator to create; its keys are those of the base placeholder.
SECRET = "jobrelay-secrets"


def secret_keys(rendered: Rendered, rendered_all: dict[str, Rendered]) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for ref in rendered_secrets(rendered):
        name, key = ref.split("/", 1)
        keys.setdefault(name, set()).add(key)
    if SECRET not in keys:  # prod: created outside kustomize, with the documented (base) keys
        keys[SECRET] = {ref.split("/", 1)[1] for ref in rendered_secrets(rendered_all["base"])}
    return keys


def test_builds_without_duplicates(rendered: Rendered) -> None:
    assert rendered.objects, f"{rendered.name} renders nothing"
    ids = [
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in rendered.objects
    ]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"{rendered.name}: objects rendered twice: {duplicates}"


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_objects_are_valid(rendered: Rendered, rendered_all: dict[str, Rendered], k8s_version: str) -> None:
    """kubernetes-validate --strict for every object; custom resources need a written check instead."""
    keys = secret_keys(rendered, rendered_all)
    failures = []
    for obj in rendered.objects:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            check = CUSTOM_CHECKS.get((obj["apiVersion"], obj["kind"]))
            if check is None:
                failures.append(f"{what}: no schema for {obj['apiVersion']} and no check in custom_resources.py")
                continue
            failures += [f"{what}: {error}" for error in check(obj, rendered, keys, k8s_version)]
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            failures.append(f"{what}: {path}: {exc.message}")
    assert not failures, f"{rendered.name} on Kubernetes {k8s_version}:\n" + "\n".join(failures)


def test_custom_resources_are_checked(rendered: Rendered) -> None:
    """Every custom kind in the output has a structural check (the validator only warns on them)."""
    builtin_groups = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1")
    custom = {(o["apiVersion"], o["kind"]) for o in rendered.objects if o["apiVersion"] not in builtin_groups}
    assert custom <= set(CUSTOM_CHECKS), f"unchecked custom kinds: {sorted(custom - set(CUSTOM_CHECKS))}"
    assert {k for _, k in custom} >= {"ScaledObject", "TriggerAuthentication", "PodMonitor"}


def test_base_is_namespace_agnostic(rendered_all: dict[str, Rendered]) -> None:
    base = rendered_all["base"]
    assert not base.of_kind("Namespace")
    pinned = [f"{o['kind']} {o['metadata']['name']}" for o in base.objects if "namespace" in o["metadata"]]
    assert not pinned, f"base objects with a namespace: {pinned}"


def test_overlays_own_their_namespace(overlay: Rendered) -> None:
    namespaces = overlay.of_kind("Namespace")
    assert len(namespaces) == 1, f"{overlay.name}: expected one Namespace"
    # Pod Security Admission enforces what the manifests promise.
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    elsewhere = [
        f"{o['kind']} {o['metadata']['name']}"
        for o in overlay.objects
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != overlay.namespace
    ]
    assert not elsewhere, f"{overlay.name}: objects outside {overlay.namespace}: {elsewhere}"


def test_images_are_pinned(overlay: Rendered) -> None:
    """A tag on every image (never latest); prod pulls jobrelay from a registry, not the base placeholder."""
    jobrelay = [id(d) for d in overlay.jobrelay_deployments()]
    for workload in overlay.workloads():
        for container in containers(workload):
            image = container["image"]
            repository, _, last = image.rpartition("/")
            name, _, tag = last.partition(":")
            where = f"{overlay.name}: {workload['metadata']['name']} runs {image!r}"
            assert tag and tag != "latest", f"{where}: pin a tag"
            if overlay.name == "prod" and id(workload) in jobrelay:
                assert repository and name == IMAGE_PLACEHOLDER, f"{where}: from a registry"


def test_prod_never_ships_the_secret(rendered_all: dict[str, Rendered]) -> None:
    """`kubectl apply -k overlays/prod` must not overwrite the operator's Secret with placeholders."""
    assert not rendered_all["prod"].of_kind("Secret")
    referenced = {
        var["valueFrom"]["secretKeyRef"]["name"]
        for d in rendered_all["prod"].jobrelay_deployments()
        for c in containers(d)
        for var in c.get("env", [])
        if "valueFrom" in var
    }
    assert referenced == {SECRET}
