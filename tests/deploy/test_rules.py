"""The alert rules pass `promtool check rules` and their unit tests; rules and dashboards are wired and documented.

promtool comes from Debian's `prometheus` package. A missing promtool fails
these tests with what to install; they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import K8S, REPO

MONITORING = K8S / "base" / "monitoring"
RULE_FILE = MONITORING / "prometheusrules.yaml"
RULE_TESTS = MONITORING / "rules-tests.yaml"
DASHBOARDS = MONITORING / "dashboards"
DOCS = REPO / "docs" / "observability.md"
#: The name rules-tests.yaml gives the rules file (rule_files), written next to it by the tests.
RULES_NAME = "jobrelay.rules.yaml"
SEVERITIES = {"warning", "critical"}


def promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        pytest.fail(
            "promtool not found on PATH (set PROMTOOL to use another binary). Install Debian's `prometheus` "
            "package (apt-get install prometheus) or a release from https://prometheus.io/download/.",
            pytrace=False,
        )
    return path


def rule_groups() -> list[dict[str, Any]]:
    rule = yaml.safe_load(RULE_FILE.read_text())
    assert rule["kind"] == "PrometheusRule", f"{RULE_FILE} holds a {rule['kind']}"
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a plain rules file, with the unit tests pointing at it."""
    (tmp_path / RULES_NAME).write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES_NAME], f"{RULE_TESTS.name}: rule_files must be [{RULES_NAME}]"
    (tmp_path / RULE_TESTS.name).write_text(yaml.safe_dump(tests, sort_keys=False))
    return tmp_path


def test_promtool_checks_the_rules(rules_dir: Path) -> None:
    out = run_promtool("check", "rules", RULES_NAME, cwd=rules_dir)
    assert out.returncode == 0, f"promtool check rules:\n{out.stdout}{out.stderr}"


def test_promtool_unit_tests_pass(rules_dir: Path) -> None:
    out = run_promtool("test", "rules", RULE_TESTS.name, cwd=rules_dir)
    assert out.returncode == 0, f"promtool test rules {RULE_TESTS.name}:\n{out.stdout}{out.stderr}"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a case where it fires and one where it must not."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), f"alerts never tested firing: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"
    assert (firing | quiet) <= names, f"tests of alerts that do not exist: {sorted((firing | quiet) - names)}"


def test_every_alert_has_severity_summary_and_a_documented_runbook() -> None:
    docs = DOCS.read_text()
    headings = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", docs, flags=re.M)}
    names = [rule["alert"] for rule in alerts()]
    assert len(set(names)) == len(names), f"duplicate alert names: {names}"
    for rule in alerts():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity one of {SEVERITIES}"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), f"{name}: summary and description"
        url = annotations.get("runbook_url", "")
        page, _, anchor = url.partition("#")
        assert page == "docs/observability.md", f"{name}: runbook_url {url!r} is not docs/observability.md"
        assert anchor == name.lower(), f"{name}: runbook_url anchor {anchor!r}, want {name.lower()!r}"
        assert anchor in headings, f"{name}: docs/observability.md has no heading for #{anchor}"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return found


def test_every_dashboard_is_shipped_by_the_kustomization() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert RULE_FILE.name in kustomization["resources"]
    shipped = {}
    for generator in kustomization.get("configMapGenerator", []):
        for file in generator.get("files", []):
            shipped[Path(file).name] = generator
    assert set(dashboards()) == set(shipped), f"dashboards {sorted(dashboards())} vs ConfigMaps {sorted(shipped)}"
    for name, generator in shipped.items():
        options = generator.get("options", {})
        assert options.get("labels", {}).get("grafana_dashboard") == "1", f"{name}: grafana_dashboard label"
        assert options.get("disableNameSuffixHash") is True, f"{name}: a hashed name leaves old copies behind"


def test_dashboards_use_the_variables_and_are_documented() -> None:
    docs = DOCS.read_text()
    uids = [d["uid"] for d in dashboards().values()]
    assert len(set(uids)) == len(uids), f"duplicate dashboard uids: {uids}"
    for name, dashboard in dashboards().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        wanted = {"datasource", "namespace", "queue"} | ({"task"} if "tasks" in name else set())
        assert wanted <= set(variables), f"{name}: variables {sorted(variables)} lack {sorted(wanted - set(variables))}"
        for var in wanted - {"datasource"}:
            assert variables[var]["includeAll"] and variables[var]["allValue"] == ".*", f"{name}: ${var} All is .*"
        assert f"### {dashboard['title']}" in docs, f"docs/observability.md has no section for {dashboard['title']}"
        titles = [panel["title"] for panel in panels(dashboard)]
        assert len(set(titles)) == len(titles), f"{name}: panel titles repeat: {sorted(titles)}"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            title = panel["title"]
            assert f"| {title} |" in docs, f"{name}: panel {title!r} is not in docs/observability.md's table"
            assert panel["datasource"]["uid"] == "${datasource}", f"{name}: {title!r} ignores $datasource"
            assert panel["targets"], f"{name}: {title!r} has no query"
            for target in panel["targets"]:
                expr = target["expr"]
                for selector in re.findall(r"\b(?:jobrelay_\w+|up)\{[^}]*\}", expr):
                    assert 'namespace=~"$namespace"' in selector, f"{name}: {title!r}: {selector} ignores $namespace"
                    if "tasks" in name:
                        assert 'task=~"$task"' in selector, f"{name}: {title!r}: {selector} ignores $task"
