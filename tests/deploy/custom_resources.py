"""Structural checks for the custom resources kubernetes-validate has no schema for.

KEDA's ScaledObject and TriggerAuthentication and the Prometheus operator's
PodMonitor and PrometheusRule are checked here against the fields those operators define (an
unknown key is an error, as in ``--strict``) and against the rest of the
rendered output (targets, secrets, ports and selectors must exist).
"""

from __future__ import annotations

import re
from collections.abc import Callable

try:
    import kubernetes_validate
except ImportError as exc:  # a failure, not a skip: the deploy checks need it
    raise ImportError("kubernetes-validate is not installed: pip install kubernetes-validate") from exc

from shared.broker.publishing import NAMESPACE as DRAMATIQ_NAMESPACE
from tests.deploy.manifests import Obj, Rendered, containers, pod_labels, selector_matches

_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _unknown(where: str, data: dict[str, object], allowed: set[str]) -> list[str]:
    extra = sorted(set(data) - allowed)
    return [f"{where}: unknown field(s) {extra}"] if extra else []


def _metadata(obj: Obj) -> list[str]:
    meta = obj.get("metadata") or {}
    errors = _unknown("metadata", meta, {"name", "namespace", "labels", "annotations"})
    if not _NAME.match(str(meta.get("name", ""))):
        errors.append(f"metadata.name {meta.get('name')!r} is not a DNS-1123 label")
    return errors


# -- KEDA ------------------------------------------------------------------------

_SO_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
_SO_TARGET = {"name", "apiVersion", "kind", "envSourceContainerName"}
_SO_TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
_SO_MODIFIERS = {"formula", "target", "activationTarget", "metricType"}
_SO_ADVANCED = {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"}
#: Metadata of KEDA's `redis` (lists) scaler.
_REDIS_METADATA = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}
#: TriggerAuthentication parameters of the redis scaler.
_REDIS_AUTH_PARAMETERS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}


def check_scaled_object(obj: Obj, rendered: Rendered, secret_keys: dict[str, set[str]], k8s_version: str) -> list[str]:
    errors = _metadata(obj)
    if obj["apiVersion"] != "keda.sh/v1alpha1":
        errors.append(f"apiVersion {obj['apiVersion']} (want keda.sh/v1alpha1)")
    errors += _unknown("root", obj, {"apiVersion", "kind", "metadata", "spec"})
    spec = obj.get("spec") or {}
    errors += _unknown("spec", spec, _SO_SPEC)

    target = spec.get("scaleTargetRef") or {}
    errors += _unknown("spec.scaleTargetRef", target, _SO_TARGET)
    if target.get("kind", "Deployment") != "Deployment" or rendered.find("Deployment", target.get("name", "")) is None:
        errors.append(f"spec.scaleTargetRef {target} is not a Deployment of this kustomization")

    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        if key in spec and (not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 0):
            errors.append(f"spec.{key} must be a non-negative integer, got {spec[key]!r}")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if isinstance(low, int) and isinstance(high, int) and not 1 <= low <= high:
        # 0 would strand delayed messages: only a running worker moves them from .DQ to the queue.
        errors.append(f"replica range {low}..{high}: need 1 <= minReplicaCount <= maxReplicaCount")

    advanced = spec.get("advanced") or {}
    errors += _unknown("spec.advanced", advanced, _SO_ADVANCED)
    behavior = (advanced.get("horizontalPodAutoscalerConfig") or {}).get("behavior")
    if behavior is not None:
        # KEDA copies it into the HPA it creates: validate it as a real autoscaling/v2 behavior.
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "probe"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1, "behavior": behavior},
        }
        try:
            kubernetes_validate.validate(hpa, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"spec.advanced.horizontalPodAutoscalerConfig.behavior: {exc.message}")

    triggers = spec.get("triggers") or []
    if not triggers:
        errors.append("spec.triggers is empty")
    for index, trigger in enumerate(triggers):
        where = f"spec.triggers[{index}]"
        errors += _unknown(where, trigger, _SO_TRIGGER)
        metadata = trigger.get("metadata") or {}
        # KEDA decodes metadata as map[string]string: a YAML number or boolean is refused at admission.
        not_strings = sorted(k for k, v in metadata.items() if not isinstance(v, str))
        if not_strings:
            errors.append(f"{where}.metadata values must be strings: {not_strings}")
        if trigger.get("type") != "redis":
            errors.append(f"{where}.type {trigger.get('type')!r} (jobrelay queues are Redis lists: redis)")
            continue
        errors += _unknown(f"{where}.metadata", metadata, _REDIS_METADATA)
        if not str(metadata.get("listName", "")).startswith(f"{DRAMATIQ_NAMESPACE}:"):
            errors.append(f"{where}.metadata.listName {metadata.get('listName')!r} is not a Dramatiq queue list")
        for key in ("listLength", "activationListLength", "databaseIndex"):
            if key in metadata and not str(metadata[key]).isdigit():
                errors.append(f"{where}.metadata.{key} must be a whole number, got {metadata[key]!r}")
        if str(metadata.get("listLength", "0")) in ("0", ""):
            errors.append(f"{where}.metadata.listLength must be set and >= 1")
        auth = trigger.get("authenticationRef") or {}
        errors += _unknown(f"{where}.authenticationRef", auth, {"name", "kind"})
        kind = auth.get("kind", "TriggerAuthentication")
        if not auth or rendered.find(kind, auth.get("name", "")) is None:
            errors.append(f"{where}.authenticationRef {auth} names no {kind} of this kustomization")
    modifiers = advanced.get("scalingModifiers")
    if modifiers is not None:
        # KEDA 2.12+: one metric computed from the named triggers' values.
        errors += _unknown("spec.advanced.scalingModifiers", modifiers, _SO_MODIFIERS)
        names = {trigger.get("name") for trigger in triggers}
        unknown = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(modifiers.get("formula", "")))) - names)
        if not modifiers.get("formula") or unknown:
            errors.append(f"spec.advanced.scalingModifiers.formula names no trigger: {unknown or 'empty'}")
        if not re.fullmatch(r"\d+(\.\d+)?", str(modifiers.get("target", ""))) or not isinstance(
            modifiers.get("target"), str
        ):
            errors.append("spec.advanced.scalingModifiers.target must be a number in a string")
        if modifiers.get("metricType", "AverageValue") not in ("AverageValue", "Value"):
            errors.append(f"spec.advanced.scalingModifiers.metricType {modifiers.get('metricType')!r}")
    return errors


def check_trigger_authentication(
    obj: Obj, rendered: Rendered, secret_keys: dict[str, set[str]], k8s_version: str
) -> list[str]:
    errors = _metadata(obj)
    errors += _unknown("root", obj, {"apiVersion", "kind", "metadata", "spec"})
    spec = obj.get("spec") or {}
    errors += _unknown("spec", spec, {"secretTargetRef", "env", "podIdentity", "configMapTargetRef"})
    refs = spec.get("secretTargetRef") or []
    if not refs:
        errors.append("spec.secretTargetRef is empty")
    for index, ref in enumerate(refs):
        where = f"spec.secretTargetRef[{index}]"
        if set(ref) != {"parameter", "name", "key"}:
            errors.append(f"{where} must have exactly parameter, name and key: {sorted(ref)}")
            continue
        if ref["parameter"] not in _REDIS_AUTH_PARAMETERS:
            errors.append(f"{where}.parameter {ref['parameter']!r} is not a redis scaler parameter")
        if ref["key"] not in secret_keys.get(ref["name"], set()):
            errors.append(f"{where}: Secret {ref['name']} has no key {ref['key']!r}")
    return errors


# -- Prometheus operator ------------------------------------------------------------

_PM_SPEC = {
    "selector",
    "podMetricsEndpoints",
    "namespaceSelector",
    "jobLabel",
    "podTargetLabels",
    "sampleLimit",
    "targetLimit",
    "labelLimit",
    "attachMetadata",
}
_PM_ENDPOINT = {
    "port",
    "portNumber",
    "targetPort",
    "path",
    "scheme",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "params",
    "enableHttp2",
    "filterRunning",
}


def check_pod_monitor(obj: Obj, rendered: Rendered, secret_keys: dict[str, set[str]], k8s_version: str) -> list[str]:
    errors = _metadata(obj)
    if obj["apiVersion"] != "monitoring.coreos.com/v1":
        errors.append(f"apiVersion {obj['apiVersion']} (want monitoring.coreos.com/v1)")
    errors += _unknown("root", obj, {"apiVersion", "kind", "metadata", "spec"})
    spec = obj.get("spec") or {}
    errors += _unknown("spec", spec, _PM_SPEC)
    selector = spec.get("selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        errors.append("spec.selector must select something (an empty selector scrapes every pod)")
        return errors
    pods = [w for w in rendered.workloads() if selector_matches(selector, pod_labels(w))]
    if not pods:
        errors.append(f"spec.selector {selector} selects no pod of this kustomization")
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints:
        errors.append("spec.podMetricsEndpoints is empty")
    for index, endpoint in enumerate(endpoints):
        where = f"spec.podMetricsEndpoints[{index}]"
        errors += _unknown(where, endpoint, _PM_ENDPOINT)
        if endpoint.get("path", "/metrics") != "/metrics":
            errors.append(f"{where}.path {endpoint['path']!r}: the services serve /metrics")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not _DURATION.match(str(endpoint[key])):
                errors.append(f"{where}.{key} {endpoint[key]!r} is not a Prometheus duration")
        port = endpoint.get("port")
        if not isinstance(port, str):
            errors.append(f"{where}.port must name a container port")
            continue
        for pod in pods:
            names = {p.get("name") for c in containers(pod) for p in c.get("ports", [])}
            if port not in names:
                errors.append(f"{where}.port {port!r}: {pod['metadata']['name']} has no such port ({sorted(names)})")
    return errors


_RULE_GROUP = {"name", "rules", "interval", "limit", "partial_response_strategy", "query_offset", "labels"}
_RULE = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def check_prometheus_rule(
    obj: Obj, rendered: Rendered, secret_keys: dict[str, set[str]], k8s_version: str
) -> list[str]:
    """The operator's PrometheusRule; the PromQL itself is for `promtool` to judge."""
    errors = _metadata(obj)
    if obj["apiVersion"] != "monitoring.coreos.com/v1":
        errors.append(f"apiVersion {obj['apiVersion']} (want monitoring.coreos.com/v1)")
    errors += _unknown("root", obj, {"apiVersion", "kind", "metadata", "spec"})
    spec = obj.get("spec") or {}
    errors += _unknown("spec", spec, {"groups"})
    groups = spec.get("groups") or []
    if not groups:
        errors.append("spec.groups is empty")
    names = [g.get("name") for g in groups]
    if len(set(names)) != len(names):
        errors.append(f"spec.groups: duplicate names {names}")
    for g, group in enumerate(groups):
        where = f"spec.groups[{g}]"
        errors += _unknown(where, group, _RULE_GROUP)
        if not group.get("rules"):
            errors.append(f"{where}.rules is empty")
        for r, rule in enumerate(group.get("rules") or []):
            at = f"{where}.rules[{r}]"
            errors += _unknown(at, rule, _RULE)
            if ("alert" in rule) == ("record" in rule):
                errors.append(f"{at}: exactly one of alert and record")
            if not isinstance(rule.get("expr"), str | int) or not str(rule.get("expr")).strip():
                errors.append(f"{at}.expr must be a PromQL expression")
            for key in ("for", "keep_firing_for"):
                if key in rule and not _DURATION.match(str(rule[key])):
                    errors.append(f"{at}.{key} {rule[key]!r} is not a Prometheus duration")
            for key in ("labels", "annotations"):
                values = rule.get(key) or {}
                if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                    errors.append(f"{at}.{key} must map names to strings")
            if "record" in rule and "annotations" in rule:
                errors.append(f"{at}: recording rules have no annotations")
    return errors


Checker = Callable[[Obj, Rendered, dict[str, set[str]], str], list[str]]

#: (apiVersion, kind) -> structural check; kubernetes-validate knows no schema for these.
CUSTOM_CHECKS: dict[tuple[str, str], Checker] = {
    ("keda.sh/v1alpha1", "ScaledObject"): check_scaled_object,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): check_trigger_authentication,
    ("monitoring.coreos.com/v1", "PodMonitor"): check_pod_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheus_rule,
}
