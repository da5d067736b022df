// `captrap run`: exit status passthrough, 128+signal, the exit reason on stderr, option errors.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { main, parseRunArgs } from '../../src/runner/commands/run.js';

const host = probeHost();
const base = `captrap-test-run-${process.pid}-${Date.now().toString(36)}`;
const root = fileURLToPath(new URL('../../', import.meta.url));

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    const code = await main(['--cgroup-base', base, ...argv]);
    const text = (s: typeof out) => s.mock.calls.map((c) => (Buffer.isBuffer(c[0]) ? c[0].toString() : String(c[0]))).join('');
    return { code, out: text(out), err: text(err) };
  } finally {
    out.mockRestore();
    err.mockRestore();
  }
}

afterAll(() => {
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe('captrap run', () => {
  it('parses options into sandbox options', () => {
    const p = parseRunArgs(['--memory', '256M', '--pids=64', '--cpu', '50%', '--env', 'A=b=c', '--ns', 'pid,net', '--allow-degraded', '--', 'ls', '-l']);
    expect(p).toEqual({
      options: { stdin: 'inherit', memory: '256M', pids: 64, cpu: '50%', env: { A: 'b=c' }, namespaces: ['pid', 'net'], allowDegraded: true },
      command: 'ls',
      args: ['-l'],
    });
  });

  it.skipIf(host.layout === 'none')('streams output and exits with the command status; a normal exit prints no reason', async () => {
    const r = await run(['--memory', '64M', '--', 'sh', '-c', 'echo out; echo err >&2; exit 3']);
    expect(r).toEqual({ code: 3, out: 'out\n', err: 'err\n' });
  });

  it.skipIf(host.layout === 'none')('exits 128+signal and prints the reason', async () => {
    const sig = await run(['--', 'sh', '-c', 'kill -USR1 $$']);
    expect(sig.code).toBe(128 + 10);
    expect(sig.err).toMatch(/signaled\(SIGUSR1\)/);
    const to = await run(['--timeout', '200ms', '--kill-grace', '100', '--', 'sleep', '5']);
    expect(to.code).toBe(128 + 15);
    expect(to.err).toMatch(/captrap run: timeout/);
  });

  it.skipIf(host.layout === 'none')('caps forwarded output with --max-output-bytes', async () => {
    const r = await run(['--max-output-bytes', '10', '--', 'sh', '-c', 'echo 0123456789abcdef']);
    expect(r.out).toBe('0123456789\n[captrap: output truncated at 10 bytes]\n');
    const k = await run(['--max-output-bytes', '1k', '--', 'sh', '-c', 'head -c 5000 /dev/zero']);
    expect(k.out).toBe('\0'.repeat(1024) + '\n[captrap: output truncated at 1024 bytes]\n');
  });

  it('rejects bad options: 2 for usage errors, 125 for values the sandbox refuses', async () => {
    expect((await run(['--frobnicate', '--', 'true'])).code).toBe(2);
    expect((await run(['--memory'])).code).toBe(2);
    const bad = await run(['--memory', 'lots', '--', 'true']);
    expect(bad.code).toBe(125);
    expect(bad.err).toMatch(/memory.*lots.*E_SANDBOX_OPTION/);
    const missing = await run(['--', 'no-such-command-captrap']);
    expect(missing.code).toBe(125);
    expect(missing.err).toMatch(/E_COMMAND_NOT_FOUND/);
  });

  it.skipIf(host.layout === 'none')('end to end through the CLI entry point', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/runner/cli.ts', 'run', '--cgroup-base', base, '--memory', '32M', '--', 'sh', '-c', 'echo start; x=a; while :; do x=$x$x; done'], {
      cwd: root,
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.stdout).toBe('start\n');
    expect(r.stderr).toMatch(/captrap run: oom \(exit status 137/);
    expect(r.status).toBe(137);
  });
});
