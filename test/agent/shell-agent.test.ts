// Language independence: examples/agents/hello.sh, a plain POSIX shell script with no captrap
// library, speaks the agent protocol on fd 3 against a real `captrap serve`.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const host = probeHost();
const skipReason = process.getuid?.() !== 0 ? 'needs root (serve creates cgroups)' : hierarchyRoots(host).length === 0 ? 'no cgroup hierarchy' : '';
if (skipReason) console.log(`test/agent/shell-agent.test.ts skipped: ${skipReason}`);

describe.skipIf(skipReason !== '')('an agent in plain shell', () => {
  it('lists its capability, runs an allowed tool, and gets ACCESS_DENIED with the kernel code for another', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'captrap-shagent-'));
    const cgroupBase = `captrap-shagent-${process.pid}-${randomBytes(3).toString('hex')}`;
    writeFileSync(
      join(dir, 'captrap.json'),
      JSON.stringify({
        cgroupBase,
        tools: [
          { name: 'echo', command: ['/bin/echo', '{msg}'], args: { msg: { type: 'string' } } },
          { name: 'rm', command: ['/bin/true'] },
        ],
        agents: [
          {
            id: 'hello',
            command: '/bin/sh',
            args: [join(ROOT, 'examples/agents/hello.sh')],
            capabilities: [{ resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: ['echo'] } }],
          },
        ],
      }),
    );
    const serve = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), join(ROOT, 'src/runner/cli.ts'), 'serve', '--config', join(dir, 'captrap.json')], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CAPTRAP_LOG_LEVEL: 'warn' },
    });
    const exited = new Promise<number | null>((r) => serve.on('exit', (code) => r(code)));
    let err = '';
    serve.stderr.on('data', (c: Buffer) => (err += c.toString()));
    try {
      // The script makes three calls and exits; its lines come back on serve's stderr as `[hello] ...`.
      const deadline = Date.now() + 20_000;
      while ((err.match(/^\[hello\] /gm) ?? []).length < 3 && Date.now() < deadline && serve.exitCode === null) await new Promise((r) => setTimeout(r, 25));
      const lines = err.split('\n').filter((l) => l.startsWith('[hello] ')).map((l) => l.slice('[hello] '.length));
      expect(lines[0], err).toMatch(/^capability: cap_[A-Za-z0-9_-]{16,}$/);
      const ok = JSON.parse(lines[1]!) as { id: number; result: { reason: string; exitCode: number; stdout: string } };
      expect([ok.id, ok.result.reason, ok.result.exitCode, ok.result.stdout]).toEqual([2, 'exited', 0, 'hello from sh\n']);
      const denied = JSON.parse(lines[2]!) as { id: number; error: { code: number; data: { code: string } } };
      expect([denied.id, denied.error.code, denied.error.data.code]).toEqual([3, -32001, 'E_TOOL_NOT_ALLOWED']);
    } finally {
      serve.kill('SIGTERM');
      const t = setTimeout(() => serve.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
      await cleanupStaleCgroups(host, cgroupBase).catch(() => undefined);
      removeCgroupBase(host, cgroupBase);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
