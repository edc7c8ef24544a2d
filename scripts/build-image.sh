#!/usr/bin/env bash
# Builds the Homeport image without a container registry: a Debian root filesystem from
# Debian's packages (debootstrap --variant=minbase, plus ca-certificates and nats-server, as
# the Dockerfile's runtime stage), the release binaries built on this machine, assembled with
# buildah into `homeport:latest` (the Dockerfile's user, environment, ports, health check and
# command), then runs the all-in-one from it and waits for /readyz.
# Needs root (debootstrap, buildah), the Debian mirror, and about 20 minutes on two cores for
# the release build. Installs buildah, podman and debootstrap when missing.
#   bash scripts/build-image.sh            # build and check
#   KEEP_ROOTFS=1 …                        # reuse the root filesystem of an earlier run
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/homeport-target}"
work="${TMPDIR:-/tmp}/homeport-image"
rootfs="$work/rootfs"
image="${IMAGE:-homeport:latest}"
suite="${SUITE:-bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
bins=(cira-ingress mps-command audit mqtt-bridge rps gateway homeport homeportctl amt-sim)

need=()
for tool in buildah podman debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== release binaries"
bash scripts/ensure-build-deps.sh
cargo build --release --locked -p homeport-cira-ingress -p homeport-mps-command \
  -p homeport-audit -p homeport-mqtt-bridge -p homeport-rps -p homeport-gateway -p homeport -p homeportctl \
  -p homeport-amt-sim

if [ -z "${KEEP_ROOTFS:-}" ] || [ ! -x "$rootfs/usr/sbin/nats-server" ]; then
  echo "== root filesystem ($suite minbase from $mirror)"
  rm -rf "$rootfs"
  mkdir -p "$work"
  debootstrap --variant=minbase --include=ca-certificates,nats-server "$suite" "$rootfs" "$mirror" \
    > "$work/debootstrap.log"
  chroot "$rootfs" useradd --system --uid 10001 --home-dir /var/lib/homeport --create-home homeport
  chroot "$rootfs" install -d -o homeport -g homeport /var/lib/homeport/keys /var/lib/homeport/secrets
  # What a runtime image does not need.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
fi
for b in "${bins[@]}"; do
  # Stripped: the release profile keeps debug information for profiling.
  install -s -m 0755 "$CARGO_TARGET_DIR/release/$b" "$rootfs/usr/local/bin/$b"
done
install -m 0755 scripts/healthcheck.sh "$rootfs/usr/local/bin/homeport-healthcheck"
install -m 0755 compose/init.sh "$rootfs/usr/local/bin/homeport-dev-init"

echo "== image $image"
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah copy --quiet "$ctr" "$rootfs" / >/dev/null
# buildah copy makes everything root's: the service's home is its own again.
buildah run "$ctr" -- chown -R 10001:10001 /var/lib/homeport
buildah config --user 10001:10001 --workingdir /var/lib/homeport \
  --env HOMEPORT_DATA_DIR=/var/lib/homeport \
  --env HOMEPORT_SECRETS_FILE=/var/lib/homeport/secrets.enc \
  --env HOMEPORT_SECRETS_KEY_FILE=/var/lib/homeport/secrets.key \
  --env 'HOMEPORT_DATABASE_URL=sqlite:///var/lib/homeport/homeport.db?mode=rwc' \
  --env HOMEPORT_HEALTH_LISTEN=0.0.0.0:9433 \
  --port 4433 --port 8080 --port 8443 --port 9433 --port 9438 --port 50051 --port 50052 --port 50053 \
  --healthcheck 'CMD ["/usr/local/bin/homeport-healthcheck"]' \
  --healthcheck-interval 10s --healthcheck-timeout 3s --healthcheck-start-period 20s \
  --healthcheck-retries 3 --stop-signal SIGTERM --cmd homeport "$ctr"
buildah commit --quiet --format docker "$ctr" "$image" >/dev/null 2>&1
podman image ls "$image"

echo "== run it"
# `buildah run` (runc with buildah's own spec): on this project's sandboxed machines
# `podman run` fails before the process starts (runc: "error setting rlimits for ready process:
# operation not permitted"), while buildah's spec sets no rlimits. Host network, private ports.
run=$(buildah from "$image")
trap 'kill "$server" 2>/dev/null || true; buildah rm "$run" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah run --network host \
  --env HOMEPORT_HEALTH_LISTEN=127.0.0.1:19433 --env HOMEPORT_CIRA_LISTEN=127.0.0.1:14433 \
  --env HOMEPORT_GRPC_LISTEN=127.0.0.1:15051 --env HOMEPORT_AUDIT_GRPC_LISTEN=127.0.0.1:15052 \
  --env HOMEPORT_NATS_URL=nats://127.0.0.1:14222 --env HOMEPORT_EMBEDDED_NATS=always \
  "$run" -- homeport > "$work/run.log" 2>&1 &
server=$!
started=$(date +%s)
# The image's own health check, run inside the image.
until buildah run --network host "$run" -- homeport-healthcheck 19433 2>/dev/null; do
  if [ $(( $(date +%s) - started )) -gt 60 ] || ! kill -0 "$server" 2>/dev/null; then
    tail -20 "$work/run.log"
    echo "the image did not become ready within 60 s" >&2
    exit 1
  fi
  sleep 1
done
echo "ready after $(( $(date +%s) - started )) s: /readyz answered 200 (homeport-healthcheck inside the image)"
grep -m1 "Homeport is running" "$work/run.log" || true
echo "user: $(buildah run "$run" -- id -u), image size: $(podman image inspect "$image" --format '{{.Size}}') bytes"
