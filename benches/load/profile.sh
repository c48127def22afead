#!/usr/bin/env bash
# Instructions per request of the gateway example in its real server, proxy
# only vs full, counted by callgrind (repeatable on a busy machine, unlike
# wall time), and the full gateway's top costs:
#
#   benches/load/profile.sh                  # proxy full, 10 s of wrk -c4 each
#   MODES=full DURATION=20 benches/load/profile.sh
#   PERF=1 benches/load/profile.sh           # also `perf record` the full gateway at full speed
#   STREAM_EVENTS=100 benches/load/profile.sh # streamed answers of 100 chunk events (+ usage, [DONE])
#   GATEWAY=/tmp/other/gateway benches/load/profile.sh   # another build of the gateway
#
# The cost of one streamed event: run with STREAM_EVENTS=N and 2N; per
# event = (instructions per request at 2N - at N) / N, for each mode.
#
# Each gateway runs under `valgrind --tool=callgrind` with instrumentation
# off through start-up and a warm-up, on for the measured wrk run only
# (`callgrind_control -i on`, then a dump), in front of the fake upstream
# (examples/load_server.rs --mode upstream, not instrumented). Instructions
# per request = (the dump's total - as long idle, dumped next) / the requests
# wrk completed: everything
# the gateway process executes for a request (hyper, the client pool, tokio,
# the layers; not the kernel). The dumps stay in $OUT (default
# target/callgrind) for `callgrind_annotate`; the script prints the top 25
# functions of the full gateway by self cost and by inclusive cost.
#
# PERF=1 adds `perf record -e cpu-clock -g` of the full gateway (native,
# wrk -c32 for DURATION) and prints `perf report`'s top entries (kernel,
# libc and the binary); this machine has no hardware counters, so the sample
# is the CPU clock.
#
# Needs valgrind, wrk, curl, taskset (and perf for PERF=1).
set -euo pipefail

MODES=${MODES:-proxy full}
DURATION=${DURATION:-10}
CONNS=${CONNS:-4}
PORT=${PORT:-18950}
UPSTREAM_PORT=${UPSTREAM_PORT:-18949}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PERF=${PERF:-0}
STREAM_EVENTS=${STREAM_EVENTS:-}

root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$root/target/callgrind}
lua="$root/benches/load/chat.lua"
key="sk-load-0123456789abcdef0123456789abcdef"
for tool in valgrind callgrind_control callgrind_annotate wrk curl taskset; do
  command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install valgrind wrk curl)" >&2; exit 1; }
done
# The same build as gateway.sh's (same features), so neither rebuilds the other's.
(cd "$root" && cargo build --quiet --release --features sqlite,redis --example gateway --example load_server)
bin="$root/target/release/examples"
GATEWAY=${GATEWAY:-$bin/gateway}
upstream_flags=()
if [[ -n $STREAM_EVENTS ]]; then
  upstream_flags=(--stream --events "$STREAM_EVENTS")
  export STREAM=1 # chat.lua asks for a stream
fi
mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-profile.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1 (logs in $work)" >&2; exit 1
}
for p in "$UPSTREAM_PORT" "$PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is taken: set PORT and UPSTREAM_PORT to free ones" >&2; exit 1
  fi
done
taskset -c "$CLIENT_CPU" "$bin/load_server" --mode upstream "${upstream_flags[@]}" --listen "127.0.0.1:$UPSTREAM_PORT" 2>/dev/null &
pids+=($!)
wait_port "$UPSTREAM_PORT"
cat >"$work/gateway.toml" <<EOF
listen = "127.0.0.1:$PORT"
upstream = "http://127.0.0.1:$UPSTREAM_PORT/v1"
upstream_api_key = "sk-upstream-load"

[[models]]
name = "gpt-4o-mini"
input_usd_per_million = 0.15
output_usd_per_million = 0.60
context_window = 128000

[[keys]]
id = "load"
secret = "$key"
models = ["*"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
budget_usd = 1000000000.0
budget_period = "monthly"
EOF
stream_field=""
if [[ -n $STREAM_EVENTS ]]; then stream_field='"stream":true,'; fi
post() {
  curl -sS -o /dev/null -w '%{http_code}' --max-time 30 -X POST -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","max_tokens":64,'"$stream_field"'"messages":[{"role":"user","content":"Say hello."}]}' \
    "http://127.0.0.1:$PORT/v1/chat/completions"
}
requests() { sed -n 's/^RESULT.*requests=\([0-9]*\).*/\1/p'; }
# Calls of the Rust allocator (`__rust_alloc`: fresh allocations, not
# reallocations) in a callgrind dump.
allocations() {
  awk '
    function callee(s,   id, rest) { # "(id) name", "(id)" or "name"
      if (s !~ /^\(/) return s
      id = s; sub(/\).*/, ")", id); rest = s; sub(/^\([0-9]+\) ?/, "", rest)
      if (rest != "") name[id] = rest
      return name[id]
    }
    /^fn=/ { callee(substr($0, 4)); cur = ""; next }
    /^cfn=/ { cur = callee(substr($0, 5)); next }
    /^calls=/ && cur == "__rustc::__rust_alloc" { split($1, c, "="); n += c[2] }
    END { print n + 0 }' "$1"
}

declare -A per allocs
for mode in $MODES; do
  flags=()
  if [[ $mode == proxy ]]; then flags=(--proxy-only); fi
  file="$OUT/gateway-$mode.out"
  rm -f "$file"*
  RUST_LOG=warn taskset -c "$SERVER_CPU" valgrind --tool=callgrind --instr-atstart=no --compress-strings=no \
    --callgrind-out-file="$file" "$GATEWAY" --config "$work/gateway.toml" "${flags[@]}" \
    >/dev/null 2>"$work/$mode.log" &
  pid=$!
  pids+=($pid)
  wait_port "$PORT"
  for _ in 1 2 3; do
    code=$(post)
    [[ $code == 200 ]] || { echo "$mode: the gateway answered $code (logs in $work)" >&2; exit 1; }
  done
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d2s -s "$lua" "http://127.0.0.1:$PORT/v1/chat/completions" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  n=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$lua" "http://127.0.0.1:$PORT/v1/chat/completions" | requests)
  callgrind_control -d "$pid" >/dev/null
  # As long again with no request: what the process does per second idle
  # (timers, the date cache), taken off the loaded run's total, so that the
  # figure does not depend on how many requests valgrind's pace allowed.
  sleep "$DURATION"
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # The dumps asked for are the first numbered ones; the exit writes the rest.
  dump="$file.1"
  [[ -f $dump && -f $file.2 ]] || { echo "$mode: no callgrind dumps $dump, $file.2" >&2; exit 1; }
  total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p; s/^summary: *\([0-9]*\).*/\1/p' "$dump" | head -1)
  idle=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p; s/^summary: *\([0-9]*\).*/\1/p' "$file.2" | head -1)
  per[$mode]=$(((total - idle) / n))
  echo "$mode: $total instructions under load, $idle idle for as long" >&2
  allocs[$mode]=$(awk -v a="$(allocations "$dump")" -v n="$n" 'BEGIN { printf "%.1f", a / n }')
  printf '%-6s %10d instructions and %5.1f allocations per request (%d requests, wrk -c%d, %s)\n' \
    "$mode" "${per[$mode]}" "${allocs[$mode]}" "$n" "$CONNS" "$dump"
done
if [[ -n ${per[proxy]:-} && -n ${per[full]:-} ]]; then
  printf 'tollgate layers: %d instructions per request (%.1f %% of the full gateway), %.1f allocations\n' \
    $((per[full] - per[proxy])) "$(awk -v p="${per[proxy]}" -v f="${per[full]}" 'BEGIN { print (f - p) * 100 / f }')" \
    "$(awk -v p="${allocs[proxy]}" -v f="${allocs[full]}" 'BEGIN { print f - p }')"
fi
if [[ -f $OUT/gateway-full.out.1 ]]; then
  echo; echo "# full gateway, self cost (top 25)"
  callgrind_annotate --threshold=100 "$OUT/gateway-full.out.1" 2>/dev/null | sed -n '/^Ir/,$p' | head -30 || true
  echo; echo "# full gateway, inclusive cost (top 25)"
  callgrind_annotate --inclusive=yes --threshold=100 "$OUT/gateway-full.out.1" 2>/dev/null | sed -n '/^Ir/,$p' | head -30 || true
fi

if [[ $PERF == 1 ]]; then
  command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
  RUST_LOG=warn taskset -c "$SERVER_CPU" "$GATEWAY" --config "$work/gateway.toml" >/dev/null 2>"$work/perf-gateway.log" &
  pid=$!
  pids+=($pid)
  wait_port "$PORT"
  taskset -c "$CLIENT_CPU" wrk -t1 -c32 -d2s -s "$lua" "http://127.0.0.1:$PORT/v1/chat/completions" >/dev/null
  perf record -e cpu-clock -g -o "$OUT/perf-full.data" -p "$pid" -- sleep "$DURATION" >/dev/null 2>&1 &
  rec=$!
  taskset -c "$CLIENT_CPU" wrk -t1 -c32 -d"${DURATION}s" -s "$lua" "http://127.0.0.1:$PORT/v1/chat/completions" >/dev/null
  wait "$rec" || true
  echo; echo "# perf record of the full gateway (wrk -c32, ${DURATION}s): by shared object, then top symbols"
  perf report -i "$OUT/perf-full.data" --stdio --no-children -g none --sort dso 2>/dev/null | grep "%" | head -8 || true
  perf report -i "$OUT/perf-full.data" --stdio --no-children -g none --sort dso,sym 2>/dev/null | grep "%" | head -30 || true
fi
