// primeCgroupMigration moves the process into the v1 cgroup it is already in: a real migration
// that must change nothing. A process placed in a cgroup of its own (not the hierarchy's root)
// must still be there afterwards, and a host whose hierarchies are missing must not throw.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { probeHost, type HostInfo } from '../../src/isolation/host.js';
import { primeCgroupMigration } from '../../src/isolation/migration-prime.js';

const host = probeHost();
const root = fileURLToPath(new URL('../../', import.meta.url));
const pidsRoot = host.v1.pids;
const dir = pidsRoot ? `${pidsRoot}/captrap-test-prime-${process.pid}-${Date.now().toString(36)}` : undefined;
afterAll(() => {
  // The child has exited, so the cgroup is empty.
  if (dir && existsSync(dir)) rmdirSync(dir);
});

const CHILD = `
import { readFileSync } from 'node:fs';
import { probeHost } from ${JSON.stringify(`${root}src/isolation/host.ts`)};
import { primeCgroupMigration } from ${JSON.stringify(`${root}src/isolation/migration-prime.ts`)};
const pidsLine = () => readFileSync('/proc/self/cgroup', 'utf8').split('\\n').find((l) => /^\\d+:([^:]*,)?pids(,[^:]*)?:/.test(l));
process.stdin.once('data', () => {
  const before = pidsLine();
  primeCgroupMigration(probeHost());
  setTimeout(() => { console.log(JSON.stringify({ before, after: pidsLine() })); process.exit(0); }, 200);
});
console.log('ready');
`;

describe('primeCgroupMigration', () => {
  it.skipIf(!dir || !host.isRoot)('leaves the process in the cgroup it was in (a cgroup of its own, not the root)', async () => {
    mkdirSync(dir!);
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD], { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    await new Promise<void>((resolve) => child.stdout.on('data', (c: Buffer) => (out += c.toString()).includes('ready') && resolve()));
    writeFileSync(`${dir}/cgroup.procs`, String(child.pid));
    child.stdin.write('go\n');
    await new Promise((resolve) => child.once('exit', resolve));
    const line = out.split('\n').find((l) => l.startsWith('{'));
    const { before, after } = JSON.parse(line!) as { before: string; after: string };
    const own = dir!.slice(pidsRoot!.length);
    expect(before.endsWith(`:${own}`)).toBe(true);
    expect(after).toBe(before);
  });

  it('never throws, whatever the host looks like', () => {
    const missing: HostInfo = { ...host, v1: { pids: '/nonexistent/pids', memory: '/nonexistent/memory' } };
    expect(() => primeCgroupMigration(missing)).not.toThrow();
    expect(() => primeCgroupMigration({ ...host, v1: {} })).not.toThrow();
  });
});

