#!/usr/bin/env python3
"""Static checks of deploy/: the Kubernetes manifest parses and hangs together, the
Dockerfile has the promised shape, and (with --loopai BIN) every flag and environment
variable they use is one `loopai serve` knows.

    python scripts/check_deploy.py [--loopai BIN]    (BIN: e.g. debug/loopai in cargo's target dir)

No Docker engine or cluster is needed; the deployment.yaml embedded in the manifest is
checked by the Rust runtime's own parser in loopai-serve's tests.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
errors: list[str] = []


def check(ok: bool, message: str) -> None:
    if not ok:
        errors.append(message)


def manifest() -> tuple[dict[str, dict[str, Any]], list[str]]:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/kubernetes.yaml").read_text()) if d]
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for key in ("apiVersion", "kind", "metadata"):
            check(key in doc, f"kubernetes.yaml: a document has no {key}")
        check("name" in doc.get("metadata", {}), f"{doc.get('kind')}: metadata.name missing")
        check(doc["kind"] not in by_kind, f"kubernetes.yaml: two {doc['kind']} objects")
        by_kind[doc["kind"]] = doc
    for kind in ("Secret", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"):
        check(kind in by_kind, f"kubernetes.yaml: no {kind}")
    if errors:
        return by_kind, []

    secret, config = by_kind["Secret"], by_kind["ConfigMap"]
    pvc = by_kind["PersistentVolumeClaim"]
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    check(
        deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(),
        "Deployment: selector does not match the pod labels",
    )
    check(service["spec"]["selector"].items() <= labels.items(), "Service: selector matches no pod")
    spec = pod["spec"]
    check(spec["securityContext"].get("runAsNonRoot") is True, "pod: runAsNonRoot is not true")
    check(spec["securityContext"].get("runAsUser", 0) != 0, "pod: runs as uid 0")
    (container,) = spec["containers"]
    sc = container["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True, "container: readOnlyRootFilesystem is not true")
    check(sc.get("runAsNonRoot") is True, "container: runAsNonRoot is not true")
    check(sc.get("allowPrivilegeEscalation") is False, "container: allowPrivilegeEscalation")
    check("limits" in container.get("resources", {}), "container: no resource limits")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(ports.get("http") == 8080, "container: no port http/8080")
    for svc_port in service["spec"]["ports"]:
        check(svc_port["targetPort"] in ports, f"Service: targetPort {svc_port['targetPort']} unknown")
    probes = {
        name: container.get(name, {}).get("httpGet", {})
        for name in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    check(probes["livenessProbe"].get("path") == "/health", "livenessProbe: not GET /health")
    check(probes["readinessProbe"].get("path") == "/ready", "readinessProbe: not GET /ready")
    for name, probe in probes.items():
        if probe:
            check(probe.get("port") in ports or probe.get("port") == 8080, f"{name}: unknown port")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    check(mounts.get("data") == "/loopai-data", "container: the data volume is not at /loopai-data")
    paths = sorted(mounts.values())
    for a, b in zip(paths, paths[1:]):
        check(not b.startswith(a.rstrip("/") + "/"), f"container: mount {b} nested in {a}")
    for volume in spec["volumes"]:
        check(volume["name"] in mounts, f"volume {volume['name']} is not mounted")
        if "persistentVolumeClaim" in volume:
            check(
                volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"],
                "volume: claimName is not the PVC",
            )
        if "configMap" in volume:
            check(volume["configMap"]["name"] == config["metadata"]["name"], "volume: unknown ConfigMap")
        if "secret" in volume:
            check(volume["secret"]["secretName"] == secret["metadata"]["name"], "volume: unknown Secret")
            for item in volume["secret"].get("items", []):
                check(item["key"] in secret["stringData"], f"volume: Secret has no {item['key']}")
    env_names = []
    for env in container.get("env", []):
        env_names.append(env["name"])
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(ref["name"] == secret["metadata"]["name"], f"env {env['name']}: unknown Secret")
            check(ref["key"] in secret["stringData"], f"env {env['name']}: Secret has no {ref['key']}")
    yaml.safe_load(config["data"]["deployment.yaml"])
    args = container.get("args", [])
    check(args[:1] == ["serve"], "container: args do not start with serve")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(grace > 10, "pod: terminationGracePeriodSeconds leaves no time to flush")
    return by_kind, [a for a in args if a.startswith("--")] + env_names


def dockerfile() -> None:
    text = (REPO / "deploy/Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    check(len(froms) >= 2, "Dockerfile: not multi-stage")
    check(any(re.search(r"\bAS\s+builder\b", f, re.I) for f in froms), "Dockerfile: no builder stage")
    users = [l.split()[1] for l in lines if l.upper().startswith("USER ")]
    check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), "Dockerfile: runs as root")
    check("EXPOSE 8080" in lines, "Dockerfile: no EXPOSE 8080")
    check(any(l.startswith("VOLUME") and "/loopai-data" in l for l in lines), "Dockerfile: no /loopai-data volume")
    check(any(l.startswith("HEALTHCHECK") for l in lines), "Dockerfile: no HEALTHCHECK")
    check(any(l.startswith("ENTRYPOINT") and "loopai" in l for l in lines), "Dockerfile: no loopai entrypoint")
    check((REPO / ".dockerignore").exists(), ".dockerignore: missing (the build context would hold target/)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loopai", type=Path, help="a loopai binary to check flags against")
    args = parser.parse_args()
    _, used = manifest()
    dockerfile()
    if args.loopai and not errors:
        help_text = subprocess.run(
            [str(args.loopai), "serve", "--help"], check=True, capture_output=True, text=True
        ).stdout
        env_in_docker = re.findall(r"\b(LOOPAI_[A-Z_]+)=", (REPO / "deploy/Dockerfile").read_text())
        for name in used + env_in_docker:
            if name.startswith("--"):
                check(f"{name} " in help_text, f"loopai serve has no {name}")
            elif name.startswith("LOOPAI_") and name != "LOOPAI_API_KEY":
                check(f"env: {name}=" in help_text, f"loopai serve reads no {name}")
    if errors:
        for e in errors:
            print(f"deploy: {e}", file=sys.stderr)
        sys.exit(1)
    print("deploy/: kubernetes.yaml and Dockerfile check out")


if __name__ == "__main__":
    main()
