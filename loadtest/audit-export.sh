#!/usr/bin/env bash
# Audit export at full speed: `tollgate up` forwarding admitted tools/call requests (policy with
# one counter, memory store) with OTLP span export off, then on to a collector that discards
# spans (rotel from PyPI, blackhole exporter, same machine), alternating, same client. After
# each run with export on, the spans recorded, acknowledged by the collector, lost and dropped
# are read from the gateway's own counters (tollgate_spans_{ended,exported,lost}_total) once its
# queue has drained, next to the decisions it made; and calls per CPU second of the gateway
# (and the collector's CPU), the gateway's own cost without the processes sharing the cores.
# Starts its own processes on loopback ports.
#
# With JOURNAL=1 each round also runs "journal": export on, with the decision journal
# ([audit] journal_dir), so decision spans are exported from the journal; with REQUIRED=1
# also "required": the same with audit.required (a decision waits for its record's fsync);
# with ONLY=1 also "journal-only": the journal without any export (what writing it costs).
# PROFILE=MODE records a CPU profile of the gateway during that mode's runs (perf.MODE.data).
# MODES="off journal" runs just those modes, in that order, each round.
#
# Usage: [JOURNAL=1] loadtest/audit-export.sh [CONCURRENCY=16] [SECONDS=10] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-10}
rounds=${3:-2}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh

otlp_port=$(free_port)
start_rotel "$otlp_port"
until (echo > "/dev/tcp/127.0.0.1/$otlp_port") 2>/dev/null; do sleep 0.1; done

start_upstream

write_counted_policy

run() { # $1: off | on | journal
  local port telemetry=""
  port=$(free_port)
  if [ "$1" != off ] && [ "$1" != journal-only ]; then
    telemetry="[telemetry]
otlp_endpoint = \"http://127.0.0.1:$otlp_port\""
  fi
  if [ "$1" = journal ] || [ "$1" = required ] || [ "$1" = journal-only ]; then
    rm -rf "$work/journal"
    telemetry="$telemetry

[audit]
journal_dir = \"$work/journal\""
  fi
  if [ "$1" = required ]; then
    telemetry="$telemetry
required = true"
  fi
  write_up "$work/up.toml" "$port" "$upstream_port" "$telemetry"
  write_list_scenario "$work/load.toml" "http://127.0.0.1:$port/mcp/k8s" "$upstream_port"
  "$bin/tollgate" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
  local up=$!
  wait_for "$work/up.out" > /dev/null
  echo "-- export $1"
  local cpu_before rotel_before
  cpu_before=$(cpu_seconds "$up")
  rotel_before=$(cpu_seconds "$rotel_pid")
  local perf=""
  if [ "${PROFILE:-}" = "$1" ]; then
    # PROFILE=MODE: a CPU profile of `tollgate up` during that mode's runs (perf.MODE.data).
    perf record -q ${PERF_ARGS:--g} -o "perf.$1.data" -p "$up" -- sleep "$((seconds - 1))" > /dev/null 2>&1 &
    perf=$!
  fi
  "$bin/tollgate-loadtest" mcp "$work/load.toml" | grep -v "^$" | tee "$work/run.log"
  if [ -n "$perf" ]; then wait "$perf" || true; fi
  # The gateway's own cost per call, without the client, upstream and collector sharing the
  # cores; and what the collector took.
  awk -v a="$cpu_before" -v b="$(cpu_seconds "$up")" -v ra="$rotel_before" -v rb="$(cpu_seconds "$rotel_pid")" \
    '/^gateway/ { n = $3 } END { c = b - a; printf "tollgate up CPU: %.2f s, %.0f calls per CPU second; collector CPU: %.2f s\n", c, (c > 0 ? n / c : 0), rb - ra }' \
    "$work/run.log"
  if [ "$1" = journal ] || [ "$1" = required ] || [ "$1" = journal-only ]; then
    sleep 2
    echo "journal: $(du -sb "$work/journal" | cut -f1) bytes, exported up to record $(cat "$work/journal/exported" 2>/dev/null || echo 0)"
  fi
  if [ "$1" = on ]; then
    sleep 2 # one scheduled export (500 ms) and more, so the queue is empty
    curl -s "http://127.0.0.1:$port/metrics" | awk '
      /^tollgate_decisions_total/ { decisions += $NF }
      /^tollgate_spans_ended_total/ { ended = $NF }
      /^tollgate_spans_exported_total/ { exported = $NF }
      /^tollgate_spans_lost_total/ { lost = $NF }
      END { printf "decisions %d; spans: ended %d, acknowledged by the collector %d, lost %d, dropped from the queue %d\n",
                   decisions, ended, exported, lost, ended - exported - lost }'
  fi
  kill "$up"; wait "$up" 2>/dev/null || true
}

modes=${MODES:-off on}
if [ -z "${MODES:-}" ]; then
  if [ "${JOURNAL:-0}" = 1 ]; then modes="$modes journal"; fi
  if [ "${REQUIRED:-0}" = 1 ]; then modes="$modes required"; fi
  if [ "${ONLY:-0}" = 1 ]; then modes="$modes journal-only"; fi
fi
for _ in $(seq "$rounds"); do
  for mode in $modes; do
    run "$mode"
  done
done
