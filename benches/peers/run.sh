#!/usr/bin/env bash
# The peers, side by side with tollgate and nginx, one command:
#
#   benches/peers/run.sh
#
# Installs, each into a directory of its own under target/peers/ (nothing
# outside it, nothing committed):
#   - the LiteLLM proxy: PyPI `litellm[proxy]` in a venv (target/peers/litellm),
#   - the Portkey gateway: npm `@portkey-ai/gateway` (target/peers/portkey),
# then runs benches/load/gateway.sh with MODES="nginx proxy full portkey
# litellm": the same fake upstream, the same wrk load, interleaved runs, the
# servers pinned to one CPU, req/s, p50, p99 and CPU per request with their
# ranges (see that script's header for the knobs; RUNS, DURATION, CONNS
# pass through). An installed peer is reused; PEERS_REINSTALL=1 installs again
# (LITELLM_VERSION, PORTKEY_VERSION pin versions: default the newest).
#
# What each does per request (tollgate's full gateway: key check, model
# check, two rate limits, a budget reservation and settlement, usage read
# from the answer, rate-limit and budget headers):
#   - nginx: forwards (no key check, no limits, no budget, no body parsing);
#   - LiteLLM: checks the master key, parses the body, calls the upstream
#     through its OpenAI client, computes the cost; no per-key limits or
#     budgets (those need its Postgres database, not configured here);
#   - Portkey: no key of its own (forwards the client's Authorization to the
#     provider), parses the body and maps it to the provider's format and the
#     answer back; no limits or budgets in the open-source gateway.
#
# Needs python3 (with venv), npm and node besides what gateway.sh needs.
# Portkey listens on every interface (it takes no host option); the others
# on 127.0.0.1.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/target/peers"
mkdir -p "$dir"
for tool in python3 npm node; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done

litellm_spec="litellm[proxy]${LITELLM_VERSION:+==$LITELLM_VERSION}"
portkey_spec="@portkey-ai/gateway${PORTKEY_VERSION:+@$PORTKEY_VERSION}"

if [[ ${PEERS_REINSTALL:-0} == 1 || ! -x $dir/litellm/bin/litellm ]]; then
  echo "# installing $litellm_spec into $dir/litellm (a few minutes)"
  rm -rf "$dir/litellm"
  python3 -m venv "$dir/litellm"
  "$dir/litellm/bin/pip" install --quiet --disable-pip-version-check "$litellm_spec" >"$dir/litellm-install.log" 2>&1 \
    || { echo "pip install failed: see $dir/litellm-install.log" >&2; exit 1; }
fi
if [[ ${PEERS_REINSTALL:-0} == 1 || ! -f $dir/portkey/node_modules/@portkey-ai/gateway/build/start-server.js ]]; then
  echo "# installing $portkey_spec into $dir/portkey"
  rm -rf "$dir/portkey"
  mkdir -p "$dir/portkey"
  (cd "$dir/portkey" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent "$portkey_spec") \
    || { echo "npm install failed" >&2; exit 1; }
fi

litellm_version=$("$dir/litellm/bin/pip" show litellm 2>/dev/null | sed -n 's/^Version: //p')
portkey_version=$(node -p "require('$dir/portkey/node_modules/@portkey-ai/gateway/package.json').version")
python_version=$("$dir/litellm/bin/python" --version 2>&1)
echo "# peers: LiteLLM $litellm_version ($python_version), Portkey gateway $portkey_version (node $(node --version)), nginx $(nginx -v 2>&1 | sed 's|.*/||')"

export LITELLM="$dir/litellm/bin/litellm"
export PORTKEY="$dir/portkey/node_modules/@portkey-ai/gateway/build/start-server.js"
export MODES=${MODES:-nginx proxy full portkey litellm}
export RUNS=${RUNS:-3}
# The slow peers need a warm-up long enough to load their code paths.
export WARMUP=${WARMUP:-5}
exec "$root/benches/load/gateway.sh"
