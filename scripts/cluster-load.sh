#!/usr/bin/env bash
# Cluster measurement (a benchmark, not a test): runs/s and run latency (run.create sent to
# run.completed received, p50/p99) under `callboard loadtest`, for
#   1. one node, its bus in process (PostgreSQL store, no [cluster]);
#   2. one node with [cluster]: every frame also published to JetStream;
#   3. three nodes with [cluster], one loadtest per node at a third of the connections each.
# Needs PostgreSQL (CALLBOARD_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/test),
# NATS with JetStream (NATS_URL, default nats://127.0.0.1:4222) and a release build
# (cargo build --release). Every server it starts is stopped at the end; its PostgreSQL schemas
# are dropped; its JetStream stream and bucket (prefix `cbbench`) are reused by the next run.
#   scripts/cluster-load.sh            # SESSIONS=600 CONC=60 DELTAS=20 by default
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CALLBOARD_BIN:-target/release/callboard}
PG=${CALLBOARD_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
NATS=${NATS_URL:-nats://127.0.0.1:4222}
SESSIONS=${SESSIONS:-600}
CONC=${CONC:-60}
DELTAS=${DELTAS:-20}
work=$(mktemp -d)
cleanup() {
  # Each node's pid file (start_node runs in a subshell: its variables do not come back).
  for f in "$work"/*/pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

# start_node NAME SCHEMA CLUSTER(0/1) PREFIX: prints the node's address.
start_node() {
  local dir="$work/$1"
  mkdir -p "$dir"
  {
    printf '[server]\nbind = "127.0.0.1:0"\n\n[sessions]\nstore = "%s?schema=%s"\n\n' "$PG" "$2"
    if [ "$3" = 1 ]; then
      printf '[cluster]\nnats_url = "%s"\nnode_id = "%s"\nprefix = "%s"\nbus_max_age_s = 120\n\n' "$NATS" "$1" "$4"
    fi
    printf '[limits]\nmax_runs_per_tenant = 100000\n\n'
    printf '[models.default]\nprovider = "scripted"\nscript = [ { outputs = [ { kind = "message", text = "%s", deltas = %s } ] } ]\nrepeat_last = true\n\n' \
      "$(printf 'word %.0s' $(seq "$DELTAS"))" "$DELTAS"
    printf '[[agents]]\nname = "A"\ninstructions = "Answer."\n'
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

# load NAME ADDR CONC SESSIONS PID: one loadtest; its table line goes to $work/NAME.txt.
load() {
  "$BIN" loadtest --url "http://$2" --agent A --input hi --no-trace --sessions "$4" \
    --concurrency "$3" --server-pid "$5" --out "$work/report-$1" 2>&1 | grep '^loadtest' >"$work/$1.txt"
}

tag=$$
echo "scenario        runs    runs/s    frames/s      p50 µs    p99 µs  p99.9 µs CPU ms/run errors  lost"

a=$(start_node solo "bench_${tag}_1" 0 x)
load solo "$a" "$CONC" "$SESSIONS" "$(cat "$work/solo/pid")"
echo "one node, in-process bus: $(cat "$work/solo.txt")"
kill "$(cat "$work/solo/pid")"

a=$(start_node js "bench_${tag}_2" 1 cbbench)
load js "$a" "$CONC" "$SESSIONS" "$(cat "$work/js/pid")"
echo "one node, JetStream bus:  $(cat "$work/js.txt")"
kill "$(cat "$work/js/pid")"

addrs=()
for n in n1 n2 n3; do addrs+=("$(start_node "$n" "bench_${tag}_3" 1 cbbench)"); done
i=0
loads=()
for n in n1 n2 n3; do
  load "$n" "${addrs[$i]}" $((CONC / 3)) $((SESSIONS / 3)) "$(cat "$work/$n/pid")" &
  loads+=($!)
  i=$((i + 1))
done
for p in "${loads[@]}"; do wait "$p"; done
for n in n1 n2 n3; do echo "three nodes, node $n:       $(cat "$work/$n.txt")"; done

for s in 1 2 3; do psql "$PG" -qc "DROP SCHEMA IF EXISTS bench_${tag}_$s CASCADE" 2>/dev/null || true; done
