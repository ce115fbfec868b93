#!/usr/bin/env bash
# Cluster measurement (a benchmark, not a test), under `callboard loadtest`, for
#   1. one node, its bus in process (PostgreSQL store, no [cluster]);
#   2. one node with [cluster] and mailboxes = false: frames also published to JetStream;
#   3. one node with [cluster] (mailboxes on): every run also goes through its mailbox;
#   4. three nodes with [cluster], one loadtest per node at a third of the connections each.
# Each scenario runs two loads on the same servers:
#   runs:   agent A on the scripted provider (DELTAS deltas): runs/s and run latency
#           (run.create sent to run.completed received, p50/p99);
#   deltas: the load harness's fake model server (tool call, handoff, DELTAS deltas each
#           stamped with its send time): per-delta latency, from the model server emitting a
#           delta to the client receiving it (p50/p99).
# Needs PostgreSQL (CALLBOARD_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/test),
# NATS with JetStream (NATS_URL, default nats://127.0.0.1:4222) and release builds of the
# binary and of the load harness:
#   cargo build --release && cargo bench --bench load --no-run
# Every process it starts is stopped at the end; its PostgreSQL schemas are dropped; its
# JetStream streams and buckets (prefixes `cbbench_*`) are reused by the next run.
#   scripts/cluster-load.sh            # SESSIONS=600 CONC=60 DELTAS=20 by default
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CALLBOARD_BIN:-target/release/callboard}
LOAD=${LOAD_BIN:-$(ls -t target/release/deps/load-* 2>/dev/null | grep -v '\.d$' | head -1)}
PG=${CALLBOARD_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
NATS=${NATS_URL:-nats://127.0.0.1:4222}
SESSIONS=${SESSIONS:-600}
CONC=${CONC:-60}
DELTAS=${DELTAS:-20}
if [ -z "$LOAD" ] || [ ! -x "$LOAD" ]; then
  echo "no load harness binary: run cargo bench --bench load --no-run (or set LOAD_BIN)" >&2
  exit 1
fi
work=$(mktemp -d)
tag=$$
cleanup() {
  # Each process's pid file (start_node runs in a subshell: its variables do not come back).
  for f in "$work"/*/pid "$work"/model.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.5
  for s in 1 2 3 4; do psql "$PG" -qc "DROP SCHEMA IF EXISTS bench_${tag}_$s CASCADE" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The fake model server, on a free port.
model_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$LOAD" fake-model --port "$model_port" --tokens "$DELTAS" --delay-ms 0 >"$work/model.out" 2>&1 &
echo $! >"$work/model.pid"
MODEL="127.0.0.1:$model_port"
for _ in $(seq 100); do
  (echo >"/dev/tcp/127.0.0.1/$model_port") 2>/dev/null && break
  sleep 0.1
done

# start_node NAME SCHEMA CLUSTER(0/1) PREFIX MAILBOXES(true/false): prints the node's address.
start_node() {
  local dir="$work/$1"
  mkdir -p "$dir"
  {
    printf '[server]\nbind = "127.0.0.1:0"\n\n[sessions]\nstore = "%s?schema=%s"\n\n' "$PG" "$2"
    if [ "$3" = 1 ]; then
      printf '[cluster]\nnats_url = "%s"\nnode_id = "%s"\nprefix = "%s"\nbus_max_age_s = 120\nmailboxes = %s\n\n' "$NATS" "$1" "$4" "$5"
    fi
    printf '[limits]\nmax_runs_per_tenant = 100000\n\n'
    printf '[models.default]\nprovider = "scripted"\nscript = [ { outputs = [ { kind = "message", text = "%s", deltas = %s } ] } ]\nrepeat_last = true\n\n' \
      "$(printf 'word %.0s' $(seq "$DELTAS"))" "$DELTAS"
    printf '[models.fake]\nprovider = "openai_chat_completions"\nbase_url = "http://%s/v1"\nmodel = "fake"\n\n' "$MODEL"
    printf '[[agents]]\nname = "A"\ninstructions = "Answer."\n\n'
    printf '[[agents]]\nname = "Triage"\ninstructions = "Get the weather, then hand off to Writer."\nmodel = "fake"\nhandoffs = ["Writer"]\ntools = ["get_weather"]\n\n'
    printf '[[agents]]\nname = "Writer"\ninstructions = "Write the answer."\nhandoff_description = "Writes the answer."\nmodel = "fake"\n\n'
    printf '[[tools]]\nname = "get_weather"\ndescription = "Weather for a city."\nkind = "http"\nurl = "http://%s/tool/weather"\n' "$MODEL"
    printf 'parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }\ntimeout_ms = 10000\n'
  } >"$dir/callboard.toml"
  (cd "$dir" && exec "$OLDPWD/$BIN" serve --config callboard.toml >"$dir/out" 2>"$dir/err") &
  echo $! >"$dir/pid"
  for _ in $(seq 100); do
    if grep -q "listening on http://" "$dir/err" 2>/dev/null; then
      grep -o 'listening on http://[0-9.:]*' "$dir/err" | sed 's|.*http://||'
      return 0
    fi
    sleep 0.1
  done
  echo "node $1 did not start:" >&2
  cat "$dir/err" >&2
  return 1
}

# load NAME ADDR CONC SESSIONS PID KIND(runs/deltas): one loadtest; its table line goes to
# $work/NAME-KIND.txt.
load() {
  local extra=(--agent A)
  if [ "$6" = deltas ]; then extra=(--agent Triage --expect-fake-model "$DELTAS"); fi
  "$BIN" loadtest --url "http://$2" "${extra[@]}" --input hi --no-trace --sessions "$4" \
    --concurrency "$3" --server-pid "$5" --out "$work/report-$1-$6" 2>&1 | grep '^loadtest' >"$work/$1-$6.txt" || true
}

# one NAME LABEL CLUSTER MAILBOXES SCHEMA: a one-node scenario, both loads.
one() {
  local a
  a=$(start_node "$1" "bench_${tag}_$5" "$3" "cbbench_$1" "$4")
  for kind in runs deltas; do
    load "$1" "$a" "$CONC" "$SESSIONS" "$(cat "$work/$1/pid")" "$kind"
    echo "$2 $kind: $(cat "$work/$1-$kind.txt")"
  done
  kill "$(cat "$work/$1/pid")"
}

echo "scenario                          runs    runs/s    frames/s      p50 µs    p99 µs  p99.9 µs CPU ms/run errors  lost"
one solo "one node, in-process bus       " 0 false 1
one js "one node, JetStream, no mailbox " 1 false 2
one mb "one node, JetStream + mailboxes" 1 true 3

addrs=()
for n in n1 n2 n3; do addrs+=("$(start_node "$n" "bench_${tag}_4" 1 "cbbench_3n" true)"); done
for kind in runs deltas; do
  i=0
  loads=()
  for n in n1 n2 n3; do
    load "$n" "${addrs[$i]}" $((CONC / 3)) $((SESSIONS / 3)) "$(cat "$work/$n/pid")" "$kind" &
    loads+=($!)
    i=$((i + 1))
  done
  for p in "${loads[@]}"; do wait "$p"; done
  for n in n1 n2 n3; do echo "three nodes, node $n $kind: $(cat "$work/$n-$kind.txt")"; done
done
