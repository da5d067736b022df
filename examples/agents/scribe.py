#!/usr/bin/env python3
"""The demo's scribe: a captrap agent in plain Python, no captrap library.

The protocol is newline-delimited JSON-RPC 2.0 on the file descriptor named by $CAPTRAP_FD
(3): write one JSON request per line, read one JSON answer per line. The channel itself is
the agent's identity, so no request carries a principal, a pid or a secret.
"""
import json
import os
import sys

fd = int(os.environ["CAPTRAP_FD"])
rx = os.fdopen(fd, "r", encoding="utf-8", newline="\n")
tx = os.fdopen(os.dup(fd), "w", encoding="utf-8", newline="\n")
next_id = 0


class RpcError(Exception):
    def __init__(self, error):
        data = error.get("data") or {}
        super().__init__(data.get("reason") or error["message"])
        self.rpc_code = error["code"]
        self.code = data.get("code")


def call(method, params=None):
    """Sends one request and reads lines until its answer arrives."""
    global next_id
    next_id += 1
    tx.write(json.dumps({"jsonrpc": "2.0", "id": next_id, "method": method, "params": params or {}}) + "\n")
    tx.flush()
    while True:
        line = rx.readline()
        if not line:
            sys.exit("captrap closed the channel")
        answer = json.loads(line)
        if answer.get("id") == next_id:
            break
    if "error" in answer:
        raise RpcError(answer["error"])
    return answer["result"]


def say(text):
    print(text, flush=True)


workspace = os.environ["DEMO_WORKSPACE"]
cap = [c for c in call("capabilities.list")["capabilities"] if not c["revoked"]][0]
say(f"holds {cap['id'][:12]}…: tools {cap['constraints']['allowedTools']} (raw JSON-RPC from Python, pid {os.getpid()})")

r = call("tools.invoke", {"tool": "word_count", "args": {"path": os.path.join(workspace, "notes.txt")}, "capability": cap["id"]})
say(f"word_count workspace/notes.txt -> {r['reason']}({r['exitCode']}): {r['stdout'].split()[0]} words")

try:
    call("tools.invoke", {"tool": "read_file", "args": {"path": os.path.join(workspace, "notes.txt")}, "capability": cap["id"]})
except RpcError as e:
    say(f"read_file workspace/notes.txt -> denied {e.code}")

r = call("tools.invoke", {"tool": "hog", "args": {}, "capability": cap["token"]})
peak = r["usage"]["memoryPeakBytes"]
say(f"hog (32 MiB limit) -> {r['reason']}, exit code {r['exitCode']}, signal {r['signal']}, memory peak {peak // 1048576 if peak else '?'} MiB, {round(r['durationMs'])} ms")
say("done, exiting")
