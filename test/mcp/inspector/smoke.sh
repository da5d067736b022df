#!/bin/sh
# Smoke test with the MCP Inspector CLI (`@modelcontextprotocol/inspector` 0.15, which runs on
# Node 20) against `captrap mcp` in front of server-filesystem: the list is filtered, an allowed
# call answers, a path outside the capability is a tool error naming the code. The inspector is
# installed into $CAPTRAP_INSPECTOR_DIR (default /tmp/captrap-inspector) on first use. Needs root.
set -eu
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
DIR=${CAPTRAP_INSPECTOR_DIR:-/tmp/captrap-inspector}
if [ ! -x "$DIR/node_modules/.bin/mcp-inspector" ]; then
  mkdir -p "$DIR"
  npm install --prefix "$DIR" --no-save --no-audit --no-fund @modelcontextprotocol/inspector@0.15 >/dev/null
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
mkdir "$WORK/root"
echo "hello from the root" >"$WORK/root/a.txt"
echo "outside" >"$WORK/secret.txt"
chmod 755 "$WORK" "$WORK/root"
inspect() {
  "$DIR/node_modules/.bin/mcp-inspector" --cli node --import tsx "$ROOT/src/runner/cli.ts" mcp --state-dir "$WORK/state" --cgroup-base captrap-mcp-inspector \
    --allow-tools read_text_file,list_directory --paths "$WORK/root" --ro "$ROOT/node_modules" \
    -- node "$ROOT/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" "$WORK" "$@"
}
fail() { echo "inspector smoke: FAILED: $1" >&2; exit 1; }
cd "$ROOT"
list=$(inspect --method tools/list)
names=$(printf '%s' "$list" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).tools.map(t=>t.name).sort().join(",")))')
[ "$names" = "list_directory,read_text_file" ] || fail "tools/list showed $names"
inspect --method tools/call --tool-name read_text_file --tool-arg "path=$WORK/root/a.txt" | grep -q "hello from the root" || fail "the allowed call did not answer"
denied=$(inspect --method tools/call --tool-name read_text_file --tool-arg "path=$WORK/secret.txt")
printf '%s' "$denied" | grep -q '"isError": true' || fail "the call outside the root was not a tool error"
printf '%s' "$denied" | grep -q 'E_PATH_OUTSIDE_ROOTS' || fail "the denial does not name E_PATH_OUTSIDE_ROOTS"
echo "inspector smoke: ok (filtered list, allowed call, denied path)"
