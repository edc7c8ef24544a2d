#!/usr/bin/env bash
# Creates the Secrets the Homeport manifests mount, once, in namespace homeport (existing
# ones are kept: delete one to make it anew). Needs kubectl and homeportctl (on PATH, or from
# the image: docker run --rm homeport homeportctl), and for the gateway's admin password
# `gateway hash-password` (on PATH, or else run from the image ${HOMEPORT_IMAGE:-homeport:latest}).
# The admin password (user admin) is printed once, when homeport-gateway-admin is made; only
# its hash is kept. For a new one: delete the Secret, run this again, restart the gateway
# (kubectl -n homeport rollout restart deployment/gateway).
#   --local                 also the PostgreSQL password and a database URL for the local
#                           overlay's StatefulSet
#   HOMEPORT_DATABASE_URL   the database URL otherwise (RDS, Azure Database for PostgreSQL)
#   HOMEPORT_VAULT_TOKEN_FILE  a file with the services' Vault token (cloud overlays)
#   HOMEPORT_VAULT_CA       the CA that signed Vault's certificate (PEM; cloud overlays)
#   HOMEPORT_CIRA_CERT, HOMEPORT_CIRA_KEY  the CIRA server certificate and key (PEM; cloud
#                           overlays: the FQDN devices are configured with)
#   HOMEPORT_RPS_CERT, HOMEPORT_RPS_KEY    the certificate and key (PEM) of rps's WebSocket (cloud
#                           overlays: the FQDN the rpc clients connect to; without it the local
#                           overlay's rps makes a self-signed one)
set -euo pipefail
ns=homeport
local_db=false
[ "${1:-}" = "--local" ] && local_db=true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"
exists() { kubectl -n "$ns" get secret "$1" >/dev/null 2>&1; }
create() { # name, then kubectl create secret generic arguments
  local name=$1
  shift
  if exists "$name"; then
    echo "kept    secret/$name"
  else
    kubectl -n "$ns" create secret generic "$name" "$@" >/dev/null && echo "created secret/$name"
  fi
}

if exists homeport-nats-keys && exists homeport-nats-users; then
  echo "kept    secret/homeport-nats-keys, secret/homeport-nats-users"
  if [ -z "$(kubectl -n "$ns" get secret homeport-nats-keys -o jsonpath='{.data.rps\.nk}')" ]; then
    echo "secret/homeport-nats-keys has no rps.nk (made before rps): delete it and homeport-nats-users," \
      "run this again and restart NATS (kubectl -n $ns rollout restart statefulset/nats)" >&2
  fi
elif exists homeport-nats-keys || exists homeport-nats-users; then
  echo "only one of homeport-nats-keys and homeport-nats-users exists: delete it to make a matching pair" >&2
  exit 1
else
  homeportctl nats-keys --out "$work/nats" >/dev/null
  args=()
  for seed in "$work"/nats/*.nk; do args+=(--from-file="$(basename "$seed")=$seed"); done
  create homeport-nats-keys "${args[@]}"
  create homeport-nats-users --from-env-file="$work/nats/nats-users.env"
fi
head -c 48 /dev/urandom | base64 -w0 > "$work/jwt"
create homeport-jwt --from-file=hs256.key="$work/jwt"
if $local_db; then
  if ! exists homeport-postgres; then
    head -c 24 /dev/urandom | base64 -w0 | tr '+/' '-_' > "$work/pg"
    create homeport-postgres --from-file=password="$work/pg"
    printf 'postgres://homeport:%s@postgres:5432/homeport' "$(cat "$work/pg")" > "$work/url"
    kubectl -n "$ns" delete secret homeport-database --ignore-not-found >/dev/null
    create homeport-database --from-file=url="$work/url"
  fi
else
  : "${HOMEPORT_DATABASE_URL:?set HOMEPORT_DATABASE_URL (or pass --local)}"
  printf '%s' "$HOMEPORT_DATABASE_URL" > "$work/url"
  create homeport-database --from-file=url="$work/url"
fi
if [ -n "${HOMEPORT_VAULT_TOKEN_FILE:-}" ]; then
  vault_args=(--from-file=token="$HOMEPORT_VAULT_TOKEN_FILE")
  # HOMEPORT_VAULT_CA: the CA that signed Vault's certificate (the cloud overlays expect it).
  [ -n "${HOMEPORT_VAULT_CA:-}" ] && vault_args+=(--from-file=ca.crt="$HOMEPORT_VAULT_CA")
  create homeport-vault "${vault_args[@]}"
fi
if [ -n "${HOMEPORT_CIRA_CERT:-}" ]; then
  if exists homeport-cira-tls; then
    echo "kept    secret/homeport-cira-tls"
  else
    kubectl -n "$ns" create secret tls homeport-cira-tls --cert="$HOMEPORT_CIRA_CERT" --key="$HOMEPORT_CIRA_KEY" >/dev/null
    echo "created secret/homeport-cira-tls"
  fi
fi
if [ -n "${HOMEPORT_RPS_CERT:-}" ]; then
  if exists homeport-rps-tls; then
    echo "kept    secret/homeport-rps-tls"
  else
    kubectl -n "$ns" create secret tls homeport-rps-tls --cert="$HOMEPORT_RPS_CERT" --key="$HOMEPORT_RPS_KEY" >/dev/null
    echo "created secret/homeport-rps-tls"
  fi
fi
gateway_hash_password() { # password on stdin → hash line on stdout
  if command -v gateway >/dev/null 2>&1; then
    gateway hash-password
  else
    docker run --rm -i "${HOMEPORT_IMAGE:-homeport:latest}" gateway hash-password
  fi
}
if exists homeport-gateway-admin; then
  echo "kept    secret/homeport-gateway-admin"
else
  admin_password=$(head -c 18 /dev/urandom | base64 -w0 | tr '+/' '-_')
  printf '%s' "$admin_password" | gateway_hash_password > "$work/gateway-admin.hash"
  if [ ! -s "$work/gateway-admin.hash" ]; then
    echo "gateway hash-password printed no hash" >&2
    exit 1
  fi
  create homeport-gateway-admin --from-file=hash="$work/gateway-admin.hash"
  echo "dashboard sign-in: admin / $admin_password (printed once; only its hash is kept)"
fi
echo "API token: homeportctl token --secret-file <(kubectl -n $ns get secret homeport-jwt -o jsonpath='{.data.hs256\\.key}' | base64 -d) --tenant <tenant>"
