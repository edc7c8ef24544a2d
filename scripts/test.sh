#!/usr/bin/env bash
# Runs the whole test suite: installs missing build tools, starts (installing if needed) NATS
# and PostgreSQL, then checks formatting, lints and runs every test of the workspace, and
# validates the deployment artefacts (scripts/validate-deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/homeport-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash scripts/ensure-build-deps.sh
bash scripts/ensure-services.sh
# The PostgreSQL the tests use (the system one, or a private one ensure-services.sh started),
# unless the caller chose one.
if [ -z "${HOMEPORT_TEST_PG_URL:-}" ]; then
  set -a
  # shellcheck disable=SC1091
  . "${TMPDIR:-/tmp}/homeport-test-pg.env"
  set +a
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the service binaries the multi-process tests start)"
cargo build --workspace --bins --locked
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked -- --test-threads "${HOMEPORT_TEST_THREADS:-4}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary, the last
# usually being an empty doc-test run).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
echo "== deployment artefacts"
bash scripts/validate-deploy.sh || status=1
exit "$status"
