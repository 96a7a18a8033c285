"""The worker manifests follow the task catalog: one worker-<queue> Deployment and ScaledObject per
queue, nothing for queues that are gone, and shutdown grace periods that cover each queue's slowest task."""

from __future__ import annotations

import argparse
import math

from services.cli import build_parser
from shared.broker.bands import BANDS, band_key
from shared.broker.publishing import NAMESPACE as DRAMATIQ_NAMESPACE
from shared.catalog import Catalog
from tests.deploy.manifests import Obj, Rendered, labels, pod_spec

#: After --grace the supervisor waits 5 s more before it SIGKILLs a child, then puts whatever the child
#: still held back on its queue (Redis round trips, retried); the pod needs that time before SIGKILL.
SHUTDOWN_MARGIN_S = 30.0
#: Added to a deployment directory's name: worker-<queue>.
WORKER_PREFIX = "worker-"


def worker_args(deployment: Obj) -> argparse.Namespace:
    """The container's arguments parsed by the real `jobrelay` parser."""
    container = pod_spec(deployment)["containers"][0]
    assert container["command"] == ["jobrelay"], f"{deployment['metadata']['name']}: command {container['command']}"
    try:
        args = build_parser().parse_args(container["args"])
    except SystemExit:
        raise AssertionError(f"{deployment['metadata']['name']}: jobrelay refuses {container['args']}") from None
    assert args.command == "worker", f"{deployment['metadata']['name']}: not `jobrelay worker` ({container['args']})"
    return args


def served_queues(rendered: Rendered) -> dict[str, Obj]:
    """queue -> its worker Deployment; each worker serves exactly one queue, named after it."""
    served: dict[str, Obj] = {}
    for deployment in rendered.workers():
        name = deployment["metadata"]["name"]
        queues = worker_args(deployment).queues
        assert queues is not None, f"{rendered.name}: {name} has no --queues (it would serve every queue)"
        assert len(queues) == 1, f"{rendered.name}: {name} serves {queues}; one Deployment per queue"
        queue = queues[0]
        assert name == WORKER_PREFIX + queue, f"{rendered.name}: the worker of queue {queue!r} is named {name}"
        assert labels(deployment).get("jobrelay.dev/queue") == queue, f"{name}: label jobrelay.dev/queue"
        assert queue not in served, f"{rendered.name}: queue {queue!r} has two worker Deployments"
        served[queue] = deployment
    return served


def test_every_catalog_queue_has_a_worker(rendered: Rendered, task_catalog: Catalog) -> None:
    catalog_queues = set(task_catalog.queues())
    served = set(served_queues(rendered))
    missing = sorted(catalog_queues - served)
    assert not missing, (
        f"{rendered.name}: catalog queue(s) {missing} have no worker Deployment. Copy "
        "deploy/k8s/base/workers/default/ to workers/<queue>/, adapt it and list it in base/kustomization.yaml."
    )
    stale = sorted(served - catalog_queues)
    assert not stale, (
        f"{rendered.name}: worker Deployment(s) for {stale}, which no catalog task uses any more "
        f"(catalog queues: {sorted(catalog_queues)}). Remove deploy/k8s/base/workers/<queue>/."
    )


def test_every_worker_has_a_scaled_object(rendered: Rendered, task_catalog: Catalog) -> None:
    by_target: dict[str, list[Obj]] = {}
    for scaled in rendered.of_kind("ScaledObject"):
        by_target.setdefault(scaled["spec"]["scaleTargetRef"]["name"], []).append(scaled)
    for queue, deployment in served_queues(rendered).items():
        name = deployment["metadata"]["name"]
        objects = by_target.get(name, [])
        assert len(objects) == 1, f"{rendered.name}: {name} needs exactly one ScaledObject, has {len(objects)}"
        spec = objects[0]["spec"]
        triggers = {t.get("name"): t["metadata"].get("listName") for t in spec["triggers"] if t["type"] == "redis"}
        # Every priority band's list (shared/broker/bands.py), summed: every waiting message counts.
        bands = {f"p{band}": band_key(f"{DRAMATIQ_NAMESPACE}:{queue}", band) for band in range(BANDS)}
        assert triggers == bands, f"{rendered.name}: {name} scales on {triggers}"
        formula = spec.get("advanced", {}).get("scalingModifiers", {}).get("formula", "")
        assert sorted(term.strip() for term in formula.split("+")) == sorted(bands), f"{name}: formula {formula!r}"
    strays = sorted(set(by_target) - {d["metadata"]["name"] for d in rendered.workers()})
    assert not strays, f"{rendered.name}: ScaledObjects for no worker: {strays}"


def queue_time_limits(catalog: Catalog, queue: str) -> dict[str, float]:
    limits = {}
    for spec in catalog.specs():
        if spec.queue != queue:
            continue
        assert spec.time_limit_s is not None, (
            f"task {spec.name} (queue {queue}) has no time limit: no grace period can cover it; give it one"
        )
        limits[spec.name] = spec.time_limit_s
    return limits


def test_grace_periods_cover_the_slowest_task(rendered: Rendered, task_catalog: Catalog) -> None:
    """--grace lets a job started just before SIGTERM run to its hard time limit; the pod outlives --grace."""
    from services.worker.limits import hard_limit_s

    for queue, deployment in served_queues(rendered).items():
        name = deployment["metadata"]["name"]
        limits = queue_time_limits(task_catalog, queue)
        assert limits, f"{rendered.name}: no task on queue {queue}"
        slowest = max(limits, key=lambda task: limits[task])
        hard = hard_limit_s(limits[slowest])
        grace = worker_args(deployment).grace
        period = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace >= hard, (
            f"{rendered.name}: {name} --grace {grace:g} is below the hard time limit of {slowest} "
            f"({limits[slowest]:g} s soft, {hard:g} s hard): a rollout would cut such a job short"
        )
        assert period > limits[slowest], f"{name}: terminationGracePeriodSeconds {period} <= {limits[slowest]:g}"
        assert period >= math.ceil(grace + SHUTDOWN_MARGIN_S), (
            f"{rendered.name}: {name} terminationGracePeriodSeconds {period} < --grace {grace:g} + "
            f"{SHUTDOWN_MARGIN_S:g} s: Kubernetes would SIGKILL the supervisor while it still drains"
        )
