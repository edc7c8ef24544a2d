#!/usr/bin/env bash
# Creates the Swarm secrets compose/stack.yml expects, once, on a manager node. Needs
# homeportctl (in the image: `docker run --rm homeport homeportctl`) or on PATH, and:
#   HOMEPORT_CIRA_CERT, HOMEPORT_CIRA_KEY   PEM files of the CIRA server certificate (the FQDN
#                                           devices are configured with) and its key
#   HOMEPORT_VAULT_TOKEN_FILE               a file with the Vault token the services use
# Generated here: one NATS NKey per service, the HS256 API token key, the PostgreSQL password
# and the database URL. Existing secrets are left alone (Swarm secrets are immutable).
set -euo pipefail
: "${HOMEPORT_CIRA_CERT:?set HOMEPORT_CIRA_CERT to the CIRA server certificate (PEM)}"
: "${HOMEPORT_CIRA_KEY:?set HOMEPORT_CIRA_KEY to its private key (PEM)}"
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

homeportctl nats-keys --out "$work/nats" >/dev/null
create homeport_nats_users "$work/nats/nats-users.env"
for role in ingress command audit bridge; do
  create "homeport_nats_$role" "$work/nats/$role.nk"
done
head -c 48 /dev/urandom | base64 -w0 > "$work/jwt"
create homeport_jwt_hs256 "$work/jwt"
head -c 24 /dev/urandom | base64 -w0 | tr '+/' '-_' > "$work/pg"
create homeport_postgres_password "$work/pg"
printf 'postgres://homeport:%s@postgres:5432/homeport\n' "$(cat "$work/pg")" > "$work/url"
create homeport_database_url "$work/url"
create homeport_vault_token "$HOMEPORT_VAULT_TOKEN_FILE"
create homeport_cira_cert "$HOMEPORT_CIRA_CERT"
create homeport_cira_key "$HOMEPORT_CIRA_KEY"
echo "Label the node(s) for NATS and PostgreSQL: docker node update --label-add homeport.data=true <node>"
echo "Then: docker stack deploy -c compose/stack.yml homeport"
