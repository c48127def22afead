#!/usr/bin/env bash
# Streamed load benchmark through the gateway example: what the gateway adds
# to a stream's time to first byte (TTFB) and to last byte (TTLB), which wrk
# cannot measure. The same client (examples/load_client.rs) runs against
#   (a) direct:  the upstream itself (load_server --mode bare --stream: 200
#                chat.completion.chunk events, usage, [DONE]), and
#   (b) gateway: the gateway example (memory store, access log on) in front
#                of that upstream,
# interleaved a b a b ..., the gateway pinned to SERVER_CPU, the upstream and
# the client to CLIENT_CPU. Medians of requests/s, TTFB and TTLB p50/p99, and
# the server's CPU time per request (user + system, from /proc: it holds up on
# a busy machine, where latencies measure the scheduler as much as the code).
#
#   benches/load/stream.sh                    # 5 x 10 s, 32 connections
#   CONNS=1 benches/load/stream.sh            # one connection: latency with no queueing
#   RUNS=3 DURATION=5 CONNS=8 benches/load/stream.sh
#   GATEWAY=/old/checkout/target/release/examples/gateway benches/load/stream.sh
#                                             # another build of the gateway
#
# Needs taskset (util-linux).
set -euo pipefail

RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT_UPSTREAM=${PORT_UPSTREAM:-18797}
PORT_GATEWAY=${PORT_GATEWAY:-18798}
GATEWAY_LOG=${GATEWAY_LOG:-info}

root=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$root" && cargo build --quiet --release --example load_server --example load_client --example gateway)
bin="$root/target/release/examples"
GATEWAY=${GATEWAY:-$bin/gateway}

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_port() { # port
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; exit 1
}

declare -A pid_of
taskset -c "$CLIENT_CPU" "$bin/load_server" --mode bare --stream --listen "127.0.0.1:$PORT_UPSTREAM" 2>/dev/null &
pids+=($!)
pid_of[$PORT_UPSTREAM]=$!
wait_port "$PORT_UPSTREAM"

cat >"$work/gateway.toml" <<EOF
upstream = "http://127.0.0.1:$PORT_UPSTREAM/v1"

[[models]]
name = "gpt-4o-mini"
input_usd_per_million = 0.15
output_usd_per_million = 0.60

[[keys]]
id = "load"
secret = "sk-load-0123456789abcdef0123456789abcdef"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
budget_usd = 1000000000.0
budget_period = "monthly"
EOF
RUST_LOG=$GATEWAY_LOG taskset -c "$SERVER_CPU" "$GATEWAY" --config "$work/gateway.toml" \
  --listen "127.0.0.1:$PORT_GATEWAY" >/dev/null 2>"$work/gateway.log" &
pids+=($!)
pid_of[$PORT_GATEWAY]=$!
wait_port "$PORT_GATEWAY"

tck=$(getconf CLK_TCK)
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # user + system ticks of a process

# One run: "rps ttfb_p50 ttfb_p99 ttlb_p50 ttlb_p99 cpu_us_per_request" (the
# latencies in microseconds; the CPU of the process listening on the port).
one() { # port seconds
  local out line errors before after requests
  before=$(cpu "${pid_of[$1]}")
  out=$(taskset -c "$CLIENT_CPU" "$bin/load_client" --stream --connections "$CONNS" --seconds "$2" \
    --url "http://127.0.0.1:$1/v1/chat/completions")
  after=$(cpu "${pid_of[$1]}")
  line=$(grep '^RESULT' <<<"$out")
  errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
  if [[ $errors != 0 ]]; then echo "errors on port $1: $line" >&2; exit 1; fi
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  echo "$(sed -E 's/RESULT rps=([0-9.]+) ttfb_p50_us=([0-9]+) ttfb_p99_us=([0-9]+) ttlb_p50_us=([0-9]+) ttlb_p99_us=([0-9]+).*/\1 \2 \3 \4 \5/' <<<"$line") $(awk -v t=$((after - before)) -v hz="$tck" -v n="$requests" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')"
}

echo "# direct (a) vs gateway (b), streamed: $RUNS x ${DURATION}s each, $CONNS connections, load: $(cut -d' ' -f1-3 /proc/loadavg)"
one "$PORT_UPSTREAM" "$WARMUP" >/dev/null
one "$PORT_GATEWAY" "$WARMUP" >/dev/null
declare -A col
for i in $(seq "$RUNS"); do
  for side in a b; do
    port=$PORT_UPSTREAM; [[ $side == b ]] && port=$PORT_GATEWAY
    read -r rps f50 f99 l50 l99 cpu_us < <(one "$port" "$DURATION")
    printf 'run %d %s: %9.1f req/s  TTFB p50 %6d us p99 %6d us  TTLB p50 %6d us p99 %6d us  server CPU %7.1f us/request\n' \
      "$i" "$side" "$rps" "$f50" "$f99" "$l50" "$l99" "$cpu_us"
    col[$side.rps]+="$rps "; col[$side.f50]+="$f50 "; col[$side.f99]+="$f99 "
    col[$side.l50]+="$l50 "; col[$side.l99]+="$l99 "; col[$side.cpu]+="$cpu_us "
  done
done

median() { printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for side in a b; do
  name=direct; [[ $side == b ]] && name=gateway
  echo "$side $name: median $(median "${col[$side.rps]}") req/s, TTFB p50 $(median "${col[$side.f50]}") us p99 $(median "${col[$side.f99]}") us, TTLB p50 $(median "${col[$side.l50]}") us p99 $(median "${col[$side.l99]}") us, server CPU $(median "${col[$side.cpu]}") us/request"
done
echo "added by the gateway (medians): TTFB p50 $(( $(median "${col[b.f50]}" | cut -d. -f1) - $(median "${col[a.f50]}" | cut -d. -f1) )) us, TTLB p50 $(( $(median "${col[b.l50]}" | cut -d. -f1) - $(median "${col[a.l50]}" | cut -d. -f1) )) us; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
