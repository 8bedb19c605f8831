#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the tests need, brings
# up the real test cluster, checks formatting and lints, and runs every test,
# the real-cluster, SMTP and HTTP ones included.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "== $*" >&2; }

# A clean build of the tests takes about 3 GB (debug info is trimmed in
# Cargo.toml); no incremental data on top, which a one-off build never uses.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
free_kb=$(df -Pk "$target" | awk 'NR == 2 {print $4}')
if [ "${free_kb:-0}" -lt $((4 * 1024 * 1024)) ]; then
  log "warning: $((free_kb / 1024)) MB free for $target; a clean build needs about 3 GB (a full disk shows as the linker dying with SIGBUS)"
fi

# Test tools from Debian (first run on a fresh machine installs them).
need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

log "test tools (scripts/test-tools.sh: smtp-sink, dnsmasq, Go, aiosmtpd in a virtualenv)"
eval "$(scripts/test-tools.sh)"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

if [ -z "${IDPLANE_TEST_KUBECONFIG:-}" ]; then
  log "test cluster (scripts/test-cluster.sh up)"
  eval "$(scripts/test-cluster.sh up)"
  export IDPLANE_TEST_KUBECONFIG="$KUBECONFIG"
fi

log "cargo test"
# The cluster tests share one apiserver; two threads keep a 2-core machine responsive.
cargo test -- --test-threads "${IDPLANE_TEST_THREADS:-2}"
