// `captrap kill <agent>`: kill an agent of a running sidecar (fault injection, or stopping a
// runaway). The sidecar kills its sandbox tree, its sub-agents and its tools, and revokes
// every capability bound to them, exactly as if the agent had died on its own.
import { runAdminCommand } from '../admin-client.js';

const USAGE = `usage: captrap kill <agent-id> [--json] [--socket PATH]

Kills the agent's whole sandbox (and its sub-agents and running tools); its capabilities are
revoked. Exit 1 if the sidecar has no such agent.
`;

export function main(argv: string[]): Promise<number> {
  return runAdminCommand(
    {
      name: 'kill',
      usage: USAGE,
      options: { json: { type: 'boolean' } },
      positionals: [1, 1],
      async run({ values, positionals, connect, out }) {
        const id = positionals[0]!;
        const client = await connect();
        const result = await client.kill(id);
        out.write(values.json ? JSON.stringify({ id, ...result }) + '\n' : `killed agent ${id}\n`);
        return 0;
      },
    },
    argv,
  );
}
