// `npm run demo`: a printed walk through the capability kernel. A capability is requested,
// delegated with narrower constraints, used, denied for a tool outside allowedTools, and
// revoked with its children. Nothing is spawned; everything lives in a temp dir removed at the end.
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryAuditSink } from '../src/kernel/events.js';
import { SecurityKernel, type Caller } from '../src/kernel/kernel.js';
import { Keyring } from '../src/kernel/keyring.js';
import { ToolPolicy } from '../src/kernel/policy.js';
import type { ProcessRef } from '../src/kernel/capability.js';

const CATALOGUE = `version: 1
tools:
  - name: read_file
    command: [/bin/cat, "{path}"]
    args: { path: { type: string, maxLength: 4096 } }
    resources: [{ kind: file, arg: path, access: read }]
    limits: { memoryBytes: 67108864, pids: 8, timeoutMs: 5000 }
  - name: write_file
    command: [/usr/bin/tee, "{path}"]
    args: { path: { type: string }, content: { type: string } }
    resources: [{ kind: file, arg: path, access: write, sizeFrom: content }]
  - name: fetch
    command: [/usr/bin/curl, -sS, "{url}"]
    args: { url: { type: string } }
    resources: [{ kind: url, arg: url }]
`;

/** This process as a process ref: field 22 of /proc/self/stat is its start time. */
function selfRef(): ProcessRef {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { pid: process.pid, startTime: Number(fields[19]) };
  } catch {
    return { pid: process.pid, startTime: 0 };
  }
}

let step = 0;
const say = (text: string) => console.log(`\n${++step}. ${text}`);
const show = (text: string) => console.log(`   ${text}`);
const short = (id: string) => id.slice(0, 12) + '…';

function attempt(what: string, fn: () => string): void {
  try {
    show(`${what} -> allowed: ${fn()}`);
  } catch (err) {
    const e = err as { code?: string; message: string };
    show(`${what} -> denied (${e.code}): ${e.message}`);
  }
}

function main(): void {
  const dir = mkdtempSync(join(tmpdir(), 'captrap-demo-'));
  try {
    const ws = join(dir, 'workspace');
    mkdirSync(join(ws, 'src'), { recursive: true });
    writeFileSync(join(ws, 'src', 'notes.txt'), 'hello from the workspace\n');
    writeFileSync(join(dir, 'secrets.env'), 'TOKEN=not-for-agents\n');
    writeFileSync(join(dir, 'tools.yaml'), CATALOGUE);
    const stateDir = join(dir, 'state');
    const keys = new Keyring({ id: 'demo-key', secret: randomBytes(32) });
    const audit = new MemoryAuditSink();
    const policy = ToolPolicy.fromFile(join(dir, 'tools.yaml'));
    let kernel = new SecurityKernel({ keys, audit, policy, stateDir });

    console.log('captrap demo: the capability kernel decides who may call which tool, before anything runs.');
    console.log(`(working in a temporary directory, removed at the end; tools: ${policy.names().join(', ')})`);

    say('The operator grants "planner" tool access, limited to the workspace and example.com.');
    const planner = kernel.requestCapability('planner', { type: 'tool', pattern: '*' }, ['invoke', 'delegate'], {
      allowedTools: ['read_file', 'write_file', 'fetch'],
      paths: [ws],
      maxFileSize: 1 << 20,
      allowedDomains: ['example.com', '*.example.com'],
      maxDelegationDepth: 2,
      limits: { memoryBytes: 256 << 20, pids: 32, cpu: 1, timeoutMs: 30_000 },
    }, { ttlMs: 60 * 60_000 });
    show(`capability ${short(planner.id)}  tools [${planner.constraints.allowedTools!.join(', ')}]  root ${ws}  expires in 60 min`);

    say('planner delegates to "agent-7" with narrower constraints: read_file only, src/ only, 64 KiB files, 10 minutes.');
    const agent = kernel.delegate(planner.id, 'agent-7', {
      operations: ['invoke'],
      constraints: { allowedTools: ['read_file'], paths: [join(ws, 'src')], maxFileSize: 64 << 10, limits: { memoryBytes: 64 << 20 } },
      ttlMs: 10 * 60_000,
    });
    const me = selfRef();
    kernel.bindToProcess(agent.id, me);
    show(`capability ${short(agent.id)}  depth ${agent.depth}  parent ${short(planner.id)}  bound to process ${me.pid} (start time ${me.startTime})`);
    const agent7: Caller = { principal: 'agent-7', process: me };

    say('agent-7 uses it.');
    attempt('read_file src/notes.txt', () => {
      const a = kernel.authorizeToolCall(agent.id, 'read_file', { path: join(ws, 'src', 'notes.txt') }, agent7);
      return `would run [${a.argv.join(' ')}] with memory ${a.limits.memoryBytes! >> 20} MiB, ${a.limits.pids} pids, ${a.limits.timeoutMs} ms`;
    });

    say('agent-7 asks for tools and files its capability does not cover.');
    attempt('write_file src/notes.txt', () => kernel.authorizeToolCall(agent.id, 'write_file', { path: join(ws, 'src', 'notes.txt'), content: 'x' }, agent7).tool.name);
    attempt('read_file src/../../secrets.env', () => kernel.authorizeToolCall(agent.id, 'read_file', { path: `${ws}/src/../../secrets.env` }, agent7).tool.name);
    attempt('the same capability used by "agent-9"', () => kernel.authorizeToolCall(agent.id, 'read_file', { path: join(ws, 'src', 'notes.txt') }, { principal: 'agent-9', process: me }).tool.name);

    say('agent-7 passes a share on to "helper"; it cannot hand out more than it has.');
    attempt('delegate fetch to helper', () => short(kernel.delegate(agent.id, 'helper', { constraints: { allowedTools: ['fetch'] } }, agent7).id));
    const helper = kernel.delegate(agent.id, 'helper', { constraints: { maxFileSize: 4096 } }, agent7);
    show(`delegate read_file (4 KiB files) to helper -> capability ${short(helper.id)} at depth ${helper.depth}`);
    const token = kernel.token(helper.id);
    show(`helper receives it as a token: ${token.slice(0, 32)}… (${token.length} chars, signed with key ${helper.keyId})`);

    say('The operator revokes planner\'s capability; its children go with it.');
    const revoked = kernel.revokeCapability(planner.id, 'demo: task finished');
    show(`revoked ${revoked.length} capabilities: ${revoked.map(short).join(', ')}`);
    attempt('agent-7 reads src/notes.txt again', () => kernel.authorizeToolCall(agent.id, 'read_file', { path: join(ws, 'src', 'notes.txt') }, agent7).tool.name);

    say('captrap restarts; revocations were written to disk, so nothing comes back.');
    kernel.close();
    kernel = new SecurityKernel({ keys, audit, policy, stateDir });
    attempt('helper presents its token to the new kernel', () => kernel.authorizeToolCall(token, 'read_file', { path: join(ws, 'src', 'notes.txt') }, { principal: 'helper' }).tool.name);
    kernel.close();

    console.log('\nAudit trail (what the kernel recorded):');
    for (const e of audit.events) {
      const code = e.details?.['code'] ? ` ${String(e.details['code'])}` : '';
      console.log(`   ${e.type.padEnd(22)} ${(e.principal ?? '').padEnd(8)} ${e.capabilityId ? short(e.capabilityId) : ''}${code}`);
    }
    console.log('\nDone. Nothing was spawned; the temporary directory is removed.');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main();
