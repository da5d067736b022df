// `captrap revoke <id> | --principal P`: revoke one capability (and everything delegated from
// it) or every capability of a principal, on a running sidecar.
import { runAdminCommand, UsageError } from '../admin-client.js';

const USAGE = `usage: captrap revoke <capability-id> [--json] [--socket PATH]
       captrap revoke --principal P [--json] [--socket PATH]

Revokes a capability and every capability delegated from it, or all capabilities of principal P.
Prints the ids revoked. Exit 1 if the sidecar knows no such capability.
`;

export function main(argv: string[]): Promise<number> {
  return runAdminCommand(
    {
      name: 'revoke',
      usage: USAGE,
      options: { principal: { type: 'string', short: 'p' }, json: { type: 'boolean' } },
      positionals: [0, 1],
      async run({ values, positionals, connect, out }) {
        const principal = values.principal as string | undefined;
        const id = positionals[0];
        if ((id === undefined) === (principal === undefined)) throw new UsageError('give either a capability id or --principal P (exactly one)');
        const client = await connect();
        const { revoked } = await client.revoke(id !== undefined ? { id } : { principal: principal! });
        if (values.json) out.write(JSON.stringify({ revoked }) + '\n');
        else {
          const what = id !== undefined ? id : `principal ${principal}`;
          out.write(`revoked ${revoked.length} ${revoked.length === 1 ? 'capability' : 'capabilities'} (${what})${revoked.length ? ':' : ''}\n`);
          for (const r of revoked) out.write(`  ${r}\n`);
        }
        return 0;
      },
    },
    argv,
  );
}
