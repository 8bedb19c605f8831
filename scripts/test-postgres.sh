#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the shared-store tests (scripts/test.sh
# starts one; tests that restart PostgreSQL start their own), from Debian's packages.
# Runs as root; the server runs as the unprivileged `postgres` user (created
# by Debian's package). Listens on 127.0.0.1:PORT and on a Unix socket in the
# cluster directory; TCP needs a password (scram-sha-256), the socket trusts.
#
#   eval "$(scripts/test-postgres.sh start)"   # prints PGT_DIR, PGT_PORT, DATABASE_URL, ...
#   scripts/test-postgres.sh restart "$PGT_DIR" [fast|immediate] [DOWN_SECONDS]
#   scripts/test-postgres.sh pause "$PGT_DIR" [fast|immediate]; ... resume "$PGT_DIR"   # down until resumed
#   scripts/test-postgres.sh psql "$PGT_DIR" -c 'select 1'
#   scripts/test-postgres.sh stop "$PGT_DIR"   # stops the server and removes the directory
#   scripts/test-postgres.sh selftest          # start, query, restart both ways, stop; with timings
#
# Env: PGT_PORT (default: a free port from 54320 up), PGT_DB (default idplane),
#      PGT_USER (default idplane), PGT_FSYNC=off for speed (not for benchmarks).
set -euo pipefail

log() { echo "pg-throwaway: $*" >&2; }

pg_bin() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$initdb" ]; then
        log "installing postgresql from Debian's packages"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)
    fi
    dirname "$initdb"
}

# Runs a command as `postgres` from a directory it can read (root's cwd may be 0700).
as_pg() { (cd / && runuser -u postgres -- "$@"); }

free_port() {
    local p=${PGT_PORT:-54320}
    # Something answers on the port: taken (bash's /dev/tcp, no iproute2 needed).
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}

pg_ctl_start() {
    local dir=$1 bin
    bin=$(cat "$dir/bin")
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >&2
}

cmd_start() {
    local bin dir port db user pass t0 t1
    bin=$(pg_bin)
    port=$(free_port)
    db=${PGT_DB:-idplane}
    user=${PGT_USER:-idplane}
    # Under /tmp, not $TMPDIR: `postgres` must be able to reach the path.
    dir=$(mktemp -d /tmp/pgt.XXXXXX)
    mkdir "$dir/sock"
    echo "$bin" >"$dir/bin"
    echo "$port" >"$dir/port"
    pass=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    printf '%s\n' "$pass" >"$dir/password"
    chown -R postgres:postgres "$dir"
    chmod 0700 "$dir"

    t0=$(date +%s%N)
    as_pg "$bin/initdb" -D "$dir/data" -U "$user" --pwfile="$dir/password" \
        --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log"
    t1=$(date +%s%N)
    log "initdb: $(((t1 - t0) / 1000000)) ms"
    # Settings appended to postgresql.conf, so that a plain `pg_ctl start` keeps them.
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
fsync = ${PGT_FSYNC:-on}
max_connections = 200
EOF
    t0=$(date +%s%N)
    pg_ctl_start "$dir"
    t1=$(date +%s%N)
    log "start: $(((t1 - t0) / 1000000)) ms"
    as_pg "$bin/createdb" -h "$dir/sock" -p "$port" -U "$user" "$db"

    printf 'export PGT_DIR=%q\n' "$dir"
    printf 'export PGT_PORT=%q\n' "$port"
    printf 'export PGT_PASSWORD_FILE=%q\n' "$dir/password"
    printf 'export DATABASE_URL=%q\n' "postgres://$user:$pass@127.0.0.1:$port/$db"
    printf 'export DATABASE_URL_NOPASS=%q\n' "postgres://$user@127.0.0.1:$port/$db"
}

cmd_psql() {
    local dir=$1 bin
    shift
    bin=$(cat "$dir/bin")
    as_pg "$bin/psql" -h "$dir/sock" -p "$(cat "$dir/port")" -U "${PGT_USER:-idplane}" \
        -d "${PGT_DB:-idplane}" -X -q -v ON_ERROR_STOP=1 "$@"
}

# fast: clean shutdown (clients are disconnected, a checkpoint is written).
# immediate: like a crash; the next start replays the WAL.
cmd_restart() {
    local dir=$1 mode=${2:-fast} down=${3:-0} t0 t1
    t0=$(date +%s%N)
    cmd_pause "$dir" "$mode"
    sleep "$down"
    cmd_resume "$dir"
    t1=$(date +%s%N)
    log "restart ($mode, ${down}s down): $(((t1 - t0) / 1000000)) ms"
}

# Stops the server and keeps its directory (port, data), for `resume`:
# a database that is down for as long as a test needs.
cmd_pause() {
    local dir=$1 mode=${2:-fast} bin
    bin=$(cat "$dir/bin")
    as_pg "$bin/pg_ctl" -D "$dir/data" -m "$mode" -w stop >&2
}

cmd_resume() {
    pg_ctl_start "$1"
}

cmd_stop() {
    local dir=$1 bin
    case "$dir" in /tmp/pgt.*) ;; *) log "refusing to remove $dir"; exit 2 ;; esac
    bin=$(cat "$dir/bin")
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
}

cmd_selftest() {
    local out
    out=$(cmd_start)
    eval "$out"
    trap 'cmd_stop "$PGT_DIR"' EXIT
    echo "$out" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#'
    "$(cat "$PGT_DIR/bin")/postgres" --version
    # TCP with the password, as the application will connect.
    PGPASSWORD=$(cat "$PGT_PASSWORD_FILE") "$(cat "$PGT_DIR/bin")/psql" "$DATABASE_URL_NOPASS" -X -At \
        -c "select 'tcp ok: ' || current_user || '@' || current_database() || ' ' || inet_server_addr()"
    # TCP without a password must fail.
    if PGPASSWORD=wrong "$(cat "$PGT_DIR/bin")/psql" "$DATABASE_URL_NOPASS" -X -At -c 'select 1' 2>/dev/null; then
        echo "FAIL: wrong password accepted"; exit 1
    else echo "wrong password refused: ok"; fi
    cmd_psql "$PGT_DIR" -c 'create table t (id bigint primary key)' -c 'insert into t values (1)'
    cmd_restart "$PGT_DIR" fast 0
    cmd_restart "$PGT_DIR" immediate 1
    cmd_psql "$PGT_DIR" -At -c "select 'rows after restarts: ' || count(*) from t"
    command -v ss >/dev/null && ss -Hltnp "sport = :$PGT_PORT" || true
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop "$2" ;;
restart) shift; cmd_restart "$@" ;;
pause) shift; cmd_pause "$@" ;;
resume) cmd_resume "$2" ;;
psql) shift; cmd_psql "$@" ;;
selftest) cmd_selftest ;;
*) echo "usage: $0 start|stop DIR|restart DIR [fast|immediate] [SECONDS]|pause DIR [fast|immediate]|resume DIR|psql DIR ARGS|selftest" >&2; exit 2 ;;
esac
