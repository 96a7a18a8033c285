"""Safety properties of every workload: restricted security context, requests and limits, probes,
disruption budgets, disjoint selectors, autoscaler targets, network isolation, valid settings."""

from __future__ import annotations

import pytest

from shared.errors import SettingsError
from shared.settings import Settings
from tests.deploy.manifests import (
    IMAGE_UID,
    REPO,
    Obj,
    Rendered,
    container_env,
    containers,
    labels,
    pod_labels,
    pod_spec,
    quantity,
    rendered_secrets,
    selector_matches,
)

#: Values a real prod Secret could hold (prod renders no Secret; the operator creates it).
PROD_SECRET_SAMPLE = {
    "REDIS_URL": "rediss://:s3cret@redis.example.com:6380/0",
    "DATABASE_URL": "postgresql://jobrelay:s3cret@db.example.com:5432/jobrelay",
    "API_KEYS": "ops:0123456789abcdef:admin ci:fedcba9876543210:write",
    "KEDA_REDIS_ADDRESS": "redis.example.com:6380",
    "KEDA_REDIS_PASSWORD": "s3cret",
    "KEDA_REDIS_TLS": "enable",
}


def name(obj: Obj) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"


def component(deployment: Obj) -> str:
    return labels(deployment)["app.kubernetes.io/component"]


def test_pods_are_restricted(rendered: Rendered) -> None:
    """Pod Security Standard "restricted", plus a read-only root filesystem and no API token."""
    problems = []
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True:
            problems.append(f"{name(workload)}: pod runAsNonRoot")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name(workload)}: pod seccompProfile RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name(workload)}: automountServiceAccountToken false")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{name(workload)}: host namespaces")
        for container in containers(workload):
            where = f"{name(workload)}/{container['name']}"
            ctx = container.get("securityContext", {})
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation false")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem true")
            if ctx.get("capabilities", {}).get("drop") != ["ALL"] or ctx.get("capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities drop [ALL], add nothing")
            if ctx.get("privileged"):
                problems.append(f"{where}: privileged")
    for deployment in rendered.jobrelay_deployments():
        if pod_spec(deployment)["securityContext"].get("runAsUser") != IMAGE_UID:
            problems.append(f"{name(deployment)}: runAsUser {IMAGE_UID}, the image's user")
    assert not problems, f"{rendered.name}:\n" + "\n".join(problems)


def test_writable_paths_are_empty_dirs(rendered: Rendered) -> None:
    """Read-only root: /tmp and DATA_DIR are emptyDirs with a size limit, in every jobrelay pod."""
    data_dir = rendered.config()["DATA_DIR"]
    for deployment in rendered.jobrelay_deployments():
        volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
        for container in containers(deployment):
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            for path in ("/tmp", data_dir):
                assert path in mounts, f"{rendered.name}: {name(deployment)} does not mount {path}"
                volume = volumes[mounts[path]]
                assert "emptyDir" in volume, f"{name(deployment)}: {path} is not an emptyDir"
                assert volume["emptyDir"].get("sizeLimit"), f"{name(deployment)}: {path} emptyDir has no sizeLimit"


def test_resources_have_requests_and_limits(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in containers(workload):
            where = f"{rendered.name}: {name(workload)}/{container['name']}"
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request and limit, f"{where}: {resource} request and limit"
                assert quantity(request) <= quantity(limit), f"{where}: {resource} request above limit"


def test_probes(rendered: Rendered) -> None:
    expected = {
        "api": {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"},
        "scheduler": {"livenessProbe": "/metrics", "startupProbe": "/metrics"},
    }
    for deployment in rendered.jobrelay_deployments():
        container = pod_spec(deployment)["containers"][0]
        for probe in ("startupProbe", "livenessProbe"):
            assert probe in container, f"{rendered.name}: {name(deployment)} has no {probe}"
        for probe, path in expected.get(component(deployment), {}).items():
            assert container[probe]["httpGet"]["path"] == path, f"{name(deployment)} {probe}"
        if component(deployment) == "worker":
            assert "lifecycle" not in container, f"{name(deployment)}: no preStop hook, SIGTERM alone drains"
            assert container["livenessProbe"]["exec"]["command"][0] == "python"
        ports = {p["name"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            assert port is None or port in ports, f"{name(deployment)} {probe} on unknown port {port}"


def test_every_workload_has_one_disruption_budget(rendered: Rendered) -> None:
    budgets = rendered.of_kind("PodDisruptionBudget")
    for deployment in rendered.jobrelay_deployments():
        matching = [b for b in budgets if selector_matches(b["spec"]["selector"], pod_labels(deployment))]
        assert len(matching) == 1, f"{rendered.name}: {name(deployment)} is covered by {len(matching)} PDBs"
        budget = matching[0]["spec"]
        assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") not in (None, 0, "0%")
        assert budget.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", "crash-looping pods must not block drains"
    for budget in budgets:
        selected = [w for w in rendered.workloads() if selector_matches(budget["spec"]["selector"], pod_labels(w))]
        assert selected, f"{rendered.name}: {name(budget)} selects no pod"


def test_selectors_are_disjoint_and_own_their_pods(rendered: Rendered) -> None:
    workloads = rendered.workloads()
    for workload in workloads:
        selector = workload["spec"]["selector"]
        assert selector_matches(selector, pod_labels(workload)), f"{name(workload)} does not select its own pods"
        others = [o for o in workloads if o is not workload and selector_matches(selector, pod_labels(o))]
        assert not others, f"{rendered.name}: {name(workload)} also selects the pods of {[name(o) for o in others]}"


def test_autoscaling(rendered: Rendered) -> None:
    """api: an HPA; every worker: a ScaledObject; nothing twice; no replicas field fighting them."""
    targets: dict[str, list[str]] = {}
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        targets.setdefault(hpa["spec"]["scaleTargetRef"]["name"], []).append(name(hpa))
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for scaled in rendered.of_kind("ScaledObject"):
        targets.setdefault(scaled["spec"]["scaleTargetRef"]["name"], []).append(name(scaled))
    for deployment in rendered.jobrelay_deployments():
        owners = targets.get(deployment["metadata"]["name"], [])
        if component(deployment) == "scheduler":
            assert not owners and deployment["spec"]["replicas"] == 2, "scheduler: 2 fixed replicas (leader lease)"
            continue
        assert len(owners) == 1, f"{rendered.name}: {name(deployment)} is scaled by {owners or 'nothing'}"
        assert "replicas" not in deployment["spec"], f"{name(deployment)}: replicas would reset the autoscaler"
    api_hpa = rendered.get("HorizontalPodAutoscaler", "api")
    assert api_hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_services_reach_their_pods(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        selector = {"matchLabels": service["spec"]["selector"]}  # a Service selects by a plain label map
        pods = [w for w in rendered.workloads() if selector_matches(selector, pod_labels(w))]
        assert len(pods) == 1, f"{rendered.name}: {name(service)} selects {[name(p) for p in pods]}"
        ports = {p["name"] for c in containers(pods[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{name(service)}: targetPort {port['targetPort']} not on the pod"


def test_binds_match_container_ports(rendered: Rendered) -> None:
    """API_BIND / *_METRICS_BIND listen on all interfaces, on the port the container declares."""
    binds = {"api": ("API_BIND", "http"), "worker": ("WORKER_METRICS_BIND", "metrics")}
    binds["scheduler"] = ("SCHEDULER_METRICS_BIND", "metrics")
    for deployment in rendered.jobrelay_deployments():
        variable, port_name = binds[component(deployment)]
        container = pod_spec(deployment)["containers"][0]
        values = [v["value"] for v in container.get("env", []) if v["name"] == variable]
        assert values, f"{name(deployment)}: {variable} unset (the default listens on 127.0.0.1 only)"
        host, _, port = values[0].rpartition(":")
        declared = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert host == "0.0.0.0" and int(port) == declared[port_name], f"{name(deployment)}: {variable}={values[0]}"


def settings_env(rendered: Rendered) -> dict[str, dict[str, str]]:
    """Deployment name -> the environment its container starts with."""
    secrets = rendered_secrets(rendered)
    if rendered.name == "prod":
        secrets.update({f"jobrelay-secrets/{k}": v for k, v in PROD_SECRET_SAMPLE.items()})
    return {
        d["metadata"]["name"]: container_env(rendered, pod_spec(d)["containers"][0], secrets)
        for d in rendered.jobrelay_deployments()
    }


class RecordingEnv(dict[str, str]):
    """A mapping that notes which names Settings.from_env asks for."""

    asked: set[str]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def known_settings() -> set[str]:
    env = RecordingEnv()
    env.asked = set()
    Settings.from_env(env)
    return env.asked


def test_environment_is_valid_settings(rendered: Rendered) -> None:
    """Every variable is a setting jobrelay reads, and every value parses; base placeholders fail closed."""
    known = known_settings()
    for deployment, env in settings_env(rendered).items():
        unknown = sorted(set(env) - known)
        assert not unknown, f"{rendered.name}: {deployment} sets {unknown}, which jobrelay does not read (typo?)"
        if rendered.name == "base":
            with pytest.raises(SettingsError):
                Settings.from_env(env)
            continue
        settings = Settings.from_env(env)
        assert settings.redis_url and settings.database_url, f"{deployment}: external Redis and SQL store"
        assert settings.database_url.startswith("postgresql"), f"{deployment}: PostgreSQL, not SQLite, in a cluster"
        if deployment == "api":
            assert settings.api_keys and settings.api_auth, "api: auth on, with keys"


def test_keda_reads_the_same_redis(overlay: Rendered) -> None:
    """The scaler's address names the Redis of REDIS_URL, reachable from KEDA's namespace."""
    secrets = rendered_secrets(overlay)
    if overlay.name == "prod":
        secrets.update({f"jobrelay-secrets/{k}": v for k, v in PROD_SECRET_SAMPLE.items()})
    url = secrets["jobrelay-secrets/REDIS_URL"]
    address = secrets["jobrelay-secrets/KEDA_REDIS_ADDRESS"]
    url_host = url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    url_name, _, url_port = url_host.partition(":")
    host, _, port = address.partition(":")
    assert port == (url_port or "6379"), f"{overlay.name}: KEDA port {port} vs REDIS_URL port {url_port}"
    if "." not in url_name:  # an in-namespace Service: KEDA runs elsewhere and needs the qualified name
        assert host == f"{url_name}.{overlay.namespace}.svc", f"{overlay.name}: KEDA address {address}"
    else:
        assert host == url_name, f"{overlay.name}: KEDA address {address} vs REDIS_URL host {url_name}"
    database = url.rsplit("/", 1)[-1] if url.count("/") > 2 else "0"
    tls = secrets["jobrelay-secrets/KEDA_REDIS_TLS"]
    assert tls == ("enable" if url.startswith("rediss://") else "disable"), f"{overlay.name}: KEDA tls {tls}"
    for scaled in overlay.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"].get("databaseIndex", "0") == database, f"{name(scaled)}: databaseIndex"


def policies_for(rendered: Rendered, workload: Obj) -> list[Obj]:
    return [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if selector_matches(p["spec"]["podSelector"], pod_labels(workload)) and "Ingress" in p["spec"]["policyTypes"]
    ]


def test_only_the_api_is_reachable_from_outside(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        policies = policies_for(rendered, workload)
        assert policies, f"{rendered.name}: no NetworkPolicy isolates {name(workload)}"
        rules = [rule for p in policies for rule in p["spec"].get("ingress", [])]
        is_api = labels(workload).get("app.kubernetes.io/component") == "api"
        for rule in rules:
            sources = rule.get("from")
            if not sources:
                # From anywhere: the API's HTTP port only.
                assert is_api, f"{rendered.name}: {name(workload)} accepts ingress from anywhere"
                assert [p["port"] for p in rule.get("ports", [])] == ["http"], f"{name(workload)}: {rule}"
                continue
            for source in sources:
                if "namespaceSelector" not in source:
                    continue  # a podSelector alone: this namespace
                namespace = source["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name")
                assert namespace in ("monitoring", "keda"), f"{name(workload)}: ingress from namespace {namespace}"
                assert rule.get("ports"), f"{name(workload)}: ingress from {namespace} on every port"
        if is_api:
            assert any(not rule.get("from") for rule in rules), "the API must accept traffic from outside"


def test_secret_keys_are_documented(rendered_all: dict[str, Rendered]) -> None:
    """docs/deploy.md tells the operator every key of the Secret prod expects."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    keys = {
        ref.split("/", 1)[1] for ref in rendered_secrets(rendered_all["base"]) if ref.startswith("jobrelay-secrets/")
    }
    assert keys == set(PROD_SECRET_SAMPLE), f"update PROD_SECRET_SAMPLE to the Secret's keys {sorted(keys)}"
    missing = sorted(k for k in keys if k not in doc)
    assert not missing, f"docs/deploy.md does not mention Secret key(s) {missing}"


def test_result_storage_is_shared(overlay: Rendered) -> None:
    """Worker, API and scheduler see one result directory: a volume of one claim, never a pod's emptyDir."""
    envs = settings_env(overlay)
    urls = {Settings.from_env(env).effective_result_storage_url for env in envs.values()}
    assert len(urls) == 1, f"{overlay.name}: services disagree on result storage: {urls}"
    path = urls.pop().removeprefix("file://")
    claims = set()
    for deployment in overlay.jobrelay_deployments():
        volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
        mounts = [m for m in pod_spec(deployment)["containers"][0].get("volumeMounts", []) if m["mountPath"] == path]
        assert mounts, f"{overlay.name}: {name(deployment)} does not mount the result directory {path}"
        source = volumes[mounts[0]["name"]]
        assert "persistentVolumeClaim" in source, f"{name(deployment)}: {path} is not a shared volume ({source})"
        claims.add(source["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"{overlay.name}: several result claims {claims}"
    claim = overlay.get("PersistentVolumeClaim", claims.pop())
    if overlay.name == "prod":  # pods on many nodes mount it at once
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
