"""Rendering the Kustomize trees under deploy/k8s and reading what comes out.

The tests never skip: a missing tool is a failure that says what to install.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
#: Every kustomization that `kubectl apply -k` may be pointed at; base too, to
#: keep it namespace-agnostic and buildable on its own.
TREES = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
OVERLAYS = ("dev", "prod")
#: kustomize v5 (kubectl >= 1.27): `labels`, `patches` with label selectors.
MIN_KUSTOMIZE = (5, 0)
#: The uid of the image's user (deploy/Dockerfile) and of every jobrelay pod.
IMAGE_UID = 10001
#: The image name in base; overlays map it to a registry and tag with `images:`.
IMAGE_PLACEHOLDER = "jobrelay"

Obj = dict[str, Any]


def venv_bin(name: str) -> Path:
    """A console script next to the running interpreter (the project's .venv)."""
    return Path(sys.executable).parent / name


def kubectl() -> str:
    """The kubectl binary (``KUBECTL`` overrides PATH); fails with what to install when absent or too old."""
    path = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not path:
        raise RuntimeError(
            "kubectl not found on PATH (set KUBECTL to use another binary). Install kubectl >= 1.27, e.g. "
            "the Kubernetes project's `kubectl` package; Debian's `kubernetes-client` (1.20) bundles kustomize v2, "
            "too old."
        )
    if not Path(path).is_file():
        raise RuntimeError(f"kubectl {path!r} does not exist (KUBECTL)")
    out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"`{path} version --client` failed: {out.stderr.strip()}")
    raw = json.loads(out.stdout).get("kustomizeVersion", "")
    match = re.match(r"v?(\d+)\.(\d+)", raw)
    if not match or (int(match.group(1)), int(match.group(2))) < MIN_KUSTOMIZE:
        raise RuntimeError(
            f"{path} bundles kustomize {raw or 'unknown'}; deploy/k8s needs kustomize >= v5.0 (kubectl >= 1.27). "
            "Debian bookworm's `kubernetes-client` (kubectl 1.20, kustomize v2.0.3) cannot build it."
        )
    return path


def render(tree: Path, kubectl_path: str) -> list[Obj]:
    try:
        import yaml
    except ImportError as exc:
        raise RuntimeError("PyYAML is not installed: pip install pyyaml") from exc
    out = subprocess.run([kubectl_path, "kustomize", str(tree)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {tree.relative_to(REPO)} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@dataclass
class Rendered:
    """One built kustomization."""

    name: str
    objects: list[Obj]
    namespace: str | None = field(default=None)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert found, f"{self.name}: no {kind} {name!r}"
        return found[0]

    def find(self, kind: str, name: str) -> Obj | None:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found[0] if found else None

    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]

    def jobrelay_deployments(self) -> list[Obj]:
        """Deployments running the jobrelay image (api, scheduler, worker-<queue>)."""
        return [o for o in self.of_kind("Deployment") if labels(o).get("app.kubernetes.io/name") == "jobrelay"]

    def workers(self) -> list[Obj]:
        return [d for d in self.jobrelay_deployments() if labels(d).get("app.kubernetes.io/component") == "worker"]

    def config(self) -> dict[str, str]:
        """The data of the ConfigMap that the jobrelay containers load (the generated jobrelay-config)."""
        maps = [o for o in self.of_kind("ConfigMap") if o["metadata"]["name"].startswith("jobrelay-config")]
        assert len(maps) == 1, f"{self.name}: expected one jobrelay-config ConfigMap, got {len(maps)}"
        return {k: str(v) for k, v in maps[0].get("data", {}).items()}


def labels(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels") or {}


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def selector_matches(selector: Obj | None, pod: dict[str, str]) -> bool:
    """A LabelSelector against a label set; ``{}`` selects everything, None nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if pod.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in pod and pod[key] in values,
            "NotIn": key not in pod or pod[key] not in values,
            "Exists": key in pod,
            "DoesNotExist": key not in pod,
        }[op]
        if not ok:
            return False
    return True


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (``250m``, ``"1"``, ``384Mi``) as a number."""
    match = _QUANTITY.match(str(value))
    assert match, f"not a resource quantity: {value!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


def container_env(rendered: Rendered, container: Obj, secrets: dict[str, str]) -> dict[str, str]:
    """The environment a container starts with: envFrom ConfigMaps/Secrets, then env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(rendered.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        else:
            raise AssertionError(f"{container['name']}: envFrom {source} (secrets go in one by one, by key)")
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[f"{ref['name']}/{ref['key']}"]
    return env


def rendered_secrets(rendered: Rendered) -> dict[str, str]:
    """``name/key`` -> value of every Secret in the output (stringData, or base64 data)."""
    values: dict[str, str] = {}
    for secret in rendered.of_kind("Secret"):
        name = secret["metadata"]["name"]
        for key, raw in (secret.get("data") or {}).items():
            values[f"{name}/{key}"] = base64.b64decode(raw).decode()
        for key, raw in (secret.get("stringData") or {}).items():
            values[f"{name}/{key}"] = str(raw)
    return values
