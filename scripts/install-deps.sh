#!/usr/bin/env bash
# Installs the system packages the tests need (C compiler and pkg-config for the C ABI
# tests, Go for the Go binding, Mono for the C# binding, venv for Python, PostgreSQL for the
# cloud's database tests, Chromium for the dashboard's browser test) when they are
# missing. Uses apt-get when run as root (as CI does); otherwise says what to install.
set -euo pipefail

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v go >/dev/null || need+=(golang-go)
command -v mcs >/dev/null || need+=(mono-mcs)
command -v mono >/dev/null || need+=(mono-runtime)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# PostgreSQL server binaries (initdb, pg_ctl, psql) for the cloud's PostgreSQL tests, which
# start a throwaway cluster of their own.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# The dashboard's browser test (scripts/test-dashboard.sh) drives the distribution's Chromium.
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "missing system packages: ${need[*]}" >&2
  echo "install them (Debian/Ubuntu: sudo apt-get install ${need[*]}) and run again" >&2
  exit 1
fi
