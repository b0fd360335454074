#!/usr/bin/env bash
# The soak of BENCHMARKS.md: 10 000 tcp checks for 30 minutes, a tenth of the targets
# flapping, a reload every minute and a storm of 50 SIGHUPs every 5 minutes. Passes when
# RSS grows less than 5 % after the warm-up, descriptors do not grow, and every
# transition the engine logged reached the webhook exactly once.
#   scripts/soak.sh [--checks N] [--minutes M] [--warmup M]
# Not part of CI (it takes half an hour).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q python3; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked -p vigia
exec python3 scripts/soak.py target/release/vigia "$@"
