#!/usr/bin/env bash
# Tollgate's whole test suite, from a fresh clone on a machine with only the Rust toolchain.
# Installs what the tests need (Node.js for the official MCP SDK client), then checks
# formatting and lints and runs every test. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Node.js + npm run the MCP TypeScript SDK client of tests/sdk_interop.rs.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "==> installing nodejs and npm (Debian packages)"
  apt_install nodejs npm
fi
if [ ! -d tests/interop/node_modules/@modelcontextprotocol/sdk ] \
   || [ tests/interop/package-lock.json -nt tests/interop/node_modules/.package-lock.json ]; then
  echo "==> installing the MCP TypeScript SDK into tests/interop"
  npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked "$@"
