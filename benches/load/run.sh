#!/usr/bin/env bash
# Load benchmark over loopback: the same handler served (a) bare and (b) behind
# the tollgate server stack, the server pinned to CPU 0 and wrk to CPU 1, runs
# interleaved a b a b ..., medians and the b/a ratio with its spread.
#
#   benches/load/run.sh                 # bare vs full (memory stores)
#   benches/load/run.sh full full-redis # memory vs Redis stores (redis-server: started on
#                                       # REDIS_PORT pinned to REDIS_CPU if none answers)
#   RUNS=7 DURATION=10 CONNS=32 STREAM=1 benches/load/run.sh
#   SERVER_A=/old/checkout/target/release/examples/load_server benches/load/run.sh full full
#                                       # one mode, two builds: an A/B of two commits
#
# Needs wrk (Debian: apt-get install wrk) and taskset (util-linux).
#
# wrk cannot time a stream's first and last byte: benches/load/stream.sh does,
# through the gateway example, with examples/load_client.rs.
set -euo pipefail

A=${1:-bare}
B=${2:-full}
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2}
STREAM=${STREAM:-0}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT_A=${PORT_A:-18787}
PORT_B=${PORT_B:-18788}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_CPU=${REDIS_CPU:-0}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}

root=$(cd "$(dirname "$0")/../.." && pwd)
lua="$root/benches/load/chat.lua"
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }

features=()
if [[ $A == full-redis || $B == full-redis ]]; then features=(--features redis); fi
(cd "$root" && cargo build --quiet --release --example load_server "${features[@]}")
server="$root/target/release/examples/load_server"
SERVER_A=${SERVER_A:-$server}
SERVER_B=${SERVER_B:-$server}

extra=()
if [[ $STREAM == 1 ]]; then extra+=(--stream); fi

pids=()
declare -A pid_of
tck=$(getconf CLK_TCK)
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { # mode port binary
  taskset -c "$SERVER_CPU" "$3" --mode "$1" --listen "127.0.0.1:$2" --redis "$REDIS_URL" "${extra[@]}" &
  pids+=($!)
  pid_of[$2]=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server $1 did not start on port $2" >&2; exit 1
}
redis=0
if [[ $A == full-redis || $B == full-redis ]]; then
  redis=1
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    taskset -c "$REDIS_CPU" redis-server --port "$REDIS_PORT" --save '' --appendonly no >/dev/null &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
fi
# Script calls Redis has served so far (EVAL/EVALSHA: each is one round trip;
# the commands a script runs inside are not) and all commands, for "round
# trips per request".
redis_commands() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_/ { all += $3; if ($1 ~ /^cmdstat_eval/) scripts += $3 }
    END { print scripts + 0, all + 0 }'
}

start "$A" "$PORT_A" "$SERVER_A"
start "$B" "$PORT_B" "$SERVER_B"

cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # user + system ticks of a process

# One wrk run against a port: "rps p50_us p99_us cpu_us_per_request". The
# server's CPU time per request (from /proc, user + system) does not count
# the time the server waited for a CPU, so it holds up on a busy machine
# where requests/s do not.
one() { # port seconds
  local out before after rbefore="0 0" rafter="0 0"
  before=$(cpu "${pid_of[$1]}")
  if [[ $redis == 1 ]]; then rbefore=$(redis_commands); fi
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${2}s" -s "$lua" "http://127.0.0.1:$1/v1/chat/completions")
  after=$(cpu "${pid_of[$1]}")
  if [[ $redis == 1 ]]; then rafter=$(redis_commands); fi
  local line; line=$(grep '^RESULT' <<<"$out")
  local errors; errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
  if [[ $errors != 0 ]]; then echo "errors on port $1: $line" >&2; exit 1; fi
  local requests; requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  local cpu_us; cpu_us=$(awk -v t=$((after - before)) -v hz="$tck" -v n="$requests" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  if [[ $redis == 1 ]]; then
    awk -v b="$rbefore" -v a="$rafter" -v n="$requests" -v port="$1" 'BEGIN {
      split(b, x, " "); split(a, y, " ")
      printf "redis on port %s: %.2f script calls (round trips) and %.2f commands (inner ones included) per request\n",
        port, (y[1] - x[1]) / n, (y[2] - x[2]) / n }' >&2
  fi
  echo "$(sed -E 's/RESULT rps=([0-9.]+) p50_us=([0-9]+) p99_us=([0-9]+).*/\1 \2 \3/' <<<"$line") $cpu_us"
}

echo "# $A (a) vs $B (b): $RUNS x ${DURATION}s each, $CONNS connections, stream=$STREAM, load: $(cut -d' ' -f1-3 /proc/loadavg)"
one "$PORT_A" "$WARMUP" >/dev/null
one "$PORT_B" "$WARMUP" >/dev/null
ra=(); rb=(); ratios=(); la50=(); lb50=(); la99=(); lb99=(); ca=(); cb=(); cratios=()
for i in $(seq "$RUNS"); do
  read -r rps p50 p99 cpu_us < <(one "$PORT_A" "$DURATION"); ra+=("$rps"); la50+=("$p50"); la99+=("$p99"); ca+=("$cpu_us")
  printf 'run %d a: %10.1f req/s  p50 %5d us  p99 %6d us  server CPU %6.2f us/request\n' "$i" "$rps" "$p50" "$p99" "$cpu_us"
  read -r rps p50 p99 cpu_us < <(one "$PORT_B" "$DURATION"); rb+=("$rps"); lb50+=("$p50"); lb99+=("$p99"); cb+=("$cpu_us")
  printf 'run %d b: %10.1f req/s  p50 %5d us  p99 %6d us  server CPU %6.2f us/request\n' "$i" "$rps" "$p50" "$p99" "$cpu_us"
  ratios+=("$(awk -v a="${ra[-1]}" -v b="$rps" 'BEGIN { printf "%.4f", b / a }')")
  cratios+=("$(awk -v a="${ca[-1]}" -v b="$cpu_us" 'BEGIN { printf "%.4f", a / b }')")
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo " .. " hi }'; }

echo "a $A: median $(median "${ra[@]}") req/s (range $(minmax "${ra[@]}")), p50 $(median "${la50[@]}") us, p99 $(median "${la99[@]}") us, server CPU $(median "${ca[@]}") us/request (range $(minmax "${ca[@]}"))"
echo "b $B: median $(median "${rb[@]}") req/s (range $(minmax "${rb[@]}")), p50 $(median "${lb50[@]}") us, p99 $(median "${lb99[@]}") us, server CPU $(median "${cb[@]}") us/request (range $(minmax "${cb[@]}"))"
echo "CPU-bound ratio (server CPU per request a/b): median $(median "${cratios[@]}") (pairwise range $(minmax "${cratios[@]}"))"
echo "ratio b/a: median $(median "${ratios[@]}") (pairwise range $(minmax "${ratios[@]}")); load after: $(cut -d' ' -f1-3 /proc/loadavg)"
