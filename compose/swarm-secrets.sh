#!/usr/bin/env bash
# Creates the Swarm secrets compose/stack.yml expects, once, on a manager node. Needs
# homeportctl (in the image: `docker run --rm homeport homeportctl`) or on PATH, and:
#   HOMEPORT_CIRA_CERT, HOMEPORT_CIRA_KEY   PEM files of the CIRA server certificate (the FQDN
#                                           devices are configured with) and its key
#   HOMEPORT_RPS_CERT, HOMEPORT_RPS_KEY     PEM files of rps's WebSocket certificate (the FQDN
#                                           the rpc clients connect to) and its key
#   HOMEPORT_VAULT_TOKEN_FILE               a file with the Vault token the services use
# Generated here: one NATS NKey per service, the HS256 API token key, the PostgreSQL password
# and the database URL, and the gateway's admin password: printed once, only its hash kept (by
# `gateway hash-password`: on PATH, or else from the image, ${HOMEPORT_IMAGE:-homeport:latest}).
# Existing secrets are left alone (Swarm secrets are immutable).
set -euo pipefail
: "${HOMEPORT_CIRA_CERT:?set HOMEPORT_CIRA_CERT to the CIRA server certificate (PEM)}"
: "${HOMEPORT_CIRA_KEY:?set HOMEPORT_CIRA_KEY to its private key (PEM)}"
: "${HOMEPORT_RPS_CERT:?set HOMEPORT_RPS_CERT to the rps WebSocket certificate (PEM)}"
: "${HOMEPORT_RPS_KEY:?set HOMEPORT_RPS_KEY to its private key (PEM)}"
: "${HOMEPORT_VAULT_TOKEN_FILE:?set HOMEPORT_VAULT_TOKEN_FILE to a file holding the Vault token}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

create() { # name file
  if docker secret inspect "$1" >/dev/null 2>&1; then
    echo "kept    $1 (exists)"
  else
    docker secret create "$1" "$2" >/dev/null && echo "created $1"
  fi
}

# Keys and passwords come in sets that must match: made only when none of a set exists.
set_state() { # names… → "all", "none" or "some"
  local have=0
  for n in "$@"; do docker secret inspect "$n" >/dev/null 2>&1 && have=$((have + 1)); done
  if [ "$have" -eq "$#" ]; then echo all; elif [ "$have" -eq 0 ]; then echo none; else echo some; fi
}
nats_set=(homeport_nats_users homeport_nats_ingress homeport_nats_command homeport_nats_audit homeport_nats_bridge
  homeport_nats_rps)
case $(set_state "${nats_set[@]}") in
  all) echo "kept    ${nats_set[*]}" ;;
  some) echo "some of ${nats_set[*]} exist: remove them all to make a matching set" >&2; exit 1 ;;
  none)
    homeportctl nats-keys --out "$work/nats" >/dev/null
    create homeport_nats_users "$work/nats/nats-users.env"
    for role in ingress command audit bridge rps; do
      create "homeport_nats_$role" "$work/nats/$role.nk"
    done
    ;;
esac
head -c 48 /dev/urandom | base64 -w0 > "$work/jwt"
create homeport_jwt_hs256 "$work/jwt"
db_set=(homeport_postgres_password homeport_database_url)
case $(set_state "${db_set[@]}") in
  all) echo "kept    ${db_set[*]}" ;;
  some) echo "one of ${db_set[*]} exists: remove both to make a matching pair" >&2; exit 1 ;;
  none)
    head -c 24 /dev/urandom | base64 -w0 | tr '+/' '-_' > "$work/pg"
    create homeport_postgres_password "$work/pg"
    printf 'postgres://homeport:%s@postgres:5432/homeport\n' "$(cat "$work/pg")" > "$work/url"
    create homeport_database_url "$work/url"
    ;;
esac
create homeport_vault_token "$HOMEPORT_VAULT_TOKEN_FILE"
create homeport_cira_cert "$HOMEPORT_CIRA_CERT"
create homeport_cira_key "$HOMEPORT_CIRA_KEY"
create homeport_rps_cert "$HOMEPORT_RPS_CERT"
create homeport_rps_key "$HOMEPORT_RPS_KEY"
# The gateway's admin password (user admin: REST API /authorize and the dashboard). For a new
# one: docker service rm homeport_gateway; docker secret rm homeport_gateway_admin_hash; run this
# again and deploy the stack again.
gateway_hash_password() { # password on stdin → hash line on stdout
  if command -v gateway >/dev/null 2>&1; then
    gateway hash-password
  else
    docker run --rm -i "${HOMEPORT_IMAGE:-homeport:latest}" gateway hash-password
  fi
}
if docker secret inspect homeport_gateway_admin_hash >/dev/null 2>&1; then
  echo "kept    homeport_gateway_admin_hash (exists)"
else
  admin_password=$(head -c 18 /dev/urandom | base64 -w0 | tr '+/' '-_')
  printf '%s' "$admin_password" | gateway_hash_password > "$work/gateway-admin.hash"
  if [ ! -s "$work/gateway-admin.hash" ]; then
    echo "gateway hash-password printed no hash" >&2
    exit 1
  fi
  create homeport_gateway_admin_hash "$work/gateway-admin.hash"
  echo "dashboard sign-in: admin / $admin_password (printed once; only its hash is kept)"
fi
echo "Label the node(s) for NATS and PostgreSQL: docker node update --label-add homeport.data=true <node>"
echo "Then: docker stack deploy -c compose/stack.yml homeport"
