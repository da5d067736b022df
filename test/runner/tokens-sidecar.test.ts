// ct2 tokens in the sidecar, end to end and in-process: real agents (relay processes) on their
// real fd-3 channels, real tools in real sandboxes, a real audit log and the real revocation file.
import { appendFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readAuditRecords, verifyAuditLog } from '../../src/kernel/audit.js';
import { readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';
import { attenuate, issueToken, TokenKeyStore } from '../../src/kernel/tokens/index.js';
import { classify } from '../../src/monitor/violations.js';
import { main as tokenCli } from '../../src/runner/commands/token.js';
import { parseConfig } from '../../src/runner/config.js';
import { RPC_ERROR, RpcError } from '../../src/runner/jsonrpc.js';
import { publicKeyFileFor, type Sidecar } from '../../src/runner/sidecar.js';
import { MAX_EXPORTS_PER_CAPABILITY, TOKEN_EXPORTS_FILE } from '../../src/runner/token-gate.js';
import { FileTokenRevocations, TOKEN_REVOCATIONS_FILE } from '../../src/runner/token-revocations-file.js';
import { RevocationsUnavailableError, type RevocationEntry, type RevocationStatus, type TokenRevocations } from '../../src/runner/token-revocations.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { tokenKeyDir } from '../../src/kernel/tokens/index.js';
import { adminClient, type AgentSpec, Harness, host, NODE, procCap, RELAY, relayConfig, rpcError, until } from './inproc.js';
import { findNatsServer, NatsServer } from './nats-harness.js';

const TOOLS = [
  { name: 'echo', command: ['echo', '{text}'], args: { text: { type: 'string' } } },
  { name: 'sleep', command: ['sleep', '{seconds}'], args: { seconds: { type: 'string', pattern: '[0-9.]+' } } },
  { name: 'read_file', command: ['cat', '{path}'], args: { path: { type: 'string' } }, resources: [{ kind: 'file', arg: 'path', access: 'read' }] },
];

let h: Harness;
let dataDir: string;

beforeEach(() => {
  h = new Harness('tok');
  dataDir = join(h.root, 'data');
  mkdirSync(dataDir, { mode: 0o755 });
  writeFileSync(join(dataDir, 'hello.txt'), 'hello from data\n');
  writeFileSync(join(h.root, 'secret.txt'), 'secret\n');
});

afterEach(async () => {
  await h.cleanup();
});

/** Two hours: longer than an exported token's default hour. */
function toolCap(tools: string[], paths?: string[]) {
  return { resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: tools, ...(paths ? { paths } : {}) }, ttlMs: 7_200_000 };
}

function config(agents: AgentSpec[], extra: Record<string, unknown> = {}, stateDir?: string) {
  return h.config(agents, { tools: TOOLS, ...extra }, stateDir);
}

interface Exported {
  token: string;
  tokenId: string;
  keyId: string;
  revocationIds: string[];
  expiresAt: number;
  principal: string;
  capability: string;
}

async function firstCap(conn: { call(m: string, p: unknown): Promise<unknown> }): Promise<string> {
  const list = (await conn.call('capabilities.list', {})) as { capabilities: { id: string }[] };
  return list.capabilities[0]!.id;
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

function denial(e: RpcError): { code: string; block?: number; cause?: string } {
  expect(e.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);
  return e.data as { code: string; block?: number; cause?: string };
}

describe('ct2 tokens on the agent channel', () => {
  it('runs a tool with an exported token; refuses attenuated, foreign, forged and tampered ones; audits with tokenId; caches', async () => {
    const ca = h.control('a');
    const cb = h.control('b');
    const s = await h.start(
      config([
        { id: 'a', control: ca, capabilities: [toolCap(['echo', 'sleep', 'read_file'], [dataDir])] },
        { id: 'b', control: cb, capabilities: [toolCap(['echo'])] },
      ]),
    );
    const [a, b] = await Promise.all([ca.next(), cb.next()]);
    const cap = await firstCap(a.conn);
    const before = Date.now();
    const ex = (await a.conn.call('capabilities.export', { capability: cap })) as Exported;
    expect(ex.token.startsWith('ct2.')).toBe(true);
    expect(ex.principal).toBe('a');
    expect(ex.capability).toBe(cap);
    expect(ex.revocationIds).toHaveLength(1);
    // Default lifetime: one hour (the capability itself lives longer).
    expect(ex.expiresAt).toBeGreaterThanOrEqual(before + 3_600_000 - 5);
    expect(ex.expiresAt).toBeLessThanOrEqual(Date.now() + 3_600_000);
    const short = (await a.conn.call('capabilities.export', { capability: cap, ttlMs: 60_000 })) as Exported;
    expect(short.expiresAt).toBeLessThanOrEqual(Date.now() + 60_000);

    // Allowed, and run as a ct1 call would be. The same call again is a decision-cache hit.
    for (let i = 0; i < 4; i++) {
      const r = (await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'hi' }, capability: ex.token })) as { reason: string; stdout: string };
      expect(r).toMatchObject({ reason: 'exited', stdout: 'hi\n' });
    }
    // The token's roots are the view; the checked real path is what the tool gets.
    const read = (await a.conn.call('tools.invoke', { tool: 'read_file', args: { path: join(dataDir, '.', 'hello.txt') }, capability: ex.token })) as { stdout: string };
    expect(read.stdout).toBe('hello from data\n');
    const outside = denial(await rpcError(a.conn.call('tools.invoke', { tool: 'read_file', args: { path: join(h.root, 'secret.txt') }, capability: ex.token })));
    expect(outside).toMatchObject({ code: 'E_TOKEN_DENIED', block: 0, cause: 'E_PATH_OUTSIDE_ROOTS' });

    // An attenuated copy: only echo. sleep is refused by block 1, echo still runs.
    const narrow = attenuate(ex.token, { constraints: { allowedTools: ['echo'] } });
    expect(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '0' }, capability: narrow })))).toMatchObject({ code: 'E_TOKEN_DENIED', block: 1, cause: 'E_TOOL_NOT_ALLOWED' });
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'narrow' }, capability: narrow })).toMatchObject({ stdout: 'narrow\n' });

    // Another agent presenting a's token: wrong principal, whatever it claims.
    expect(denial(await rpcError(b.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: ex.token })))).toMatchObject({ code: 'E_TOKEN_DENIED', block: 0, cause: 'E_WRONG_PRINCIPAL' });
    // b cannot export a's capability either.
    expect(denial(await rpcError(b.conn.call('capabilities.export', { capability: cap })))).toMatchObject({ code: 'E_WRONG_PRINCIPAL' });

    // Forged: signed by a key the sidecar does not trust.
    const otherKeys = TokenKeyStore.open(mkdtempSync(join(tmpdir(), 'captrap-otherkeys-')));
    const forged = issueToken({ key: otherKeys.signingKey(), resourceType: 'tool', resource: '*', operations: ['invoke'], principal: 'a', ttlMs: 60_000 });
    expect(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: forged })))).toMatchObject({ code: 'E_TOKEN_UNKNOWN_KEY' });
    rmSync(otherKeys.dir, { recursive: true, force: true });
    // Tampered: one character of the signed body changed.
    const i = Math.floor(ex.token.length / 2);
    const tampered = ex.token.slice(0, i) + (ex.token[i] === 'A' ? 'B' : 'A') + ex.token.slice(i + 1);
    expect(['E_TOKEN_SIGNATURE', 'E_TOKEN_MALFORMED']).toContain(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: tampered }))).code);
    // Nothing was spawned for any refusal: 4 echo + read + narrow echo.
    expect(s.tokens!.stats()).toMatchObject({ verified: 6, denied: 5 });

    // Stats: repeated calls hit the cache.
    const admin = await adminClient(s.adminSocket);
    const stats = (await admin.call('stats', {})) as { tokens: { verified: number; denied: number; cache: { chain: { hitRatio: number }; decision: { hitRatio: number } } }; revocations: RevocationStatus };
    admin.close();
    expect(stats.tokens.verified).toBe(6);
    expect(stats.tokens.denied).toBe(5);
    expect(stats.tokens.cache.chain.hitRatio).toBeGreaterThan(0);
    expect(stats.tokens.cache.decision.hitRatio).toBeGreaterThan(0);
    expect(stats.revocations).toMatchObject({ backend: 'file', healthy: true, revoked: 0 });
    const prom = await s.metrics.text();
    expect(prom).toMatch(/captrap_token_cache_hit_ratio\{level="chain"\} 0\.\d+/);
    expect(prom).toMatch(/captrap_token_revocations_healthy 1/);

    await s.stop();
    const dir = s.config.audit.dir;
    const exits = readAuditRecords(dir, (r) => r.type === 'sandbox_exited' && r.details?.['tokenId'] === ex.tokenId);
    expect(exits.length).toBe(6);
    expect(exits[0]!.details).toMatchObject({ keyId: ex.keyId, revocationIds: ex.revocationIds, reason: 'exited' });
    expect(readAuditRecords(dir, (r) => r.type === 'capability_validated' && r.details?.['tokenId'] === ex.tokenId).length).toBe(6);
    const denied = readAuditRecords(dir, (r) => r.type === 'access_denied' && typeof r.details?.['code'] === 'string' && (r.details['code'] as string).startsWith('E_TOKEN_'));
    const narrowDenial = denied.find((r) => r.details?.['block'] === 1)!;
    expect(narrowDenial).toMatchObject({ principal: 'a', details: { code: 'E_TOKEN_DENIED', reason: 'E_TOOL_NOT_ALLOWED', tokenId: ex.tokenId, tool: 'sleep' } });
    expect((narrowDenial.details!['revocationIds'] as string[])[0]).toBe(ex.revocationIds[0]);
    // The monitor sees each refusal as the violation it is.
    const types = denied.map((r) => classify({ type: r.type, principal: r.principal!, details: r.details! })?.type);
    expect(types).toEqual(expect.arrayContaining(['forged-token', 'wrong-holder', 'tool-not-allowed', 'path-outside-roots']));
    // The export is audited against the ct1 capability.
    expect(readAuditRecords(dir, (r) => r.type === 'capability_granted' && r.capabilityId === cap && r.details?.['tokenId'] === ex.tokenId)).toHaveLength(1);
  });

  it('a hostile agent exporting one capability over and over is bounded (E_TOO_MANY_EXPORTS) and the sidecar keeps serving', async () => {
    const ca = h.control('a');
    const s = await h.start(config([{ id: 'a', control: ca, capabilities: [toolCap(['echo'])] }]));
    const a = await ca.next();
    const cap = await firstCap(a.conn);
    const tokens: string[] = [];
    for (let i = 0; i < MAX_EXPORTS_PER_CAPABILITY; i++) tokens.push(((await a.conn.call('capabilities.export', { capability: cap, ttlMs: 60_000 })) as Exported).token);
    expect(new Set(tokens).size).toBe(MAX_EXPORTS_PER_CAPABILITY);
    expect(denial(await rpcError(a.conn.call('capabilities.export', { capability: cap })))).toMatchObject({ code: 'E_TOO_MANY_EXPORTS' });
    // The ones it has still work.
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'still' }, capability: tokens[0] })).toMatchObject({ stdout: 'still\n' });
    await s.stop();
  });

  it('admin revocation refuses the next call and kills a running ct2 tool; a presented token revokes its last block only', async () => {
    const ca = h.control('a');
    const s = await h.start(config([{ id: 'a', control: ca, capabilities: [toolCap(['echo', 'sleep'])] }]));
    const a = await ca.next();
    const ex = (await a.conn.call('capabilities.export', { capability: await firstCap(a.conn) })) as Exported;

    // A copy revoked by presenting it: that copy is refused, the parent still works.
    const copy = attenuate(ex.token, { ttlMs: 600_000 });
    const admin = await adminClient(s.adminSocket);
    const byToken = (await admin.call('tokens.revoke', { token: copy, reason: 'leaked copy' })) as { revoked: RevocationEntry[] };
    expect(byToken.revoked).toHaveLength(1);
    expect(byToken.revoked[0]!.id).not.toBe(ex.revocationIds[0]);
    expect(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: copy })))).toMatchObject({ code: 'E_TOKEN_REVOKED' });
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'parent' }, capability: ex.token })).toMatchObject({ stdout: 'parent\n' });

    // A running call of the token is killed when block 0's id is revoked.
    const running = a.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '30' }, capability: ex.token });
    await until(() => s.runner.running === 1);
    // Through the CLI, as an operator would.
    expect(await tokenCli(['revoke', '--socket', s.adminSocket, '--reason', 'incident 7', ex.revocationIds[0]!])).toBe(0);
    expect(await running).toMatchObject({ reason: 'revoked' });
    expect(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: ex.token })))).toMatchObject({ code: 'E_TOKEN_REVOKED' });
    // Bad input is refused with a typed error, and the sidecar keeps serving.
    const bad = await rpcError(admin.call('tokens.revoke', { ids: ['not-an-id'] }));
    expect(bad.rpcCode).toBe(RPC_ERROR.INVALID_PARAMS);
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'ct1 still' }, capability: await firstCap(a.conn) })).toMatchObject({ stdout: 'ct1 still\n' });
    admin.close();

    await s.stop();
    const revoked = readAuditRecords(s.config.audit.dir, (r) => r.type === 'token_revoked');
    expect(revoked.find((r) => (r.details!['ids'] as string[]).includes(ex.revocationIds[0]!))?.details).toMatchObject({ reason: 'incident 7', origin: 'local', host: s.config.revocations!.host });
    expect(revoked.find((r) => r.details!['reason'] === 'leaked copy')).toBeDefined();
    const killed = readAuditRecords(s.config.audit.dir, (r) => r.type === 'sandbox_exited' && r.details?.['tool'] === 'sleep');
    expect(killed[0]!.details).toMatchObject({ reason: 'revoked', tokenId: ex.tokenId });
    // The new record type verifies like every other.
    const report = verifyAuditLog(s.config.audit.dir, { key: readSecretFile(s.config.audit.keyFile), publicKey: readEd25519PublicKey(publicKeyFileFor(s.config.audit.signingKeyFile)) });
    expect(report.ok).toBe(true);
  });

  it('a token for a principal serves its sub-agents; a copy narrowed to a sub-agent does not serve its parent', async () => {
    const ca = h.control('a');
    const cw = h.control('w');
    const s = await h.start(config([{ id: 'a', control: ca, capabilities: [toolCap(['echo']), procCap()] }]));
    const a = await ca.next();
    const caps = ((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string; resource: { type: string } }[] }).capabilities;
    const toolCapId = caps.find((c) => c.resource.type === 'tool')!.id;
    const spawnCapId = caps.find((c) => c.resource.type === 'process')!.id;
    const ex = (await a.conn.call('capabilities.export', { capability: toolCapId })) as Exported;
    await a.conn.call('agents.spawn', { id: 'worker', capability: spawnCapId, command: NODE, args: [RELAY, cw.path], capabilities: [] });
    const w = await cw.next();
    expect(w.id).toBe('a/worker');
    // The sub-agent holds no ct1 capability at all: the token alone lets it call.
    expect(await w.conn.call('tools.invoke', { tool: 'echo', args: { text: 'from worker' }, capability: ex.token })).toMatchObject({ stdout: 'from worker\n' });
    const forWorker = attenuate(ex.token, { principal: 'a/worker' });
    expect(await w.conn.call('tools.invoke', { tool: 'echo', args: { text: 'narrowed' }, capability: forWorker })).toMatchObject({ stdout: 'narrowed\n' });
    expect(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: forWorker })))).toMatchObject({ code: 'E_TOKEN_DENIED', block: 1, cause: 'E_WRONG_PRINCIPAL' });
    await s.stop();
    const exits = readAuditRecords(s.config.audit.dir, (r) => r.type === 'sandbox_exited' && r.details?.['kind'] === 'tool' && r.principal === 'a/worker');
    expect(exits).toHaveLength(2);
    expect(exits.every((r) => r.details?.['tokenId'] === ex.tokenId)).toBe(true);
  });

  it('revokes an exported token with its ct1 capability: by an administrator, and by the cascade at the holder\'s death', async () => {
    const ca = h.control('a');
    const cb = h.control('b');
    const s = await h.start(
      config([
        { id: 'a', control: ca, capabilities: [toolCap(['echo']), toolCap(['echo'])] },
        { id: 'b', control: cb, capabilities: [toolCap(['echo'])] },
      ]),
    );
    const [a, b] = await Promise.all([ca.next(), cb.next()]);
    const caps = ((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] }).capabilities.map((c) => c.id);
    const first = (await a.conn.call('capabilities.export', { capability: caps[0] })) as Exported;
    const second = (await a.conn.call('capabilities.export', { capability: caps[1] })) as Exported;
    const fromB = (await b.conn.call('capabilities.export', { capability: await firstCap(b.conn) })) as Exported;

    const admin = await adminClient(s.adminSocket);
    await admin.call('capabilities.revoke', { id: caps[0] });
    admin.close();
    expect(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: first.token })))).toMatchObject({ code: 'E_TOKEN_REVOKED' });
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'y' }, capability: second.token })).toMatchObject({ stdout: 'y\n' });

    // a dies: its capabilities are revoked, and through them the token exported from the second.
    const agent = s.supervisor.get('a')!;
    process.kill(agent.ref.pid, 'SIGKILL');
    await until(() => agent.state === 'exited');
    const file = join(s.config.stateDir, TOKEN_REVOCATIONS_FILE);
    // In the revocation set (the file here; the shared set with nats), not only in this sidecar's memory.
    await until(() => existsSync(file) && readFileSync(file, 'utf8').includes(second.revocationIds[0]!));
    expect(readFileSync(file, 'utf8')).toContain(first.revocationIds[0]!);
    expect(thrown(() => s.tokens!.verifier.verify(second.token))).toMatchObject({ code: 'E_TOKEN_REVOKED' });
    // b's token is untouched.
    expect(await b.conn.call('tools.invoke', { tool: 'echo', args: { text: 'b' }, capability: fromB.token })).toMatchObject({ stdout: 'b\n' });
  });

  it('keeps revocations and keys across a restart; exported tokens do not outlive their run; a corrupt revocation file stops the start', async () => {
    const stateDir = mkdtempSync(join(h.root, 'state-'));
    const exportsFile = join(stateDir, TOKEN_EXPORTS_FILE);
    const revocationsFile = join(stateDir, TOKEN_REVOCATIONS_FILE);
    const ca = h.control('a');
    const s1 = await h.start(config([{ id: 'a', control: ca }], {}, stateDir));
    const a1 = await ca.next();
    const admin = await adminClient(s1.adminSocket);
    const issue = { resourceType: 'tool', resource: '*', operations: ['invoke'], ttlMs: 600_000, principal: 'a', constraints: { allowedTools: ['echo'] } };
    const kept = (await admin.call('tokens.issue', issue)) as Exported;
    const gone = (await admin.call('tokens.issue', issue)) as Exported;
    const orphan = (await admin.call('tokens.issue', issue)) as Exported;
    expect(kept.keyId).toBe(TokenKeyStore.open(join(stateDir, 'token-keys'), { create: false }).activeId);
    await admin.call('tokens.revoke', { ids: gone.revocationIds });
    admin.close();
    const exported = (await a1.conn.call('capabilities.export', { capability: await firstCap(a1.conn) })) as Exported;
    // Written down before it was handed out.
    expect(readFileSync(exportsFile, 'utf8')).toContain(exported.revocationIds[0]!);
    await s1.stop();
    // A clean stop revoked it with its capability, and left nothing for the next start.
    expect(readFileSync(revocationsFile, 'utf8')).toContain(exported.revocationIds[0]!);
    expect(readFileSync(exportsFile, 'utf8')).toBe('');
    // As a run killed before it could revoke an export would leave it (plus a torn line it never acknowledged).
    writeFileSync(exportsFile, JSON.stringify({ id: orphan.revocationIds[0], expiresAt: Date.now() + 600_000 }) + '\n{"id":"ab');

    const ca2 = h.control('a2');
    const s2 = await h.start(config([{ id: 'a', control: ca2 }], {}, stateDir));
    const a = await ca2.next();
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'kept' }, capability: kept.token })).toMatchObject({ stdout: 'kept\n' });
    for (const t of [gone, exported, orphan]) {
      expect(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: t.token })))).toMatchObject({ code: 'E_TOKEN_REVOKED' });
    }
    await s2.stop();
    expect(readAuditRecords(s2.config.audit.dir, (r) => r.type === 'token_revoked' && (r.details!['ids'] as string[]).includes(orphan.revocationIds[0]!))[0]!.details).toMatchObject({
      reason: expect.stringMatching(/earlier run/) as unknown as string,
      origin: 'local',
    });

    appendFileSync(join(stateDir, TOKEN_REVOCATIONS_FILE), 'not json\n');
    const err = await h.start(config([], {}, stateDir)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'E_TOKEN_REVOCATIONS_FILE' });
    expect((err as Error).message).toMatch(/line 4 is not a token revocation record/); // gone, exported, orphan, then this
  });

  it('a revocation learned from another host kills the running call and refuses the next', async () => {
    /** A shared set as another host's revocation would reach it: in the set first, then announced. */
    class Shared implements TokenRevocations {
      readonly ids = new Set<string>();
      private fns: ((e: RevocationEntry[]) => void)[] = [];
      isRevoked(ids: readonly string[]): boolean {
        return ids.some((id) => this.ids.has(id));
      }
      async revoke(ids: readonly string[], reason: string): Promise<RevocationEntry[]> {
        for (const id of ids) this.ids.add(id);
        return ids.map((id) => ({ id, host: 'here', at: Date.now(), reason }));
      }
      fromElsewhere(e: RevocationEntry): void {
        this.ids.add(e.id);
        for (const fn of this.fns) fn([e]);
      }
      onRevoked(fn: (e: RevocationEntry[]) => void): () => void {
        this.fns.push(fn);
        return () => (this.fns = this.fns.filter((f) => f !== fn));
      }
      status(): RevocationStatus {
        return { backend: 'nats', revoked: this.ids.size, healthy: true, lastSyncAt: Date.now(), detail: 'test' };
      }
      async close(): Promise<void> {}
    }
    const src = new Shared();
    const ca = h.control('a');
    const s = await h.start(config([{ id: 'a', control: ca, capabilities: [toolCap(['echo', 'sleep'])] }]), { output: () => {}, notice: () => {}, revocations: src });
    const a = await ca.next();
    const ex = (await a.conn.call('capabilities.export', { capability: await firstCap(a.conn) })) as Exported;
    const copy = attenuate(ex.token, { constraints: { allowedTools: ['sleep'] } });
    const running = a.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '30' }, capability: copy });
    await until(() => s.runner.running === 1);
    src.fromElsewhere({ id: ex.revocationIds[0]!, host: 'build-2', at: Date.now(), reason: 'revoked on build-2' });
    expect(await running).toMatchObject({ reason: 'revoked' });
    expect(denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: ex.token })))).toMatchObject({ code: 'E_TOKEN_REVOKED' });
    await s.stop();
    const rec = readAuditRecords(s.config.audit.dir, (r) => r.type === 'token_revoked' && r.details?.['origin'] === 'remote');
    expect(rec).toHaveLength(1);
    expect(rec[0]!.details).toMatchObject({ ids: [ex.revocationIds[0]], host: 'build-2', reason: 'revoked on build-2' });
  });

  it('refuses every ct2 call while the revocation source cannot vouch for its set, and keeps serving', async () => {
    class Stale implements TokenRevocations {
      closed = false;
      isRevoked(): boolean {
        throw new RevocationsUnavailableError('feed silent for 9 s (maxStaleness 5 s)');
      }
      revoke(): Promise<RevocationEntry[]> {
        return Promise.reject(new RevocationsUnavailableError('feed down'));
      }
      onRevoked(): () => void {
        return () => {};
      }
      status(): RevocationStatus {
        return { backend: 'nats', revoked: 0, healthy: false, lastSyncAt: null, detail: 'feed silent' };
      }
      async close(): Promise<void> {
        this.closed = true;
      }
    }
    const src = new Stale();
    const ca = h.control('a');
    const s = await h.start(config([{ id: 'a', control: ca }]), { output: () => {}, notice: () => {}, revocations: src });
    const a = await ca.next();
    const cap = await firstCap(a.conn);
    const ex = (await a.conn.call('capabilities.export', { capability: cap })) as Exported;
    for (let i = 0; i < 2; i++) {
      const e = denial(await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: ex.token })));
      expect(e.code).toBe('E_TOKEN_REVOKED');
    }
    // ct1 is not affected, and the sidecar still answers.
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'ct1' }, capability: cap })).toMatchObject({ stdout: 'ct1\n' });
    const admin = await adminClient(s.adminSocket);
    const stats = (await admin.call('stats', {})) as { revocations: RevocationStatus };
    admin.close();
    expect(stats.revocations.healthy).toBe(false);
    expect(await s.metrics.text()).toMatch(/captrap_token_revocations_healthy 0/);
    await s.stop();
    expect(src.closed).toBe(true);
    const d = readAuditRecords(s.config.audit.dir, (r) => r.type === 'access_denied' && r.details?.['code'] === 'E_TOKEN_REVOKED');
    expect(d).toHaveLength(2);
    expect(d[0]!.details).toMatchObject({ revocationCheckFailed: true, tokenId: ex.tokenId });
    // Not the caller's doing: no violation.
    expect(classify({ type: 'access_denied', principal: 'a', details: d[0]!.details! })).toBeUndefined();
  });
});

const NATS = findNatsServer();
if (!NATS) console.warn(`tokens-sidecar: the two-host test is skipped: nats-server is not installed${process.env.CI ? '; under CI that is a failure' : ''}`);

describe.skipIf(!NATS)('two sidecars sharing a NATS revocation set', () => {
  it("a token exported on A serves a's namesake on B (trusting A's keys) until a dies on A; then B refuses it too", async () => {
    const nats = await NatsServer.start(NATS!);
    const baseB = `${h.base}-b`;
    try {
      const revocations = (name: string) => ({ revocations: { backend: 'nats', url: nats.url, bucket: 'tokrev', maxStaleness: '3s', host: name } });
      const ca = h.control('a');
      const sa = await h.start(config([{ id: 'a', control: ca }], revocations('host-a')));
      const aOnA = await ca.next();
      const jwks = join(h.root, 'a-keys.json');
      writeFileSync(jwks, JSON.stringify(TokenKeyStore.open(tokenKeyDir(sa.config.stateDir), { create: false }).jwks()));
      const cb = h.control('b');
      const sb = await h.start(relayConfig({ root: h.root, ctlDir: h.ctlDir, base: baseB }, [{ id: 'a', control: cb }], { tools: TOOLS, tokens: { trust: [jwks] }, ...revocations('host-b') }));
      const aOnB = await cb.next();

      const ex = (await aOnA.conn.call('capabilities.export', { capability: await firstCap(aOnA.conn) })) as Exported;
      expect(await aOnB.conn.call('tools.invoke', { tool: 'echo', args: { text: 'on b' }, capability: ex.token })).toMatchObject({ stdout: 'on b\n' });

      // a dies on A: its capability is revoked, so is the token, on every host.
      const agent = sa.supervisor.get('a')!;
      process.kill(agent.ref.pid, 'SIGKILL');
      await until(() => agent.state === 'exited');
      let last: unknown;
      await until(() => {
        void aOnB.conn
          .call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: ex.token })
          .then((r) => (last = r), (e: unknown) => (last = e));
        return last instanceof RpcError && (last.data as { code: string }).code === 'E_TOKEN_REVOKED';
      }, 5000);
      await sb.stop();
      await sa.stop();
      const remote = readAuditRecords(sb.config.audit.dir, (r) => r.type === 'token_revoked' && r.details?.['origin'] === 'remote');
      expect(remote.find((r) => (r.details!['ids'] as string[]).includes(ex.revocationIds[0]!))?.details).toMatchObject({ host: 'host-a' });
    } finally {
      removeCgroupBase(host, baseB);
      await nats.stop();
    }
  }, 60_000);
});

describe('FileTokenRevocations', () => {
  const id = (c: string) => c.repeat(64);
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'captrap-tokrev-'));
    chmodSync(dir, 0o700);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('persists ids (fdatasync before resolving), reloads them, and cuts a torn last line', async () => {
    const f = await FileTokenRevocations.open(dir, 'h1');
    expect(f.isRevoked([id('a')])).toBe(false);
    const entries = await f.revoke([id('a'), id('b'), id('a')], 'test');
    expect(entries.map((e) => e.id)).toEqual([id('a'), id('b')]);
    expect(f.isRevoked([id('c'), id('b')])).toBe(true);
    await f.close();
    expect(() => f.isRevoked([id('a')])).toThrow(RevocationsUnavailableError);
    // A crash mid-write: half a line without its newline.
    appendFileSync(join(dir, TOKEN_REVOCATIONS_FILE), `{"id":"${id('c')}","ho`);
    const g = await FileTokenRevocations.open(dir, 'h1');
    expect(g.isRevoked([id('a')])).toBe(true);
    expect(g.isRevoked([id('c')])).toBe(false);
    expect(g.status()).toMatchObject({ backend: 'file', revoked: 2, healthy: true });
    await g.revoke([id('d')], 'after the cut');
    await g.close();
    const lines = readFileSync(join(dir, TOKEN_REVOCATIONS_FILE), 'utf8').split('\n');
    expect(lines).toHaveLength(4); // a, b, d and the final newline
    expect(JSON.parse(lines[2]!)).toMatchObject({ id: id('d'), host: 'h1', reason: 'after the cut' });
  });

  it('refuses a corrupt line and a bad id', async () => {
    writeFileSync(join(dir, TOKEN_REVOCATIONS_FILE), `{"id":"${id('a')}","host":"h","at":1,"reason":"r"}\n{"id":"nope"}\n`);
    await expect(FileTokenRevocations.open(dir, 'h')).rejects.toMatchObject({ code: 'E_TOKEN_REVOCATIONS_FILE' });
    rmSync(join(dir, TOKEN_REVOCATIONS_FILE));
    const f = await FileTokenRevocations.open(dir, 'h');
    await expect(f.revoke(['xyz'], 'r')).rejects.toMatchObject({ code: 'E_TOKEN_REVOCATIONS_FILE' });
    await f.close();
  });
});

describe('tokens and revocations config', () => {
  it('parses defaults, nats settings and refuses bad input with the field', () => {
    const c = parseConfig({}, 'c.yaml', '/etc/captrap');
    expect(c.tokens).toEqual({ trust: [], cacheEntries: 10_000 });
    expect(c.revocations).toMatchObject({ backend: 'file', bucket: 'captrap-revocations', maxStalenessMs: 5000, shipAudit: false, auditStream: 'CAPTRAP_AUDIT' });
    expect(typeof c.revocations!.host).toBe('string');
    const n = parseConfig({ tokens: { trust: ['keys.json'], cacheEntries: 50 }, revocations: { backend: 'nats', url: 'nats://127.0.0.1:4222', maxStaleness: '2s', host: 'build-1', shipAudit: true } }, 'c.yaml', '/etc/captrap');
    expect(n.tokens).toEqual({ trust: ['/etc/captrap/keys.json'], cacheEntries: 50 });
    expect(n.revocations).toMatchObject({ backend: 'nats', url: 'nats://127.0.0.1:4222', maxStalenessMs: 2000, host: 'build-1', shipAudit: true });
    expect(() => parseConfig({ revocations: { backend: 'nats' } }, 'c.yaml', '/')).toThrow(/c\.yaml: revocations\.url: backend nats needs url/);
    expect(() => parseConfig({ revocations: { shipAudit: true } }, 'c.yaml', '/')).toThrow(/revocations\.shipAudit: shipAudit needs backend nats/);
    expect(() => parseConfig({ revocations: { maxStaleness: 'soon' } }, 'c.yaml', '/')).toThrow(/revocations\.maxStaleness: expected a duration/);
    expect(thrown(() => parseConfig({ tokens: { cacheEntries: 0 } }, 'c.yaml', '/'))).toMatchObject({ code: 'E_CONFIG' });
    expect(() => parseConfig({ tokens: { trusted: [] } }, 'c.yaml', '/')).toThrow(/tokens/);
    // Securing the nats feed: paths resolved against the config's directory; exactly one way to authenticate.
    const nats = { backend: 'nats', url: 'tls://nats.internal:4222' };
    const sec = parseConfig({ revocations: { ...nats, auth: { user: 'captrap', passwordFile: 'nats.pass' }, tls: { caFile: 'ca.pem' } } }, 'c.yaml', '/etc/captrap');
    expect(sec.revocations).toMatchObject({ auth: { user: 'captrap', passwordFile: '/etc/captrap/nats.pass' }, tls: { caFile: '/etc/captrap/ca.pem' } });
    expect(() => parseConfig({ revocations: { ...nats, auth: { user: 'captrap' } } }, 'c.yaml', '/')).toThrow(/user and passwordFile go together/);
    expect(() => parseConfig({ revocations: { ...nats, auth: { tokenFile: 't', credentialsFile: 'c' } } }, 'c.yaml', '/')).toThrow(/exactly one of/);
    expect(() => parseConfig({ revocations: { ...nats, tls: { certFile: 'c.pem' } } }, 'c.yaml', '/')).toThrow(/certFile and keyFile go together/);
    expect(() => parseConfig({ revocations: { tls: { caFile: 'ca.pem' } } }, 'c.yaml', '/')).toThrow(/auth and tls are for backend nats/);
  });

  it('refuses to start with a trusted key set that does not parse', async () => {
    const bad = join(h.root, 'keys.json');
    writeFileSync(bad, '{"keys":[{"kty":"RSA"}]}');
    const err = await h.start(config([], { tokens: { trust: [bad] } })).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'E_CONFIG' });
    expect((err as Error).message).toContain(bad);
  });

  it('trusts another issuer\'s JWKS', async () => {
    const other = TokenKeyStore.open(join(h.root, 'other-keys'));
    const jwks = join(h.root, 'other.json');
    writeFileSync(jwks, JSON.stringify(other.jwks()));
    const ca = h.control('a');
    const s: Sidecar = await h.start(config([{ id: 'a', control: ca }], { tokens: { trust: [jwks] } }));
    const a = await ca.next();
    const t = issueToken({ key: other.signingKey(), resourceType: 'tool', resource: 'echo', operations: ['invoke'], principal: 'a', ttlMs: 60_000 });
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'other issuer' }, capability: t })).toMatchObject({ stdout: 'other issuer\n' });
    expect(s.tokens!.stats().verified).toBe(1);
    // `captrap keys rotate` while it runs: the new key signs the next export, and verifies it.
    const rotated = s.tokens!.store.rotate();
    const ex = (await a.conn.call('capabilities.export', { capability: await firstCap(a.conn) })) as Exported;
    expect(ex.keyId).toBe(rotated);
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'rotated' }, capability: ex.token })).toMatchObject({ stdout: 'rotated\n' });
    expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'still' }, capability: t })).toMatchObject({ stdout: 'still\n' });
  });
});
