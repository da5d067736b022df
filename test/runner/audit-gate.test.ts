// Fail closed when the audit log cannot write (issue "Audit disk full"). The sidecar's audit dir
// is a small real tmpfs; a filler file fills it. With audit.onFailure: deny (the default) a tool
// call is refused with E_AUDIT_UNAVAILABLE and nothing is spawned; stats, metrics and stderr say
// so; once the filler is gone calls work again by themselves, and the chain verifies after stop.
// With onFailure: continue the call runs, unaudited, and everything still says so.
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { renderStats } from '../../src/runner/commands/stats.js';
import type { SidecarConfig } from '../../src/runner/config.js';
import { RPC_ERROR, RpcError } from '../../src/runner/jsonrpc.js';
import { publicKeyFileFor, type Sidecar } from '../../src/runner/sidecar.js';
import { adminClient as admin, type AgentSpec, Harness, procCap as processCap, RELAY, rpcError, toolCap, until } from './inproc.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const h = new Harness('agate');
afterAll(() => h.cleanup(), 60_000);

const ECHO = toolCap(['echo'], { operations: ['invoke'] });

/** Mounts a 2 MiB tmpfs for the audit dir; undefined (with the reason printed) where this host does not allow it. */
function mountSmallFs(): string | undefined {
  const dir = mkdtempSync(join(h.root, 'auditfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', dir], { stdio: 'pipe' });
    return dir;
  } catch (err) {
    console.log(`skipping: cannot mount a tmpfs for the audit dir (${(err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message})`);
    return undefined;
  }
}

function umount(dir: string): void {
  spawnSync('umount', [dir], { stdio: 'ignore' });
}

/** Fills the filesystem holding `dir` with `dir/filler` until the kernel says ENOSPC. */
function fill(dir: string): string {
  const file = join(dir, 'filler');
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(4096, 0x61);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
    // The last partial page too.
    try {
      for (;;) writeSync(fd, chunk, 0, 1);
    } catch {
      // full
    }
  } finally {
    closeSync(fd);
  }
  return file;
}

/** Agents without limits of their own; the audit log in `auditDir`; sandboxes without default memory and pids limits. */
function config(auditDir: string, agents: Omit<AgentSpec, 'limits'>[], onFailure?: 'deny' | 'continue'): SidecarConfig {
  return h.config(
    agents.map((a) => ({ ...a, limits: null, capabilities: a.capabilities ?? [ECHO] })),
    { audit: { dir: join(auditDir, 'log'), flushIntervalMs: 20, ...(onFailure ? { onFailure } : {}) }, sandbox: { timeout: '20s', killGrace: '200ms' } },
  );
}

/** Stops the sidecar, then `captrap audit verify` on its log, as an operator would run it: the chain verifies. */
async function stopAndVerify(s: Sidecar, cfg: SidecarConfig): Promise<void> {
  await s.stop();
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'audit', 'verify', cfg.audit.dir, '--key', cfg.audit.keyFile, '--pubkey', publicKeyFileFor(cfg.audit.signingKeyFile)],
    { cwd: ROOT, encoding: 'utf8' },
  );
  expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
}

/** After a test, passed or not: the filler gone, the sidecar stopped, the tmpfs unmounted. */
async function release(fs: string, filler: string | undefined, s: Sidecar | undefined): Promise<void> {
  if (filler) rmSync(filler, { force: true });
  await s?.stop().catch(() => undefined);
  umount(fs);
}

type Stats = { audit: { available: boolean; unavailableSince: string | null; droppedRecords: number; onFailure: string; refusedCalls: number; unauditedCalls: number } };

const metric = (text: string, name: string): number | undefined => {
  const m = new RegExp(`^${name.replace(/[{}"=]/g, (c) => `\\${c}`)} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
};

describe('audit gate', () => {
  it('deny (default): a full audit disk refuses tool calls and spawns with E_AUDIT_UNAVAILABLE, says so everywhere, and resumes by itself', async () => {
    const fs = mountSmallFs();
    if (!fs) return;
    const notices: string[] = [];
    let s: Sidecar | undefined;
    let cfg: SidecarConfig | undefined;
    let filler: string | undefined;
    try {
      const ctl = h.control('gated');
      const sub = h.control('gated-sub');
      cfg = config(fs, [
        {
          id: 'gated',
          control: ctl,
          capabilities: [ECHO, processCap()],
        },
      ]);
      s = await h.start(cfg, { output: () => {}, notice: (l) => notices.push(l) });
      const a = await ctl.next();
      const caps = (await a.conn.call('capabilities.list', {})) as { capabilities: { id: string; resource: { type: string } }[] };
      const cap = caps.capabilities.find((c) => c.resource.type === 'tool')!.id;
      const procCap = caps.capabilities.find((c) => c.resource.type === 'process')!.id;
      expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'before' }, capability: cap })).toMatchObject({ stdout: 'before\n' });
      expect(s.audit.available).toBe(true);

      filler = fill(fs);
      // A call runs only once its authorisation is on disk. The files' last pages may still take a
      // few small records (tmpfs allocates by the page); the first call whose records do not fit is
      // refused, before anything is spawned.
      let started = s.counters.started;
      let refused: RpcError | undefined;
      for (let i = 0; i < 50 && !refused; i++) {
        started = s.counters.started;
        try {
          await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'during' }, capability: cap });
        } catch (err) {
          if (!(err instanceof RpcError)) throw err;
          refused = err;
        }
      }
      if (!refused) throw new Error('no call was refused on a full disk');
      expect(refused.rpcCode).toBe(RPC_ERROR.UNAVAILABLE);
      expect(refused.data).toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
      expect(refused.message).toMatch(/^E_AUDIT_UNAVAILABLE: tools\.invoke refused: .*ENOSPC/);
      expect(s.counters.started).toBe(started); // nothing spawned
      expect(s.audit.available).toBe(false);
      // Refused at once while the log is down, and a sub-agent launch too (it would be a new principal holding delegated capabilities).
      const again = await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'during' }, capability: cap }));
      expect(again.data).toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
      const spawn = await rpcError(a.conn.call('agents.spawn', { id: 'gated-sub', capability: procCap, command: 'node', args: [RELAY, sub.path], capabilities: [] }));
      expect(spawn.data).toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
      expect(s.counters.started).toBe(started);
      // The guard the other state-changing handlers call.
      expect(() => s!.runner.auditGate('capabilities.request')).toThrow(expect.objectContaining({ rpcCode: RPC_ERROR.UNAVAILABLE, data: expect.objectContaining({ code: 'E_AUDIT_UNAVAILABLE' }) }));

      // stats, metrics, stderr.
      const adm = await admin(s.adminSocket);
      const stats = (await adm.call('stats', {})) as Stats;
      expect(stats.audit).toMatchObject({ available: false, onFailure: 'deny', droppedRecords: 0 });
      expect(typeof stats.audit.unavailableSince).toBe('string');
      expect(stats.audit.refusedCalls).toBeGreaterThanOrEqual(4);
      expect(renderStats(stats as never)).toMatch(/^AUDIT LOG UNAVAILABLE since .*\n {2}tool calls and capability changes are refused \(E_AUDIT_UNAVAILABLE\)/);
      const { text } = (await adm.call('metrics', {})) as { text: string };
      expect(metric(text, 'captrap_audit_available')).toBe(0);
      expect(metric(text, 'captrap_audit_refused_calls_total{method="tools.invoke"}')).toBe(2);
      expect(metric(text, 'captrap_audit_refused_calls_total{method="agents.spawn"}')).toBe(1);
      expect(notices.filter((l) => l.startsWith('audit log unavailable: ')).length).toBe(1);
      expect(notices.find((l) => l.startsWith('audit log unavailable: '))).toMatch(/ENOSPC.*refusing tool calls and capability changes/);

      // The disk takes writes again: the sidecar serves again by itself, within a few seconds.
      unlinkSync(filler);
      filler = undefined;
      const t0 = Date.now();
      await until(() => s!.audit.available, 5000);
      console.log(`serving again ${Date.now() - t0} ms after the filler was removed`);
      expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'after' }, capability: cap })).toMatchObject({ stdout: 'after\n' });
      expect(notices.filter((l) => l.startsWith('audit log writes again')).length).toBe(1);
      const after = (await adm.call('stats', {})) as Stats;
      expect(after.audit).toMatchObject({ available: true, unavailableSince: null });
      expect(metric(((await adm.call('metrics', {})) as { text: string }).text, 'captrap_audit_available')).toBe(1);
      adm.close();
      await stopAndVerify(s, cfg);
    } finally {
      await release(fs, filler, s);
    }
  }, 60_000);

  it('continue: the call runs unaudited while the disk is full, and stats, metrics and stderr still say so', async () => {
    const fs = mountSmallFs();
    if (!fs) return;
    const notices: string[] = [];
    let s: Sidecar | undefined;
    let filler: string | undefined;
    try {
      const ctl = h.control('loose');
      const cfg = config(fs, [{ id: 'loose', control: ctl }], 'continue');
      s = await h.start(cfg, { output: () => {}, notice: (l) => notices.push(l) });
      const a = await ctl.next();
      const caps = (await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] };
      const cap = caps.capabilities[0]!.id;
      filler = fill(fs);
      // Calls run; the log notices at the first write that does not fit (tmpfs allocates by the page).
      for (let i = 0; i < 50 && s.audit.available; i++) {
        expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'first' }, capability: cap })).toMatchObject({ stdout: 'first\n' });
        await new Promise((r) => setTimeout(r, 30)); // a flush interval
      }
      expect(s.audit.available).toBe(false);
      const started = s.counters.started;
      expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'unaudited' }, capability: cap })).toMatchObject({ stdout: 'unaudited\n' });
      expect(s.counters.started).toBe(started + 1);
      const adm = await admin(s.adminSocket);
      const stats = (await adm.call('stats', {})) as Stats;
      expect(stats.audit).toMatchObject({ available: false, onFailure: 'continue', refusedCalls: 0 });
      expect(stats.audit.unauditedCalls).toBeGreaterThanOrEqual(1);
      expect(renderStats(stats as never)).toMatch(/^AUDIT LOG UNAVAILABLE since .*\n {2}tool calls and capability changes run UNAUDITED/);
      const { text } = (await adm.call('metrics', {})) as { text: string };
      expect(metric(text, 'captrap_audit_available')).toBe(0);
      expect(metric(text, 'captrap_audit_unaudited_calls_total{method="tools.invoke"}')).toBeGreaterThanOrEqual(1);
      expect(notices.find((l) => l.startsWith('audit log unavailable: '))).toMatch(/run UNAUDITED/);
      adm.close();
      unlinkSync(filler);
      filler = undefined;
      await until(() => s!.audit.available, 5000);
      await stopAndVerify(s, cfg);
    } finally {
      await release(fs, filler, s);
    }
  }, 60_000);
});
