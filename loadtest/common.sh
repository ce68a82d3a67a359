# Shared by the loadtest/ scripts (sourced): builds the release binaries, makes a work
# directory removed at exit with every started process, and starts processes on free
# loopback ports.

bin=$PWD/target/release
cargo build --release --quiet -p tollgate -p tollgate-loadtest
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for FILE: waits for a tollgate process's "listening on http://ADDR" line in FILE and
# prints http://ADDR.
wait_for() {
  local tries=0
  until grep -q "listening on" "$1" 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -gt 300 ]; then
      echo "no \"listening on\" line in $1 within 30 s:" >&2
      cat "$1" >&2
      exit 1
    fi
    sleep 0.1
  done
  sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$1" | head -1
}

# start_redis: a redis-server on a free port, in the work directory; sets redis_port.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null &
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
}
