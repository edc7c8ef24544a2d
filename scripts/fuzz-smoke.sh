#!/usr/bin/env bash
# Smoke-runs the fuzz targets under libFuzzer for a few seconds each: APF (decode, round_trip,
# session) and WS-Man (parse_reply): `bash scripts/fuzz-smoke.sh` (SECONDS_PER_TARGET=60 for
# longer runs). The same target bodies also run in `cargo test` (crates/apf/tests/fuzz_smoke.rs,
# crates/wsman/tests/fuzz_smoke.rs).
set -euo pipefail
cd "$(dirname "$0")/../crates/apf"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/homeport-fuzz-target}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo-fuzz passes nightly-only flags; this machine has only a stable toolchain, which
# accepts them with RUSTC_BOOTSTRAP. Without sanitizers, libFuzzer still finds panics.
export RUSTC_BOOTSTRAP=1
for target in decode round_trip session; do
  echo "== fuzzing apf/$target for ${SECONDS_PER_TARGET:-20}s"
  cargo fuzz run "$target" --sanitizer none -- -max_total_time="${SECONDS_PER_TARGET:-20}" -rss_limit_mb=2048
done
cd ../wsman
# Seed with the recorded AMT responses so the fuzzer starts from real documents.
mkdir -p fuzz/corpus/parse_reply
find test_data/amt-responses -name '*.xml' -exec cp {} fuzz/corpus/parse_reply/ \;
echo "== fuzzing wsman/parse_reply for ${SECONDS_PER_TARGET:-20}s"
cargo fuzz run parse_reply --sanitizer none -- -max_total_time="${SECONDS_PER_TARGET:-20}" -rss_limit_mb=2048
