// `captrap release <principal>`: lift the violation monitor's quarantine of a principal, so its
// requests are served again. What the quarantine revoked stays revoked, and what it killed stays
// dead: a released agent starts over with new capabilities.
import { runAdminCommand } from '../admin-client.js';

const USAGE = `usage: captrap release <principal> [--json] [--socket PATH]

Lifts the quarantine the monitor put on <principal> (and its sub-agents). Exit 1 if it is not
quarantined.
`;

export function main(argv: string[]): Promise<number> {
  return runAdminCommand(
    {
      name: 'release',
      usage: USAGE,
      options: { json: { type: 'boolean' } },
      positionals: [1, 1],
      async run({ values, positionals, connect, out }) {
        const principal = positionals[0]!;
        const client = await connect();
        const result = await client.release(principal);
        out.write(values.json ? JSON.stringify({ principal, ...result }) + '\n' : `released ${principal}\n`);
        return 0;
      },
    },
    argv,
  );
}
