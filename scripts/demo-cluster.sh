#!/usr/bin/env bash
# Vigia's cluster demo: a nats-server 2.15 of its own (scripts/fixtures/nats-server.sh),
# three `vigia run` replicas sharing six floating checks, the Telegram mock of
# `vigia-mock`. A check fails on one replica, that replica is killed with kill -9, its
# checks move to the others with their state, and the failure is alerted once and its
# recovery once. Run it from anywhere; it cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/.demo/cluster
rm -rf "$WORK"
mkdir -p "$WORK"

if [ -t 1 ]; then say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else say() { printf '\n== %s\n' "$*"; }; fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "demo-cluster: cargo is missing: install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
NATS_PORT=14222 WEB_PORT=18090
for port in 18080 17000 18099 18081 $NATS_PORT $WEB_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo-cluster: port $port is already in use; stop what listens there (the mocks need 18080, 17000, 18081, 18099; NATS $NATS_PORT; the shop's web server $WEB_PORT)" >&2
    exit 1
  fi
done

say "Building (debug; the first build takes a minute or two) and fetching nats-server 2.11+"
cargo build --locked -q -p vigia -p vigia-mocks
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
NATS_SERVER=$(scripts/fixtures/nats-server.sh)
"$NATS_SERVER" --version

pids=() replicas=()
stop_all() { # stop_all PID...: SIGTERM, up to 15 s to stop, then SIGKILL
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 150); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in "$@"; do kill -9 "$p" 2>/dev/null || true; done
}
cleanup() {
  # The replicas first, while NATS is there to hand their checks over.
  stop_all "${replicas[@]}" || true
  stop_all "${pids[@]}" || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_for() { # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds
  local what=$1 secs=$2; shift 2
  for _ in $(seq $(( secs * 10 ))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "demo-cluster: gave up waiting for $what" >&2; return 1
}

say "Starting NATS with JetStream on :$NATS_PORT, the mock servers, and the shop's web server on :$WEB_PORT"
"$NATS_SERVER" -a 127.0.0.1 -p $NATS_PORT -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
pids+=($!)
"$BIN/vigia-mock" serve >"$WORK/mock.log" 2>&1 &
pids+=($!)
mkdir -p "$WORK/www" && echo ok >"$WORK/www/index.html"
python3 -m http.server -b 127.0.0.1 -d "$WORK/www" $WEB_PORT >"$WORK/www.log" 2>&1 &
WEB=$!
pids+=($WEB)
wait_for "NATS" 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT"
wait_for "the mocks" 10 "$BIN/vigia-mock" messages
wait_for "the web server" 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$WEB_PORT"

checks="  - name: shop-web
    type: http
    url: http://127.0.0.1:$WEB_PORT/
    interval: 1s
    timeout: 800ms
    threshold: 2
    comment: The shop's front page
    labels: { company: acme }
"
for i in 1 2 3 4 5; do
  checks+="  - name: till-$i
    type: tcp
    host: 127.0.0.1
    port: 17000
    interval: 1s
    timeout: 800ms
    labels: { company: acme }
"
done
for r in r0 r1 r2; do
  mkdir -p "$WORK/$r"
  cat >"$WORK/$r/config.yaml" <<YAML
engine:
  hostname: demo-$r
  state_dir: state
  status_log_interval: 1h
http:
  enabled: false
cluster:
  nats: nats://127.0.0.1:$NATS_PORT
  replica_id: $r
  capacity: 10
  heartbeat: 500ms
  lease: 2s
alerting:
  group_wait: 0s
channels:
  ops:
    type: telegram
    token_env: VIGIA_TELEGRAM_TOKEN
    chat_ids: [100200300]
    api_url: http://127.0.0.1:18081
checks:
$checks
YAML
done
export VIGIA_TELEGRAM_TOKEN=123456:demo-token

say "Starting three replicas: vigia run -c .demo/cluster/rN/config.yaml (logs in .demo/cluster/rN/vigia.log)"
declare -A REPLICA
for r in r0 r1 r2; do
  "$BIN/vigia" run --no-console --log-format json -c "$WORK/$r/config.yaml" >"$WORK/$r/vigia.log" 2>&1 &
  REPLICA[$r]=$!
  replicas+=($!)
done
CFG=$WORK/r0/config.yaml
placed() { "$BIN/vigia" cluster status --json -c "$CFG" | python3 -c 'import json,sys
s = json.load(sys.stdin)
print(len(s["replicas"]), sum(r["placed"] for r in s["replicas"]))'; }
is_placed() { [ "$(placed)" = "$1 $2" ]; }
wait_for "six checks placed on three replicas" 30 is_placed 3 6
"$BIN/vigia" cluster status -c "$CFG"
echo
"$BIN/vigia" cluster info -c "$CFG"

owner() { "$BIN/vigia" status --json -c "$WORK/$1/config.yaml" | python3 -c 'import json,sys
print([c.get("replica", "") for c in json.load(sys.stdin)["checks"] if c["name"] == "shop-web"][0])'; }
VICTIM=$(owner r0)
LIVE=$([ "$VICTIM" = r1 ] && echo r2 || echo r1)
LEADER=$("$BIN/vigia" cluster status --json -c "$CFG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
say "The shop's web server stops: $VICTIM, which runs shop-web, commits the failure; $LEADER, the leader, alerts it"
kill $WEB
tg_count() { "$BIN/vigia-mock" messages | python3 -c 'import json,sys
print(sum(1 for m in json.load(sys.stdin) if sys.argv[1] in m["text"]))' "$1"; }
on_telegram() { [ "$(tg_count "$1")" -ge 1 ]; }
wait_for "the failure on Telegram" 30 on_telegram 'shop-web</b> failed'
"$BIN/vigia" status -c "$WORK/$LIVE/config.yaml"

say "kill -9 of $VICTIM: within a lease (2s) and a run, its checks run on the others, from the state it left"
kill -9 "${REPLICA[$VICTIM]}"
wait "${REPLICA[$VICTIM]}" 2>/dev/null || true
wait_for "the checks to move" 30 is_placed 2 6
"$BIN/vigia" cluster status -c "$CFG"
NEW=$(owner $LIVE)
echo
echo "shop-web now runs on $NEW, still down, with no second 'failed' alert:"
"$BIN/vigia" status -c "$WORK/$LIVE/config.yaml" | grep -E '^(CHECK|shop-web)'

say "The web server is back: $NEW commits the recovery, the leader alerts it"
python3 -m http.server -b 127.0.0.1 -d "$WORK/www" $WEB_PORT >>"$WORK/www.log" 2>&1 &
pids+=($!)
wait_for "the recovery on Telegram" 30 on_telegram 'shop-web</b> recovered'

say "On Telegram (vigia-mock messages): one failure, one recovery, whoever ran the check"
"$BIN/vigia-mock" messages | python3 -c 'import json,sys
for m in json.load(sys.stdin):
    print("--- to chat %s:\n%s" % (m["chat_id"], m["text"]))'
failed=$(tg_count 'shop-web</b> failed') recovered=$(tg_count 'shop-web</b> recovered')
echo
echo "shop-web: $failed failed, $recovered recovered (a kill -9 and a move in between)"
[ "$failed" = 1 ] && [ "$recovered" = 1 ]
