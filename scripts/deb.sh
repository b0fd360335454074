#!/usr/bin/env bash
# Builds the Debian package, vigia_<version>-1_amd64.deb, in $CARGO_TARGET_DIR/debian
# (target/debian by default) and prints its path: the release binaries of vigia and
# vigia-mock (stripped; their debug info in /usr/lib/debug), the systemd unit, the
# vigia user (sysusers.d), /etc/vigia as conffiles, the example checks and runbooks,
# shell completions and the man page. Installs cargo-deb if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "Installing cargo-deb (cargo install cargo-deb) ..." >&2
  cargo install --locked --quiet cargo-deb --version 3.8.0 >&2
fi
cargo build --release --locked --quiet -p vigia -p vigia-mocks >&2

# What the package carries that the binary writes itself.
GEN=packaging/generated
mkdir -p "$GEN"
"$TARGET/release/vigia" completions bash >"$GEN/vigia.bash"
"$TARGET/release/vigia" completions zsh >"$GEN/_vigia"
"$TARGET/release/vigia" completions fish >"$GEN/vigia.fish"
"$TARGET/release/vigia" man >"$GEN/vigia.1"
"$TARGET/release/vigia-mock" man >"$GEN/vigia-mock.1"

cargo deb --locked --no-build -p vigia --quiet >&2
ls -t "$TARGET"/debian/vigia_*.deb | head -1
