#!/usr/bin/env bash
# Runs Homeport with its embedded defaults (SQLite, local encrypted secrets, a NATS server it
# starts itself) and a simulated fleet, printing what is connected. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/homeport-target}"
if ! command -v nats-server >/dev/null 2>&1; then
  echo "installing nats-server (Debian package)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
fi
bash scripts/ensure-build-deps.sh
cargo build --release --locked -p homeport -p homeportctl
echo "operator CLI: $CARGO_TARGET_DIR/release/homeportctl (see README, \"Managing devices\")"
exec "$CARGO_TARGET_DIR/release/homeport" --health-listen 127.0.0.1:9433 demo --devices "${DEVICES:-25}" "$@"
