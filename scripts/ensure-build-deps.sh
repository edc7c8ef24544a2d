#!/usr/bin/env bash
# Installs (Debian packages) what the build needs besides Rust when it is missing: a C compiler,
# make and perl build the vendored OpenSSL (openssl-src). Idempotent: does nothing when all
# are present.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || need_apt+=(make)
# OpenSSL's Configure uses modules outside perl-base (IPC::Cmd, in perl-modules).
perl -MIPC::Cmd -e 1 >/dev/null 2>&1 || need_apt+=(perl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing build dependencies: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
