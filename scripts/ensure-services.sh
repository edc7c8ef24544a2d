#!/usr/bin/env bash
# Installs (Debian packages) and starts NATS with JetStream, PostgreSQL and Mosquitto (for the
# MQTT bridge's tests) when they are missing or stopped, and installs headless Chromium with
# its WebDriver (the dashboard's browser test). Idempotent: does nothing when all already
# answer.
set -euo pipefail

need_apt=()
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
command -v pg_isready >/dev/null 2>&1 || need_apt+=(postgresql-client)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 4222; then
  echo "starting nats-server (JetStream) on 127.0.0.1:4222"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 50); do port_open 4222 && break; sleep 0.1; done
  port_open 4222 || { echo "nats-server did not start; see /var/log/nats-server.log" >&2; exit 1; }
fi

if ! port_open 1883; then
  echo "starting mosquitto on 127.0.0.1:1883"
  mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  start-stop-daemon --start --oknodo --background --exec "$mosquitto_bin" -- -p 1883
  for _ in $(seq 1 50); do port_open 1883 && break; sleep 0.1; done
  port_open 1883 || { echo "mosquitto did not start" >&2; exit 1; }
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    echo "no PostgreSQL cluster found under /etc/postgresql" >&2
    exit 1
  fi
  echo "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
  pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not start" >&2; exit 1; }
fi

# Tests connect as postgres over TCP without a password. When the system cluster does not let
# them in that way, a private throwaway cluster (initdb in the temporary directory, its own
# port, trust only on 127.0.0.1) serves them instead; the system cluster's configuration is
# never changed. scripts/test.sh reads the URL the tests should use from $pg_env.
pg_env="${TMPDIR:-/tmp}/homeport-test-pg.env"
system_url="postgres://postgres@127.0.0.1:5432/postgres"
if [ -z "${HOMEPORT_TEST_PG_PRIVATE:-}" ] \
  && psql "$system_url" -tAc 'select 1' >/dev/null 2>&1; then
  echo "HOMEPORT_TEST_PG_URL=$system_url" > "$pg_env"
else
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  bin="/usr/lib/postgresql/$version/bin"
  dir="${TMPDIR:-/tmp}/homeport-test-pg"
  port=55432
  if ! pg_isready -h 127.0.0.1 -p "$port" -q; then
    if [ ! -f "$dir/PG_VERSION" ]; then
      echo "starting a private PostgreSQL for the tests in $dir (port $port)"
      rm -rf "$dir"
      mkdir -p "$dir"
      chown postgres: "$dir"
      su postgres -s /bin/sh -c "$bin/initdb -D '$dir' -U postgres --auth=trust >/dev/null"
    fi
    su postgres -s /bin/sh -c "$bin/pg_ctl -D '$dir' -l '$dir/log' -w \
      -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1\" start >/dev/null"
  fi
  pg_isready -h 127.0.0.1 -p "$port" -q || { echo "private PostgreSQL did not start; see $dir/log" >&2; exit 1; }
  echo "HOMEPORT_TEST_PG_URL=postgres://postgres@127.0.0.1:$port/postgres" > "$pg_env"
fi
echo "services ready: NATS 127.0.0.1:4222, $(cat "$pg_env"), Mosquitto 127.0.0.1:1883"
