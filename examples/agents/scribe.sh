#!/bin/sh
# The demo's scribe in plain POSIX shell: what scribe.py does, for hosts without python3
# (`npm run demo` falls back to it). Requests are printf'd onto fd $CAPTRAP_FD, answers read
# back one line each; the few fields needed are picked out with sed.
set -eu
fd=${CAPTRAP_FD:-3}
ws=$DEMO_WORKSPACE
n=0

rpc() { # rpc METHOD PARAMS-JSON -> the answer line
  n=$((n + 1))
  printf '{"jsonrpc":"2.0","id":%s,"method":"%s","params":%s}\n' "$n" "$1" "$2" >&"$fd"
  IFS= read -r answer <&"$fd"
  printf '%s\n' "$answer"
}
field() { # field NAME < answer -> the string or bare value of "NAME": (each name used here occurs once)
  sed -n "s/^.*\"$1\":\"\{0,1\}\([^\",}]*\).*$/\1/p"
}

caps=$(rpc capabilities.list '{}')
cap=$(printf '%s' "$caps" | sed -n 's/^.*"id":"\(cap_[A-Za-z0-9_-]*\)".*$/\1/p')
tools=$(printf '%s' "$caps" | sed -n 's/^.*"allowedTools":\[\([^]]*\)\].*$/\1/p' | tr -d '"' | sed 's/,/, /g')
echo "holds $(printf '%s' "$cap" | cut -c1-12)…: tools [$tools] (raw JSON-RPC from sh, pid $$)"

r=$(rpc tools.invoke "{\"tool\":\"word_count\",\"args\":{\"path\":\"$ws/notes.txt\"},\"capability\":\"$cap\"}")
words=$(printf '%s' "$r" | field stdout | cut -d' ' -f1)
echo "word_count workspace/notes.txt -> $(printf '%s' "$r" | field reason)($(printf '%s' "$r" | field exitCode)): $words words"

r=$(rpc tools.invoke "{\"tool\":\"read_file\",\"args\":{\"path\":\"$ws/notes.txt\"},\"capability\":\"$cap\"}")
echo "read_file workspace/notes.txt -> denied $(printf '%s' "$r" | sed -n 's/^.*"data":{"code":"\([A-Z_]*\)".*$/\1/p')"

r=$(rpc tools.invoke "{\"tool\":\"hog\",\"args\":{},\"capability\":\"$cap\"}")
echo "hog (32 MiB limit) -> $(printf '%s' "$r" | field reason), exit code $(printf '%s' "$r" | field exitCode), signal $(printf '%s' "$r" | field signal), memory peak $(( $(printf '%s' "$r" | field memoryPeakBytes) / 1048576 )) MiB"
echo "done, exiting"
