"""Fixtures: every kustomization under deploy/k8s rendered once per session, and the task catalog."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.catalog import Catalog
from tests.deploy.manifests import OVERLAYS, TREES, Rendered, kubectl, render


@pytest.fixture(scope="session")
def kubectl_path() -> str:
    try:
        return kubectl()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def rendered_all(kubectl_path: str) -> dict[str, Rendered]:
    """base, dev and prod, built in parallel."""
    with ThreadPoolExecutor(max_workers=len(TREES)) as pool:
        futures = {name: pool.submit(render, path, kubectl_path) for name, path in TREES.items()}
        try:
            built = {name: future.result() for name, future in futures.items()}
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
    result = {}
    for name, objects in built.items():
        namespaces = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
        result[name] = Rendered(name=name, objects=objects, namespace=namespaces[0] if namespaces else None)
    return result


@pytest.fixture(params=list(TREES))
def rendered(request: pytest.FixtureRequest, rendered_all: dict[str, Rendered]) -> Rendered:
    """Each of base, dev, prod."""
    return rendered_all[request.param]


@pytest.fixture(params=list(OVERLAYS))
def overlay(request: pytest.FixtureRequest, rendered_all: dict[str, Rendered]) -> Rendered:
    """Each overlay (what gets applied to a cluster)."""
    return rendered_all[request.param]


@pytest.fixture(scope="session")
def task_catalog(rendered_all: dict[str, Rendered]) -> Catalog:
    """The catalog the workers load: built-in tasks plus the TASK_MODULES of the deployed config, if any.

    NOTE: loaded in a fresh interpreter: in this one, other tests import task modules of their own
    (the catalog is process-global), and those must not count as deployed queues.
    """
    import json
    import subprocess
    import sys

    from shared.catalog import TaskDefinition, TaskSpec

    configured = {name: tree.config().get("TASK_MODULES", "") for name, tree in rendered_all.items()}
    if len(set(configured.values())) > 1:
        pytest.fail(f"TASK_MODULES differs between kustomizations: {configured}", pytrace=False)
    raw = next(iter(configured.values()))
    script = (
        "import json, sys\n"
        "from services.worker.tasks import load_task_modules\n"
        "from shared.settings import Settings\n"
        "catalog = load_task_modules(Settings.from_env({'TASK_MODULES': sys.argv[1]}).task_modules)\n"
        "print(json.dumps([spec.as_dict() for spec in catalog.specs()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, raw], capture_output=True, text=True, check=True).stdout
    catalog = Catalog()
    for data in json.loads(out):
        spec = TaskSpec.from_dict(data)
        catalog._tasks[spec.name] = TaskDefinition(spec=spec, fn=lambda: None)
    return catalog
