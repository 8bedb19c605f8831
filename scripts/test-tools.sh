#!/usr/bin/env bash
# Installs the tools the email tests and benchmark use, and prints the
# environment they read (eval "$(scripts/test-tools.sh)"):
#   - Postfix's smtp-sink (Debian package postfix, installed unconfigured),
#   - dnsmasq (Debian package dnsmasq-base: the binary, no system service),
#   - openssl (test certificates),
#   - Go (Debian package golang-go: the chart tests render the Helm chart
#     with Go's text/template, Helm's template engine),
#   - aiosmtpd in a virtualenv at ${IDPLANE_VENV:-/tmp/idplane-venv}
#     (never in the system Python).
# Idempotent: a second run only checks and prints.
set -euo pipefail

log() { echo "== $*" >&2; }

need=()
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v go >/dev/null 2>&1 || need+=(golang-go)
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
if ! "$venv/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1; then
  log "creating $venv with aiosmtpd"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'aiosmtpd==1.4.6'
fi

echo "export IDPLANE_VENV=$venv"
echo "export IDPLANE_SMTP_SINK=/usr/sbin/smtp-sink"
echo "export IDPLANE_GO=$(command -v go)"
echo "export IDPLANE_DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)"
