#!/usr/bin/env bash
# Whether mimalloc pays: `tollgate up` forwarding `tools/call` (memory store, one counter)
# built with mimalloc (the default feature) and with the system allocator
# (`--no-default-features`), alternating, the same client and upstream in one run; and each
# one's idle and loaded RSS.
#
# Usage: loadtest/allocator.sh [CONCURRENCY=16] [SECONDS=8] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-8}
rounds=${3:-2}
# Only the tollgate crate itself is rebuilt without the feature; keep that binary aside.
cargo build --release --quiet -p tollgate --no-default-features
system_bin=$(mktemp)
cp target/release/tollgate "$system_bin"
chmod +x "$system_bin"
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work" "$system_bin"' EXIT

start_upstream
write_counted_policy

run_up() { # $1: label, $2: binary
  local port up
  port=$(free_port)
  write_up "$work/up.toml" "$port" "$upstream_port"
  write_list_scenario "$work/load.toml" "http://127.0.0.1:$port/mcp/k8s" "$upstream_port"
  "$2" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
  up=$!
  wait_for "$work/up.out" > /dev/null
  echo "-- tollgate up, $1: idle RSS $(ps -o rss= -p "$up") KiB"
  "$bin/tollgate-loadtest" mcp "$work/load.toml" | grep "^gateway"
  echo "   RSS after the load: $(ps -o rss= -p "$up") KiB"
  kill "$up"; wait "$up" 2>/dev/null || true
}

for _ in $(seq "$rounds"); do
  run_up "system allocator" "$system_bin"
  run_up "mimalloc" "$bin/tollgate"
done
