// The sidecar end to end, in-process: real agents (node processes) in real sandboxes, talking
// over their fd-3 channels through a relay the test controls, real tools, real cgroups, a real
// audit log. Each test starts its own sidecar with a unique cgroup base and state directory.
import { chmodSync, existsSync, mkdirSync, readFileSync, realpathSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readAuditRecords, verifyAuditLog } from '../../src/kernel/audit.js';
import { readSecretFile, readEd25519PublicKey } from '../../src/kernel/keys.js';
import { probeHost } from '../../src/isolation/host.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { isSameProcess } from '../../src/isolation/proc.js';
import { pidsInNamespace, sandboxPidNamespace } from '../../src/isolation/confine.js';
import { parseConfig, type SidecarConfig } from '../../src/runner/config.js';
import { RPC_ERROR, RpcError } from '../../src/runner/jsonrpc.js';
import { publicKeyFileFor, Sidecar } from '../../src/runner/sidecar.js';
import { adminClient, type AgentSpec, type Connected as RelayConnected, Control as RelayControl, type Hello, relayConfig, rpcError, SANDBOX, until } from './inproc.js';

const RELAY = join(import.meta.dirname, '../fixtures/agents/core-relay.mjs');
const BASE = `captrap-t-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const host = probeHost();

let root: string;
let dataDir: string;
/** The control sockets: agents run confined under uids of their own, so it is in their view, world-traversable, its sockets connectable. */
let ctlDir: string;
const sidecars: Sidecar[] = [];
const servers: Server[] = [];

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'captrap-sidecar-'));
  chmodSync(root, 0o755);
  dataDir = join(root, 'data');
  mkdirSync(dataDir, { mode: 0o755 });
  ctlDir = join(root, 'ctl');
  mkdirSync(ctlDir, { mode: 0o755 });
  writeFileSync(join(dataDir, 'hello.txt'), 'hello from data\n');
  writeFileSync(join(root, 'secret.txt'), 'secret\n');
});

afterEach(async () => {
  for (const s of sidecars.splice(0)) await s.stop();
  for (const s of servers.splice(0)) s.close();
});

afterAll(() => {
  removeCgroupBase(host, BASE);
  rmSync(root, { recursive: true, force: true });
});

type Connected = RelayConnected & { pid: number };

/**
 * The host pid of the agent that said hello: the process ref the sidecar launched it as (its
 * launcher, when the agent has a pid namespace of its own). Checked, not assumed: the relay must
 * run inside that sandbox (its pid namespace is the one under the launcher), or, without a pid
 * namespace, be that very process.
 */
function agentPid(h: Hello): number {
  const agent = [...sidecars].reverse().map((s) => s.supervisor.get(h.hello)).find((a) => a !== undefined && a.state === 'running');
  if (!agent) throw new Error(`no running agent '${h.hello}' said hello`);
  const mine = sandboxPidNamespace(agent.ref.pid);
  if (mine !== undefined) expect(h.pidNs).toBe(mine);
  else expect(h.pid).toBe(agent.ref.pid);
  return agent.ref.pid;
}

/** The host pid of an agent's own process (the relay): the leader itself, or the command under its pid namespace's init. */
function hostPidOfAgent(s: Sidecar, id: string): number {
  const leader = s.supervisor.get(id)!.ref.pid;
  const ns = sandboxPidNamespace(leader);
  if (ns === undefined) return leader;
  const inNs = pidsInNamespace(ns).filter((p) => {
    const nspid = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1]?.trim().split(/\s+/);
    return nspid !== undefined && nspid[nspid.length - 1] !== '1';
  });
  expect(inNs).toHaveLength(1);
  return inNs[0]!;
}

/** A control socket the relay agent connects to (chmod 0666: agents run under uids of their own); each connection is one agent. */
class Control extends RelayControl {
  constructor(name: string) {
    super(ctlDir, name);
    servers.push(this.server);
  }

  /** The next agent to connect, with its host pid (see agentPid). */
  override async next(): Promise<Connected> {
    const a = await super.next();
    return { ...a, pid: agentPid(a.hello) };
  }
}

const TOOLS = [
  { name: 'read_file', command: ['cat', '{path}'], args: { path: { type: 'string' } }, resources: [{ kind: 'file', arg: 'path', access: 'read' }] },
  { name: 'echo', command: ['echo', '{text}'], args: { text: { type: 'string' } } },
  { name: 'sleep', command: ['sleep', '{seconds}'], args: { seconds: { type: 'string', pattern: '[0-9.]+' } } },
  // Prints the memory and pids limits of its own cgroups (v1 hierarchies on this host).
  {
    name: 'limits',
    command: ['sh', '-c', 'd=$(grep :memory: /proc/self/cgroup | cut -d: -f3); cat /sys/fs/cgroup/memory$d/memory.limit_in_bytes; d=$(grep :pids: /proc/self/cgroup | cut -d: -f3); cat /sys/fs/cgroup/pids$d/pids.max'],
    args: {},
    limits: { memoryBytes: 128 * 1024 * 1024, pids: 16 },
  },
  { name: 'uid', command: ['id', '-u'], args: {} },
  // Allocates far beyond the tool's memory limit.
  { name: 'hog', command: ['node', '-e', 'const a=[];for(;;)a.push(Buffer.alloc(1<<20,1))'], args: {}, limits: { memoryBytes: 48 * 1024 * 1024 } },
];

function toolCap(tools: string[], paths?: string[]) {
  return { resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: tools, ...(paths ? { paths } : {}) } };
}

/** The real path a sub-agent's `node` resolves to: what a process capability's pattern is judged on. */
const NODE = realpathSync(process.execPath);

function procCap(pattern = NODE, constraints?: Record<string, unknown>) {
  return { resource: { type: 'process', pattern }, operations: ['spawn', 'delegate'], ...(constraints ? { constraints } : {}) };
}

const AGENT_TOOLS = ['read_file', 'echo', 'sleep', 'hog', 'limits'];

function config(agents: AgentSpec[], extra: Record<string, unknown> = {}): SidecarConfig {
  return relayConfig(
    { root, ctlDir, base: BASE },
    agents.map((a) => ({ ...a, capabilities: a.capabilities ?? [toolCap(AGENT_TOOLS, [dataDir])] })),
    { tools: TOOLS, ...extra, sandbox: { ...SANDBOX, ...(extra['sandbox'] as Record<string, unknown> | undefined) } },
  );
}

async function start(cfg: SidecarConfig): Promise<Sidecar> {
  const s = await Sidecar.start(cfg, { output: () => {} });
  sidecars.push(s);
  return s;
}

function capId(caps: { capabilities: { id: string }[] }): string {
  return caps.capabilities[0]!.id;
}

function processCapId(caps: { capabilities: { id: string; resource: { type: string } }[] }): string {
  return caps.capabilities.find((c) => c.resource.type === 'process')!.id;
}

type CapList = { capabilities: { id: string; resource: { type: string } }[] };

describe('sidecar', () => {
  it('runs an allowed tool and refuses what the capability does not allow, spawning nothing', async () => {
    const ctl = new Control('a');
    const s = await start(config([{ id: 'planner', control: ctl }]));
    const a = await ctl.next();
    expect(a.id).toBe('planner');
    const caps = (await a.conn.call('capabilities.list', {})) as { capabilities: { id: string; token: string; holder: { pid: number } }[] };
    expect(caps.capabilities).toHaveLength(1);
    expect(caps.capabilities[0]!.holder.pid).toBe(a.pid);
    const cap = capId(caps);

    const ok = (await a.conn.call('tools.invoke', { tool: 'read_file', args: { path: join(dataDir, 'hello.txt') }, capability: cap })) as { reason: string; exitCode: number; stdout: string };
    expect(ok).toMatchObject({ reason: 'exited', exitCode: 0, stdout: 'hello from data\n' });
    // By token too.
    const byToken = (await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'hi' }, capability: caps.capabilities[0]!.token })) as { stdout: string };
    expect(byToken.stdout).toBe('hi\n');
    // The agent's group keeps a launcher made ahead (sandbox.warm): later calls start through it, with the same result.
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 150));
      expect(await a.conn.call('tools.invoke', { tool: 'echo', args: { text: `warm ${i}` }, capability: cap })).toMatchObject({ reason: 'exited', exitCode: 0, stdout: `warm ${i}\n` });
    }

    const started = s.counters.started;
    const outside = await rpcError(a.conn.call('tools.invoke', { tool: 'read_file', args: { path: join(root, 'secret.txt') }, capability: cap }));
    expect(outside.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);
    expect((outside.data as { code: string }).code).toBe('E_PATH_OUTSIDE_ROOTS');
    const policyTool = await rpcError(a.conn.call('tools.invoke', { tool: 'nope', args: {}, capability: cap }));
    expect(policyTool.rpcCode).toBe(RPC_ERROR.NOT_FOUND);
    const bad = await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 3 }, capability: cap }));
    expect((bad.data as { code: string }).code).toBe('E_INVALID_ARGUMENTS');
    const noParams = await rpcError(a.conn.call('tools.invoke', { tool: 'echo' }));
    expect(noParams.rpcCode).toBe(RPC_ERROR.INVALID_PARAMS);
    expect((noParams.data as { path: string[] }).path).toEqual(['capability']);
    expect(s.counters.started).toBe(started); // nothing spawned for any denial

    const tools = (await a.conn.call('tools.list', {})) as { tools: { name: string }[] };
    expect(tools.tools.map((t) => t.name).sort()).toEqual(['echo', 'hog', 'limits', 'read_file', 'sleep']);

    await s.stop();
    const toolExits = readAuditRecords(s.config.audit.dir, (r) => r.type === 'sandbox_exited' && r.details?.['kind'] === 'tool');
    expect(toolExits).toHaveLength(6);
    expect(toolExits[0]!.details?.['warm']).toBe(false);
    expect(toolExits.slice(2).some((r) => r.details?.['warm'] === true)).toBe(true);
    expect(toolExits.every((r) => r.details?.['cleanedUp'] === true)).toBe(true);
    const denied = readAuditRecords(s.config.audit.dir, (r) => r.type === 'access_denied');
    expect(denied.map((r) => r.details?.['code'])).toEqual(expect.arrayContaining(['E_PATH_OUTSIDE_ROOTS', 'E_UNKNOWN_TOOL', 'E_INVALID_ARGUMENTS']));
    expect(denied.every((r) => r.principal === 'planner' && r.process?.pid === a.pid)).toBe(true);
  });

  it('judges identity by the channel: another agent cannot use a capability, whatever it sends', async () => {
    const c1 = new Control('a');
    const c2 = new Control('b');
    const s = await start(config([
      { id: 'alice', control: c1 },
      { id: 'bob', control: c2 },
    ]));
    const [x, y] = await Promise.all([c1.next(), c2.next()]);
    const [alice, bob] = x.id === 'alice' ? [x, y] : [y, x];
    const aliceCaps = (await alice.conn.call('capabilities.list', {})) as { capabilities: { id: string; token: string }[] };
    const e1 = await rpcError(bob.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: aliceCaps.capabilities[0]!.token }));
    expect((e1.data as { code: string }).code).toBe('E_WRONG_PRINCIPAL');
    // Claims about identity in params are rejected outright, not trusted.
    const e2 = await rpcError(bob.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: aliceCaps.capabilities[0]!.id, principal: 'alice' }));
    expect(e2.rpcCode).toBe(RPC_ERROR.INVALID_PARAMS);
    // Bob cannot revoke Alice's capability.
    const e3 = await rpcError(bob.conn.call('capabilities.revoke', { capability: aliceCaps.capabilities[0]!.id }));
    expect((e3.data as { code: string }).code).toBe('E_NOT_OWNER');
    // A tampered token is refused.
    const t = aliceCaps.capabilities[0]!.token;
    const tampered = t.slice(0, -6) + (t.endsWith('A') ? 'B' : 'A') + t.slice(-5);
    const e4 = await rpcError(alice.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: tampered }));
    expect(e4.rpcCode === RPC_ERROR.ACCESS_DENIED || e4.rpcCode === RPC_ERROR.NOT_FOUND).toBe(true);
    expect(s.kernel.isRevoked(aliceCaps.capabilities[0]!.id)).toBe(false);
  });

  it('answers garbage with errors and keeps serving every agent', async () => {
    const c1 = new Control('a');
    const c2 = new Control('b');
    await start(config([
      { id: 'evil', control: c1 },
      { id: 'good', control: c2 },
    ]));
    const [x, y] = await Promise.all([c1.next(), c2.next()]);
    const [evil, good] = x.id === 'evil' ? [x, y] : [y, x];
    const answers: string[] = [];
    evil.sock.on('data', (d: Buffer) => answers.push(d.toString()));
    evil.sock.write('not json at all\n{"jsonrpc":"2.0"}\n\x00\xff\xfe garbage\n{"jsonrpc":"2.0","id":7,"method":"no.such"}\n');
    evil.sock.write(Buffer.alloc(2 * 1024 * 1024, 0x41)); // a 2 MiB line, over the 1 MiB limit
    evil.sock.write('\n');
    const goodCaps = (await good.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] };
    const r = (await good.conn.call('tools.invoke', { tool: 'echo', args: { text: 'still here' }, capability: capId(goodCaps) })) as { stdout: string };
    expect(r.stdout).toBe('still here\n');
    await until(() => answers.join('').split('\n').filter((l) => l.includes('"error"')).length >= 5);
    const text = answers.join('');
    expect(text).toContain(String(RPC_ERROR.PARSE_ERROR));
    expect(text).toContain(String(RPC_ERROR.METHOD_NOT_FOUND));
    expect(text).toContain(String(RPC_ERROR.LINE_TOO_LONG));
    // And the evil agent itself is still served.
    const evilCaps = (await evil.conn.call('capabilities.list', {})) as { capabilities: unknown[] };
    expect(evilCaps.capabilities).toHaveLength(1);
  });

  it('revokes everything bound to an agent at its exit, kills its tools and its sub-agents, and audits the cleanup', async () => {
    const ctl = new Control('p');
    const subCtl = new Control('s');
    const s = await start(config([{ id: 'parent', control: ctl, capabilities: [toolCap(AGENT_TOOLS, [dataDir]), procCap()] }]));
    const p = await ctl.next();
    const held = (await p.conn.call('capabilities.list', {})) as CapList;
    const cap = capId(held);
    const spawnCap = processCapId(held);
    // Wider limits than the parent's are refused.
    const wide = await rpcError(
      p.conn.call('agents.spawn', { id: 'child', capability: spawnCap, command: 'node', args: [RELAY, subCtl.path], limits: { memory: '1G' }, capabilities: [{ capability: cap }] }),
    );
    expect((wide.data as { code: string; dimension: string })).toMatchObject({ code: 'E_WIDENS', dimension: 'limits.memoryBytes' });
    // A sub-agent's principal is '<parent>/<id>': an id naming another principal is not an id.
    const impersonate = await rpcError(p.conn.call('agents.spawn', { id: 'other/parent', capability: spawnCap, command: 'node', args: [RELAY, subCtl.path], capabilities: [] }));
    expect(impersonate.rpcCode).toBe(RPC_ERROR.INVALID_PARAMS);
    const started = s.counters.started;
    const spawned = (await p.conn.call('agents.spawn', {
      id: 'child',
      capability: spawnCap,
      command: 'node',
      args: [RELAY, subCtl.path],
      limits: { memory: '256M' },
      capabilities: [{ capability: cap, constraints: { allowedTools: ['echo', 'sleep'] } }],
    })) as { id: string; pid: number; capabilities: { id: string; holder: { pid: number }; parent: string }[] };
    const c = await subCtl.next();
    expect(s.counters.started).toBe(started + 1); // the refused spawns started nothing
    expect(c.pid).toBe(spawned.pid);
    expect(spawned.capabilities[0]!.holder.pid).toBe(spawned.pid);
    expect(spawned.capabilities[0]!.parent).toBe(cap);
    const childCap = spawned.capabilities[0]!.id;
    const narrowed = await rpcError(c.conn.call('tools.invoke', { tool: 'read_file', args: { path: join(dataDir, 'hello.txt') }, capability: childCap }));
    expect((narrowed.data as { code: string }).code).toBe('E_TOOL_NOT_ALLOWED');

    // A long tool call of the child and of the parent are running when the parent dies.
    // Both channels close when their agents die, so both calls end in a channel error,
    // unless the revocation kills a tool before its agent's channel is gone: then the call
    // is answered with the tool's end, reason 'revoked'. Either way no call completes.
    const childCall = c.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '30' }, capability: childCap }).catch((e: unknown) => e);
    const parentCall = p.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '30' }, capability: cap }).catch((e: unknown) => e);
    await until(() => s.runner.running === 2);
    const parentAgent = s.supervisor.get('parent')!;
    const childAgent = s.supervisor.get('parent/child')!;
    process.kill(parentAgent.ref.pid, 'SIGKILL');
    await until(() => parentAgent.state === 'exited');
    // Revoked at the first exit signal: the parent's and, by cascade, the child's.
    expect(s.kernel.isRevoked(cap)).toBe(true);
    expect(s.book.isRevoked(s.book.get(childCap)!)).toBe(true);
    for (const ended of [await parentCall, await childCall]) {
      if (!(ended instanceof RpcError)) expect(ended).toMatchObject({ reason: 'revoked' });
    }
    await childAgent.done;
    await parentAgent.done;
    expect(isSameProcess(childAgent.ref)).toBe(false);
    await s.runner.whenIdle(); // the tool sandboxes end after their kill grace

    const admin = await adminClient(s.adminSocket);
    const list = (await admin.call('agents.list', {})) as { agents: { id: string; state: string; parent: string | null }[] };
    expect(list.agents).toEqual(expect.arrayContaining([expect.objectContaining({ id: 'parent', state: 'exited' }), expect.objectContaining({ id: 'parent/child', state: 'exited', parent: 'parent' })]));
    admin.close();

    await s.stop();
    const cleanup = readAuditRecords(s.config.audit.dir, (r) => r.type === 'principal_cleanup');
    expect(cleanup.some((r) => r.process?.pid === parentAgent.ref.pid && (r.details?.['revoked'] as number) >= 1)).toBe(true);
    // The ids are in the cascade's capability_revoked record, written just before the cleanup record.
    const cascades = readAuditRecords(s.config.audit.dir, (r) => r.type === 'capability_revoked' && r.details?.['reason'] === `agent parent exited`);
    expect(cascades.some((r) => (r.details?.['ids'] as string[]).includes(cap))).toBe(true);
    expect(cleanup.some((r) => r.process?.pid === childAgent.ref.pid)).toBe(true);
    // The parent's own tool call was stopped for its owner's exit; the child's for the revocation (or its owner's exit).
    const toolExits = readAuditRecords(s.config.audit.dir, (r) => r.type === 'sandbox_exited' && r.details?.['kind'] === 'tool');
    expect(toolExits.find((r) => r.principal === 'parent')?.details?.['reason']).toBe('owner-exited');
    expect(['revoked', 'owner-exited']).toContain(toolExits.find((r) => r.principal === 'parent/child')?.details?.['reason']);
  });

  it('revokes on the early death notice when the agent\'s own process dies, once, before its exit is seen', async () => {
    const ctl = new Control('dn');
    const s = await start(config([{ id: 'dying', control: ctl }]));
    const a = await ctl.next();
    const cap = capId((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] });
    const status = await s.deathWatch!.status;
    if (!status.available) {
      if (process.env.CI) throw new Error(`early death notices unavailable in CI: ${status.reason}`);
      console.log(`skipping: early death notices unavailable here (${status.reason})`);
      return;
    }
    const agent = s.supervisor.get('dying')!;
    // The relay itself, in its pid namespace: not the leader the capabilities are bound to.
    const own = hostPidOfAgent(s, 'dying');
    expect(own).not.toBe(agent.ref.pid);
    process.kill(own, 'SIGKILL');
    await until(() => s.kernel.isRevoked(cap));
    await agent.done;
    await s.stop();
    const cleanup = readAuditRecords(s.config.audit.dir, (r) => r.type === 'principal_cleanup' && r.process?.pid === agent.ref.pid);
    // One cleanup, from the notice (the exit that followed found nothing left to revoke).
    expect(cleanup).toHaveLength(1);
    expect(cleanup[0]!.details).toMatchObject({ noticedBy: 'death-notice', principals: ['dying'] });
    expect(cleanup[0]!.details?.['revoked']).toBeGreaterThanOrEqual(1);
  });

  it('reports a tool over its memory limit as oom', async () => {
    const ctl = new Control('o');
    await start(config([{ id: 'oomer', control: ctl }]));
    const a = await ctl.next();
    const cap = capId((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] });
    const r = (await a.conn.call('tools.invoke', { tool: 'hog', args: {}, capability: cap })) as { reason: string; usage: { memoryPeakBytes: number } };
    expect(r.reason).toBe('oom');
  });

  it('runs a tool under the tightest of sandbox defaults, tool limits, capability limits and the agent\'s own limits', async () => {
    const ctl = new Control('l');
    const s = await start(
      config(
        // The agent's pids bound the agent (node: ~11 tasks) and its tools together (its group): room for both.
        [{ id: 'limited', control: ctl, limits: { memory: '512M', pids: 40 }, capabilities: [{ ...toolCap(['limits', 'sleep']), constraints: { allowedTools: ['limits', 'sleep'], limits: { memoryBytes: 64 * 1024 * 1024, pids: 12, timeoutMs: 300 } } }] }],
        // The 'limits' tool reads its own cgroup files from /sys/fs/cgroup, which confinement hides.
        { sandbox: { confine: false, allowRoot: true } },
      ),
    );
    const a = await ctl.next();
    const cap = capId((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] });
    const r = (await a.conn.call('tools.invoke', { tool: 'limits', args: {}, capability: cap })) as { stdout: string };
    // memory: capability 64M < tool 128M < default 256M < agent 512M; pids: capability 12 < tool 16 < agent 40 < default 64.
    expect(r.stdout.trim().split('\n')).toEqual([String(64 * 1024 * 1024), '12']);
    const slow = (await a.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '5' }, capability: cap })) as { reason: string; durationMs: number };
    expect(slow.reason).toBe('timeout');
    expect(slow.durationMs).toBeLessThan(3000);
    // An administrator's revocation stops a running call: reason 'revoked'.
    const running = a.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '0.25' }, capability: cap });
    await until(() => s.runner.running === 1);
    const admin = await adminClient(s.adminSocket);
    await admin.call('capabilities.revoke', { principal: 'limited' });
    admin.close();
    expect(await running).toMatchObject({ reason: 'revoked' });
  });

  it('onAgentExit: finish lets a dead agent\'s tool call run to its end; delegation to a running agent binds to it', async () => {
    const c1 = new Control('f');
    const c2 = new Control('g');
    const s = await start(config([{ id: 'giver', control: c1 }, { id: 'taker', control: c2 }], { onAgentExit: 'finish' }));
    const [x, y] = await Promise.all([c1.next(), c2.next()]);
    const [giver, taker] = x.id === 'giver' ? [x, y] : [y, x];
    const cap = capId((await giver.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] });
    const child = (await giver.conn.call('capabilities.delegate', { capability: cap, to: 'taker', constraints: { allowedTools: ['echo'] } })) as { id: string; holder: { pid: number } };
    expect(child.holder.pid).toBe(taker.pid);
    expect(await taker.conn.call('tools.invoke', { tool: 'echo', args: { text: 'given' }, capability: child.id })).toMatchObject({ stdout: 'given\n' });
    // A delegation may not widen.
    const wider = await rpcError(giver.conn.call('capabilities.delegate', { capability: child.id, to: 'giver' }));
    expect(wider.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);

    void giver.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '0.3' }, capability: cap }).catch(() => undefined);
    await until(() => s.runner.running === 1);
    const g = s.supervisor.get('giver')!;
    process.kill(g.ref.pid, 'SIGKILL');
    await until(() => g.state === 'exited');
    // Revoked at once, for the taker too ...
    const denied = await rpcError(taker.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: child.id }));
    expect((denied.data as { code: string }).code).toBe('E_REVOKED');
    // ... but the giver's running call finishes normally.
    await s.runner.whenIdle();
    await s.stop();
    const exits = readAuditRecords(s.config.audit.dir, (r) => r.type === 'sandbox_exited' && r.details?.['tool'] === 'sleep');
    expect(exits.map((r) => r.details?.['reason'])).toEqual(['exited']);
  });

  it('refuses calls with UNAVAILABLE while shutting down; a failed sub-agent delegation leaves nothing running', async () => {
    const ctl = new Control('u');
    const sub = new Control('v');
    const s = await start(config([{ id: 'late', control: ctl, capabilities: [toolCap(AGENT_TOOLS, [dataDir]), procCap()] }]));
    const a = await ctl.next();
    const held = (await a.conn.call('capabilities.list', {})) as CapList;
    const cap = capId(held);
    const failed = await rpcError(
      a.conn.call('agents.spawn', { id: 'kid', capability: processCapId(held), command: 'node', args: [RELAY, sub.path], capabilities: [{ capability: cap, operations: ['invoke', 'admin'] }] }),
    );
    expect((failed.data as { code: string }).code).toBe('E_WIDENS');
    const kid = s.supervisor.get('late/kid');
    await kid?.done;
    expect(kid === undefined || kid.state === 'exited').toBe(true);
    expect(s.supervisor.running().map((r) => r.id)).toEqual(['late']);

    const slow = a.conn.call('tools.invoke', { tool: 'sleep', args: { seconds: '20' }, capability: cap }).catch((e: unknown) => e);
    await until(() => s.runner.running === 1);
    const stopping = s.stop();
    const refused = await rpcError(a.conn.call('capabilities.list', {}));
    expect(refused.rpcCode).toBe(RPC_ERROR.UNAVAILABLE);
    await stopping;
    // The agent's channel closed with it, or (the tool's kill won the race) the call was answered
    // as killed first: either way it never completed.
    const outcome = await slow;
    if (!(outcome instanceof RpcError)) expect(outcome).toMatchObject({ reason: 'killed' });
    expect(s.kernel.isRevoked(cap)).toBe(true);
  });

  it('grants requests only within a requestable template or a held capability', async () => {
    const ctl = new Control('r');
    await start(
      config([
        {
          id: 'asker',
          control: ctl,
          capabilities: [toolCap(['echo', 'read_file'], [dataDir])],
          requestable: [{ resource: { type: 'tool', pattern: 'sleep' }, operations: ['invoke'], constraints: {}, ttlMs: 60_000 }],
        },
      ], { maxCapabilitiesPerAgent: 4 }),
    );
    const a = await ctl.next();
    const fromTemplate = (await a.conn.call('capabilities.request', { resource: { type: 'tool', pattern: 'sleep' }, operations: ['invoke'] })) as { id: string; parent: null; holder: { pid: number } };
    expect(fromTemplate.parent).toBeNull();
    expect(fromTemplate.holder.pid).toBe(a.pid);
    const narrowed = (await a.conn.call('capabilities.request', { resource: { type: 'tool', pattern: 'echo' }, operations: ['invoke'], constraints: { allowedTools: ['echo'] } })) as { id: string; parent: string };
    expect(narrowed.parent).not.toBeNull();
    const r = (await a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: narrowed.id })) as { stdout: string };
    expect(r.stdout).toBe('x\n');
    // Listed as a tree: the parent before its child.
    const listed = ((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] }).capabilities.map((c) => c.id);
    expect(listed).toHaveLength(3);
    expect(listed.indexOf(narrowed.parent)).toBeLessThan(listed.indexOf(narrowed.id));
    const refused = await rpcError(a.conn.call('capabilities.request', { resource: { type: 'tool', pattern: 'hog' }, operations: ['invoke'] }));
    expect((refused.data as { code: string }).code).toBe('E_NOT_REQUESTABLE');
    // The quota (maxCapabilitiesPerAgent: 4 here) bounds what an agent can make the kernel hold.
    await a.conn.call('capabilities.request', { resource: { type: 'tool', pattern: 'sleep' }, operations: ['invoke'] });
    const full = await rpcError(a.conn.call('capabilities.request', { resource: { type: 'tool', pattern: 'sleep' }, operations: ['invoke'] }));
    expect((full.data as { code: string }).code).toBe('E_TOO_MANY_CAPABILITIES');
    // Revoking its own capability works and cascades.
    const rev = (await a.conn.call('capabilities.revoke', { capability: narrowed.parent })) as { revoked: string[] };
    expect(rev.revoked).toEqual(expect.arrayContaining([narrowed.parent, narrowed.id]));
    const after = await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: narrowed.id }));
    expect((after.data as { code: string }).code).toBe('E_REVOKED');
  });

  it('runs agents and tools as the configured user; forwards agent output by line', async () => {
    const lines: string[] = [];
    const ctl = new Control('w');
    const base = config([{ id: 'caller', control: ctl, capabilities: [toolCap(['uid'])] }]);
    const cfg = {
      ...base,
      sandbox: { ...base.sandbox, uid: 65534, gid: 65534 },
      agents: [
        ...base.agents,
        { id: 'nobody', command: 'sh', args: ['-c', 'echo "uid $(id -u) gid $(id -g)"; echo oops >&2; exec sleep 30'], cwd: root, env: {}, uid: 65534, gid: 65534, limits: {}, capabilities: [], requestable: [] },
      ],
    };
    const s = await Sidecar.start(cfg, { output: (id, stream, line) => lines.push(`${id} ${stream} ${line}`) });
    sidecars.push(s);
    await until(() => lines.length >= 2);
    expect(lines.sort()).toEqual(['nobody stderr oops', 'nobody stdout uid 65534 gid 65534']);
    const a = await ctl.next();
    const cap = capId((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] });
    expect(await a.conn.call('tools.invoke', { tool: 'uid', args: {}, capability: cap })).toMatchObject({ stdout: '65534\n' });
  });

  it('without a configured uid, each agent runs under a uid of its own from the identity range, and its tools under the same uid', async () => {
    const c1 = new Control('x');
    const c2 = new Control('y');
    const s = await start(config([
      { id: 'one', control: c1, capabilities: [toolCap(['uid'])] },
      { id: 'two', control: c2, capabilities: [toolCap(['uid'])] },
    ]));
    const agents = await Promise.all([c1.next(), c2.next()]);
    const uids: number[] = [];
    for (const a of agents) {
      const id = s.supervisor.get(a.id)!.identity;
      expect(id.allowRoot).toBe(false);
      expect(id.uid).toBeGreaterThanOrEqual(200000);
      expect(id.uid).toBeLessThan(200000 + 65536);
      expect(id.gid).toBe(id.uid);
      // The agent's process really runs as it (the relay's host process, found through its sandbox's pid namespace) ...
      const status = readFileSync(`/proc/${hostPidOfAgent(s, a.id)}/status`, 'utf8');
      expect(status).toMatch(new RegExp(`^Uid:\\s+${id.uid}\\s+${id.uid}\\s+${id.uid}\\s+${id.uid}$`, 'm'));
      // ... and so do its tools.
      const cap = capId((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] });
      expect(await a.conn.call('tools.invoke', { tool: 'uid', args: {}, capability: cap })).toMatchObject({ reason: 'exited', stdout: `${id.uid}\n` });
      uids.push(id.uid!);
    }
    expect(new Set(uids).size).toBe(2); // no two agents share a uid
  });

  it('allowRoot: an agent without a configured uid keeps uid 0, confined; its tools too', async () => {
    const ctl = new Control('r');
    const s = await start(config([{ id: 'rooty', control: ctl, capabilities: [toolCap(['uid'])] }], { sandbox: { allowRoot: true } }));
    const a = await ctl.next();
    expect(s.supervisor.get('rooty')!.identity).toMatchObject({ allowRoot: true });
    expect(s.supervisor.get('rooty')!.identity.uid).toBeUndefined();
    const cap = capId((await a.conn.call('capabilities.list', {})) as { capabilities: { id: string }[] });
    expect(await a.conn.call('tools.invoke', { tool: 'uid', args: {}, capability: cap })).toMatchObject({ reason: 'exited', stdout: '0\n' });
  });

  it('speaks to a plain shell agent: the protocol needs nothing but fd 3', async () => {
    const lines: string[] = [];
    const script = [
      `printf '%s\\n' '{"jsonrpc":"2.0","id":1,"method":"tools.list","params":{}}' >&3`,
      'read -r answer <&3',
      'echo "$answer"',
      `printf '%s\\n' '{"jsonrpc":"2.0","id":2,"method":"tools.invoke","params":{"tool":"read_file","args":{"path":"/etc/hostname"},"capability":"cap_AAAAAAAAAAAAAAAAAAAAAA"}}' >&3`,
      'read -r answer <&3',
      'echo "$answer"',
      'exec sleep 30',
    ].join('\n');
    const cfg = parseConfig({ tools: TOOLS, agents: [{ id: 'shell', command: 'sh', args: ['-c', script], capabilities: [toolCap(['echo'])] }], cgroupBase: BASE, stateDir: mkdtempSync(join(root, 'state-')) }, 'shell config', root);
    const s = await Sidecar.start(cfg, { output: (_id, stream, line) => stream === 'stdout' && lines.push(line) });
    sidecars.push(s);
    await until(() => lines.length >= 2);
    expect(JSON.parse(lines[0]!)).toEqual({ jsonrpc: '2.0', id: 1, result: { tools: [{ name: 'echo', args: { text: { type: 'string', required: true } } }] } });
    const denied = JSON.parse(lines[1]!) as { id: number; error: { code: number; data: { code: string } } };
    expect(denied.id).toBe(2);
    expect(denied.error.code).toBe(RPC_ERROR.NOT_FOUND);
    expect(denied.error.data.code).toBe('E_UNKNOWN_CAPABILITY');
  });

  it('a start that fails (missing agent command, socket of a live sidecar) leaves nothing behind', async () => {
    const ctl = new Control('z');
    const cfg = config([{ id: 'fine', control: ctl }]);
    const broken = { ...cfg, agents: [...cfg.agents, { ...cfg.agents[0]!, id: 'broken', command: 'no-such-command-here' }] };
    await expect(Sidecar.start(broken, { output: () => {} })).rejects.toMatchObject({ code: 'E_COMMAND_NOT_FOUND' });
    expect(existsSync(cfg.adminSocket)).toBe(false);
    for (const dir of readdirSync('/sys/fs/cgroup')) expect(existsSync(join('/sys/fs/cgroup', dir, BASE))).toBe(false);
    // (The first agent was started, then stopped with everything else: its cgroups are gone with the base.)

    const s = await start(cfg);
    // The same audit directory is refused by its lock; another one gets as far as the socket, which is refused.
    await expect(Sidecar.start({ ...cfg, agents: [] }, { output: () => {} })).rejects.toMatchObject({ code: 'E_AUDIT_LOCKED' });
    const other = mkdtempSync(join(root, 'state-'));
    const second = { ...cfg, agents: [], stateDir: other, audit: { ...cfg.audit, dir: join(other, 'audit') } };
    await expect(Sidecar.start(second, { output: () => {} })).rejects.toMatchObject({ code: 'E_ADMIN_SOCKET' });
    expect(existsSync(s.adminSocket)).toBe(true); // the running sidecar's socket is untouched
  });

  it('admin socket: 0600, lists, revokes, kills, stats and metrics; stop leaves no socket, cgroup or process', async () => {
    const ctl = new Control('m');
    const s = await start(config([{ id: 'worker', control: ctl }]));
    const a = await ctl.next();
    expect(statSync(s.adminSocket).mode & 0o777).toBe(0o600);
    const admin = await adminClient(s.adminSocket);
    const list = (await admin.call('agents.list', {})) as { agents: { id: string; pid: number; state: string; capabilities: number; limits: { memoryBytes: number } }[] };
    expect(list.agents).toHaveLength(1);
    expect(list.agents[0]).toMatchObject({ id: 'worker', pid: a.pid, state: 'running', capabilities: 1, limits: { memoryBytes: 512 * 1024 * 1024 } });
    const caps = (await admin.call('capabilities.list', { principal: 'worker' })) as { capabilities: { id: string }[] };
    const rev = (await admin.call('capabilities.revoke', { id: caps.capabilities[0]!.id })) as { revoked: string[] };
    expect(rev.revoked).toEqual([caps.capabilities[0]!.id]);
    const denied = await rpcError(a.conn.call('tools.invoke', { tool: 'echo', args: { text: 'x' }, capability: caps.capabilities[0]!.id }));
    expect((denied.data as { code: string }).code).toBe('E_REVOKED');
    const stats = (await admin.call('stats', {})) as { kernel: { denials: number }; agents: { running: number }; sandboxes: { running: number }; audit: { eventsLogged: number } };
    expect(stats.agents.running).toBe(1);
    expect(stats.sandboxes.running).toBe(1);
    expect(stats.kernel.denials).toBeGreaterThanOrEqual(1);
    expect(stats.audit.eventsLogged).toBeGreaterThan(0);
    const metrics = (await admin.call('metrics', {})) as { text: string };
    expect(metrics.text).toContain('captrap_agents_running 1');
    const missing = await rpcError(admin.call('agents.kill', { id: 'nobody' }));
    expect(missing.rpcCode).toBe(RPC_ERROR.NOT_FOUND);
    expect(await admin.call('agents.kill', { id: 'worker' })).toEqual({ killed: true });
    const worker = s.supervisor.get('worker')!;
    await worker.done;
    expect(worker.exitReason).toBe('killed');
    admin.close();

    await s.stop();
    expect(existsSync(s.adminSocket)).toBe(false);
    expect(isSameProcess(worker.ref)).toBe(false);
    for (const dir of readdirSync('/sys/fs/cgroup')) expect(existsSync(join('/sys/fs/cgroup', dir, BASE))).toBe(false);
    // The chain verifies and a second start continues it.
    const key = readSecretFile(s.config.audit.keyFile);
    const publicKey = readEd25519PublicKey(publicKeyFileFor(s.config.audit.signingKeyFile));
    const first = verifyAuditLog(s.config.audit.dir, { key, publicKey });
    expect(first.ok).toBe(true);
    const again = await start({ ...s.config, agents: [] });
    await again.stop();
    const second = verifyAuditLog(s.config.audit.dir, { key, publicKey });
    expect(second.ok).toBe(true);
    expect(second.records).toBeGreaterThan(first.records);
    expect(second.firstSeq).toBe(first.firstSeq);
  });
});

describe('agents.spawn is gated by a process capability', () => {
  /** Every cgroup directory under this run's base, in every hierarchy: a spawn would add one. */
  function cgroupsUnderBase(): string[] {
    const out: string[] = [];
    for (const ctrl of readdirSync('/sys/fs/cgroup')) {
      const dir = join('/sys/fs/cgroup', ctrl, BASE);
      if (!existsSync(dir)) continue;
      const walk = (d: string) => {
        for (const e of readdirSync(d, { withFileTypes: true })) {
          if (!e.isDirectory()) continue;
          out.push(join(d, e.name));
          walk(join(d, e.name));
        }
      };
      walk(dir);
    }
    return out.sort();
  }

  it('denies a spawn without a process capability or outside its pattern, spawning nothing and auditing the denial', async () => {
    const ctl = new Control('g');
    const sub = new Control('h');
    const s = await start(config([{ id: 'gated', control: ctl, capabilities: [toolCap(AGENT_TOOLS, [dataDir]), procCap('/usr/bin/env')] }]));
    const a = await ctl.next();
    const held = (await a.conn.call('capabilities.list', {})) as CapList;
    const toolCapId = capId(held);
    const started = s.counters.started;
    const cgroupsBefore = cgroupsUnderBase();
    const spawn = (capability: string | undefined) =>
      rpcError(a.conn.call('agents.spawn', { id: 'kid', ...(capability !== undefined ? { capability } : {}), command: 'node', args: [RELAY, sub.path], capabilities: [] }));

    const none = await spawn(undefined);
    expect(none.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);
    expect((none.data as { code: string }).code).toBe('E_CAPABILITY_REQUIRED');
    // A tool capability does not grant spawning (operation invoke only).
    const tool = await spawn(toolCapId);
    expect(tool.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);
    expect((tool.data as { code: string }).code).toBe('E_OPERATION_NOT_PERMITTED');
    // A process capability for another command.
    const outside = await spawn(processCapId(held));
    expect(outside.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);
    expect((outside.data as { code: string }).code).toBe('E_RESOURCE_NOT_PERMITTED');
    const forged = await spawn('cap_AAAAAAAAAAAAAAAAAAAAAA');
    expect((forged.data as { code: string }).code).toBe('E_UNKNOWN_CAPABILITY');

    expect(s.counters.started).toBe(started);
    expect(s.supervisor.get('gated/kid')).toBeUndefined();
    expect(cgroupsUnderBase()).toEqual(cgroupsBefore);
    await s.stop();
    const denials = readAuditRecords(s.config.audit.dir, (r) => r.type === 'access_denied' && r.details?.['operation'] === 'spawn');
    expect(denials.map((r) => r.details?.['code'])).toEqual(['E_CAPABILITY_REQUIRED', 'E_OPERATION_NOT_PERMITTED', 'E_RESOURCE_NOT_PERMITTED', 'E_UNKNOWN_CAPABILITY']);
    expect(denials.every((r) => r.principal === 'gated')).toBe(true);
  });

  it('spawns what the capability allows; a narrower delegated process capability works for its command only', async () => {
    const ctl = new Control('i');
    const kidCtl = new Control('j');
    const grandCtl = new Control('k');
    const s = await start(config([{ id: 'boss', control: ctl, capabilities: [toolCap(AGENT_TOOLS, [dataDir]), procCap('/usr/bin/*')] }]));
    const a = await ctl.next();
    const held = (await a.conn.call('capabilities.list', {})) as CapList;
    const spawnCap = processCapId(held);
    const kid = (await a.conn.call('agents.spawn', {
      id: 'kid',
      capability: spawnCap,
      command: 'node',
      args: [RELAY, kidCtl.path],
      limits: { memory: '256M', pids: 32 },
      capabilities: [{ capability: spawnCap, operations: ['spawn'], constraints: { allowedCommands: [NODE] } }],
    })) as { pid: number; capabilities: { id: string }[] };
    const k = await kidCtl.next();
    expect(k.pid).toBe(kid.pid);
    const narrow = kid.capabilities[0]!.id;

    // /bin/sh is under /usr/bin (the parent's pattern) but not in the delegated allowedCommands.
    const started = s.counters.started;
    const sh = await rpcError(k.conn.call('agents.spawn', { id: 'grand', capability: narrow, command: 'sh', args: ['-c', 'sleep 30'], capabilities: [] }));
    expect((sh.data as { code: string }).code).toBe('E_COMMAND_NOT_ALLOWED');
    expect(s.counters.started).toBe(started);
    expect(s.supervisor.get('boss/kid/grand')).toBeUndefined();

    const grand = (await k.conn.call('agents.spawn', { id: 'grand', capability: narrow, command: 'node', args: [RELAY, grandCtl.path], limits: { memory: '128M' }, capabilities: [] })) as { pid: number };
    expect((await grandCtl.next()).pid).toBe(grand.pid);
    expect(s.supervisor.get('boss/kid/grand')!.state).toBe('running');

    // Revoked with its holder: once the kid is dead, its process capability spawns nothing.
    const kidAgent = s.supervisor.get('boss/kid')!;
    process.kill(kid.pid, 'SIGKILL');
    await kidAgent.done;
    expect(s.book.isRevoked(s.book.get(narrow)!)).toBe(true);
  });
});
