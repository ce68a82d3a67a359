#!/usr/bin/env bash
# MCP 2026-07-28 (stateless) against the session era, through the same edge in one run:
# one `tollgate up` (memory store, the counted policy: every call decided and counted, none
# refused) in front of the demo upstream (a separate process, which speaks both eras), and
# tollgate-loadtest alternating `--protocol session` (initialize, then calls on an
# Mcp-Session-Id) and `--protocol 2026-07-28` (no initialize, no session: the envelope in
# params._meta and the MCP-Protocol-Version, Mcp-Method and Mcp-Name headers on every call)
# runs of the same duration, clients and calls (tools/call of k8s_list_namespaces). The client
# prepares bodies and headers once per run in both eras, so the difference is the gateway's
# (and the upstream's). Each run starts with 1 s of uncounted warm-up calls, which takes the
# session era's one-off wait on each session's first call (the edge's stream-order aid,
# 250 ms) and connection setup out of the figures. The order alternates (odd rounds session
# first, even rounds 2026-07-28 first). Prints every round's req/s and p50/p99 of both and the
# ratio modern/session (these shared machines are noisy: report them all, not the best).
# Fails if any call errs or the exactness check finds an over-admission.
#
# Usage: loadtest/modern-vs-session.sh [SECONDS=8] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
rounds=${2:-3}
concurrency=16
warmup=1
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
start_upstream
write_counted_policy
port=$(free_port)
write_up "$work/up.toml" "$port" "$upstream_port"
"$bin/tollgate" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
up_pid=$!
wait_for "$work/up.out" > /dev/null
write_list_scenario "$work/load.toml" "http://127.0.0.1:$port/mcp/k8s" "$upstream_port"
echo "tollgate up on 127.0.0.1:$port, demo upstream on 127.0.0.1:$upstream_port;" \
  "$concurrency clients, ${seconds} s per run after ${warmup} s of warm-up, $rounds rounds"

# cpu_ticks: CPU time (user + system, in clock ticks) the gateway process has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$up_pid/stat"; }

# load_run PROTOCOL: one load run in that era; prints its `gateway …` table line, then the
# gateway's CPU ticks during the run.
load_run() {
  local out=$work/run-$1.out line before
  before=$(cpu_ticks)
  if ! "$bin/tollgate-loadtest" mcp "$work/load.toml" --protocol "$1" --warmup "$warmup" \
    --policy "$work/policy.json" > "$out" 2>&1; then
    echo "$1: tollgate-loadtest failed:" >&2
    cat "$out" >&2
    return 1
  fi
  line=$(grep "^gateway" "$out" | head -1)
  if [ "$(awk '{ print $4 }' <<<"$line")" != 0 ]; then
    echo "$1: calls failed:" >&2
    cat "$out" >&2
    return 1
  fi
  echo "$line $(( $(cpu_ticks) - before ))"
}

# figures LINE: "N req/s (p50 X ms, p99 Y ms)" from a table line (req/s, p50, p99 columns).
figures() { awk '{ printf "%.0f req/s (p50 %s ms, p99 %s ms)", $5, $6, $8 }' <<<"$1"; }

for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    s=$(load_run session)
    m=$(load_run 2026-07-28)
  else
    m=$(load_run 2026-07-28)
    s=$(load_run session)
  fi
  ratio=$(awk -v s="$(awk '{ print $5 }' <<<"$s")" -v m="$(awk '{ print $5 }' <<<"$m")" \
    'BEGIN { if (s > 0) printf "%.2f", m / s; else print "n/a" }')
  # Calls per CPU second of the gateway (its own cost, apart from the client's and the
  # upstream's, which share the machine): req/s × (seconds + warm-up) / CPU seconds.
  per_cpu() { awk -v hz="$(getconf CLK_TCK)" -v t="$((seconds + warmup))" \
    '{ if ($NF > 0) printf "%.0f", $5 * t / ($NF / hz); else print 0 }' <<<"$1"; }
  sc=$(per_cpu "$s")
  mc=$(per_cpu "$m")
  cpu_ratio=$(awk -v s="$sc" -v m="$mc" 'BEGIN { if (s > 0) printf "%.2f", m / s; else print "n/a" }')
  echo "round $round: session $(figures "$s"), 2026-07-28 $(figures "$m"), modern/session $ratio;" \
    "calls per gateway CPU second: session $sc, 2026-07-28 $mc, modern/session $cpu_ratio"
done
