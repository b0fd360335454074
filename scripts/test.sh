#!/usr/bin/env bash
# Runs Vigia's whole test suite on a fresh Debian machine; installs what it needs.
# Needs root: the ICMP tests open raw sockets and create their own network namespaces.
# The Lua mysql tests start a MariaDB of their own (scripts/fixtures/mariadb.sh, which
# installs mariadb-server when it is missing); they never use the machine's own server.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (the ICMP and network-namespace tests need it)" >&2
  exit 1
fi
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v sysctl >/dev/null 2>&1 || missing+=(procps)
# The `nagios` check type is tested with Debian's real plugins (check_tcp, check_http, ...).
[ -x /usr/lib/nagios/plugins/check_tcp ] || missing+=(monitoring-plugins-basic)
# Real servers the tests start on ports of their own (never the machine's own instances).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v csync2 >/dev/null 2>&1 || missing+=(csync2)
command -v keepalived >/dev/null 2>&1 || missing+=(keepalived)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The Galera cluster (scripts/fixtures/galera.sh): MariaDB with Galera 4, rsync SST, socat.
[ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server mariadb-client)
[ -f /usr/lib/galera/libgalera_smm.so ] || missing+=(galera-4)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v socat >/dev/null 2>&1 || missing+=(socat)
# engine/tests/status_page.rs loads the status page in a real headless browser.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# engine/tests/packaging.rs verifies the unit file with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# ... builds the Debian package (scripts/deb.sh), lints it with lintian and installs it.
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]} ..."
  apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi
# promtool (engine/tests/http_api.rs lints a real /metrics scrape) from Debian's
# prometheus package, unpacked into the project's own folder: the server is not installed.
PROMTOOL_DIR="${PROMTOOL_DIR:-/var/cache/vigia-tools/prometheus}"
if [ ! -x "$PROMTOOL_DIR/usr/bin/promtool" ]; then
  echo "Fetching promtool (Debian package prometheus, unpacked into $PROMTOOL_DIR) ..."
  mkdir -p "$PROMTOOL_DIR"
  tmp=$(mktemp -d)
  ( cd "$tmp" && apt-get -o DPkg::Lock::Timeout=600 download prometheus 2>/dev/null \
      || { apt-get -o DPkg::Lock::Timeout=600 update -q && apt-get -o DPkg::Lock::Timeout=600 download prometheus; } )
  dpkg-deb -x "$tmp"/prometheus_*.deb "$PROMTOOL_DIR"
  rm -rf "$tmp"
fi
export VIGIA_PROMTOOL="$PROMTOOL_DIR/usr/bin/promtool"

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is missing: install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

# cargo-deb, for the package test (a few minutes to build, once).
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "Installing cargo-deb (cargo install cargo-deb) ..."
  cargo install --locked --quiet cargo-deb --version 3.8.0
fi

# nats-server 2.11+ for the cluster tests (engine/tests/cluster.rs), in the project's
# own venv (scripts/fixtures/nats-server.sh); the machine's own 2.9 is never used.
VIGIA_NATS_SERVER=$(scripts/fixtures/nats-server.sh)
export VIGIA_NATS_SERVER

# --workspace also builds vigia-mock, which the end-to-end tests start as a process.
cargo test --workspace --locked
