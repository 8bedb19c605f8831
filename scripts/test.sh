#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the tests need, brings
# up the real test clusters (the newest and the oldest Kubernetes that the
# README supports), checks formatting and lints, runs every test against the
# newest, then the cluster tests again against the oldest.
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
# rustfmt and clippy come with the machine's Rust; nothing here can download
# them, so say so instead of skipping the lint steps.
for tool in fmt clippy; do
  cargo "$tool" --version >/dev/null 2>&1 || {
    log "error: cargo $tool is missing: this machine's Rust toolchain must carry rustfmt and clippy (rustup component add rustfmt clippy, where its server is reachable)"
    exit 1
  }
done

log "test tools (scripts/test-tools.sh: smtp-sink, dnsmasq, a virtualenv with aiosmtpd, the Helm 4 SDK and schemathesis)"
eval "$(scripts/test-tools.sh)"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

# Both clusters are started before the tests (the first run on a machine
# builds them from Go modules, one after the other). IDPLANE_TEST_KUBECONFIG
# set by the caller: run everything against that cluster alone.
oldest_env=""
if [ -z "${IDPLANE_TEST_KUBECONFIG:-}" ]; then
  newest=$(scripts/test-cluster.sh versions | head -n1)
  oldest=$(scripts/test-cluster.sh versions | tail -n1)
  log "test cluster: Kubernetes $newest (scripts/test-cluster.sh up $newest)"
  eval "$(scripts/test-cluster.sh up "$newest")"
  if [ "$oldest" != "$newest" ]; then
    log "test cluster: Kubernetes $oldest (scripts/test-cluster.sh up $oldest)"
    oldest_env=$(scripts/test-cluster.sh up "$oldest")
  fi
fi

# PostgreSQL for the shared-store tests (issue 17): a throwaway server from
# Debian's packages; each test makes its own database on it. Tests that
# restart PostgreSQL start a server of their own. IDPLANE_TEST_DATABASE_URL
# set by the caller: use that server instead.
if [ -z "${IDPLANE_TEST_DATABASE_URL:-}" ]; then
  log "PostgreSQL for the shared-store tests (scripts/test-postgres.sh start)"
  eval "$(PGT_FSYNC=off scripts/test-postgres.sh start)"
  trap 'scripts/test-postgres.sh stop "$PGT_DIR" >/dev/null 2>&1 || true' EXIT
  export IDPLANE_TEST_DATABASE_URL="$DATABASE_URL"
fi

# The cluster tests share one apiserver; two threads keep a 2-core machine responsive.
threads="${IDPLANE_TEST_THREADS:-2}"
if [ -n "$oldest_env" ]; then
  log "cargo test, cluster tests against Kubernetes $oldest (the oldest supported)"
  (eval "$oldest_env" && cargo test --test cluster_crds --test cluster_operator --test chart \
    --test diff --test health \
    -- --test-threads "$threads")
fi

if [ -n "$oldest_env" ]; then
  log "cargo test, the admission webhook against Kubernetes $oldest"
  (eval "$oldest_env" && cargo test --test admission -- --test-threads "$threads")
fi

log "cargo test, everything against Kubernetes ${newest:-at $IDPLANE_TEST_KUBECONFIG}"
cargo test -- --test-threads "$threads"
