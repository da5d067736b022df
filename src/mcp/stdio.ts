// The stdio front: captrap speaks MCP on its own stdin and stdout (what a client such as Claude
// Desktop launches) and runs the upstream server in one long-lived sandbox. When the client
// goes away (stdin ends) or captrap is told to stop, the upstream's whole tree is killed and its
// cgroup removed before captrap exits; if captrap is SIGKILLed, the parent-death signal does it.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { AuditLog, AUDIT_PUBLIC_KEY_FILE, AUDIT_SIGNING_KEY_FILE } from '../kernel/audit.js';
import { Keyring } from '../kernel/keyring.js';
import { generateSecret } from '../kernel/keys.js';
import { cleanupStaleCgroups, removeCgroupBase } from '../isolation/cgroup.js';
import { probeHost } from '../isolation/host.js';
import { McpGateway, type McpClientSpec, type McpServerSpec } from './gateway.js';

export interface StdioGatewayOptions {
  server: McpServerSpec;
  client: McpClientSpec;
  /** Holds the audit keys (created 0700). */
  stateDir: string;
  /** The hash-chained audit log (one writer per directory). */
  auditDir: string;
  stdin?: Readable;
  stdout?: Writable;
  /** One line for the operator (default: stderr, prefixed `captrap mcp: `). */
  notice?: (line: string) => void;
}

export async function runStdioGateway(o: StdioGatewayOptions): Promise<number> {
  const notice = o.notice ?? ((l: string) => process.stderr.write(`captrap mcp: ${l}\n`));
  const stdin = o.stdin ?? process.stdin;
  const stdout = o.stdout ?? process.stdout;
  mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
  const cgroupBase = o.server.cgroupBase ?? 'captrap-mcp';
  // What a SIGKILLed gateway left behind goes first, as `captrap run` does.
  const stale = await cleanupStaleCgroups(probeHost(), cgroupBase).catch(() => undefined);
  if (stale && stale.removed.length > 0) notice(`removed ${stale.removed.length} stale cgroup dir(s), killed ${stale.killed} leftover process(es)`);
  const audit = await AuditLog.open({
    dir: o.auditDir,
    keyFile: join(o.stateDir, 'audit.key'),
    signingKeyFile: join(o.stateDir, AUDIT_SIGNING_KEY_FILE),
    publicKeyFile: join(o.stateDir, AUDIT_PUBLIC_KEY_FILE),
  });
  // The capability lives as long as this process: a key of its own, never written down.
  const gateway = new McpGateway(new Keyring({ id: 'mcp', secret: generateSecret() }), audit);
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  let session: Awaited<ReturnType<McpGateway['session']>>;
  try {
    session = await gateway.session({ ...o.server, cgroupBase }, o.client, {
      onEvent: (e) => {
        if (e.type === 'exited' && e.restartInMs !== undefined) notice(`upstream ${o.server.name} ${e.reason}; restarting in ${e.restartInMs} ms`);
        if (e.type === 'start_failed') notice(`upstream ${o.server.name} did not start: ${e.error}`);
      },
      onClose: finish,
    });
  } catch (err) {
    // A capability the kernel refuses (a root that does not exist): the log records why, then closes.
    gateway.close();
    await audit.close().catch(() => undefined);
    throw err;
  }
  const transport = new StdioServerTransport(stdin, stdout);
  transport.onerror = (err) => notice(`client message refused: ${err.message}`);
  const stop = (): void => {
    void session.close();
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const s of signals) process.on(s, stop);
  stdin.once('end', stop);
  stdin.once('close', stop);
  stdout.on('error', stop); // the client closed its end of our stdout
  try {
    await session.connect(transport);
    await finished;
  } finally {
    for (const s of signals) process.off(s, stop);
    gateway.close();
    // Our sandboxes are gone; the base goes too unless another gateway still uses it.
    try {
      removeCgroupBase(probeHost(), cgroupBase);
    } catch {
      // stale cleanup of the next start will see to it
    }
    await audit.close().catch((err: unknown) => notice(`audit log closed while unavailable: ${(err as Error).message}`));
  }
  return 0;
}
