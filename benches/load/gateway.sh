#!/usr/bin/env bash
# Load benchmark of the gateway example against its floor, one command:
#
#   benches/load/gateway.sh
#
# Every server below sits in front of the same fake upstream
# (examples/load_server.rs --mode upstream: hyper alone, a fixed 300-byte
# completion with usage) and gets the same load (wrk -t1 -cCONNS posting
# benches/load/chat.lua's chat request with a key), interleaved: run 1 of
# every mode, then run 2 of every mode, ..., so that a change of the
# machine's load hits all of them. Modes (MODES, default all, in this order):
#
#   proxy   the gateway with --proxy-only: same server, same upstream client
#           stack (routing.rs), no tollgate layer (examples/gateway/proxy_only.rs)
#   full    the gateway, every layer on, store = "memory"
#   nginx   nginx as a plain reverse proxy (benches/load/nginx.conf), one worker
#   sqlite  the gateway, every layer on, store = "sqlite:<temp dir>/state.db"
#   redis   the gateway, every layer on, store = "redis://127.0.0.1:REDIS_PORT/0"
#           (a redis-server of its own, no persistence, started by this script)
#   many    the gateway as `full`, with MANY_KEYS keys in its config (default
#           1,000,000: the load key and generated ones); its start-up time
#           (until it listens) and memory (VmRSS) are printed, with full's
#   litellm, portkey   the peers: benches/peers/run.sh installs them and runs
#           this script with them (they need LITELLM and PORTKEY set)
#
# The servers under test are pinned to SERVER_CPU (taskset), wrk, the fake
# upstream and redis-server to CLIENT_CPU. For each mode: median req/s, p50,
# p99 and the server's CPU time per request (user + system of its processes,
# from /proc, so it does not count waiting for a CPU and holds up on a busy
# machine where req/s do not), each with its range over the runs, then the
# ratios the issue asks for (full/nginx, full/proxy, stores/memory) and, for
# redis, Redis commands per request. The load average is printed before and
# after: a wall-clock figure means little without it.
#
#   RUNS=7 DURATION=10 CONNS=32 benches/load/gateway.sh
#   MODES="proxy full nginx" benches/load/gateway.sh
#   GATEWAY=/other/checkout/target/release/examples/gateway benches/load/gateway.sh
#   GATEWAY_LOG=info benches/load/gateway.sh   # the gateway's access log on (a line per request,
#                                              # to a file in the temp dir: ~300 bytes a request)
#
# Neither the gateway (RUST_LOG=warn) nor nginx (access_log off) writes an
# access log by default: the comparison is of the proxying and the policy.
#
# Needs wrk, nginx, redis-server (for redis), curl, taskset (Debian:
# apt-get install wrk nginx redis-server curl util-linux). Everything runs on
# 127.0.0.1, in a temp dir removed at exit; nothing is left running.
set -euo pipefail

MODES=${MODES:-proxy full nginx sqlite redis}
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-18900}
REDIS_PORT=${REDIS_PORT:-18999}
MANY_KEYS=${MANY_KEYS:-1000000}
GATEWAY_LOG=${GATEWAY_LOG:-warn}
# A slow peer (LiteLLM) answers in seconds under -c32: wrk's 2 s default
# would count its answers as errors.
WRK_TIMEOUT=${WRK_TIMEOUT:-30s}

root=$(cd "$(dirname "$0")/../.." && pwd)
lua="$root/benches/load/chat.lua"
key="sk-load-0123456789abcdef0123456789abcdef"
for tool in wrk curl taskset; do
  command -v "$tool" >/dev/null || { echo "$tool not found (see the header of $0)" >&2; exit 1; }
done
wants() { [[ " $MODES " == *" $1 "* ]]; }
if wants nginx; then command -v nginx >/dev/null || { echo "nginx not found (apt-get install nginx)" >&2; exit 1; }; fi
if wants redis; then command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }; fi

(cd "$root" && cargo build --quiet --release --features sqlite,redis --example gateway --example load_server)
bin="$root/target/release/examples"
GATEWAY=${GATEWAY:-$bin/gateway}

work=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-load.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() { # port what [tenths of a second]
  for _ in $(seq "${3:-300}"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not start on port $1 (logs in $work)" >&2; exit 1
}

# A port something else already listens on would be measured instead.
free_port() { # port
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port $1 is taken: set BASE_PORT (and REDIS_PORT) to free ones" >&2; exit 1
  fi
}
for ((p = BASE_PORT; p <= BASE_PORT + $(wc -w <<<"$MODES"); p++)); do free_port "$p"; done
if wants redis; then free_port "$REDIS_PORT"; fi

upstream_port=$((BASE_PORT))
taskset -c "$CLIENT_CPU" "$bin/load_server" --mode upstream --listen "127.0.0.1:$upstream_port" 2>"$work/upstream.log" &
pids+=($!)
wait_port "$upstream_port" "the fake upstream"

if wants redis; then
  taskset -c "$CLIENT_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "redis-server did not start (see $work/redis.log)" >&2; exit 1; }
fi

declare -A port_of procs_of headers_of
descendants() { # pid -> its child processes, theirs, ...
  local c
  for c in $(pgrep -P "$1"); do echo -n "$c "; descendants "$c"; done
}
gateway_config() { # mode port -> path
  local store
  case $1 in
    sqlite) store="sqlite:$work/state.db" ;;
    redis) store="redis://127.0.0.1:$REDIS_PORT/0" ;;
    *) store="memory" ;;
  esac
  cat >"$work/$1.toml" <<EOF
listen = "127.0.0.1:$2"
upstream = "http://127.0.0.1:$upstream_port/v1"
upstream_api_key = "sk-upstream-load"
store = "$store"

[[models]]
name = "gpt-4o-mini"
input_usd_per_million = 0.15
output_usd_per_million = 0.60
max_output_tokens = 4096
context_window = 128000

# Limits and a budget far above what a run can spend: every request is
# looked up, admitted, reserved, charged and settled, none refused.
[[keys]]
id = "load"
secret = "$key"
models = ["*"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
budget_usd = 1000000000.0
budget_period = "monthly"
EOF
  if [[ $1 == many ]]; then
    # Keys that are never used, each with a random hash (a SHA-256 is
    # uniform, and the key store's maps rely on it: hashes with long runs
    # of zeros would all collide).
    awk -v n="$MANY_KEYS" 'BEGIN { srand(1); for (i = 1; i < n; i++) {
      h = ""; for (j = 0; j < 8; j++) h = h sprintf("%08x", int(rand() * 4294967296))
      printf "\n[[keys]]\nid = \"k%d\"\nsecret_sha256 = \"%s\"\n", i, h } }' >>"$work/$1.toml"
  fi
  echo "$work/$1.toml"
}
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
declare -A started_in

i=0
for mode in $MODES; do
  i=$((i + 1))
  port=$((BASE_PORT + i))
  port_of[$mode]=$port
  case $mode in
    nginx)
      mkdir -p "$work/nginx/tmp"
      sed -e "s/@LISTEN@/127.0.0.1:$port/" -e "s/@UPSTREAM@/127.0.0.1:$upstream_port/" \
        "$root/benches/load/nginx.conf" >"$work/nginx/nginx.conf"
      user=()
      if [[ $(id -u) == 0 ]]; then user=(-g "user root;"); fi
      taskset -c "$SERVER_CPU" nginx -e stderr -p "$work/nginx/" -c "$work/nginx/nginx.conf" "${user[@]}" 2>"$work/nginx.log" &
      pids+=($!)
      wait_port "$port" nginx
      procs_of[$mode]="$! $(pgrep -P "$!" | tr '\n' ' ')"
      ;;
    proxy | full | sqlite | redis | many)
      flags=()
      if [[ $mode == proxy ]]; then flags=(--proxy-only); fi
      config=$(gateway_config "$mode" "$port")
      t0=$(date +%s.%N)
      RUST_LOG=$GATEWAY_LOG taskset -c "$SERVER_CPU" "$GATEWAY" --config "$config" "${flags[@]}" \
        >"$work/$mode.out" 2>"$work/$mode.log" &
      pids+=($!)
      # It binds its port before the config's keys are granted: wait for
      # the line it prints once it serves.
      for _ in $(seq 6000); do
        grep -q '^tollgate gateway listening' "$work/$mode.out" 2>/dev/null && break
        kill -0 "$!" 2>/dev/null || { echo "the gateway ($mode) exited (logs in $work)" >&2; exit 1; }
        sleep 0.1
      done
      wait_port "$port" "the gateway ($mode)"
      started_in[$mode]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
      procs_of[$mode]=$!
      ;;
    litellm)
      # benches/peers/run.sh installs it and sets LITELLM (its `litellm` command).
      [[ -x ${LITELLM:-} ]] || { echo "litellm: set LITELLM to the litellm command (benches/peers/run.sh does)" >&2; exit 1; }
      cat >"$work/litellm.yaml" <<EOF
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:$upstream_port/v1
      api_key: sk-upstream-load
general_settings:
  master_key: $key
litellm_settings:
  telemetry: false
EOF
      LITELLM_LOG=ERROR LITELLM_LOCAL_MODEL_COST_MAP=True taskset -c "$SERVER_CPU" "$LITELLM" \
        --config "$work/litellm.yaml" --host 127.0.0.1 --port "$port" --num_workers 1 \
        >"$work/litellm.log" 2>&1 &
      pids+=($!)
      wait_port "$port" litellm 900
      procs_of[$mode]="$! $(descendants "$!")"
      ;;
    portkey)
      # benches/peers/run.sh installs it and sets PORTKEY (its start-server.js).
      [[ -f ${PORTKEY:-} ]] || { echo "portkey: set PORTKEY to its build/start-server.js (benches/peers/run.sh does)" >&2; exit 1; }
      NODE_ENV=production taskset -c "$SERVER_CPU" node "$PORTKEY" --port="$port" --headless \
        >"$work/portkey.log" 2>&1 &
      pids+=($!)
      wait_port "$port" portkey 600
      procs_of[$mode]="$! $(descendants "$!")"
      # It forwards the client's Authorization as the provider's key, to the
      # host these headers name (127.0.0.1 is trusted by default).
      headers_of[$mode]="x-portkey-provider: openai;x-portkey-custom-host: http://127.0.0.1:$upstream_port/v1"
      ;;
    *) echo "unknown mode $mode (proxy full nginx sqlite redis many litellm portkey)" >&2; exit 1 ;;
  esac
  # One request, to fail with the answer rather than with wrk's error count.
  extra=()
  IFS=';' read -ra hs <<<"${headers_of[$mode]:-}"
  for h in "${hs[@]}"; do extra+=(-H "$h"); done
  if ! answer=$(curl -sS --max-time 30 -X POST -H "Authorization: Bearer $key" -H 'Content-Type: application/json' "${extra[@]}" \
      -d '{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Say hello."}]}' \
      -w '\n%{http_code}' "http://127.0.0.1:$port/v1/chat/completions"); then
    echo "$mode: the first request failed (logs in $work)" >&2; exit 1
  fi
  if [[ $(tail -n1 <<<"$answer") != 200 ]]; then
    echo "$mode: the first request answered $(tail -n1 <<<"$answer"): $(head -n1 <<<"$answer")" >&2; exit 1
  fi
done

tck=$(getconf CLK_TCK)
cpu() { # pids... -> user + system ticks of them all
  local total=0 p
  for p in "$@"; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$total"
}
redis_commands() { # script calls (one round trip each) and all commands served so far
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_/ { all += $3; if ($1 ~ /^cmdstat_eval/) scripts += $3 }
    END { print scripts + 0, all + 0 }'
}

# One wrk run: "rps p50_us p99_us cpu_us_per_request".
one() { # mode seconds
  local mode=$1 out before after rb="0 0" ra="0 0"
  # shellcheck disable=SC2086
  before=$(cpu ${procs_of[$mode]})
  if [[ $mode == redis ]]; then rb=$(redis_commands); fi
  out=$(EXTRA_HEADERS=${headers_of[$mode]:-} taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${2}s" --timeout "$WRK_TIMEOUT" -s "$lua" "http://127.0.0.1:${port_of[$mode]}/v1/chat/completions")
  # shellcheck disable=SC2086
  after=$(cpu ${procs_of[$mode]})
  if [[ $mode == redis ]]; then ra=$(redis_commands); fi
  local line; line=$(grep '^RESULT' <<<"$out")
  local errors; errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
  if [[ $errors != 0 ]]; then echo "$mode: errors under load: $line (logs in $work)" >&2; exit 1; fi
  local requests; requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  if [[ $mode == redis ]]; then
    awk -v b="$rb" -v a="$ra" -v n="$requests" 'BEGIN { split(b, x, " "); split(a, y, " ")
      printf "%.2f %.2f\n", (y[1] - x[1]) / n, (y[2] - x[2]) / n }' >>"$work/redis.calls"
  fi
  awk -v t=$((after - before)) -v hz="$tck" -v n="$requests" -v l="$line" 'BEGIN {
    split(l, f, /[ =]/); printf "%s %s %s %.2f\n", f[3], f[5], f[7], t * 1e6 / hz / n }'
}

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# modes: $MODES; $RUNS x ${DURATION}s each, interleaved; wrk -t1 -c$CONNS on CPU $CLIENT_CPU, servers on CPU $SERVER_CPU"
echo "# $(date -u +%FT%TZ), $(nproc) CPUs, load average before: $(load)"
for mode in $MODES; do one "$mode" "$WARMUP" >/dev/null; done
declare -A rps p50 p99 cpus
for r in $(seq "$RUNS"); do
  for mode in $MODES; do
    read -r a b c d < <(one "$mode" "$DURATION")
    rps[$mode]+="$a "; p50[$mode]+="$b "; p99[$mode]+="$c "; cpus[$mode]+="$d "
    printf 'run %d %-7s %10.1f req/s  p50 %6d us  p99 %6d us  CPU %7.2f us/request\n' "$r" "$mode" "$a" "$b" "$c" "$d"
  done
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo ".." hi }'; }
declare -A mrps mcpu
echo
printf '| %-6s | %-26s | %-16s | %-16s | %-26s |\n' mode "req/s median (range)" "p50 us (range)" "p99 us (range)" "CPU us/request (range)"
printf '|---|---|---|---|---|\n'
for mode in $MODES; do
  # shellcheck disable=SC2086
  mrps[$mode]=$(median ${rps[$mode]}); mcpu[$mode]=$(median ${cpus[$mode]})
  # shellcheck disable=SC2086
  printf '| %-6s | %-26s | %-16s | %-16s | %-26s |\n' "$mode" \
    "${mrps[$mode]} ($(range ${rps[$mode]}))" "$(median ${p50[$mode]}) ($(range ${p50[$mode]}))" \
    "$(median ${p99[$mode]}) ($(range ${p99[$mode]}))" "${mcpu[$mode]} ($(range ${cpus[$mode]}))"
done
echo
ratio() { # label a b: req/s b/a and CPU b/a
  if [[ -n ${mrps[$2]:-} && -n ${mrps[$3]:-} ]]; then
    awk -v l="$1" -v ra="${mrps[$2]}" -v rb="${mrps[$3]}" -v ca="${mcpu[$2]}" -v cb="${mcpu[$3]}" \
      'BEGIN { printf "%-22s req/s %.3f   CPU per request %.3f\n", l, rb / ra, cb / ca }'
  fi
}
ratio "full / nginx:" nginx full
ratio "full / proxy-only:" proxy full
ratio "proxy-only / nginx:" nginx proxy
ratio "sqlite / memory:" full sqlite
ratio "redis / memory:" full redis
if [[ -n ${mcpu[proxy]:-} && -n ${mcpu[full]:-} ]]; then
  awk -v p="${mcpu[proxy]}" -v f="${mcpu[full]}" \
    'BEGIN { printf "tollgate layers: %.2f us of %.2f us per request (%.1f %% of the full gateway CPU)\n", f - p, f, (f - p) * 100 / f }'
fi
ratio "${MANY_KEYS} keys / 1 key:" full many
for mode in full many; do
  if [[ -n ${procs_of[$mode]:-} ]]; then
    printf '%-5s started in %s s (config read, keys granted), VmRSS %d MiB after the runs\n' \
      "$mode" "${started_in[$mode]}" $(($(rss_kib "${procs_of[$mode]}") / 1024))
  fi
done
if [[ -s $work/redis.calls ]]; then
  awk '{ s += $1; c += $2; n++ } END { printf "redis: %.2f script calls (round trips) and %.2f commands per request\n", s / n, c / n }' "$work/redis.calls"
fi
echo "# load average after: $(load)"
