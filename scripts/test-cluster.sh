#!/usr/bin/env bash
# Local kube-apiserver + etcd on loopback for integration tests (no Docker, no kubelet).
#
#   scripts/test-cluster.sh up [MINOR]     build if not cached, start etcd + apiserver
#                                          (no-op if already healthy), wait for /readyz, print env
#   scripts/test-cluster.sh down [MINOR]   stop both (idempotent; state is kept)
#   scripts/test-cluster.sh reset [MINOR]  down + delete the state dir (next `up` starts empty)
#   scripts/test-cluster.sh env [MINOR]    print the env lines (KUBECONFIG, KUBECTL, PATH, ...)
#   scripts/test-cluster.sh build [MINOR]  only build/cache the binaries
#   scripts/test-cluster.sh versions       the pinned minors, newest first
#
# MINOR is one of the Kubernetes releases pinned under scripts/k8s/vMINOR/ (default: the
# newest; IDPLANE_K8S_VERSION also sets it). Several minors run side by side, each with its
# own etcd, ports and state dir /tmp/idplane-test-cluster/MINOR.
#
# Usage: eval "$(scripts/test-cluster.sh up)"   (progress goes to stderr, env lines to stdout)
#
# kube-apiserver and kubectl are built from the Go module k8s.io/kubernetes at the version
# pinned in scripts/k8s/vMINOR/go.mod (scripts/k8s/pin.sh writes it); etcd from
# go.etcd.io/etcd/server/v3 pinned in scripts/k8s/etcd/go.mod. Modules come through the Go
# module proxy; binaries are cached in ~/.cache/idplane/k8s-VERSION and etcd-VERSION.
# There is no controller-manager or scheduler: namespaces stay Terminating after delete, no
# default ServiceAccounts are created, no pods run. Plain API objects, CRDs with CEL, RBAC,
# TokenRequest/TokenReview, SubjectAccessReview and Leases all work.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PINS="$HERE/k8s"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/idplane"
ADMIN_TOKEN="${IDPLANE_ADMIN_TOKEN:-idplane-admin-token}"
READY_TIMEOUT="${IDPLANE_READY_TIMEOUT:-180}"   # seconds
export DEBIAN_FRONTEND=noninteractive
# Build with the machine's Go; never fetch another toolchain.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0

log() { echo "test-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
tail_log() { [ -f "$1" ] && { log "--- last lines of $1 ---"; tail -n 40 "$1" >&2; } || true; }
apt_install() {
  log "apt-get install $* (log /tmp/idplane-apt.log)"
  { apt-get update && apt-get install -y --no-install-recommends "$@"; } >/tmp/idplane-apt.log 2>&1 \
    || { tail_log /tmp/idplane-apt.log; die "apt-get install failed"; }
}

# The pinned minors, newest first.
versions() {
  local d
  for d in "$PINS"/v1.*/; do d=${d%/}; echo "${d##*/v}"; done | sort -t. -k1,1nr -k2,2nr
}

# Module version a go.mod requires: pinned MODULE GO_MOD
pinned() {
  awk -v m="$1" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$2"
}

select_version() {
  MINOR="${1:-${IDPLANE_K8S_VERSION:-$(versions | head -n1)}}"
  MOD="$PINS/v$MINOR"
  [ -f "$MOD/go.mod" ] || die "Kubernetes $MINOR is not pinned (have: $(versions | tr '\n' ' ')); see scripts/k8s/pin.sh"
  K8S_VERSION=$(pinned k8s.io/kubernetes "$MOD/go.mod")
  [ -n "$K8S_VERSION" ] || die "no k8s.io/kubernetes version in $MOD/go.mod"
  ETCD_VERSION=$(pinned go.etcd.io/etcd/server/v3 "$PINS/etcd/go.mod")
  [ -n "$ETCD_VERSION" ] || die "no etcd version in $PINS/etcd/go.mod"
  BIN="$CACHE_ROOT/k8s-${K8S_VERSION#v}/bin"
  ETCD_BIN="$CACHE_ROOT/etcd-${ETCD_VERSION#v}/bin"
  DIR="${IDPLANE_CLUSTER_DIR:-/tmp/idplane-test-cluster/$MINOR}"
  # Ports per minor, so that several versions run at once (1.37: 16437, 23437, 23537).
  local m=${MINOR#*.}
  API_PORT="${IDPLANE_API_PORT:-$((16400 + m))}"
  ETCD_CLIENT_PORT="${IDPLANE_ETCD_PORT:-$((23400 + m))}"
  ETCD_PEER_PORT="${IDPLANE_ETCD_PEER_PORT:-$((23500 + m))}"
}

# ---------------------------------------------------------------- build ----
# go_build MODULE_DIR OUT_DIR LDFLAGS PACKAGE...: builds into OUT_DIR.tmp, then renames, so
# that a cache dir either holds every binary or none.
go_build() {
  local mod=$1 out=$2 ldflags=$3; shift 3
  command -v go >/dev/null || die "go is not on the PATH (the machine's Go 1.26 builds the test cluster)"
  local blog="$CACHE_ROOT/build-$(basename "$(dirname "$out")").log"
  log "building $* (first build about 10 min on 2 cores; log $blog)"
  local t0=$SECONDS
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  if ! (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" "$@") >"$blog" 2>&1; then
    tail_log "$blog"; die "build failed"
  fi
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "built in $((SECONDS - t0))s: $out"
}

build() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kubectl" ] && [ -x "$ETCD_BIN/etcd" ]; then return 0; fi
  mkdir -p "$CACHE_ROOT"
  exec 8>"$CACHE_ROOT/.build.lock"
  flock -w 3600 8 || die "timed out waiting for another build (lock $CACHE_ROOT/.build.lock)"
  if [ ! -x "$ETCD_BIN/etcd" ]; then
    go_build "$PINS/etcd" "$ETCD_BIN" "-s -w" go.etcd.io/etcd/server/v3
    mv "$ETCD_BIN/server" "$ETCD_BIN/etcd"   # go names the binary after server/v3
  fi
  if [ ! -x "$BIN/kube-apiserver" ] || [ ! -x "$BIN/kubectl" ]; then
    # The version the binaries report (/version, `kubectl version`): Helm and kube clients read it.
    local v=$K8S_VERSION major minor ld="-s -w" p
    major=${v#v}; major=${major%%.*}; minor=${v#v*.}; minor=${minor%%.*}
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
      ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    go_build "$MOD" "$BIN" "$ld" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
  fi
  exec 8>&-
}

# -------------------------------------------------------------- runtime ----
readpid() { [ -f "$DIR/$1.pid" ] && cat "$DIR/$1.pid" || true; }
# pid alive and really ours (guards against stale pid files, pid reuse and zombies)
alive() { kill -0 "$1" 2>/dev/null && grep -qa "$2" "/proc/$1/cmdline" 2>/dev/null; }
running() { local p; p=$(readpid "$1"); [ -n "$p" ] && alive "$p" "$1"; }
healthy() {
  [ "$(curl -fsk --max-time 3 -H "Authorization: Bearer $ADMIN_TOKEN" \
       "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" = ok ]
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# start NAME CMD...: detached (own session), survives this script, logs to $DIR/NAME.log
start() {
  local name=$1; shift
  # close lock fds 8/9, or the daemon would hold the flock forever
  setsid nohup "$@" >>"$DIR/$name.log" 2>&1 </dev/null 8>&- 9>&- &
  local pid=$! i
  echo "$pid" >"$DIR/$name.pid"
  # Until the forked shell has exec'd, /proc/PID/cmdline is this script's, so `running NAME`
  # would report the daemon dead: on a loaded machine that race failed CI. Wait for the exec.
  for i in $(seq 1 100); do
    alive "$pid" "$name" && return 0
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
}
stop() {
  local p i; p=$(readpid "$1")
  if [ -n "$p" ] && alive "$p" "$1"; then
    log "stopping $1 $MINOR (pid $p)"
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 50); do alive "$p" "$1" || break; sleep 0.2; done
    if alive "$p" "$1"; then kill -9 "$p" 2>/dev/null || true; sleep 0.5; fi
  fi
  rm -f "$DIR/$1.pid"
}

# one-time certs, keys, token file and kubeconfig in $DIR
setup_state() {
  mkdir -p "$DIR/pki" && chmod 700 "$DIR"
  local p="$DIR/pki"
  if [ ! -f "$p/apiserver.crt" ]; then
    log "generating CA, serving cert and service-account key in $p"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=idplane-test-ca" \
      -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout "$p/apiserver.key" -out "$p/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1\nextendedKeyUsage=serverAuth\n' >"$p/ext.cnf"
    openssl x509 -req -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 3650 -extfile "$p/ext.cnf" -out "$p/apiserver.crt" 2>/dev/null
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  fi
  # static token auth: token,user,uid,"groups"
  echo "$ADMIN_TOKEN,admin,admin,\"system:masters\"" >"$DIR/tokens.csv"
  cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: idplane-test-$MINOR
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $p/ca.crt
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: idplane-test-$MINOR
  context: {cluster: idplane-test-$MINOR, user: admin, namespace: default}
current-context: idplane-test-$MINOR
EOF
}

print_env() {
  echo "export KUBECONFIG=$DIR/kubeconfig"
  echo "export IDPLANE_TEST_KUBECONFIG=$DIR/kubeconfig"
  echo "export KUBECTL=$BIN/kubectl"
  echo "export IDPLANE_TEST_K8S_VERSION=$K8S_VERSION"
  echo "export PATH=$BIN:\$PATH"
}

up() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 3600 9 || die "timed out waiting for lock $DIR/.lock"
  if running kube-apiserver && healthy; then log "Kubernetes $K8S_VERSION already up"; print_env; return 0; fi
  command -v openssl >/dev/null && command -v curl >/dev/null && command -v flock >/dev/null \
    || apt_install openssl curl ca-certificates util-linux
  build
  setup_state

  if ! running etcd; then
    port_busy "$ETCD_CLIENT_PORT" && die "port $ETCD_CLIENT_PORT in use by something else"
    log "starting etcd ${ETCD_VERSION} on 127.0.0.1:$ETCD_CLIENT_PORT (log $DIR/etcd.log)"
    # clear ETCD_* env that a distro might set, they would override our flags
    start etcd env $(env | awk -F= '/^ETCD_/{printf "-u %s ", $1}') "$ETCD_BIN/etcd" --name idplane \
      --data-dir "$DIR/etcd-data" \
      --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "idplane=http://127.0.0.1:$ETCD_PEER_PORT" \
      --listen-metrics-urls "" --log-level warn
  fi
  local i
  for i in $(seq 1 60); do
    curl -fs --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"' && break
    running etcd || { tail_log "$DIR/etcd.log"; die "etcd exited"; }
    [ "$i" = 60 ] && { tail_log "$DIR/etcd.log"; die "etcd not healthy after 30s"; }
    sleep 0.5
  done

  # --endpoint-reconciler-type=none: the apiserver advertises a loopback address, which
  # the default reconciler of the `kubernetes` Service's endpoints refuses (no pods here).
  if ! running kube-apiserver; then
    port_busy "$API_PORT" && die "port $API_PORT in use by something else"
    log "starting kube-apiserver $K8S_VERSION on https://127.0.0.1:$API_PORT (log $DIR/kube-apiserver.log)"
    local p="$DIR/pki"
    start kube-apiserver "$BIN/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
      --secure-port="$API_PORT" \
      --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
      --client-ca-file="$p/ca.crt" \
      --token-auth-file="$DIR/tokens.csv" \
      --authorization-mode=Node,RBAC \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$p/sa.key" \
      --service-account-signing-key-file="$p/sa.key" \
      --api-audiences=https://kubernetes.default.svc.cluster.local \
      --service-cluster-ip-range=10.0.0.0/24 \
      --allow-privileged=true \
      --endpoint-reconciler-type=none
  fi
  log "waiting up to ${READY_TIMEOUT}s for /readyz"
  local deadline=$((SECONDS + READY_TIMEOUT))
  until healthy; do
    running kube-apiserver || { tail_log "$DIR/kube-apiserver.log"; die "kube-apiserver exited"; }
    [ $SECONDS -ge $deadline ] && { tail_log "$DIR/kube-apiserver.log"; die "kube-apiserver not ready after ${READY_TIMEOUT}s"; }
    sleep 1
  done
  log "Kubernetes $K8S_VERSION up: https://127.0.0.1:$API_PORT, kubeconfig $DIR/kubeconfig"
  print_env
}

down() {
  [ -d "$DIR" ] || return 0
  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "timed out waiting for lock $DIR/.lock"
  stop kube-apiserver
  stop etcd
}

cmd="${1:-}"
[ "$cmd" = versions ] && { versions; exit 0; }
select_version "${2:-}"
case "$cmd" in
  up) up ;;
  down) down ;;
  reset) down; rm -rf "$DIR" ;;
  env) print_env ;;
  build) build; log "binaries in $BIN and $ETCD_BIN" ;;
  *) echo "usage: $0 up|down|reset|env|build [MINOR] | versions" >&2; exit 2 ;;
esac
