#!/usr/bin/env bash
# Local kube-apiserver + etcd on loopback for integration tests (no Docker).
#
#   scripts/test-cluster.sh up     install deps, build if not cached, start etcd + apiserver
#                                  (no-op if already healthy), wait for /readyz, print env
#   scripts/test-cluster.sh down   stop both (idempotent; state is kept)
#   scripts/test-cluster.sh reset  down + delete the state dir (next `up` starts empty)
#   scripts/test-cluster.sh env    print `export KUBECONFIG=...` and `export PATH=...`
#   scripts/test-cluster.sh build  only install deps + build/cache the binaries
#
# Usage: eval "$(scripts/test-cluster.sh up)"   (progress goes to stderr, env lines to stdout)
#
# Kubernetes 1.20.2 is built from Debian bookworm's source package (apt is the only
# reachable registry), with Debian's Go 1.19 and etcd 3.4. There is no controller-manager
# or scheduler: namespaces stay Terminating after delete, no default ServiceAccounts are
# created, no pods run. Plain API objects, CRDs, RBAC, TokenRequest/TokenReview all work.
set -euo pipefail

K8S_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
DIR="${IDPLANE_CLUSTER_DIR:-/tmp/idplane-test-cluster}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/idplane/k8s-1.20.2"
BIN="$CACHE/bin"
ETCD_CLIENT_PORT="${IDPLANE_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${IDPLANE_ETCD_PEER_PORT:-23800}"
API_PORT="${IDPLANE_API_PORT:-16443}"
ADMIN_TOKEN="${IDPLANE_ADMIN_TOKEN:-idplane-admin-token}"
READY_TIMEOUT="${IDPLANE_READY_TIMEOUT:-120}"   # seconds
export DEBIAN_FRONTEND=noninteractive

log() { echo "test-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
tail_log() { [ -f "$1" ] && { log "--- last lines of $1 ---"; tail -n 40 "$1" >&2; } || true; }
apt_install() {
  log "apt-get install $* (log /tmp/idplane-apt.log)"
  { apt-get update && apt-get install -y --no-install-recommends "$@"; } >/tmp/idplane-apt.log 2>&1 \
    || { tail_log /tmp/idplane-apt.log; die "apt-get install failed"; }
}

# ---------------------------------------------------------------- build ----
build() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kubectl" ]; then return 0; fi
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.build.lock"
  flock -w 1800 8 || die "timed out waiting for another build (lock $CACHE/.build.lock)"
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kubectl" ]; then return 0; fi  # built meanwhile

  local reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
  command -v go >/dev/null && [ -d "$reflect2" ] && command -v make >/dev/null \
    && command -v rsync >/dev/null && command -v xz >/dev/null \
    || apt_install golang-go golang-github-modern-go-reflect2-dev make rsync xz-utils ca-certificates

  # deb-src entry for bookworm/main, using the mirror this machine already uses.
  if ! apt-cache showsrc kubernetes 2>/dev/null | grep -qF "Version: $K8S_DEB_VERSION"; then
    local mirror
    mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | grep -v security | awk '{print $2; exit}')
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    mirror="${mirror:-http://deb.debian.org/debian}"
    log "adding deb-src $mirror bookworm main"
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" >/etc/apt/sources.list.d/idplane-deb-src.sources
    apt-get update -qq >/dev/null || die "apt-get update failed"
  fi

  local src="$CACHE/src"
  rm -rf "$src" && mkdir -p "$src/dl"
  log "downloading Debian source kubernetes=$K8S_DEB_VERSION"
  # (fallback: whatever bookworm currently ships, in case a point release replaced deb12u1)
  (cd "$src/dl" && { apt-get source --download-only "kubernetes=$K8S_DEB_VERSION" \
     || apt-get source --download-only -t bookworm kubernetes; }) >"$src/apt-source.log" 2>&1 \
    || { tail_log "$src/apt-source.log"; die "apt-get source failed"; }
  local orig; orig=$(ls "$src"/dl/kubernetes_*.orig.tar.* | head -n1)
  log "unpacking $(basename "$orig")"
  mkdir -p "$src/k8s" && tar -xf "$orig" -C "$src/k8s" --strip-components=1
  local k="$src/k8s"
  [ -d "$k/vendor" ] && [ -f "$k/Makefile" ] || die "unexpected source layout in $orig"

  # vendored reflect2 1.0.1 crashes under Go >= 1.18 ("fatal error: fault" in mapiternext)
  rm -f "$k"/vendor/github.com/modern-go/reflect2/*.go "$k"/vendor/github.com/modern-go/reflect2/*.s
  cp "$reflect2"/*.go "$k/vendor/github.com/modern-go/reflect2/"
  cp "$reflect2"/*.s "$k/vendor/github.com/modern-go/reflect2/" 2>/dev/null || true
  rm -f "$k"/vendor/github.com/modern-go/reflect2/*_test.go

  mkdir -p "$k/.go/src/k8s.io" && ln -sfn ../../.. "$k/.go/src/k8s.io/kubernetes"
  log "building kube-apiserver + kubectl (~6 min on 2 cores), log: $src/build.log"
  local t0=$SECONDS
  if ! (cd "$k/.go/src/k8s.io/kubernetes" && \
        GOPATH="$k/.go" GOCACHE="$src/gocache" CGO_ENABLED=0 GOFLAGS= \
        KUBE_VERBOSE=1 make WHAT="cmd/kube-apiserver cmd/kubectl" >"$src/build.log" 2>&1); then
    tail_log "$src/build.log"; die "build failed"
  fi
  log "build took $((SECONDS - t0))s"
  mkdir -p "$BIN.tmp"
  cp "$k"/_output/local/bin/linux/*/kube-apiserver "$k"/_output/local/bin/linux/*/kubectl "$BIN.tmp/"
  rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
  rm -rf "$src"   # ~2 GB of sources + go cache
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
  echo $! >"$DIR/$name.pid"
}
stop() {
  local p i; p=$(readpid "$1")
  if [ -n "$p" ] && alive "$p" "$1"; then
    log "stopping $1 (pid $p)"
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
- name: idplane-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $p/ca.crt
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: idplane-test
  context: {cluster: idplane-test, user: admin, namespace: default}
current-context: idplane-test
EOF
}

print_env() {
  echo "export KUBECONFIG=$DIR/kubeconfig"
  echo "export PATH=$BIN:\$PATH"
}

up() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 900 9 || die "timed out waiting for lock $DIR/.lock"
  if running kube-apiserver && healthy; then log "already up"; print_env; return 0; fi
  build
  command -v etcd >/dev/null && command -v openssl >/dev/null && command -v curl >/dev/null \
    || apt_install etcd-server openssl curl ca-certificates
  setup_state

  if ! running etcd; then
    port_busy "$ETCD_CLIENT_PORT" && die "port $ETCD_CLIENT_PORT in use by something else"
    log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT (log $DIR/etcd.log)"
    # clear ETCD_* env that a distro might set, they would override our flags
    start etcd env $(env | awk -F= '/^ETCD_/{printf "-u %s ", $1}') etcd --name idplane \
      --data-dir "$DIR/etcd-data" \
      --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "idplane=http://127.0.0.1:$ETCD_PEER_PORT"
  fi
  local i
  for i in $(seq 1 60); do
    curl -fs --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"' && break
    running etcd || { tail_log "$DIR/etcd.log"; die "etcd exited"; }
    [ "$i" = 60 ] && { tail_log "$DIR/etcd.log"; die "etcd not healthy after 30s"; }
    sleep 0.5
  done

  if ! running kube-apiserver; then
    port_busy "$API_PORT" && die "port $API_PORT in use by something else"
    log "starting kube-apiserver on https://127.0.0.1:$API_PORT (log $DIR/kube-apiserver.log)"
    local p="$DIR/pki"
    start kube-apiserver "$BIN/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
      --secure-port="$API_PORT" --insecure-port=0 \
      --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
      --client-ca-file="$p/ca.crt" \
      --token-auth-file="$DIR/tokens.csv" \
      --authorization-mode=Node,RBAC \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$p/sa.key" \
      --service-account-signing-key-file="$p/sa.key" \
      --api-audiences=https://kubernetes.default.svc.cluster.local \
      --service-cluster-ip-range=10.0.0.0/24 \
      --allow-privileged=true
  fi
  log "waiting up to ${READY_TIMEOUT}s for /readyz"
  local deadline=$((SECONDS + READY_TIMEOUT))
  until healthy; do
    running kube-apiserver || { tail_log "$DIR/kube-apiserver.log"; die "kube-apiserver exited"; }
    [ $SECONDS -ge $deadline ] && { tail_log "$DIR/kube-apiserver.log"; die "kube-apiserver not ready after ${READY_TIMEOUT}s"; }
    sleep 1
  done
  log "up: https://127.0.0.1:$API_PORT, kubeconfig $DIR/kubeconfig"
  print_env
}

down() {
  [ -d "$DIR" ] || return 0
  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "timed out waiting for lock $DIR/.lock"
  stop kube-apiserver
  stop etcd
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  reset) down; rm -rf "$DIR" ;;
  env) print_env ;;
  build) build; log "binaries in $BIN" ;;
  *) echo "usage: $0 up|down|reset|env|build" >&2; exit 2 ;;
esac
