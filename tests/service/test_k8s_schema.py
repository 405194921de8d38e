"""Every Kubernetes manifest in k8s/ validates against the Kubernetes API's own schemas.

kubernetes-validate (dev extra) ships the OpenAPI-derived JSON schemas of each Kubernetes
release inside the package, so this runs offline (the test forbids sockets while validating).
Strict mode: an unknown field (a typo such as ``replica:``) fails, not just a wrong type. The
prometheus-operator resources and the Kustomization have no schema there; the test checks that
exactly those are skipped, so a core kind with a mistyped apiVersion cannot hide as "no schema".
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[dev]')"
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# Custom resources (prometheus-operator CRDs) and kustomize's own file: no API schema exists.
NO_SCHEMA = {
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def validate(doc: dict[str, Any]) -> None:
    kv.validate(doc, kv.latest_version(), strict=True)


def test_every_manifest_matches_the_kubernetes_schemas(offline: None) -> None:
    checked, skipped = [], set()
    for name, doc in manifests():
        kind = (doc.get("apiVersion"), doc.get("kind"))
        try:
            validate(doc)
        except kv.SchemaNotFoundError:
            skipped.add(kind)
            continue
        except kv.ValidationError as exc:
            pytest.fail(f"k8s/{name} {kind[1]}/{doc['metadata'].get('name')}: {exc}")
        checked.append((name, kind[1]))
    assert skipped == NO_SCHEMA
    kinds = {k for _, k in checked}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"PersistentVolumeClaim", "ConfigMap"} <= kinds


def _deployment() -> dict[str, Any]:
    return next(d for n, d in manifests() if n == "deployment.yaml" and d["kind"] == "Deployment")


@pytest.mark.parametrize("breakage", ["wrong_type", "unknown_field", "missing_required"])
def test_a_broken_copy_is_refused(offline: None, breakage: str) -> None:
    broken = copy.deepcopy(_deployment())
    container = broken["spec"]["template"]["spec"]["containers"][0]
    if breakage == "wrong_type":
        broken["spec"]["replicas"] = "two"
    elif breakage == "unknown_field":
        container["imagePullPolicyy"] = "Always"
    else:
        del container["name"]
    with pytest.raises(kv.ValidationError):
        validate(broken)
    validate(_deployment())  # the original still passes
