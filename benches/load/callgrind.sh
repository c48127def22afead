#!/usr/bin/env bash
# Instructions per request of benches/stack.rs's cases, counted by callgrind
# (repeatable on a busy machine, unlike wall time). Only `profile_loop` is
# counted, so building the stores (1M keys) is left out.
#
#   benches/load/callgrind.sh                 # all cases, 5,000 requests each
#   ITERS=2000 benches/load/callgrind.sh chat_bare chat_stack
#   benches/load/callgrind.sh chat_bare chat_depth_1 chat_depth_2 chat_depth_3 chat_depth_4 chat_stack
#   STACK_LIMITS=8 STACK_PROMPT_BYTES=10000 benches/load/callgrind.sh chat_bare chat_stack
#   STACK_ALGORITHM=gcra benches/load/callgrind.sh chat_bare chat_stack   # the limits as GCRA
#
# Output files stay in $OUT (default target/callgrind) for callgrind_annotate.
set -euo pipefail

ITERS=${ITERS:-5000}
root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$root/target/callgrind}
mkdir -p "$OUT"
cases=("$@")
if [[ ${#cases[@]} == 0 ]]; then
  cases=(chat_bare chat_stack chat_stack_1m stream_bare stream_stack)
fi
exe=$(cd "$root" && cargo bench --bench stack --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*stack-[^"]*\)".*/\1/p' | tail -1)
[[ -x $exe ]] || { echo "bench executable not found" >&2; exit 1; }

declare -A per
for case in "${cases[@]}"; do
  file="$OUT/$case.out"
  STACK_PROFILE=$case STACK_ITERS=$ITERS valgrind --tool=callgrind --callgrind-out-file="$file" \
    --collect-atstart=no --toggle-collect='*profile_loop*' "$exe" 2>"$OUT/$case.log" >/dev/null
  total=$(sed -n 's/^==[0-9]*== Collected : \([0-9]*\)/\1/p' "$OUT/$case.log")
  per[$case]=$((total / ITERS))
  printf '%-14s %10d instructions per request (%d requests)\n' "$case" "${per[$case]}" "$ITERS"
done
if [[ -n ${per[chat_bare]:-} ]]; then
  for c in chat_stack chat_stack_1m; do
    [[ -n ${per[$c]:-} ]] && printf 'added by the stack (%s): %d instructions per request\n' "$c" $((per[$c] - per[chat_bare]))
  done
fi
if [[ -n ${per[stream_bare]:-} && -n ${per[stream_stack]:-} ]]; then
  d=$((per[stream_stack] - per[stream_bare]))
  printf 'added by the stack (stream, 200 events): %d instructions per response, %d per event\n' "$d" $((d / 200))
fi
