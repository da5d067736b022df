// The planner's sub-agent. Its only capability was delegated by the planner, narrowed to
// read_file under workspace/reports, and bound to this process: once this process is gone
// (the demo SIGKILLs it) the capability is revoked and no other process can ever use it.
import { join } from 'node:path';
import { AgentCallError, connectAgent } from 'captrap/agent';

const workspace = process.env.DEMO_WORKSPACE!;
const agent = connectAgent();
const short = (id: string) => `${id.slice(0, 12)}…`;

const [cap] = await agent.listCapabilities();
if (!cap) throw new Error('worker was launched without a capability');
console.log(`holds ${short(cap.id)} (delegated from ${short(cap.parent ?? '?')}, depth ${cap.depth}): tools [${cap.constraints.allowedTools?.join(', ')}] under ${cap.constraints.paths?.join(', ')}`);

for (const file of ['reports/summary.txt', 'notes.txt']) {
  try {
    const r = await agent.invoke('read_file', { path: join(workspace, file) }, cap);
    console.log(`read_file workspace/${file} -> allowed, ${r.reason}(${r.exitCode}): ${JSON.stringify(r.stdout.trim())}`);
  } catch (err) {
    if (!(err instanceof AgentCallError)) throw err;
    console.log(`read_file workspace/${file} -> denied ${err.code} (its parent may read it; this narrower share may not)`);
  }
}
console.log(`idle, pid ${process.pid}`);
setInterval(() => undefined, 60_000);
