#!/bin/bash
# One-shot development secrets for the Compose stack, made on first start and kept in the
# `keys` volume: one NATS NKey per service, the HS256 key that signs API tokens, the
# PostgreSQL password with the database URL the services read, and the hash of the gateway
# dashboard's admin password (the password itself is printed once and not kept). Later starts
# change nothing.
set -euo pipefail
umask 077
keys="${HOMEPORT_KEYS_DIR:-/var/lib/homeport/keys}"
[ -f "$keys/ingress.nk" ] || homeportctl nats-keys --out "$keys"
# homeportctl makes every role's seed as one set (rps.nk included) and never overwrites one.
if [ ! -f "$keys/rps.nk" ]; then
  echo "warning: the keys volume predates rps (no rps.nk): rps cannot sign in to NATS;" \
    "make a new set with: docker compose -f compose/docker-compose.yml down -v" >&2
fi
# Readable by the NATS server's container (public keys only).
chmod 0644 "$keys/nats-users.env"
[ -f "$keys/jwt-hs256.key" ] || head -c 48 /dev/urandom | base64 -w0 > "$keys/jwt-hs256.key"
if [ ! -f "$keys/postgres-password" ]; then
  head -c 24 /dev/urandom | base64 -w0 | tr '+/' '-_' > "$keys/postgres-password"
fi
# PostgreSQL's entrypoint reads the password file as its own user.
chmod 0644 "$keys/postgres-password"
printf 'postgres://homeport:%s@postgres:5432/homeport\n' "$(cat "$keys/postgres-password")" > "$keys/database-url"
# The gateway's admin password (REST API /authorize and the dashboard): made once, printed
# once, only its hash kept (`gateway hash-password`, from this same image). For a new one:
#   docker compose -f compose/docker-compose.yml run --rm init rm /var/lib/homeport/keys/gateway-admin.hash
#   docker compose -f compose/docker-compose.yml up -d && docker compose -f compose/docker-compose.yml restart gateway
admin_password=
if [ ! -s "$keys/gateway-admin.hash" ]; then
  admin_password=$(head -c 18 /dev/urandom | base64 -w0 | tr '+/' '-_')
  printf '%s' "$admin_password" | gateway hash-password > "$keys/gateway-admin.hash.new"
  mv "$keys/gateway-admin.hash.new" "$keys/gateway-admin.hash"
fi
echo "Homeport development secrets are in the keys volume."
echo "API token (tenant \"default\", 24 h):"
echo "  export HOMEPORT_TOKEN=$(homeportctl token --secret-file "$keys/jwt-hs256.key" --tenant default --ttl-secs 86400)"
if [ -n "$admin_password" ]; then
  echo "Dashboard and REST API: http://localhost:8080/"
  echo "  dashboard sign-in: admin / $admin_password (printed once; only its hash is kept)"
fi
