#!/bin/sh
# A captrap agent in plain POSIX shell: newline-delimited JSON-RPC 2.0 on fd $CAPTRAP_FD (3).
# One request per line out, one answer per line back. No JSON parser needed for this much:
# the capability id is picked out of the answer with sed.
set -eu
fd=${CAPTRAP_FD:-3}

rpc() { # rpc ID METHOD PARAMS-JSON -> prints the answer line
  printf '{"jsonrpc":"2.0","id":%s,"method":"%s","params":%s}\n' "$1" "$2" "$3" >&"$fd"
  IFS= read -r answer <&"$fd"
  printf '%s\n' "$answer"
}

caps=$(rpc 1 capabilities.list '{}')
cap=$(printf '%s' "$caps" | sed -n 's/^.*"id":"\(cap_[A-Za-z0-9_-]*\)".*$/\1/p')
echo "capability: $cap"
rpc 2 tools.invoke "{\"tool\":\"echo\",\"args\":{\"msg\":\"hello from sh\"},\"capability\":\"$cap\"}"
rpc 3 tools.invoke "{\"tool\":\"rm\",\"args\":{},\"capability\":\"$cap\"}"
