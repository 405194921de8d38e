"""Alerting rules: promtool unit tests, the PrometheusRule copy, and metric names that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
RULES = K8S / "alerts.rules.yml"
CRD = K8S / "prometheusrule.yaml"
RULE_TESTS = K8S / "tests" / "alerts_test.yml"
REQUIRED_ALERTS = {
    "AvaserveKeyframeLatencyP99High",
    "AvaserveLiveLagHigh",
    "AvaserveHighErrorRatio",
    "AvaserveBankDegraded",
    "AvaserveQueueSaturated",
    "AvaserveReadinessFlapping",
}
_METRIC = re.compile(r"\bavaserve_[a-z0-9_]+\b")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (scripts/install-test-deps.sh installs it; CI has it)")
    return path


def test_every_alert_is_complete() -> None:
    found = {r["alert"] for r in rules()}
    assert found >= REQUIRED_ALERTS
    for r in rules():
        assert r.get("for"), f"{r['alert']}: needs `for:` so a single bad scrape does not page"
        assert r["labels"]["severity"] in {"warning", "critical"}
        for a in ("summary", "description", "runbook"):
            assert r["annotations"].get(a), f"{r['alert']}: missing {a} annotation"


def test_alerts_use_only_exported_metrics() -> None:
    names = Metrics().metric_names()
    for r in rules():
        for name in _METRIC.findall(r["expr"]):
            assert name in names, f"{r['alert']} uses {name}, which service/metrics.py lacks"


def test_prometheusrule_matches_rules_file() -> None:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["kind"] == "PrometheusRule"
    assert crd["apiVersion"] == "monitoring.coreos.com/v1"
    assert crd["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_every_alert_has_a_promtool_test() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired = {
        case["alertname"]
        for test in doc["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    silent = {
        case["alertname"]
        for test in doc["tests"]
        for case in test["alert_rule_test"]
        if not case["exp_alerts"]
    }
    every = {r["alert"] for r in rules()}
    assert fired == every, f"no firing test for {every - fired}"
    assert silent == every, f"no not-firing test for {every - silent}"


def test_promtool_check_rules(tmp_path: Path) -> None:
    tool = promtool()
    out = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # The CRD's spec is a rules file too.
    spec = tmp_path / "crd_rules.yml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(CRD.read_text())["spec"]))
    out = subprocess.run([tool, "check", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    tool = promtool()
    out = subprocess.run(
        [tool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr
