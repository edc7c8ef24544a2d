#!/bin/bash
# Container health check without curl: GET /readyz on HOMEPORT_HEALTH_LISTEN's port (or $1)
# over bash's /dev/tcp, healthy on a 200 within 3 s.
set -euo pipefail
port="${1:-${HOMEPORT_HEALTH_LISTEN##*:}}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 3 status <&3
[[ "$status" == *" 200 "* ]]
