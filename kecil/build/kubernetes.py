"""The result folder's kubernetes.yaml: kecil's own manifest (deploy/kubernetes.yaml, shipped as
data/kubernetes.yaml) with this model's values filled in.

The container serves the result's GGUF from a read-only volume mounted at /models (the result
folder, copied into a volume the operator provides), the knowledge base (if the build shipped one)
is copied into kecil's data folder by an init container, since SQLite wants a writable folder
beside its file, and the memory request and limit come from the evaluation's measured peak RAM of
the result and its file size, so a replica is neither starved nor given a guess.
"""

from __future__ import annotations

import copy
import math
import re
from importlib import resources

MODELS = "/models"  # where the result folder is mounted in the container
DATA = "/var/lib/kecil"  # the template's KECIL_HOME
# What a server holds above the measuring process's peak: uvicorn, FastAPI and their threads.
SERVER_OVERHEAD = 256 * 2**20


def template_text() -> str:
    return resources.files("kecil.build").joinpath("data/kubernetes.yaml").read_text(encoding="utf-8")


def memory_values(peak_rss_bytes: int | None, size_bytes: int) -> tuple[int, int, bool]:
    """(request, limit, measured) in bytes, whole MiB. The request is the measured peak of running
    the result (weights and a full prompt's KV cache) plus the server's own overhead; the limit adds
    the file's size again, room for the parallel slots' KV caches, which grow with the model. With
    no measured peak (evaluate.system: false) the request is twice the file plus the overhead, an
    estimate the manifest says is one."""
    measured = bool(peak_rss_bytes)

    def whole_mib(n: int) -> int:
        return math.ceil(n / 2**20) * 2**20

    request = whole_mib((peak_rss_bytes if measured else 2 * size_bytes) + SERVER_OVERHEAD)
    return request, request + whole_mib(size_bytes), measured


def quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity in Mi (exact: the values are whole MiB)."""
    return f"{n // 2**20}Mi"


def resource_name(name: str) -> str:
    """A recipe name as a Kubernetes object name (DNS-1123: lower case, digits and '-', 63 at most)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return f"kecil-{slug}"[:63].rstrip("-")


def manifest(name: str, gguf: str, kb: str | None, peak_rss_bytes: int | None, size_bytes: int) -> str:
    """The manifest's text for a result named `name` whose model file is `gguf` and knowledge base
    `kb` (both relative to the result folder)."""
    import yaml

    deployment, service = yaml.safe_load_all(template_text())
    app = resource_name(name)
    for document in (deployment, service):
        document["metadata"]["name"] = app
        document["metadata"]["labels"]["app.kubernetes.io/name"] = app
    deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = app
    deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] = app
    service["spec"]["selector"]["app.kubernetes.io/name"] = app
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    request, limit, measured = memory_values(peak_rss_bytes, size_bytes)
    args = list(container["args"])
    args.insert(args.index("serve") + 1, f"{MODELS}/{gguf}")
    # the pool's budget: it unloads before the kubelet would kill the replica at its limit
    args[args.index("--max-memory") + 1] = quantity(request).replace("Mi", "MiB")
    container["args"] = args
    container["resources"]["requests"]["memory"] = quantity(request)
    container["resources"]["limits"]["memory"] = quantity(limit)
    container["volumeMounts"].append({"name": "model", "mountPath": MODELS, "readOnly": True})
    pod["volumes"].append({"name": "model", "persistentVolumeClaim": {"claimName": f"{app}-model", "readOnly": True}})
    if kb:
        pod["initContainers"] = [{
            "name": "knowledge-base", "image": container["image"], "imagePullPolicy": container["imagePullPolicy"],
            "command": ["sh", "-c", f"mkdir -p -m 700 {DATA}/kb && cp {MODELS}/{kb} {DATA}/kb/"],
            "securityContext": copy.deepcopy(container["securityContext"]),  # a copy: no YAML anchor in the output
            "volumeMounts": [{"name": "model", "mountPath": MODELS, "readOnly": True}, {"name": "data", "mountPath": DATA}],
        }]
    how = ("the evaluation's measured peak RAM of the model" if measured
           else "an estimate from the file size (the recipe's evaluate.system is false, so no peak was measured)")
    header = [
        f"# kecil serve for {name}, from kecil's deploy/kubernetes.yaml with this build's values filled in.",
        f"# The replicas serve {gguf} from a read-only volume at {MODELS}: copy this folder into the",
        f"# PersistentVolumeClaim {app}-model (or point the \"model\" volume at your own), then:",
        "#   kubectl create secret generic kecil-keys --from-file=keys=keys.txt   # lines of name:key",
        "#   kubectl apply -f kubernetes.yaml",
        f"# Memory request {quantity(request)} and limit {quantity(limit)}: {how}, plus the server's own.",
    ]
    if kb:
        header.append(f"# The knowledge base {kb} is served as the model rag:{name}.")
    return "\n".join(header) + "\n" + yaml.safe_dump_all([deployment, service], sort_keys=False, width=120)
