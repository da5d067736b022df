// Three `captrap serve` processes sharing one nats-server revocation bucket: a ct2 token issued
// and revoked on A is refused to agents on B and C; with the server gone, B refuses every ct2
// call once maxStaleness has passed, and accepts again when the server returns.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { TokenKeyStore, tokenKeyDir } from '../../src/kernel/tokens/index.js';
import type { RpcConnection } from '../../src/runner/jsonrpc.js';
import { adminClient, Control, host, RELAY, type Connected } from './inproc.js';
import { findNatsServer, NatsServer, waitFor } from './nats-harness.js';

const NATS = findNatsServer();
if (!NATS) console.warn(`nats-cluster tests skipped: nats-server is not installed${process.env.CI ? '; under CI that is a failure' : ''}`);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TAG = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const MAX_STALENESS_MS = 1500;

interface Host {
  name: string;
  child: ChildProcess;
  exited: Promise<unknown>;
  stderr: () => string;
  admin: RpcConnection;
  agent: Connected;
  base: string;
}

it.runIf(!NATS && !!process.env.CI)('nats-server is installed (CI installs it)', () => {
  expect(NATS, 'nats-server must be on PATH under CI').not.toBeNull();
});

describe.skipIf(!NATS)('three sidecars, one nats revocation bucket', () => {
  let server: NatsServer;
  let root: string;
  const hosts: Record<string, Host> = {};
  const controls: Control[] = [];

  async function serve(name: string, trust: string[]): Promise<Host> {
    const dir = join(root, name);
    mkdirSync(dir, { recursive: true });
    const control = new Control(join(root, 'ctl'), name);
    controls.push(control);
    const base = `captrap-tn${name}-${TAG}`;
    const file = join(dir, 'captrap.json');
    writeFileSync(
      file,
      JSON.stringify({
        stateDir: 'state',
        cgroupBase: base,
        audit: { flushIntervalMs: 20 },
        sandbox: { memory: '128M', pids: 32, timeout: '10s', killGrace: '200ms' },
        tools: [{ name: 'echo', command: ['echo', '{text}'], args: { text: { type: 'string' } } }],
        agents: [{ id: 'worker', command: 'node', args: [RELAY, control.path], view: { readOnly: [join(root, 'ctl')] }, limits: { memory: '512M', pids: 64 } }],
        revocations: { backend: 'nats', url: server.url, bucket: 'captrap-cluster-t', maxStaleness: MAX_STALENESS_MS, host: name },
        tokens: { trust },
      }),
    );
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'serve', '--config', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    const t0 = Date.now();
    while (!out.includes('\n')) {
      if (child.exitCode !== null || Date.now() - t0 > 20_000) throw new Error(`serve ${name} did not become ready: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const m = /^captrap: ready (.+)\n$/.exec(out);
    if (!m) throw new Error(`unexpected stdout: ${out}`);
    const admin = await adminClient(m[1]!);
    const agent = await control.next();
    return { name, child, exited, stderr: () => err, admin, agent, base };
  }

  /** What the agent on `h` gets for an echo call with `token`: 'ok', or the refusal's code and message. */
  async function call(h: Host, token: string): Promise<string> {
    try {
      const r = (await h.agent.conn.call('tools.invoke', { tool: 'echo', args: { text: 'hi' }, capability: token }, { timeoutMs: 10_000 })) as { stdout?: string };
      return JSON.stringify(r).includes('hi') ? 'ok' : `odd ${JSON.stringify(r)}`;
    } catch (err) {
      const e = err as { data?: { code?: string }; message: string };
      return `${e.data?.code ?? 'no code'}: ${e.message}`;
    }
  }

  /** Calls until the answer matches (each call is a real tool call through the agent's channel). */
  async function until(h: Host, token: string, want: RegExp, ms: number): Promise<string> {
    const t0 = Date.now();
    let last = '';
    while (Date.now() - t0 < ms) {
      last = await call(h, token);
      if (want.test(last)) return last;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`${h.name}: still '${last}' after ${ms} ms (wanted ${want})`);
  }

  beforeAll(async () => {
    server = await NatsServer.start(NATS!);
    root = mkdtempSync(join(tmpdir(), 'captrap-cluster-'));
    chmodSync(root, 0o755);
    mkdirSync(join(root, 'ctl'), { mode: 0o755 });
    // A's issuer key exists before anyone starts, so B and C can trust its public half.
    const store = TokenKeyStore.open(tokenKeyDir(join(root, 'A', 'state')), { create: true });
    const keys = join(root, 'keys-A.json');
    writeFileSync(keys, JSON.stringify(store.jwks()));
    hosts.A = await serve('A', []);
    hosts.B = await serve('B', [keys]);
    hosts.C = await serve('C', [keys]);
  }, 90_000);

  afterAll(async () => {
    for (const h of Object.values(hosts)) {
      h.admin.close?.();
      if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill('SIGTERM');
    }
    await Promise.race([Promise.all(Object.values(hosts).map((h) => h.exited)), new Promise((r) => setTimeout(r, 10_000))]);
    for (const h of Object.values(hosts)) {
      if (h.child.exitCode === null && h.child.signalCode === null) {
        h.child.kill('SIGKILL');
        await h.exited;
      }
      await cleanupStaleCgroups(host, h.base);
      removeCgroupBase(host, h.base);
    }
    for (const c of controls) c.server.close();
    await server?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  }, 30_000);

  it('a token issued and revoked on A is refused to the agents on B and C', async () => {
    const issue = async () =>
      (await hosts.A!.admin.call('tokens.issue', {
        resourceType: 'tool',
        resource: '*',
        operations: ['invoke'],
        ttlMs: 600_000,
        principal: 'worker',
        constraints: { allowedTools: ['echo'] },
      })) as { token: string; revocationIds: string[] };
    const t1 = await issue();
    for (const h of ['A', 'B', 'C']) expect(await call(hosts[h]!, t1.token), h).toBe('ok');

    const { revoked } = (await hosts.A!.admin.call('tokens.revoke', { token: t1.token, reason: 'leaked' })) as { revoked: { id: string; host: string }[] };
    expect(revoked).toEqual([expect.objectContaining({ id: t1.revocationIds[0], host: 'A' })]);
    expect(await call(hosts.A!, t1.token)).toMatch(/^E_TOKEN_REVOKED/);
    for (const h of ['B', 'C']) {
      const got = await until(hosts[h]!, t1.token, /^E_TOKEN_REVOKED/, 5_000);
      expect(got).not.toMatch(/check failed/); // revoked, not merely unverifiable
    }
    const stats = (await hosts.B!.admin.call('stats', {})) as { revocations?: { backend: string; healthy: boolean; revoked: number } };
    expect(stats.revocations).toMatchObject({ backend: 'nats', healthy: true, revoked: 1 });
  }, 60_000);

  it('with the server gone, B refuses every ct2 call after maxStaleness; it accepts again when the server returns', async () => {
    const t2 = (await hosts.A!.admin.call('tokens.issue', { resourceType: 'tool', resource: '*', operations: ['invoke'], ttlMs: 600_000, principal: 'worker' })) as { token: string };
    expect(await call(hosts.B!, t2.token)).toBe('ok');
    await server.kill();
    const killedAt = Date.now();
    const refused = await until(hosts.B!, t2.token, /^E_TOKEN_REVOKED/, MAX_STALENESS_MS * 5);
    expect(refused).toMatch(/revocation check failed/);
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(MAX_STALENESS_MS / 2);
    const stats = (await hosts.B!.admin.call('stats', {})) as { revocations?: { healthy: boolean; detail: string } };
    expect(stats.revocations?.healthy).toBe(false);
    expect(stats.revocations?.detail).toMatch(/refused since/);
    await server.restart();
    await until(hosts.B!, t2.token, /^ok$/, 20_000);
    await until(hosts.C!, t2.token, /^ok$/, 20_000);
  }, 60_000);
});
