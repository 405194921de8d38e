"""Write k8s/prometheusrule.yaml (a prometheus-operator ``PrometheusRule``) from the plain rules
file k8s/alerts.rules.yml, so the alerts are written once.

    python scripts/gen_prometheusrule.py          # rewrite the CRD
    python scripts/gen_prometheusrule.py --check  # exit 1 if it is out of date (CI)

tests/service/test_alerts.py asserts the two files hold the same groups.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "k8s" / "alerts.rules.yml"
CRD = REPO / "k8s" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from k8s/alerts.rules.yml by scripts/gen_prometheusrule.py - do not edit by hand.
# The same alerting rules as a prometheus-operator PrometheusRule. The `release` label must
# match your Prometheus' ruleSelector (kube-prometheus-stack's default selects its release name).
"""


class _Literal(str):
    """A string dumped as a YAML block scalar (keeps PromQL readable)."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


yaml.SafeDumper.add_representer(_Literal, _literal)


def build(rules_doc: dict[str, Any]) -> dict[str, Any]:
    groups = rules_doc["groups"]
    for group in groups:
        for rule in group["rules"]:
            if "\n" in rule.get("expr", ""):
                rule["expr"] = _Literal(rule["expr"])
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "avaserve-alerts",
            "labels": {
                "app.kubernetes.io/name": "avaserve",
                "app.kubernetes.io/component": "alerts",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    doc = build(yaml.safe_load(RULES.read_text()))
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=1000, allow_unicode=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the CRD is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not CRD.exists() or CRD.read_text() != text:
            print(
                f"{CRD} is out of date: run python scripts/gen_prometheusrule.py", file=sys.stderr
            )
            return 1
        return 0
    CRD.write_text(text)
    print(f"wrote {CRD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
