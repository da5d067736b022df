// The attacks of the confinement issue, one named test each, against a real in-process sidecar
// with the DEFAULT sandbox config (confined, pooled uids, no allowRoot unless the test says so).
// Agents are real node processes (test/fixtures/confine/exec-agent.mjs) that obey the test over
// a Unix socket: they run shell commands as themselves inside their sandbox, and they speak on
// their real fd-3 channel, so the sidecar judges every request by the channel's identity.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAuditRecords, verifyAuditLog, type AuditRecord } from '../../src/kernel/audit.js';
import { newCapabilityId, parseToken, signCapability, toToken } from '../../src/kernel/capability.js';
import { Keyring } from '../../src/kernel/keyring.js';
import { readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost, which } from '../../src/isolation/host.js';
import { parseConfig, type SidecarConfig } from '../../src/runner/config.js';
import { publicKeyFileFor, Sidecar } from '../../src/runner/sidecar.js';

const AGENT = join(import.meta.dirname, '../fixtures/confine/exec-agent.mjs');
const BASE = `captrap-test-confserve-${process.pid}-${Date.now().toString(36)}`;
const host = probeHost();
const HAVE_CURL = which('curl') !== undefined;
if (!HAVE_CURL) console.log('confine-serve: skipping the egress test: curl is not installed on this host (CI installs it)');

// ---------------------------------------------------------------------------------------------
// The agents the test drives

interface ShResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}
interface RpcAnswer {
  result?: unknown;
  error?: { code: number; message: string; data?: { code?: string; reason?: string } };
}
interface ToolResult {
  reason: string;
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

class Agent {
  private seq = 0;
  private buf = '';
  private readonly waiting = new Map<number, (m: Record<string, unknown>) => void>();

  constructor(
    readonly id: string,
    /** The pid the agent sees itself as (inside its own pid namespace). */
    readonly nsPid: number,
    readonly uid: number,
    private readonly sock: Socket,
    rest: string,
  ) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.feed(d));
    this.feed(rest);
  }

  private feed(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const m = JSON.parse(this.buf.slice(0, nl)) as Record<string, unknown>;
      this.buf = this.buf.slice(nl + 1);
      const w = this.waiting.get(m.id as number);
      if (w) {
        this.waiting.delete(m.id as number);
        w(m);
      }
    }
  }

  private order(o: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = ++this.seq;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.sock.write(JSON.stringify({ id, ...o }) + '\n');
    });
  }

  /** Runs `cmd` with /bin/sh as the agent, in the agent's sandbox (its cwd: the config's directory). */
  async sh(cmd: string): Promise<ShResult> {
    return (await this.order({ sh: cmd })) as unknown as ShResult;
  }

  /** One JSON-RPC request on the agent's own channel. */
  async rpc(method: string, params: unknown = {}): Promise<RpcAnswer> {
    return (await this.order({ rpc: { method, params } })) as RpcAnswer;
  }

  async ok<T>(method: string, params: unknown = {}): Promise<T> {
    const a = await this.rpc(method, params);
    if (a.error) throw new Error(`${method}: ${JSON.stringify(a.error)}`);
    return a.result as T;
  }

  async caps(): Promise<{ id: string; token: string; constraints: Record<string, unknown> }[]> {
    return (await this.ok<{ capabilities: { id: string; token: string; constraints: Record<string, unknown>; revoked: boolean }[] }>('capabilities.list')).capabilities.filter((c) => !c.revoked);
  }

  invoke(tool: string, args: Record<string, unknown>, capability: string): Promise<RpcAnswer> {
    return this.rpc('tools.invoke', { tool, args, capability });
  }

  async tool(tool: string, args: Record<string, unknown>, capability: string): Promise<ToolResult> {
    return this.ok<ToolResult>('tools.invoke', { tool, args, capability });
  }
}

/** The socket the agents dial (world-writable: they run as uids of their own). */
class Control {
  readonly path: string;
  private readonly server: Server;
  private readonly agents = new Map<string, Agent>();
  private readonly waiting = new Map<string, (a: Agent) => void>();

  constructor(dir: string) {
    this.path = join(dir, `ctl-${randomBytes(3).toString('hex')}.sock`);
    this.server = createServer((sock) => {
      sock.on('error', () => {});
      let buf = '';
      const onData = (c: Buffer) => {
        buf += c.toString('utf8');
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        sock.off('data', onData);
        const hello = JSON.parse(buf.slice(0, nl)) as { hello: string; pid: number; uid: number };
        const a = new Agent(hello.hello, hello.pid, hello.uid, sock, buf.slice(nl + 1));
        this.agents.set(a.id, a);
        this.waiting.get(a.id)?.(a);
      };
      sock.on('data', onData);
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(this.path, r));
    chmodSync(this.path, 0o666);
  }

  agent(id: string, ms = 15_000): Promise<Agent> {
    const a = this.agents.get(id);
    if (a) return Promise.resolve(a);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`agent ${id} did not connect within ${ms} ms`)), ms);
      this.waiting.set(id, (x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  }

  close(): void {
    this.server.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Config

const TOOLS = [
  { name: 'echo', command: ['echo', '{text}'], args: { text: { type: 'string' } } },
  { name: 'read_file', command: ['cat', '{path}'], args: { path: { type: 'string' } }, resources: [{ kind: 'file', arg: 'path', access: 'read' }] },
  // A raw shell: no resource mapping, so its view is just the capability's roots (read-only).
  { name: 'sh', command: ['sh', '-c', '{cmd}'], args: { cmd: { type: 'string' } }, limits: { timeoutMs: 10_000 } },
  // The same shell, but the catalogue says it writes {path}: its capability's roots are bound writable.
  {
    name: 'sh_w',
    command: ['sh', '-c', '{cmd}', 'sh_w', '{path}'],
    args: { cmd: { type: 'string' }, path: { type: 'string' } },
    resources: [{ kind: 'file', arg: 'path', access: 'write' }],
    limits: { timeoutMs: 10_000 },
  },
  { name: 'fetch', command: ['curl', '-sS', '-m', '5', '{url}'], args: { url: { type: 'string' } }, resources: [{ kind: 'url', arg: 'url' }] },
];

function toolCap(tools: string[], constraints: Record<string, unknown> = {}) {
  return { resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: tools, ...constraints }, ttlMs: 600_000 };
}

/** A temp directory every agent uid can traverse and read: it is the agents' cwd and the config's directory. */
function publicDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(d, 0o755);
  return d;
}

function config(dir: string, agents: Record<string, unknown>[], sandbox: Record<string, unknown> = {}): SidecarConfig {
  // A real config file next to the default state dir (.captrap), as `captrap serve` would see it.
  const source = join(dir, 'captrap.json');
  const value = { cgroupBase: BASE, audit: { flushIntervalMs: 20 }, sandbox, tools: TOOLS, agents };
  writeFileSync(source, JSON.stringify(value, null, 2));
  return parseConfig(value, source, dir);
}

function agentEntry(id: string, ctl: Control, capabilities: unknown[]) {
  return { id, command: 'node', args: [AGENT, ctl.path], limits: { memory: '512M', pids: 64 }, capabilities };
}

// ---------------------------------------------------------------------------------------------
// Helpers

async function auditRecords(s: Sidecar): Promise<AuditRecord[]> {
  await s.audit.flush();
  return readAuditRecords(s.config.audit.dir);
}

function verifyAudit(s: Sidecar) {
  const key = readSecretFile(s.config.audit.keyFile);
  const publicKey = readEd25519PublicKey(publicKeyFileFor(s.config.audit.signingKeyFile));
  return verifyAuditLog(s.config.audit.dir, { key, publicKey });
}

/** Every form of the sidecar's secrets an output could leak: key files as written, and decoded. */
function secretsOf(s: Sidecar): string[] {
  const out: string[] = [];
  for (const f of [s.config.capabilityKeyFile, s.config.audit.keyFile]) {
    const text = readFileSync(f, 'utf8').trim();
    const bytes = readSecretFile(f);
    out.push(text, bytes.toString('hex'), bytes.toString('base64'), bytes.toString('base64url'));
  }
  const pem = readFileSync(s.config.audit.signingKeyFile, 'utf8');
  out.push('PRIVATE KEY', ...pem.split('\n').filter((l) => l.length > 0 && !l.startsWith('-----')));
  return out;
}

function expectNoSecret(output: string, secrets: string[]): void {
  for (const x of secrets) expect(output.includes(x), `output leaks ${x.slice(0, 12)}…`).toBe(false);
}

/** Host pids of a process and all its descendants. */
function treeOf(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    const p = out[i]!;
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      continue;
    }
    for (const t of tasks) {
      try {
        for (const c of readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)) out.push(Number(c));
      } catch {
        // gone
      }
    }
  }
  return out;
}

function procState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
}

const denyCode = (a: RpcAnswer) => a.error?.data?.code;
const capEff = (status: string) => /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];

/** This run's cgroup base directories still present, in any hierarchy (v1 controllers, v2, hybrid). */
function cgroupsLeft(): string[] {
  return ['', ...readdirSync('/sys/fs/cgroup')].map((h) => join('/sys/fs/cgroup', h, BASE)).filter((d) => existsSync(d));
}

// ---------------------------------------------------------------------------------------------

const dirs: string[] = [];
afterAll(() => {
  // Everything started here is stopped by the describes' own afterAll; nothing of this base may remain.
  const left = cgroupsLeft();
  removeCgroupBase(host, BASE);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  expect(left).toEqual([]);
});

describe('confined serve: the attacks of the issue, default config', () => {
  let root: string;
  let ctl: Control;
  let s: Sidecar;
  let a: Agent;
  let b: Agent;
  let capA: string; // A's tools over its cwd
  let capNet: string; // A's fetch, with allowedDomains
  let capB: string;
  let http: HttpServer;
  let port: number;
  const seen: string[] = [];
  const BODY = `egress-ok-${randomBytes(4).toString('hex')}`;

  beforeAll(async () => {
    root = publicDir('captrap-confserve-');
    dirs.push(root);
    http = createHttpServer((req, res) => {
      seen.push(`${req.method} ${req.url} host=${req.headers.host}`);
      res.end(BODY);
    });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    port = (http.address() as { port: number }).port;
    ctl = new Control(root);
    await ctl.listen();
    writeFileSync(
      join(root, 'pidfd.py'),
      [
        'import ctypes, os, sys',
        'libc = ctypes.CDLL(None, use_errno=True)',
        'for p in sys.argv[1:]:',
        '    fd = libc.syscall(434, int(p), 0)',
        '    if fd < 0:',
        "        print('pid', p, 'pidfd_open failed:', os.strerror(ctypes.get_errno()))",
        '        continue',
        '    got = libc.syscall(438, fd, 3, 0)',
        "    print('pid', p, 'pidfd_open ok', 'pidfd_getfd', 'GOT FD' if got >= 0 else 'failed: ' + os.strerror(ctypes.get_errno()))",
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    s = await Sidecar.start(
      config(root, [
        agentEntry('a', ctl, [toolCap(['echo', 'read_file', 'sh', 'sh_w'], { paths: [root] }), toolCap(['fetch', 'sh'], { allowedDomains: [`localhost:${port}`] })]),
        agentEntry('b', ctl, [toolCap(['echo', 'sh'])]),
      ]),
      { output: () => {} },
    );
    [a, b] = await Promise.all([ctl.agent('a'), ctl.agent('b')]);
    const ca = await a.caps();
    capA = ca.find((c) => c.constraints.paths)!.id;
    capNet = ca.find((c) => c.constraints.allowedDomains)!.id;
    capB = (await b.caps())[0]!.id;
  });

  afterAll(async () => {
    await s?.stop();
    ctl?.close();
    http?.close();
    expect(cgroupsLeft()).toEqual([]);
    // Closed after every attack of this describe: the whole chain verifies.
    if (s) expect(verifyAudit(s).ok).toBe(true);
  });

  it('an agent cannot read the capability key, the audit keys or the state dir', async () => {
    const state = s.config.stateDir;
    expect(state).toBe(join(root, '.captrap'));
    expect(existsSync(join(state, 'cap.key'))).toBe(true);
    const secrets = secretsOf(s);
    const files = ['cap.key', 'audit.key', 'audit-signing.pem'];
    // The agent itself, from its cwd (relative) and by absolute path.
    for (const f of files) {
      for (const p of [`.captrap/${f}`, join(state, f)]) {
        const r = await a.sh(`cat ${p}`);
        expect(r.code, `agent cat ${p}`).not.toBe(0);
        expectNoSecret(r.stdout + r.stderr, secrets);
      }
    }
    const ls = await a.sh('ls -la .captrap; ls -la .captrap/audit');
    expect(ls.code).not.toBe(0);
    expect(ls.stdout).not.toMatch(/cap\.key|audit\.key|admin\.sock|revocations/);
    // Hidden, not merely unreadable: where the agent sees the directory around them, the state dir
    // and the config are empty mode-000 covers (on the host they are 0700 and a non-empty file).
    expect((await a.sh('ls -a')).stdout).toContain('captrap.json');
    const st = await a.sh('stat -c "%a %s %U" .captrap captrap.json; cat captrap.json');
    expect(st.stdout.split('\n').slice(0, 2)).toEqual([expect.stringMatching(/^0 \d+ root$/), '0 0 root']);
    expect(st.stdout).not.toContain('cgroupBase');
    // A tool whose capability covers the cwd, read-only and writable.
    for (const tool of ['sh', 'sh_w'] as const) {
      const cmd = `cat ${files.map((f) => join(state, f)).join(' ')}; ls -la ${state}; cat ${join(root, 'captrap.json')} >/dev/null && echo CONFIG-READ`;
      const r = await a.tool(tool, tool === 'sh' ? { cmd } : { cmd, path: join(root, 'x') }, capA);
      expect(r.reason).toBe('exited');
      expect(r.exitCode, `${tool}: ${r.stdout}${r.stderr}`).not.toBe(0);
      expectNoSecret(r.stdout + r.stderr, secrets);
      expect(r.stdout).not.toMatch(/cap\.key|audit\.key/);
      // The config file is a sidecar secret too (it names every key path and tool).
      expect(r.stdout).not.toContain('CONFIG-READ');
    }
    // read_file, the catalogue's own reader, is refused or reads nothing.
    const rf = await a.invoke('read_file', { path: join(state, 'cap.key') }, capA);
    expectNoSecret(JSON.stringify(rf), secrets);
    if (rf.result) expect((rf.result as ToolResult).exitCode).not.toBe(0);
  });

  it('a forged token is refused', async () => {
    const ref = s.supervisor.get('a')!.ref;
    const now = Date.now();
    const claim = {
      v: 1 as const,
      id: newCapabilityId(),
      principal: 'a',
      resourceType: 'tool' as const,
      resource: '*',
      operations: ['invoke'],
      constraints: { allowedTools: ['read_file', 'sh'], paths: ['/'] },
      parentId: null,
      ancestors: [],
      depth: 0,
      issuedAt: now,
      expiresAt: now + 600_000,
      holder: ref,
    };
    // A guessed key under the real key id, and a key id the sidecar does not know.
    const guessed = toToken(signCapability(claim, new Keyring({ id: 'k1', secret: randomBytes(32) })));
    const unknownKey = toToken(signCapability({ ...claim, id: newCapabilityId() }, new Keyring({ id: 'k2', secret: randomBytes(32) })));
    // The agent's own, real token with its paths widened to '/' (signature left as it was).
    const real = parseToken((await a.caps()).find((c) => c.id === capA)!.token);
    const widened = toToken({ ...real, constraints: { ...real.constraints, paths: ['/'] } });
    const before = (await auditRecords(s)).length;
    const started = s.counters.started;
    const codes: Record<string, string | undefined> = {};
    for (const [name, token] of Object.entries({ guessed, unknownKey, widened })) {
      const r = await a.invoke('read_file', { path: '/etc/shadow' }, token);
      expect(r.result, name).toBeUndefined();
      expect(r.error?.code, name).toBe(-32001);
      codes[name] = denyCode(r);
      const r2 = await a.invoke('sh', { cmd: 'cat /etc/shadow' }, token);
      expect(r2.error?.code, name).toBe(-32001);
    }
    expect(codes).toEqual({ guessed: 'E_BAD_SIGNATURE', unknownKey: 'E_UNKNOWN_KEY', widened: 'E_BAD_SIGNATURE' });
    expect(s.counters.started).toBe(started);
    const after = (await auditRecords(s)).slice(before);
    expect(after.filter((r) => r.type === 'sandbox_started')).toEqual([]);
    expect(after.filter((r) => r.type === 'access_denied').length).toBeGreaterThanOrEqual(6);
  });

  it('the audit log cannot be rewritten from inside', async () => {
    await s.audit.flush();
    const auditDir = s.config.audit.dir;
    const segments = readdirSync(auditDir).filter((f) => !f.startsWith('.')).map((f) => join(auditDir, f));
    expect(segments.length).toBeGreaterThan(0);
    const sizes = segments.map((f) => readFileSync(f).length);
    const attack = segments.map((f) => `echo '{"forged":1}' >> ${f}; : > ${f}; truncate -s 0 ${f}; rm -f ${f}; mv ${f} ${f}.x`).join('; ') + `; ls ${auditDir}`;
    const byAgent = await a.sh(attack);
    expect(byAgent.code).not.toBe(0);
    const byTool = await a.tool('sh_w', { cmd: attack, path: join(root, 'x') }, capA);
    expect(byTool.exitCode).not.toBe(0);
    for (const [i, f] of segments.entries()) {
      expect(existsSync(f)).toBe(true);
      expect(readFileSync(f).length).toBeGreaterThanOrEqual(sizes[i]!);
      expect(readFileSync(f, 'utf8')).not.toContain('"forged"');
    }
    // The log is still open: its records verify, and only the tail after the last checkpoint is
    // unsigned yet (the full check, closed log included, runs when the sidecar stops).
    await s.audit.flush();
    const report = verifyAudit(s);
    expect(report.integrity.ok, JSON.stringify(report).slice(0, 2000)).toBe(true);
    expect(report.completeness.problems.filter((p) => p.kind !== 'unverifiable')).toEqual([]);
    expect(report.records).toBeGreaterThan(0);
  });

  it('the admin socket is unreachable', async () => {
    expect(existsSync(s.adminSocket)).toBe(true);
    const probe = (p: string) =>
      `node -e 'const s=require("net").connect(${JSON.stringify(p)});s.on("connect",()=>{s.write(JSON.stringify({jsonrpc:"2.0",id:1,method:"agents.list",params:{}})+"\\n");s.on("data",d=>{console.log("ANSWER",String(d));process.exit(0)})});s.on("error",e=>{console.log("ERR",e.code);process.exit(1)})'`;
    const targets = [s.adminSocket, './.captrap/admin.sock'];
    for (const t of targets) {
      const r = await a.sh(probe(t));
      expect(r.stdout, `agent -> ${t}`).toMatch(/^ERR (ENOENT|EACCES|ECONNREFUSED|ENOTDIR)/);
      expect(r.stdout).not.toContain('ANSWER');
    }
    // A tool (its cwd is '/', so only the absolute path means anything), read-only and writable views.
    for (const tool of ['sh', 'sh_w'] as const) {
      const cmd = probe(s.adminSocket);
      const r = await a.tool(tool, tool === 'sh' ? { cmd } : { cmd, path: join(root, 'x') }, capA);
      expect(r.stdout, `${tool} -> admin socket`).toMatch(/^ERR (ENOENT|EACCES|ECONNREFUSED|ENOTDIR)/);
    }
  });

  it('a tool cannot stop the sidecar', async () => {
    const t0 = Date.now();
    const r = await a.tool('sh', { cmd: `kill -STOP $PPID; kill -STOP 1; kill -STOP ${process.pid}; kill -STOP -1; echo done` }, capA);
    expect(Date.now() - t0).toBeLessThan(9_000);
    expect(r.stdout).toContain('done');
    expect(procState(process.pid)).not.toBe('T');
    const t1 = Date.now();
    const other = await b.tool('echo', { text: 'still here' }, capB);
    expect(Date.now() - t1).toBeLessThan(2_000);
    expect(other).toMatchObject({ reason: 'exited', exitCode: 0, stdout: 'still here\n' });
    expect(procState(process.pid)).not.toBe('T');
    // The agent itself cannot either (not `kill -1`: that would stop the agent's own node, its only victim).
    const ag = await a.sh(`kill -STOP ${process.pid}; kill -STOP 1; echo done`);
    expect(ag.stdout).toBe('done\n');
    const t2 = Date.now();
    expect((await b.tool('echo', { text: 'again' }, capB)).stdout).toBe('again\n');
    expect(Date.now() - t2).toBeLessThan(2_000);
    expect(procState(process.pid)).not.toBe('T');
  });

  it("agents cannot take each other's channel", async () => {
    const bHandle = s.supervisor.get('b')!;
    const bHost = treeOf(bHandle.ref.pid);
    expect(bHost.length).toBeGreaterThan(1);
    const before = (await auditRecords(s)).length;
    // (a) A's /proc shows its own namespace only: neither B nor the sidecar.
    const ps = await a.sh('for d in /proc/[0-9]*; do echo "${d#/proc/} $(tr "\\0" " " < $d/cmdline)"; done');
    const pids = ps.stdout.trim().split('\n').map((l) => Number(l.split(' ')[0]));
    expect(pids.length).toBeGreaterThan(0);
    for (const p of [...bHost, process.pid]) expect(pids).not.toContain(p);
    expect(ps.stdout).not.toContain('vitest');
    // A and B run the same command line: A sees exactly one agent process, its own.
    // (Its namespace's init, the launcher, names the command line too: count the node processes.)
    expect(ps.stdout.split('\n').filter((l) => /^\d+ \S*node \S*exec-agent\.mjs/.test(l))).toEqual([expect.stringMatching(new RegExp(`^${a.nsPid} `))]);
    expect(pids).toContain(a.nsPid);
    // (b) signals to B's host pids go nowhere.
    const kill = await a.sh(bHost.map((p) => `kill -0 ${p} 2>&1 && echo REACHED ${p}`).join('; ') + '; true');
    expect(kill.stdout).not.toContain('REACHED');
    // (c) pidfd_open + pidfd_getfd on B's host pids.
    const py = await a.sh('command -v python3');
    if (py.code !== 0) {
      console.log('skipping pidfd_open/pidfd_getfd: no python3 inside the agent sandbox');
    } else {
      const r = await a.sh(`python3 pidfd.py ${bHost.join(' ')}`);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).not.toContain('GOT FD');
      expect(r.stdout).not.toContain('pidfd_open ok');
      expect(r.stdout.trim().split('\n')).toHaveLength(bHost.length);
    }
    // B still works, and the audit shows nothing from B that B did not do.
    const capsB = await b.caps();
    expect(capsB.map((c) => c.id)).toContain(capB);
    expect((await b.tool('echo', { text: 'b' }, capB)).stdout).toBe('b\n');
    const fromB = (await auditRecords(s)).slice(before).filter((r) => r.principal === 'b');
    const tools = fromB.filter((r) => r.type === 'sandbox_started' || r.type === 'access_denied' || r.type === 'sandbox_exited');
    expect(tools.map((r) => `${r.type}:${String(r.details?.tool)}`)).toEqual(['sandbox_started:echo', 'sandbox_exited:echo']);
    expect(fromB.filter((r) => r.type === 'capability_revoked' || r.type === 'principal_cleanup')).toEqual([]);
    // Distinct uids, neither root.
    const ua = Number((await a.sh('id -u')).stdout.trim());
    const ub = Number((await b.sh('id -u')).stdout.trim());
    expect(ua).toBe(a.uid);
    expect(ub).toBe(b.uid);
    expect(ua).not.toBe(ub);
    expect(ua).toBeGreaterThanOrEqual(200_000);
    expect(ub).toBeGreaterThanOrEqual(200_000);
  });

  it.skipIf(!HAVE_CURL)('egress: the URL differential is refused and direct connects go nowhere', async () => {
    // (a) through the proxy, to an allowed host.
    const env = await a.tool('sh', { cmd: 'echo "$HTTP_PROXY $http_proxy"' }, capNet);
    expect(env.stdout.trim()).toBe('http://127.0.0.1:3128 http://127.0.0.1:3128');
    let records = (await auditRecords(s)).length;
    seen.length = 0;
    const ok = await a.tool('fetch', { url: `http://localhost:${port}/ok` }, capNet);
    expect(ok, JSON.stringify(ok)).toMatchObject({ reason: 'exited', exitCode: 0, stdout: BODY });
    expect(seen).toEqual([`GET /ok host=localhost:${port}`]);
    let egress = (await auditRecords(s)).slice(records).filter((r) => r.type === 'egress');
    expect(egress).toHaveLength(1);
    expect(egress[0]).toMatchObject({ principal: 'a', capabilityId: capNet, details: { tool: 'fetch', host: 'localhost', port, allowed: true } });

    // (b) the parser differential: refused by the kernel, nothing spawned.
    records = (await auditRecords(s)).length;
    let started = s.counters.started;
    const diff = await a.invoke('fetch', { url: `http://localhost:${port}\\@127.0.0.1:${port}/` }, capNet);
    expect(diff.error?.code).toBe(-32001);
    expect(denyCode(diff)).toBe('E_INVALID_ARGUMENTS');
    const userinfo = await a.invoke('fetch', { url: `http://localhost:${port}@127.0.0.1:${port}/` }, capNet);
    expect(userinfo.error?.code).toBe(-32001);
    expect(s.counters.started).toBe(started);
    let after = (await auditRecords(s)).slice(records);
    expect(after.filter((r) => r.type === 'sandbox_started')).toEqual([]);
    expect(after.filter((r) => r.type === 'access_denied')).toHaveLength(2);
    expect(seen).toHaveLength(1);

    // (c) a tool that ignores the proxy: its network namespace has nowhere to go.
    const direct = await a.tool('sh', { cmd: `curl -sS -m 5 --noproxy '*' http://127.0.0.1:${port}/direct` }, capNet);
    expect(direct.exitCode).not.toBe(0);
    expect(direct.stderr).toMatch(/Failed to connect|Connection refused|Couldn't connect/i);
    expect(direct.stdout).not.toContain(BODY);
    expect(seen).toHaveLength(1);

    // (d) through the proxy to a host the capability does not name.
    records = (await auditRecords(s)).length;
    started = s.counters.started;
    const denied = await a.tool('sh', { cmd: `curl -sS -m 5 -x "$HTTP_PROXY" -o /dev/null -w '%{http_code}' http://127.0.0.1:${port}/denied` }, capNet);
    expect(denied.stdout).toBe('403');
    expect(seen).toHaveLength(1);
    after = (await auditRecords(s)).slice(records);
    egress = after.filter((r) => r.type === 'egress');
    expect(egress).toHaveLength(1);
    expect(egress[0]).toMatchObject({ principal: 'a', capabilityId: capNet, details: { host: '127.0.0.1', port, allowed: false, code: 'E_DOMAIN_NOT_ALLOWED' } });
    expect(s.counters.started).toBe(started + 1);
  });

  it('a tool without allowedDomains has no network at all', async () => {
    seen.length = 0;
    const r = await a.tool(
      'sh',
      {
        cmd: `cat /proc/net/dev; echo ---; node -e 'const s=require("net").connect(${port},"127.0.0.1");s.on("connect",()=>{console.log("CONNECTED");process.exit(0)});s.on("error",e=>{console.log("ERR",e.code);process.exit(1)})'; echo "proxy=[$HTTP_PROXY]"`,
      },
      capA,
    );
    const [dev, rest] = r.stdout.split('---\n');
    const ifaces = dev!.trim().split('\n').slice(2).map((l) => l.split(':')[0]!.trim());
    expect(ifaces).toEqual(['lo']);
    expect(rest).toMatch(/^ERR (ECONNREFUSED|ENETUNREACH|EHOSTUNREACH)/);
    expect(rest).not.toContain('CONNECTED');
    expect(rest).toContain('proxy=[]');
    expect(seen).toEqual([]);
    // The agent has no network either.
    const ag = await a.sh(`node -e 'const s=require("net").connect(${port},"127.0.0.1");s.on("connect",()=>{console.log("CONNECTED");process.exit(0)});s.on("error",e=>{console.log("ERR",e.code);process.exit(1)})'`);
    expect(ag.stdout).toMatch(/^ERR /);
    expect(seen).toEqual([]);
  });

  it('tools run as their agent\'s uid and never as root', async () => {
    for (const [agent, cap] of [[a, capA], [b, capB]] as const) {
      const own = await agent.sh('id -u; id -g; cat /proc/self/status');
      const [uid] = own.stdout.split('\n');
      expect(Number(uid)).toBe(agent.uid);
      expect(agent.uid).toBeGreaterThanOrEqual(200_000);
      expect(capEff(own.stdout)).toMatch(/^0+$/);
      const t = await agent.tool('sh', { cmd: 'id -u; id -g; cat /proc/self/status' }, cap);
      const [tuid, tgid] = t.stdout.split('\n');
      expect(Number(tuid)).toBe(agent.uid);
      expect(Number(tgid)).not.toBe(0);
      expect(capEff(t.stdout)).toMatch(/^0+$/);
      expect(t.stdout).toMatch(/^NoNewPrivs:\s*1$/m);
      expect(t.stdout).toMatch(/^Uid:\s*(\d+)\s+\1\s+\1\s+\1$/m);
    }
  });
});

describe('confined serve: allowRoot', () => {
  let root: string;
  let ctl: Control;
  let s: Sidecar | undefined;

  let r: Agent;

  beforeAll(async () => {
    root = publicDir('captrap-confserve-root-');
    dirs.push(root);
    ctl = new Control(root);
    await ctl.listen();
    s = await Sidecar.start(config(root, [agentEntry('r', ctl, [toolCap(['sh', 'sh_w'], { paths: [root] }), toolCap(['sh'], { paths: ['/tmp'] })])], { allowRoot: true }), { output: () => {} });
    r = await ctl.agent('r');
  });

  afterAll(async () => {
    await s?.stop();
    ctl?.close();
    expect(cgroupsLeft()).toEqual([]);
    if (s) expect(verifyAudit(s).ok).toBe(true);
  });

  it('allowRoot agents are still contained', async () => {
    if (!s) throw new Error('no sidecar');
    const cap = (await r.caps()).find((c) => (c.constraints.paths as string[])[0] === root)!.id;
    const secrets = secretsOf(s);
    const state = s.config.stateDir;
    await s.audit.flush();
    const segments = readdirSync(s.config.audit.dir).map((f) => join(s!.config.audit.dir, f));
    const attack = [
      'id -u',
      'cat /proc/self/status',
      'ls /sys/fs/cgroup && echo SAW-CGROUPFS',
      'mkdir /sys/fs/cgroup/escape && echo MADE-CGROUP',
      'mount -t cgroup2 none /tmp 2>&1 && echo MOUNTED',
      'mount -t tmpfs none /tmp 2>&1 && echo MOUNTED',
      'unshare -Urm sh -c "mount -t cgroup2 none /tmp && echo MOUNTED"',
      `cat ${['cap.key', 'audit.key', 'audit-signing.pem'].map((f) => join(state, f)).join(' ')}`,
      `ls -la ${state}`,
      ...segments.map((f) => `echo '{"forged":1}' >> ${f} && echo APPENDED`),
      `kill -STOP ${process.pid} && echo STOPPED`,
      'true',
    ].join('; ');
    // The root agent itself, then a root tool with a writable view over the config's directory.
    for (const run of [() => r.sh(attack), () => r.tool('sh_w', { cmd: attack, path: join(root, 'x') }, cap)]) {
      const o = await run();
      const out = o.stdout + o.stderr;
      expect(o.stdout.split('\n')[0]).toBe('0');
      expect(capEff(o.stdout)).toMatch(/^0+$/);
      expect(o.stdout).toMatch(/^NoNewPrivs:\s*1$/m);
      expect(out).not.toMatch(/SAW-CGROUPFS|MADE-CGROUP|MOUNTED|APPENDED|STOPPED/);
      expectNoSecret(out, secrets);
    }
    expect(procState(process.pid)).not.toBe('T');
    for (const f of segments) expect(readFileSync(f, 'utf8')).not.toContain('"forged"');
  });

  // A root over /tmp once carried the launcher's scratch tmpfs (and an unhidden copy of the view):
  // the scratch now goes where no bound root covers it.
  it('allowRoot: a capability over /tmp does not uncover the hidden paths', async () => {
    if (!s) throw new Error('no sidecar');
    const cap = (await r.caps()).find((c) => (c.constraints.paths as string[])[0] === '/tmp')!.id;
    const shadowHead = readFileSync('/etc/shadow', 'utf8').split('\n')[0]!;
    const t = await r.tool('sh', { cmd: 'ls /tmp; cat /etc/shadow /tmp/newroot/etc/shadow' }, cap);
    expect(t.stdout.includes(shadowHead), 'host /etc/shadow readable through /tmp/newroot').toBe(false);
    expect(t.stdout.split('\n')).not.toContain('newroot');
  });
});
