// `npm run demo` as a user runs it: a real `captrap serve`, real agents and tools. The demo checks
// its own claims (exit 1 on any miss); this test also reads the transcript for each step of
// issue 5's story and checks the run left neither its temp dir nor its cgroup behind.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { hierarchyRoots } from '../src/isolation/cgroup.js';
import { probeHost } from '../src/isolation/host.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const host = probeHost();
const isRoot = process.getuid?.() === 0;
const roots = isRoot ? hierarchyRoots(host) : [];
const skipReason = !isRoot ? 'the demo needs root (it creates cgroups)' : roots.length === 0 ? 'no writable cgroup hierarchy on this host' : '';
if (skipReason) console.log(`test/demo.test.ts skipped: ${skipReason}`);

describe.skipIf(skipReason !== '')('npm run demo', () => {
  it('tells issue 5 end to end, every claim holding, in under a minute, leaving nothing behind', async () => {
    const started = Date.now();
    const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGTERM'), 55_000);
      child.on('close', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    const elapsed = Date.now() - started;
    expect(code, out).toBe(0);
    expect(elapsed).toBeLessThan(60_000);

    // The story, in order.
    const steps = [
      /\$ captrap serve --config demo\.yaml\n {3}captrap: ready \S+admin\.sock/,
      /\[planner\] read_file workspace\/notes\.txt -> allowed, exited\(0\): "ship the sidecar on friday"/,
      /\[planner\] write_file workspace\/notes\.txt -> denied E_TOOL_NOT_ALLOWED/,
      /\[planner\] read_file workspace\/\.\.\/secrets\.env -> denied E_PATH_OUTSIDE_ROOTS/,
      /\[planner\] spawned worker \(pid \d+\)/,
      /kill -KILL \d+/,
      /\$ captrap caps --principal planner\/worker\n.*\n {3}cap_\S+\s+planner\/worker\s.*revoked\n/,
      /└ planner\/worker\s+\d+\s+exited \(signaled\(SIGKILL\)\)/,
      /\[scribe\] hog \(32 MiB limit\) -> oom,/,
      /✓ serve exited with code 0/,
      /\$ captrap audit verify .*\n.*"ok":true/,
      /✓ no process left in captrap-demo-/,
      /Done in [\d.]+ s: every claim above held\./,
    ];
    let from = 0;
    for (const re of steps) {
      const m = re.exec(out.slice(from));
      expect(m, `transcript step ${re} (after offset ${from}):\n${out}`).not.toBeNull();
      from += m!.index + m![0].length;
    }
    expect(out).not.toContain('✗');

    // Nothing left: the temp dir named in the ready line, and the run's cgroup under every hierarchy.
    const dir = /captrap: ready (\S+)\/\.captrap\/admin\.sock/.exec(out)![1]!;
    expect(existsSync(dir)).toBe(false);
    const base = /cgroup {3}(captrap-demo-\S+)/.exec(out)![1]!;
    for (const h of roots) expect(existsSync(`${h.root}/${base}`), `${h.root}/${base}`).toBe(false);
  }, 70_000);
});
