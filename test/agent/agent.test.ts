// captrap/agent against a stand-in sidecar: an RpcConnection serving canned answers. In-process
// over stream pairs for the method/param mapping and errors, and through a real child process
// whose fd 3 is a socket pair end (what `captrap serve` gives an agent) for connectAgent().
import { spawn } from 'node:child_process';
import { PassThrough, type Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentCallError, AgentChannelError, AgentClient, connectAgent, type CapView } from '../../src/agent.js';
import { RPC_ERROR, RpcConnection, RpcError, type RpcHandler } from '../../src/runner/jsonrpc.js';

const AGENT_MODULE = fileURLToPath(new URL('../../src/agent.ts', import.meta.url));

function capView(id: string, extra: Partial<CapView> = {}): CapView {
  return {
    id,
    token: `ct1.${id}`,
    principal: 'planner',
    resource: { type: 'tool', pattern: '*' },
    operations: ['invoke'],
    constraints: { allowedTools: ['read_file'] },
    parent: null,
    depth: 0,
    issuedAt: 1,
    expiresAt: 2,
    holder: { pid: 1, startTime: 2 },
    revoked: false,
    ...extra,
  };
}

interface Seen {
  method: string;
  params: unknown;
}

/** A client wired to a fake sidecar in this process; every request the sidecar sees is recorded. */
function pair(handlers: Record<string, RpcHandler>): { client: AgentClient; seen: Seen[]; server: RpcConnection } {
  const toServer = new PassThrough();
  const toClient = new PassThrough();
  const seen: Seen[] = [];
  const wrapped = Object.fromEntries(
    Object.entries(handlers).map(([m, h]) => [
      m,
      (params: unknown, method: string) => {
        seen.push({ method, params });
        return h(params, method);
      },
    ]),
  );
  const server = new RpcConnection(toServer, toClient, { handlers: wrapped });
  const client = new AgentClient(toClient, toServer);
  return { client, seen, server };
}

const open: AgentClient[] = [];
afterEach(() => {
  for (const c of open.splice(0)) c.close();
});

describe('AgentClient', () => {
  it('maps every typed method to its spec method and params, passing capability ids for CapViews', async () => {
    const cap = capView('cap_AAAAAAAAAAAAAAAAAAAA');
    const child = capView('cap_BBBBBBBBBBBBBBBBBBBB', { parent: cap.id, depth: 1, principal: 'helper' });
    const toolResult = {
      reason: 'exited', exitCode: 0, signal: null, stdout: 'hi\n', stderr: '', stdoutTruncated: false, stderrTruncated: false,
      durationMs: 3, usage: { memoryPeakBytes: 1024, cpuUsageUs: 10 },
    };
    const { client, seen } = pair({
      'capabilities.list': () => ({ capabilities: [cap, child] }),
      'capabilities.request': () => cap,
      'capabilities.delegate': () => child,
      'capabilities.revoke': () => ({ revoked: [cap.id, child.id] }),
      'tools.list': () => ({ tools: [{ name: 'read_file', args: { path: { type: 'string' } } }] }),
      'tools.invoke': () => toolResult,
      'agents.spawn': () => ({ id: 'sub', pid: 42, startTime: 7, capabilities: [child] }),
      'capabilities.export': () => ({ token: 'ct2.x', tokenId: 'tok_x', keyId: 'k', revocationIds: ['ab'], expiresAt: 9, principal: 'agent', capability: cap.id }),
    });
    open.push(client);

    expect((await client.listCapabilities()).map((c) => c.id)).toEqual([cap.id, child.id]);
    expect(await client.requestCapability({ resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], ttlMs: 1000 })).toEqual(cap);
    expect(await client.delegate(cap, 'helper', { constraints: { paths: ['/srv/a'] }, ttlMs: 500 })).toEqual(child);
    expect(await client.revoke(cap.token)).toEqual([cap.id, child.id]);
    expect((await client.listTools())[0]!.name).toBe('read_file');
    expect(await client.invoke('read_file', { path: '/srv/a/x' }, cap)).toEqual(toolResult);
    expect((await client.spawnAgent({ id: 'sub', capability: cap.token, command: 'node', args: ['sub.js'], limits: { memory: '64M' }, capabilities: [{ capability: cap, operations: ['invoke'] }] })).pid).toBe(42);
    expect((await client.exportCapability(cap, 60_000)).token).toBe('ct2.x');

    expect(seen).toEqual([
      { method: 'capabilities.list', params: {} },
      { method: 'capabilities.request', params: { resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], ttlMs: 1000 } },
      { method: 'capabilities.delegate', params: { capability: cap.id, to: 'helper', constraints: { paths: ['/srv/a'] }, ttlMs: 500 } },
      { method: 'capabilities.revoke', params: { capability: cap.token } },
      { method: 'tools.list', params: {} },
      { method: 'tools.invoke', params: { tool: 'read_file', args: { path: '/srv/a/x' }, capability: cap.id } },
      {
        method: 'agents.spawn',
        params: { id: 'sub', capability: cap.token, command: 'node', args: ['sub.js'], limits: { memory: '64M' }, capabilities: [{ capability: cap.id, operations: ['invoke'] }] },
      },
      { method: 'capabilities.export', params: { capability: cap.id, ttlMs: 60_000 } },
    ]);
  });

  it('turns a denial into AgentCallError carrying the kernel code and reason', async () => {
    const { client } = pair({
      'tools.invoke': () => {
        throw new RpcError(RPC_ERROR.ACCESS_DENIED, 'access denied: tool write_file is not in allowedTools', { code: 'E_TOOL_NOT_ALLOWED', reason: 'tool write_file is not in allowedTools' });
      },
    });
    open.push(client);
    const err = await client.invoke('write_file', { path: '/x' }, 'cap_x').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentCallError);
    const e = err as AgentCallError;
    expect(e.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);
    expect(e.code).toBe('E_TOOL_NOT_ALLOWED');
    expect(e.denied).toBe(true);
    expect(e.reason).toBe('tool write_file is not in allowedTools');
    expect(e.method).toBe('tools.invoke');
    expect(e.message).toContain('tools.invoke: access denied');
  });

  it('names the RPC code when the sidecar sends no kernel code, and for unknown methods', async () => {
    const { client } = pair({
      'capabilities.revoke': () => {
        throw new RpcError(RPC_ERROR.NOT_FOUND, 'no such capability: cap_nope');
      },
    });
    open.push(client);
    const e1 = (await client.revoke('cap_nope').catch((e: unknown) => e)) as AgentCallError;
    expect([e1.rpcCode, e1.code, e1.denied]).toEqual([RPC_ERROR.NOT_FOUND, 'NOT_FOUND', false]);
    const e2 = (await client.listTools().catch((e: unknown) => e)) as AgentCallError;
    expect([e2.rpcCode, e2.code]).toEqual([RPC_ERROR.METHOD_NOT_FOUND, 'METHOD_NOT_FOUND']);
  });

  it('rejects calls waiting when the channel closes, and every call after, with UNAVAILABLE', async () => {
    const { client, server } = pair({ 'tools.invoke': () => new Promise(() => undefined) });
    let closed = false;
    client.onClose(() => (closed = true));
    const waiting = client.invoke('hang', {}, 'cap_x').catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 10));
    server.close();
    client.close();
    const e = (await waiting) as AgentCallError;
    expect([e.rpcCode, e.code]).toEqual([RPC_ERROR.UNAVAILABLE, 'UNAVAILABLE']);
    expect(closed).toBe(true);
    expect(client.closed).toBe(true);
    const after = (await client.listTools().catch((x: unknown) => x)) as AgentCallError;
    expect(after.code).toBe('UNAVAILABLE');
  });

  it('gives up on a call after timeoutMs when asked to', async () => {
    const toServer = new PassThrough();
    const toClient = new PassThrough();
    const server = new RpcConnection(toServer, toClient, { handlers: { 'tools.list': () => new Promise(() => undefined) } });
    const client = new AgentClient(toClient, toServer, { timeoutMs: 30 });
    open.push(client);
    const e = (await client.listTools().catch((x: unknown) => x)) as AgentCallError;
    expect([e.rpcCode, e.code]).toEqual([RPC_ERROR.TIMEOUT, 'TIMEOUT']);
    server.close();
  });
});

describe('connectAgent', () => {
  it('refuses to start without a channel, saying why', () => {
    const saved = process.env.CAPTRAP_FD;
    delete process.env.CAPTRAP_FD;
    try {
      expect(() => connectAgent()).toThrow(AgentChannelError);
      expect(() => connectAgent()).toThrow(/CAPTRAP_FD is not set/);
    } finally {
      if (saved !== undefined) process.env.CAPTRAP_FD = saved;
    }
  });

  it('speaks over fd 3 of a real child process and lets it exit once no call is waiting', async () => {
    // The child calls, prints what it got, and does NOT close the client: it must still exit.
    const script = `
      import { connectAgent } from ${JSON.stringify(AGENT_MODULE)};
      const agent = connectAgent();
      const caps = await agent.listCapabilities();
      const denied = await agent.invoke('write_file', { path: '/etc/passwd' }, caps[0]).catch((e) => e);
      console.log(JSON.stringify({ ids: caps.map((c) => c.id), code: denied.code, rpcCode: denied.rpcCode, agentId: process.env.CAPTRAP_AGENT_ID }));
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, CAPTRAP_FD: '3', CAPTRAP_AGENT_ID: 'planner' },
    });
    const chan = child.stdio[3] as Duplex;
    const seen: string[] = [];
    const server = new RpcConnection(chan, chan, {
      handlers: {
        'capabilities.list': (_p, m) => {
          seen.push(m);
          return { capabilities: [capView('cap_CCCCCCCCCCCCCCCCCCCC')] };
        },
        'tools.invoke': (p, m) => {
          seen.push(`${m} ${JSON.stringify(p)}`);
          throw new RpcError(RPC_ERROR.ACCESS_DENIED, 'denied', { code: 'E_TOOL_NOT_ALLOWED', reason: 'not allowed' });
        },
      },
    });
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    const exit = await new Promise<number | null>((r) => {
      const t = setTimeout(() => {
        child.kill('SIGKILL');
        r(-1);
      }, 20_000);
      child.on('exit', (code) => {
        clearTimeout(t);
        r(code);
      });
    });
    server.close();
    expect(err).toBe('');
    expect(exit).toBe(0);
    expect(JSON.parse(out)).toEqual({ ids: ['cap_CCCCCCCCCCCCCCCCCCCC'], code: 'E_TOOL_NOT_ALLOWED', rpcCode: RPC_ERROR.ACCESS_DENIED, agentId: 'planner' });
    expect(seen).toEqual(['capabilities.list', 'tools.invoke {"tool":"write_file","args":{"path":"/etc/passwd"},"capability":"cap_CCCCCCCCCCCCCCCCCCCC"}']);
  });
});
