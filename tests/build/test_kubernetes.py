"""The result folder's Kubernetes manifest (kecil/build/kubernetes.py): the template is kecil's own
deploy/kubernetes.yaml, and the values come from the build's numbers (the written manifest of a
real build is checked in test_build.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from kecil.build.kubernetes import SERVER_OVERHEAD, manifest, memory_values, resource_name, template_text

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes.yaml"
MIB = 2**20


def test_the_packaged_template_is_deploy_kubernetes_yaml():
    # a wheel has no deploy/ folder, so the build reads a packaged copy: it must not drift
    assert template_text() == DEPLOY.read_text(), "copy deploy/kubernetes.yaml to kecil/build/data/kubernetes.yaml"


def test_names_become_kubernetes_object_names():
    assert resource_name("kestrel-handbook") == "kecil-kestrel-handbook"
    assert resource_name("My_Model.v2") == "kecil-my-model-v2"
    assert len(resource_name("x" * 64)) == 63


def test_memory_comes_from_the_measured_peak_else_the_file():
    request, limit, measured = memory_values(300 * MIB + 5, 140 * MIB)
    assert measured and request == 301 * MIB + SERVER_OVERHEAD and limit == request + 140 * MIB
    request, limit, measured = memory_values(None, 100 * MIB)
    assert not measured and request == 200 * MIB + SERVER_OVERHEAD and limit == request + 100 * MIB


def test_without_a_knowledge_base_there_is_no_init_container():
    deployment, service = yaml.safe_load_all(manifest("m", "m.gguf", None, 300 * MIB, 100 * MIB))
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod and pod["containers"][0]["args"][2] == "/models/m.gguf"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "kecil-m-model", "readOnly": True}} in pod["volumes"]
    template = next(yaml.safe_load_all(DEPLOY.read_text()))["spec"]["template"]["spec"]
    # what the build does not set is the template's: probes, security, the keys
    for key in ("readinessProbe", "livenessProbe", "securityContext", "ports", "env"):
        assert pod["containers"][0][key] == template["containers"][0][key]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
