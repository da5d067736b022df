// The admin commands (ps, caps, revoke, kill, stats) against a stand-in sidecar: an
// RpcConnection server on a real Unix socket in a temp dir, serving canned answers and
// recording every request. What is checked is what the user sees: tables, JSON, one-line
// errors and exit codes.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type { CapView } from '../../src/agent.js';
import { DEFAULT_SOCKET, formatBytes, formatDuration, renderTable, resolveSocketPath, treeOrder, type AgentRow, type SidecarStats } from '../../src/runner/admin-client.js';
import { main as caps } from '../../src/runner/commands/caps.js';
import { main as kill } from '../../src/runner/commands/kill.js';
import { main as ps } from '../../src/runner/commands/ps.js';
import { main as revoke } from '../../src/runner/commands/revoke.js';
import { main as stats } from '../../src/runner/commands/stats.js';
import { RPC_ERROR, RpcConnection, RpcError, type RpcHandler } from '../../src/runner/jsonrpc.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

const AGENTS: AgentRow[] = [
  { id: 'worker', parent: 'planner', pid: 2002, startTime: 9, state: 'exited', exitReason: 'signaled', limits: { memoryBytes: 64 << 20, pids: 16 }, usage: { memoryBytes: null, memoryPeakBytes: 3 << 20, cpuUsageUs: 1500 }, capabilities: 0, toolsRunning: 0 },
  { id: 'planner', parent: null, pid: 2001, startTime: 8, state: 'running', exitReason: null, limits: { memoryBytes: 512 << 20, pids: 64 }, usage: { memoryBytes: 20 << 20, memoryPeakBytes: 25 << 20, cpuUsageUs: 2_500_000 }, capabilities: 2, toolsRunning: 1 },
  { id: 'scribe', parent: null, pid: 2003, startTime: 10, state: 'running', exitReason: null, limits: {}, usage: { memoryBytes: 1024, memoryPeakBytes: 2048, cpuUsageUs: 0 }, capabilities: 1, toolsRunning: 0 },
];

function cap(id: string, principal: string, parent: string | null, revoked = false): CapView {
  return {
    id, token: `ct1.${id}`, principal, resource: { type: 'tool', pattern: '*' }, operations: ['invoke'],
    constraints: { allowedTools: ['read_file'], paths: ['/srv/data'] }, parent, depth: parent ? 1 : 0,
    issuedAt: Date.now(), expiresAt: Date.now() + 3_600_000, holder: { pid: 2001, startTime: 8 }, revoked,
  };
}
const CAPS = [cap('cap_child000000000000000', 'worker', 'cap_root0000000000000000', true), cap('cap_root0000000000000000', 'planner', null)];

const STATS: SidecarStats = {
  kernel: { issued: 5, delegated: 2, revoked: 1, denials: 3, live: 4 },
  audit: { written: 40, dropped: 0 },
  sandboxes: { running: 1, started: 7, exited: 6, byReason: { exited: 4, oom: 1, killed: 1 } },
  agents: { running: 2, exited: 1 },
  uptimeMs: 61_000,
  rssBytes: 80 << 20,
};

let dir: string;
let socketPath: string;
let server: net.Server;
const seen: Array<{ method: string; params: unknown }> = [];
const conns = new Set<RpcConnection>();

const HANDLERS: Record<string, RpcHandler> = {
  'agents.list': () => ({ agents: AGENTS }),
  'capabilities.list': (p) => {
    const principal = (p as { principal?: string }).principal;
    return { capabilities: principal ? CAPS.filter((c) => c.principal === principal) : CAPS };
  },
  'capabilities.revoke': (p) => {
    const { id, principal } = p as { id?: string; principal?: string };
    if (id === 'cap_nope00000000000000000') throw new RpcError(RPC_ERROR.NOT_FOUND, `no such capability: ${id}`);
    return { revoked: id ? [id, 'cap_child000000000000000'] : principal === 'nobody' ? [] : ['cap_root0000000000000000'] };
  },
  'agents.kill': (p) => {
    const { id } = p as { id: string };
    if (id !== 'planner') throw new RpcError(RPC_ERROR.NOT_FOUND, `no such agent: ${id}`);
    return { killed: true };
  },
  stats: () => STATS,
  metrics: () => ({ text: '# HELP captrap_sandboxes_started_total Sandboxes started\n# TYPE captrap_sandboxes_started_total counter\ncaptrap_sandboxes_started_total 7\n' }),
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-admin-cli-'));
  socketPath = join(dir, 'admin.sock');
  server = net.createServer((sock) => {
    const handlers = Object.fromEntries(
      Object.entries(HANDLERS).map(([m, h]) => [
        m,
        (params: unknown, method: string) => {
          seen.push({ method, params });
          return h(params, method);
        },
      ]),
    );
    const c = new RpcConnection(sock, sock, { handlers });
    conns.add(c);
    c.on('close', () => {
      conns.delete(c);
      sock.destroy();
    });
  });
  await new Promise<void>((r) => server.listen(socketPath, r));
});

afterAll(async () => {
  for (const c of conns) c.close();
  await new Promise<void>((r) => server.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  seen.length = 0;
});

/** Runs a command's main() in this process and captures what it writes. */
async function run(cmd: (argv: string[]) => Promise<number>, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => ((out += String(c)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => ((err += String(c)), true));
  try {
    const code = await cmd(argv);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

describe('admin socket path', () => {
  it('takes --socket, then $CAPTRAP_SOCKET, then ./.captrap/admin.sock, resolved against the cwd', () => {
    expect(resolveSocketPath('/a/flag.sock', { CAPTRAP_SOCKET: '/b/env.sock' }, '/cwd')).toBe('/a/flag.sock');
    expect(resolveSocketPath(undefined, { CAPTRAP_SOCKET: 'rel/env.sock' }, '/cwd')).toBe('/cwd/rel/env.sock');
    expect(resolveSocketPath(undefined, {}, '/cwd')).toBe(join('/cwd', DEFAULT_SOCKET));
    expect(resolveSocketPath('', { CAPTRAP_SOCKET: '' }, '/cwd')).toBe('/cwd/.captrap/admin.sock');
  });

  it('says in one line that no sidecar is there (missing socket), exit 2', async () => {
    const r = await run(ps, ['--socket', join(dir, 'missing.sock')]);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/^captrap ps: no captrap sidecar at .*missing\.sock \(no such socket\).*\[E_ADMIN_NO_SOCKET\]\n$/);
  });

  it('says in one line that nothing listens (a file that is no live socket), exit 2', async () => {
    const stale = join(dir, 'stale.sock');
    writeFileSync(stale, '');
    const r = await run(caps, ['--socket', stale]);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain('[E_ADMIN_REFUSED]');
  });

  it('uses $CAPTRAP_SOCKET when no --socket is given', async () => {
    vi.stubEnv('CAPTRAP_SOCKET', socketPath);
    try {
      const r = await run(kill, ['planner']);
      expect(r.code).toBe(0);
      expect(seen).toEqual([{ method: 'agents.kill', params: { id: 'planner' } }]);
    } finally {
      vi.unstubAllEnvs();
    }
  });
});

describe('captrap ps', () => {
  it('prints the agents as a tree with pid, state, memory and limits', async () => {
    const r = await run(ps, ['--socket', socketPath]);
    expect(r.code).toBe(0);
    const lines = r.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^AGENT\s+PID\s+STATE\s+MEM\s+PEAK\s+MEM LIMIT\s+PIDS\s+CPU\s+CAPS\s+TOOLS$/);
    // The sub-agent sits right under its parent, even though the sidecar listed it first.
    expect(lines.map((l) => l.split(/\s{2,}/)[0]!.trim())).toEqual(['AGENT', 'planner', '└ worker', 'scribe']);
    expect(lines[1]).toMatch(/planner\s+2001\s+running\s+20 MiB\s+25 MiB\s+512 MiB\s+64\s+2\.5s\s+2\s+1$/);
    expect(lines[2]).toContain('exited (signaled)');
    expect(seen).toEqual([{ method: 'agents.list', params: {} }]);
  });

  it('--json prints what the sidecar said', async () => {
    const r = await run(ps, ['--socket', socketPath, '--json']);
    expect(JSON.parse(r.out)).toEqual({ agents: AGENTS });
  });

  it('--watch redraws until SIGINT, then exits 0', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'ps', '--watch', '--interval', '100', '--socket', socketPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const deadline = Date.now() + 15_000;
    while ((out.match(/^AGENT/gm) ?? []).length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGINT');
    const code = await Promise.race([exited, new Promise<number>((r) => setTimeout(() => r(-1), 5000))]);
    if (code === -1) child.kill('SIGKILL');
    expect((out.match(/^AGENT/gm) ?? []).length).toBeGreaterThanOrEqual(3);
    expect(out).toContain('(Ctrl-C to stop)');
    expect(code).toBe(0);
  });

  it('rejects a silly --interval as a usage error', async () => {
    const r = await run(ps, ['--socket', socketPath, '--watch', '--interval', '0']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--interval');
    expect(seen).toEqual([]);
  });
});

describe('captrap caps', () => {
  it('prints the delegation tree, revoked ones marked', async () => {
    const r = await run(caps, ['--socket', socketPath]);
    expect(r.code).toBe(0);
    const lines = r.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+PRINCIPAL\s+RESOURCE\s+OPS\s+CONSTRAINTS\s+HOLDER\s+EXPIRES\s+STATE$/);
    expect(lines[1]).toMatch(/^cap_root0+\s+planner\s+tool:\*\s+invoke\s+tools=read_file paths=\/srv\/data\s+2001\s+(?:in 59m59s|in 1h0m)\s+live$/);
    expect(lines[2]).toMatch(/^└ cap_child0+\s+worker .*revoked$/);
  });

  it('--principal asks the sidecar for that principal only', async () => {
    const r = await run(caps, ['--socket', socketPath, '--principal', 'planner', '--json']);
    expect(JSON.parse(r.out).capabilities.map((c: CapView) => c.id)).toEqual(['cap_root0000000000000000']);
    expect(seen).toEqual([{ method: 'capabilities.list', params: { principal: 'planner' } }]);
  });
});

describe('captrap revoke', () => {
  it('revokes by id and lists what went', async () => {
    const r = await run(revoke, ['cap_root0000000000000000', '--socket', socketPath]);
    expect(r.code).toBe(0);
    expect(r.out).toBe('revoked 2 capabilities (cap_root0000000000000000):\n  cap_root0000000000000000\n  cap_child000000000000000\n');
    expect(seen).toEqual([{ method: 'capabilities.revoke', params: { id: 'cap_root0000000000000000' } }]);
  });

  it('revokes by principal, --json', async () => {
    const r = await run(revoke, ['--principal', 'planner', '--json', '--socket', socketPath]);
    expect(JSON.parse(r.out)).toEqual({ revoked: ['cap_root0000000000000000'] });
    expect(seen).toEqual([{ method: 'capabilities.revoke', params: { principal: 'planner' } }]);
  });

  it('wants exactly one of id and --principal (exit 2, nothing sent)', async () => {
    for (const argv of [[], ['cap_a', '--principal', 'p']]) {
      const r = await run(revoke, [...argv, '--socket', socketPath]);
      expect(r.code).toBe(2);
      expect(r.err).toContain('exactly one');
    }
    expect(seen).toEqual([]);
  });

  it('reports an unknown id in one line, exit 1', async () => {
    const r = await run(revoke, ['cap_nope00000000000000000', '--socket', socketPath]);
    expect(r.code).toBe(1);
    expect(r.err).toBe('captrap revoke: no such capability: cap_nope00000000000000000 [E_NOT_FOUND]\n');
  });
});

describe('captrap kill', () => {
  it('kills a named agent', async () => {
    const r = await run(kill, ['planner', '--socket', socketPath]);
    expect([r.code, r.out]).toEqual([0, 'killed agent planner\n']);
  });

  it('an unknown agent: exit 1; a missing argument: exit 2', async () => {
    const r = await run(kill, ['ghost', '--socket', socketPath]);
    expect(r.code).toBe(1);
    expect(r.err).toContain('no such agent: ghost');
    const u = await run(kill, ['--socket', socketPath]);
    expect(u.code).toBe(2);
    expect(u.err).toContain('missing argument');
  });
});

describe('captrap stats', () => {
  it('summarises sidecar, sandboxes by exit reason, kernel and audit counters', async () => {
    const r = await run(stats, ['--socket', socketPath]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^sidecar\n {2}uptime\s+1m1s\n {2}rss\s+80 MiB\n/);
    expect(r.out).toMatch(/ {4}oom\s+1\n/);
    expect(r.out).toMatch(/kernel\n(.*\n)* {2}denials\s+3\n/);
    expect(r.out).toMatch(/audit\n {2}written\s+40\n/);
  });

  it('--prom prints the Prometheus text; --json the raw stats', async () => {
    const p = await run(stats, ['--prom', '--socket', socketPath]);
    expect(p.out).toContain('captrap_sandboxes_started_total 7\n');
    expect(seen.map((s) => s.method)).toEqual(['metrics']);
    const j = await run(stats, ['--json', '--socket', socketPath]);
    expect(JSON.parse(j.out)).toEqual(STATS);
  });
});

describe('table helpers', () => {
  it('aligns columns, right-aligns numbers, and colours only on a terminal', () => {
    expect(renderTable(['NAME', '>N'], [['a', '1'], ['bbb', '100']], { color: false })).toBe('NAME    N\na       1\nbbb   100\n');
    expect(renderTable(['NAME'], [['a']], { color: true }, [true])).toBe('\x1b[1mNAME\x1b[0m\n\x1b[2ma\x1b[0m\n');
    expect([formatDuration(999), formatDuration(2500), formatDuration(3_599_999), formatDuration(61_000), formatDuration(3 * 86_400_000)]).toEqual(['999ms', '2.5s', '1h0m', '1m1s', '3d']);
    expect([formatBytes(512), formatBytes(1536), formatBytes(300 << 20), formatBytes(null)]).toEqual(['512 B', '1.5 KiB', '300 MiB', '-']);
  });

  it('tree order survives orphans and cycles', () => {
    const items = [{ k: 'a', p: 'b' }, { k: 'b', p: 'a' }, { k: 'c', p: 'gone' }];
    const order = treeOrder(items, (i) => i.k, (i) => i.p);
    expect(order.map((o) => o.item.k).sort()).toEqual(['a', 'b', 'c']);
    expect(order.find((o) => o.item.k === 'c')!.depth).toBe(0);
  });
});
