#!/usr/bin/env python3
"""Checks that every Homeport service binary is deployable everywhere the project ships to:
the image builds it, and the Compose file, the Swarm stack and the Kubernetes base each run it
with only environment variables its --help lists.

usage: check_deploy.py BIN_DIR RENDERED_BASE_YAML
A service is a binary under services/ whose --help offers --health-listen (the all-in-one
`homeport` is checked for the image only)."""
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
bin_dir = pathlib.Path(sys.argv[1])
rendered = list(yaml.safe_load_all(open(sys.argv[2])))
errors = []


def binaries():
    for manifest in sorted(ROOT.glob("services/*/Cargo.toml")):
        text = manifest.read_text()
        names = re.findall(r'\[\[bin\]\]\s*\nname\s*=\s*"([^"]+)"', text)
        if not names and (manifest.parent / "src/main.rs").exists():
            names = re.findall(r'^name\s*=\s*"([^"]+)"', text, re.M)[:1]
        yield from names


def env_names(binary):
    out = subprocess.run([str(bin_dir / binary), "--help"], capture_output=True, text=True, check=True).stdout
    return out, set(re.findall(r"\[env: ([A-Z0-9_]+)", out))


dockerfile = (ROOT / "Dockerfile").read_text()
compose = yaml.safe_load((ROOT / "compose/docker-compose.yml").read_text())["services"]
stack = yaml.safe_load((ROOT / "compose/stack.yml").read_text())["services"]
config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in rendered if d and d["kind"] == "ConfigMap"}
deployments = [d for d in rendered if d and d["kind"] == "Deployment"]


def check_env(where, service, env, allowed):
    unknown = sorted(set(env) - allowed)
    if unknown:
        errors.append(f"{where} sets {', '.join(unknown)} for {service}, which its --help does not list")


def compose_service(services, binary):
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if cmd and cmd[0] == binary:
            return name, svc
    return None, None


# Tools run beside a deployment, not in it.
NOT_SHIPPED = {"homeport-bench"}

services = []
for binary in binaries():
    if binary in NOT_SHIPPED:
        continue
    if not (bin_dir / binary).exists():
        errors.append(f"{binary}: not built in {bin_dir}")
        continue
    if f"target/release/{binary}" not in dockerfile:
        errors.append(f"Dockerfile: no {binary} in the image")
    help_text, allowed = env_names(binary)
    if "--health-listen" not in help_text or binary == "homeport":
        continue
    services.append(binary)
    for where, defs in (("compose/docker-compose.yml", compose), ("compose/stack.yml", stack)):
        name, svc = compose_service(defs, binary)
        if svc is None:
            errors.append(f"{where}: no service runs {binary}")
            continue
        check_env(where, binary, (svc.get("environment") or {}).keys(), allowed)
        if "healthcheck" not in svc:
            errors.append(f"{where}: {name} has no healthcheck")
    found = [d for d in deployments if d["spec"]["template"]["spec"]["containers"][0].get("args", [None])[0] == binary]
    if not found:
        errors.append(f"deploy/k8s/base: no Deployment runs {binary}")
        continue
    container = found[0]["spec"]["template"]["spec"]["containers"][0]
    env = [e["name"] for e in container.get("env", [])]
    for source in container.get("envFrom", []):
        env += list(config_maps.get(source.get("configMapRef", {}).get("name"), {}).keys())
    check_env("deploy/k8s/base", binary, env, allowed)
    for probe in ("livenessProbe", "readinessProbe"):
        if probe not in container:
            errors.append(f"deploy/k8s/base: {binary} has no {probe}")

if not services:
    errors.append("no services found: is BIN_DIR right?")
for e in errors:
    print(f"check_deploy: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"check_deploy: {len(services)} services ({', '.join(services)}) have an image, a Compose and a Swarm service and a Kubernetes Deployment, with only the environment their --help lists")
