#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets) for a set time, from the committed seed
# corpora (fuzz/corpus/<target>) plus the project's own config.yaml, ips.txt and
# scripts, with cargo-fuzz on a nightly toolchain; installs both when missing. Not part of CI: a benchmark-like job, run by hand or nightly.
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
# A crash leaves its input in fuzz/artifacts/<target>/: turn it into a regression test
# (see the tests named after fuzz findings) before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config ips_txt lua_script telegram_html control)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

failed=()
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  mkdir -p "fuzz/corpus/$t"
  # The corpus grows in a scratch copy; the committed seeds stay small.
  work="$(mktemp -d)"
  cp -r "fuzz/corpus/$t/." "$work/"
  # The project's own files are seeds too, taken as they are now (not copied into git).
  case "$t" in
    config) cp config.yaml "$work/shipped.yaml" ;;
    ips_txt) cp ips.txt "$work/shipped.txt" ;;
    lua_script) cp checks/*.lua runbooks/*.lua "$work/" 2>/dev/null || true ;;
  esac
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$work" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    failed+=("$t")
  fi
  rm -rf "$work"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no crash in ${targets[*]} (${secs}s each)"
