#!/usr/bin/env bash
# Installs the tools the email, chart and API tests and the benchmarks use, and prints the
# environment they read (eval "$(scripts/test-tools.sh)"):
#   - Postfix's smtp-sink (Debian package postfix, installed unconfigured),
#   - dnsmasq (Debian package dnsmasq-base: the binary, no system service),
#   - openssl (test certificates),
#   - a virtualenv at ${IDPLANE_VENV:-/tmp/idplane-venv} (never the system
#     Python) with aiosmtpd (the SMTP test server,
#     tests/support/python/smtp_server.py), helm-python-sdk (Helm 4's own Go
#     SDK as a library: the chart tests render, lint, install, upgrade and
#     uninstall the Helm chart with it through tests/support/python/helm.py)
#     and schemathesis (fuzzes the runtime API against its OpenAPI document,
#     tests/openapi.rs).
# Idempotent: a second run only checks and prints.
set -euo pipefail

log() { echo "== $*" >&2; }

need=()
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "postfix postfix/mailname string localhost" | debconf-set-selections
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

venv="${IDPLANE_VENV:-/tmp/idplane-venv}"
[ -x "$venv/bin/python" ] || { log "creating $venv"; python3 -m venv "$venv"; }
# pin PACKAGE VERSION: installs exactly that version unless it is there.
pin() {
  "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" \
    >/dev/null 2>&1 && return
  log "installing $1==$2 into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$1==$2" >&2
}
pin aiosmtpd 1.4.6
pin helm-python-sdk 0.2.2
pin schemathesis 4.32.5

echo "export IDPLANE_VENV=$venv"
echo "export IDPLANE_SMTP_SINK=/usr/sbin/smtp-sink"
echo "export IDPLANE_DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)"
