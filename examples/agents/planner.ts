// The demo's planner: a TypeScript agent using the `captrap/agent` client. Everything it prints
// goes to its stdout, which `captrap serve` forwards to its own stderr as `[planner] ...` lines.
// It uses a file under its root, is denied a tool and a path it was not given, narrows its
// capability as a ct2 token, and launches a sub-agent ("worker") with a narrower share of its
// capability, then waits to be stopped.
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentCallError, attenuate, connectAgent, type ToolResult } from 'captrap/agent';

const workspace = process.env.DEMO_WORKSPACE!;
const agent = connectAgent();
const short = (id: string) => `${id.slice(0, 12)}…`;
const ending = (r: ToolResult) => (r.reason === 'exited' ? `exited(${r.exitCode})` : r.reason === 'signaled' ? `signaled(${r.signal})` : r.reason);

async function attempt(what: string, run: () => Promise<ToolResult>): Promise<void> {
  try {
    const r = await run();
    console.log(`${what} -> allowed, ${ending(r)}: ${JSON.stringify(r.stdout.trim())}`);
  } catch (err) {
    if (!(err instanceof AgentCallError)) throw err;
    console.log(`${what} -> denied ${err.code}: ${err.reason ?? err.message}`);
  }
}

const held = (await agent.listCapabilities()).filter((c) => !c.revoked);
const cap = held.find((c) => c.resource.type === 'tool');
const mayLaunch = held.find((c) => c.resource.type === 'process');
if (!cap || !mayLaunch) throw new Error('planner was launched without its tool and process capabilities');
console.log(`holds ${short(cap.id)}: tools [${cap.constraints.allowedTools?.join(', ')}] under ${cap.constraints.paths?.join(', ')}, bound to pid ${cap.holder?.pid}`);
console.log(`tools.list -> ${(await agent.listTools()).map((t) => t.name).join(', ')}`);

await attempt('read_file workspace/notes.txt', () => agent.invoke('read_file', { path: join(workspace, 'notes.txt') }, cap));
await attempt('write_file workspace/notes.txt', () => agent.invoke('write_file', { path: join(workspace, 'notes.txt'), content: 'overwritten' }, cap));
await attempt('read_file workspace/../secrets.env', () => agent.invoke('read_file', { path: `${workspace}/../secrets.env` }, cap));

// The same capability as a ct2 token, which any host with the sidecar's public keys can verify,
// narrowed here, offline and without any secret, to word_count for 5 minutes, as an agent does
// before handing a token on. Every block of the token must allow a call.
const exported = await agent.exportCapability(cap, 600_000);
const narrowed = attenuate(exported.token, { constraints: { allowedTools: ['word_count'] }, ttlMs: 300_000 });
console.log(`exported ${exported.tokenId} (${exported.token.length} chars), narrowed offline to word_count (+1 block)`);
await attempt('word_count workspace/notes.txt with the narrowed ct2 token', () => agent.invoke('word_count', { path: join(workspace, 'notes.txt') }, narrowed));
await attempt('read_file workspace/notes.txt with the narrowed ct2 token', () => agent.invoke('read_file', { path: join(workspace, 'notes.txt') }, narrowed));

// The worker runs the same way this agent does (node + tsx), with a share of `cap` narrowed to
// read_file under workspace/reports, and tighter limits than ours.
// Only the command its process capability names: anything else is denied before it starts.
try {
  await agent.spawnAgent({ id: 'rogue', capability: mayLaunch, command: '/bin/sh', args: ['-c', 'true'], capabilities: [] });
  console.log('spawn /bin/sh -> allowed');
} catch (err) {
  if (!(err instanceof AgentCallError)) throw err;
  console.log(`spawn /bin/sh -> denied ${err.code}: ${err.reason ?? err.message}`);
}

const worker = await agent.spawnAgent({
  id: 'worker',
  capability: mayLaunch,
  command: process.execPath,
  args: [...process.execArgv, fileURLToPath(new URL('./worker.ts', import.meta.url))],
  env: { TSX_TSCONFIG_PATH: process.env.TSX_TSCONFIG_PATH ?? '', DEMO_WORKSPACE: workspace },
  limits: { memory: '256M', pids: 32 },
  capabilities: [{ capability: cap, operations: ['invoke'], constraints: { allowedTools: ['read_file'], paths: [join(workspace, 'reports')] }, ttlMs: 300_000 }],
});
console.log(`spawned worker (pid ${worker.pid}) with ${short(worker.capabilities[0]!.id)}: read_file only, workspace/reports only`);

// Stay up until the sidecar closes the channel (it stops us at shutdown); a sub-agent dies with its parent.
agent.onClose(() => process.exit(0));
setInterval(() => undefined, 60_000);
