#!/usr/bin/env bash
# Vigia's demo: builds vigia and vigia-mock, starts the mock servers and the engine on the
# shipped config.yaml, breaks the mock web API, and shows the `failed` alert and then
# the `recovered` one. Run it from anywhere; it cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/.demo
mkdir -p "$WORK"

if [ -t 1 ]; then say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else say() { printf '\n== %s\n' "$*"; }; fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: cargo is missing: install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
for port in 18080 17000 18099 18081 2813; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is already in use; stop what listens there (the demo's mocks need 18080, 17000, 18099, 18081; the engine's HTTP API 2813)" >&2
    exit 1
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "demo: not root: the ping and terminals checks will report that ICMP needs CAP_NET_RAW (that is expected)."
fi

say "Building (debug; the first build takes a minute or two)"
cargo build --locked -q -p vigia -p vigia-mocks
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

say "Starting the mock servers (HTTP API :18080, atto TCP service :17000, Telegram Bot API :18081, control :18099)"
"$BIN/vigia-mock" serve &
pids+=($!)
sleep 0.3

say "Validating config.yaml"
"$BIN/vigia" validate -c config.yaml

say "Starting the engine: vigia run -c config.yaml (JSON log in .demo/vigia.log, alerts below)"
rm -rf .vigia-state
# The Telegram channel reads its bot token from the environment (never from config.yaml).
export VIGIA_TELEGRAM_TOKEN=123456:demo-token
"$BIN/vigia" run -c config.yaml --log-format json >"$WORK/vigia.log" 2>"$WORK/alerts.txt" &
ENGINE=$!
pids+=($ENGINE)
for _ in $(seq 50); do "$BIN/vigia" status -c config.yaml >/dev/null 2>&1 && break; sleep 0.1; done
sleep 4
"$BIN/vigia" status -c config.yaml

wait_for() { # wait_for PATTERN FILE SECONDS
  for _ in $(seq $(( $3 * 10 ))); do grep -q "$1" "$2" && return 0; sleep 0.1; done
  echo "demo: gave up waiting for '$1' in $2" >&2; return 1
}

say "Breaking the web API: vigia-mock set http failing (now it answers HTTP 500)"
"$BIN/vigia-mock" set http failing
echo "The web check and its Lua twin web_api run every 2s with threshold 3: the alerts come after 3 failures"
echo "(the two fail within alerting.group_wait of each other, so they come as one message)."
wait_for 'ALERT.* web.*failed\|ALERT FAILED web' "$WORK/alerts.txt" 30
sleep 3
grep "ALERT" "$WORK/alerts.txt"
"$BIN/vigia" status -c config.yaml

say "On Telegram, the failure comes with buttons; @ana presses Acknowledge (vigia-mock telegram press)"
show_tg() { # show_tg MESSAGE_FILTER: the mock's messages that contain it, with their buttons
  "$BIN/vigia-mock" messages | python3 -c 'import json,sys
for m in json.load(sys.stdin):
    if sys.argv[1] in m["text"]:
        keys = [b["text"] for row in (m.get("reply_markup") or {}).get("inline_keyboard", []) for b in row]
        print("--- message %s to chat %s%s:\n%s" % (m["id"], m["chat_id"], " (edited)" if m.get("edits") else "", m["text"]))
        print("    buttons: %s" % (" | ".join("[%s]" % k for k in keys) or "none"))' "$1"
}
for _ in $(seq 50); do "$BIN/vigia-mock" messages | grep -q 'inline_keyboard' && break; sleep 0.1; done
show_tg "failed"
"$BIN/vigia-mock" telegram press --chat 100200300 --user 111 --username ana Acknowledge >/dev/null
for _ in $(seq 50); do "$BIN/vigia-mock" messages | grep -q 'acknowledged by @ana' && break; sleep 0.1; done
echo "The bot answered the press and edited its message:"
show_tg "acknowledged by"
echo "The toast it showed: $("$BIN/vigia-mock" telegram calls | python3 -c 'import json,sys; print([c["args"]["text"] for c in json.load(sys.stdin) if c["method"] == "answerCallbackQuery"][-1])')"
"$BIN/vigia" status -c config.yaml | grep -E '^(CHECK|web )'

say "The same from outside: the HTTP API on http://127.0.0.1:2813/ (README: HTTP API and /metrics)"
echo "GET /api/v1/checks/web:"
python3 -c 'import json, urllib.request
c = json.load(urllib.request.urlopen("http://127.0.0.1:2813/api/v1/checks/web"))
print("  status: %s, failures %s/%s, last: %s" % ("up" if c["status"] else "DOWN", c["failures"], c["threshold"], c["last"]["message"]))'
echo "GET /metrics (Prometheus), the web check's line:"
python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:2813/metrics").read().decode())' | grep '^vigia_check_up{check="web"'
echo "The status page: open http://127.0.0.1:2813/ in a browser (down checks first, with their comment):"
python3 -c 'import re, urllib.request
page = urllib.request.urlopen("http://127.0.0.1:2813/").read().decode()
print("  " + re.sub("<[^>]+>", "", re.search(r"<div class=\"banner[^>]*>.*?</div>", page).group(0)))'
echo "and what history says of web (vigia history web --since 1h):"
"$BIN/vigia" history web --since 1h -c config.yaml | sed 's/^/  /'

say "Healing it: vigia-mock set http healthy"
"$BIN/vigia-mock" set http healthy
wait_for 'ALERT.* web.*recovered\|ALERT RECOVERED web' "$WORK/alerts.txt" 30
sleep 3
grep -i "recovered" "$WORK/alerts.txt"

say "The same alerts in the JSON log (one event per transition, never repeated)"
grep '"event":"alert"' "$WORK/vigia.log"

say "And on Telegram: the messages the mock Bot API accepted (vigia-mock messages)"
for _ in $(seq 50); do
  [ "$("$BIN/vigia-mock" messages | grep -o '"text"' | wc -l)" -ge 4 ] && break; sleep 0.1
done
"$BIN/vigia-mock" messages | python3 -c 'import json,sys
for m in json.load(sys.stdin):
    print("--- to chat %s (%s):\n%s" % (m["chat_id"], m["parse_mode"], m["text"]))'
"$BIN/vigia" status -c config.yaml | sed -n '/^CHANNEL/,$p'

say "Stopping the engine (SIGTERM): running checks finish, state is saved"
kill -TERM "$ENGINE"
wait "$ENGINE" && echo "vigia exited with status 0"
grep '"event":"stopped"' "$WORK/vigia.log"
