"""The deployment files are checked by real linters: hadolint for the Dockerfile and
kubernetes-validate (the Kubernetes API's own schemas) for the manifests. There is no Docker
engine or cluster here, so nothing is built or applied; docs/serve.md says so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.fail(f"{name} is missing: it is in kecil's test extra, run `make test`")
    return found


def test_dockerfile_passes_hadolint():
    done = subprocess.run([tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_manifests_validate_against_the_api_schemas():
    done = subprocess.run([tool("kubernetes-validate"), "--strict", str(DEPLOY / "kubernetes.yaml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deployment/kecil" in done.stdout + done.stderr and "service/kecil" in done.stdout + done.stderr


def test_readiness_probe_points_at_the_servers_ready_route():
    import yaml

    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    container = documents[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert "--api-keys-file" in container["args"]  # binding 0.0.0.0 needs keys
