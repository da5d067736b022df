// The admin commands against a real `captrap serve` (child process, temp dir, unique cgroup):
// the contract between the CLI and the sidecar's admin socket, end to end.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { CapView } from '../../src/agent.js';
import { cleanupStaleCgroups, hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { isSameProcess } from '../../src/isolation/proc.js';
import type { AgentRow } from '../../src/runner/admin-client.js';
import { main as caps } from '../../src/runner/commands/caps.js';
import { main as kill } from '../../src/runner/commands/kill.js';
import { main as ps } from '../../src/runner/commands/ps.js';
import { main as revoke } from '../../src/runner/commands/revoke.js';
import { main as stats } from '../../src/runner/commands/stats.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const host = probeHost();
const skipReason = process.getuid?.() !== 0 ? 'needs root (serve creates cgroups)' : hierarchyRoots(host).length === 0 ? 'no cgroup hierarchy' : '';
if (skipReason) console.log(`test/runner/admin-cli-serve.test.ts skipped: ${skipReason}`);

const CAP = { resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: ['echo'] }, ttlMs: 600_000 };

let dir: string;
let socketPath: string;
let serve: ChildProcess | undefined;
let exited: Promise<number | null>;
let serveErr = '';
const cgroupBase = `captrap-admincli-${process.pid}-${randomBytes(3).toString('hex')}`;

async function run(cmd: (argv: string[]) => Promise<number>, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => ((out += String(c)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => ((err += String(c)), true));
  try {
    return { code: await cmd([...argv, '--socket', socketPath]), out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

async function until<T>(fn: () => Promise<T | undefined>, ms: number): Promise<T | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe.skipIf(skipReason !== '')('admin CLI against a real captrap serve', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'captrap-admincli-'));
    const agent = (id: string) => ({ id, command: '/bin/sh', args: ['-c', 'exec sleep 300'], capabilities: [CAP] });
    writeFileSync(
      join(dir, 'captrap.json'),
      JSON.stringify({
        cgroupBase,
        audit: { flushIntervalMs: 20 },
        sandbox: { memory: '64M', pids: 16, timeout: '10s' },
        tools: [{ name: 'echo', command: ['/bin/echo', '{msg}'], args: { msg: { type: 'string' } } }],
        agents: [agent('alpha'), agent('beta')],
      }),
    );
    serve = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), join(ROOT, 'src/runner/cli.ts'), 'serve', '--config', join(dir, 'captrap.json')], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CAPTRAP_LOG_LEVEL: 'warn' },
    });
    serve.stderr!.on('data', (c: Buffer) => (serveErr += c.toString()));
    exited = new Promise((r) => serve!.on('exit', (code) => r(code)));
    socketPath = await new Promise<string>((resolve, reject) => {
      let out = '';
      const t = setTimeout(() => reject(new Error(`serve not ready: ${serveErr}`)), 20_000);
      serve!.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        const m = /^captrap: ready (.+)\n/.exec(out);
        if (m) {
          clearTimeout(t);
          resolve(m[1]!);
        }
      });
      void exited.then(() => reject(new Error(`serve exited: ${serveErr}`)));
    });
  });

  afterAll(async () => {
    if (serve && serve.exitCode === null && serve.signalCode === null) {
      serve.kill('SIGTERM');
      const t = setTimeout(() => serve!.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    await cleanupStaleCgroups(host, cgroupBase).catch(() => undefined);
    removeCgroupBase(host, cgroupBase);
    rmSync(dir, { recursive: true, force: true });
  });

  it('ps lists both agents running with live pids; caps lists their capabilities', async () => {
    const r = await run(ps, ['--json']);
    expect(r.code, r.err).toBe(0);
    const agents = (JSON.parse(r.out) as { agents: AgentRow[] }).agents;
    expect(agents.map((a) => [a.id, a.state, a.parent]).sort()).toEqual([['alpha', 'running', null], ['beta', 'running', null]]);
    for (const a of agents) expect(isSameProcess({ pid: a.pid, startTime: a.startTime })).toBe(true);
    const table = await run(ps, []);
    expect(table.out).toMatch(/^AGENT\s+PID/);
    expect(table.out).toMatch(/\nalpha\s+\d+\s+running/);

    const c = await run(caps, ['--json']);
    const list = (JSON.parse(c.out) as { capabilities: CapView[] }).capabilities;
    expect(list.map((x) => [x.principal, x.revoked]).sort()).toEqual([['alpha', false], ['beta', false]]);
    const alphaPid = agents.find((a) => a.id === 'alpha')!.pid;
    expect(list.find((x) => x.principal === 'alpha')!.holder?.pid).toBe(alphaPid);
  });

  it('revoke by id and by principal; an unknown id is exit 1', async () => {
    const alphaCap = (JSON.parse((await run(caps, ['--principal', 'alpha', '--json'])).out) as { capabilities: CapView[] }).capabilities[0]!;
    const r = await run(revoke, [alphaCap.id]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain(alphaCap.id);
    const after = (JSON.parse((await run(caps, ['--principal', 'alpha', '--json'])).out) as { capabilities: CapView[] }).capabilities;
    expect(after.find((x) => x.id === alphaCap.id)?.revoked).toBe(true);

    const byPrincipal = await run(revoke, ['--principal', 'beta', '--json']);
    expect(byPrincipal.code, byPrincipal.err).toBe(0);
    expect((JSON.parse(byPrincipal.out) as { revoked: string[] }).revoked).toHaveLength(1);

    const unknown = await run(revoke, ['cap_AAAAAAAAAAAAAAAAAAAAAA']);
    expect(unknown.code).toBe(1);
    expect(unknown.err.trim().split('\n')).toHaveLength(1);
  });

  it('kill stops an agent (ps shows it exited, its process gone); an unknown agent is exit 1', async () => {
    const before = (JSON.parse((await run(ps, ['--json'])).out) as { agents: AgentRow[] }).agents.find((a) => a.id === 'beta')!;
    const r = await run(kill, ['beta']);
    expect([r.code, r.out]).toEqual([0, 'killed agent beta\n']);
    const exitedRow = await until(async () => {
      const row = (JSON.parse((await run(ps, ['--json'])).out) as { agents: AgentRow[] }).agents.find((a) => a.id === 'beta');
      return row?.state === 'exited' ? row : undefined;
    }, 10_000);
    expect(exitedRow?.exitReason).toBeTruthy();
    expect(isSameProcess({ pid: before.pid, startTime: before.startTime })).toBe(false);
    const ghost = await run(kill, ['ghost']);
    expect(ghost.code).toBe(1);
  });

  it('stats: human summary, JSON, and Prometheus text', async () => {
    const h = await run(stats, []);
    expect(h.code, h.err).toBe(0);
    expect(h.out).toMatch(/^sidecar\n {2}uptime/);
    expect(h.out).toMatch(/\nsandboxes\n {2}running\s+\d+\n {2}started\s+2\n/);
    const j = await run(stats, ['--json']);
    const s = JSON.parse(j.out) as { agents: { running: number; exited: number }; uptimeMs: number };
    expect(s.agents).toEqual({ running: 1, exited: 1 });
    const p = await run(stats, ['--prom']);
    expect(p.code, p.err).toBe(0);
    expect(p.out).toMatch(/^# (HELP|TYPE) captrap_/m);
  });

  it('after SIGTERM the socket is gone and every command says so in one line, exit 2', async () => {
    serve!.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(existsSync(socketPath)).toBe(false);
    const r = await run(ps, []);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^captrap ps: no captrap sidecar at .* \[E_ADMIN_NO_SOCKET\]\n$/);
  });
});
