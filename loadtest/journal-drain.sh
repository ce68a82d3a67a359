#!/usr/bin/env bash
# Backlog drain after a collector outage (issue 25): `tollgate up` with the decision journal
# and span export to a collector that is down, under closed-loop load for SECONDS; then the
# collector (rotel from PyPI, blackhole exporter, same machine) comes up with no load running,
# and the journal's backlog is timed from its first acknowledged batch to its last (the
# `exported` position in the journal directory reaching the decisions made), with the CPU
# seconds `tollgate up` spent on it. RATE sets audit.export_spans_per_second (default: the
# default, 50,000). Starts its own processes on loopback ports.
#
# Usage: [RATE=N] loadtest/journal-drain.sh [CONCURRENCY=16] [SECONDS=8] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-8}
rounds=${3:-2}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh

start_upstream
write_counted_policy

now() { date +%s.%N; }

for round in $(seq "$rounds"); do
  rm -rf "$work/journal"
  otlp_port=$(free_port)
  port=$(free_port)
  rate_line=""
  if [ -n "${RATE:-}" ]; then
    rate_line="export_spans_per_second = $RATE"
  fi
  write_up "$work/up.toml" "$port" "$upstream_port" "[telemetry]
otlp_endpoint = \"http://127.0.0.1:$otlp_port\"

[audit]
journal_dir = \"$work/journal\"
$rate_line"
  write_list_scenario "$work/load.toml" "http://127.0.0.1:$port/mcp/k8s" "$upstream_port"
  "$bin/tollgate" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
  up=$!
  wait_for "$work/up.out" > /dev/null
  echo "-- round $round: load with the collector down"
  "$bin/tollgate-loadtest" mcp "$work/load.toml" | grep -v "^$" | tee "$work/run.log"
  decided=$(awk '/^gateway/ { print $3 }' "$work/run.log")
  sleep 1
  journal_bytes=$(du -sb "$work/journal" | cut -f1)
  start_rotel "$otlp_port"
  up_at=$(now)
  first="" cpu_first=""
  while :; do
    exported=$(cat "$work/journal/exported" 2>/dev/null || echo 0)
    if [ -z "$first" ] && [ "$exported" -gt 0 ]; then
      first=$(now)
      cpu_first=$(cpu_seconds "$up")
    fi
    if [ "$exported" -ge "$decided" ]; then
      break
    fi
    if awk -v a="$up_at" -v b="$(now)" 'BEGIN { exit !(b - a > 300) }'; then
      echo "the backlog did not drain within 300 s (exported $exported of $decided)" >&2
      exit 1
    fi
    sleep 0.05
  done
  last=$(now)
  cpu_last=$(cpu_seconds "$up")
  awk -v n="$decided" -v bytes="$journal_bytes" -v up="$up_at" -v f="$first" -v l="$last" -v ca="$cpu_first" -v cb="$cpu_last" 'BEGIN {
    d = l - f
    printf "backlog %d decisions (%.0f journal bytes each); first batch acknowledged %.2f s after the collector came up; drained in %.2f s: %.0f spans/s; tollgate up CPU while draining %.2f s (%.0f spans per CPU second)\n",
      n, bytes / n, f - up, d, (d > 0 ? n / d : 0), cb - ca, (cb - ca > 0 ? n / (cb - ca) : 0)
  }'
  kill "$up" "$rotel_pid"; wait "$up" "$rotel_pid" 2>/dev/null || true
done
