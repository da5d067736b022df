// The `captrap` executable primes the kernel's cgroup migration before it loads `run`
// (src/runner/captrap.cts): it moves itself into the v1 cgroup it is already in. That must
// change nothing: started inside a cgroup of its own, captrap is still there while its command
// runs (the command reads its parent's /proc/<pid>/cgroup: unconfined, with no namespaces, the
// launcher execs the command in place, so its parent is captrap).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const host = probeHost();
const cli = `${root}dist/runner/captrap.cjs`;
const fresh = existsSync(cli) && existsSync(`${root}dist/runner/commands/run.bundle.cjs`) && statSync(`${root}dist/runner/commands/run.bundle.cjs`).mtimeMs >= statSync(`${root}dist/runner/commands/run.js`).mtimeMs;
const pidsRoot = host.v1.pids;
const own = pidsRoot ? `${pidsRoot}/captrap-test-cliprime-${process.pid}-${Date.now().toString(36)}` : undefined;
const base = `captrap-test-cliprime-${process.pid}`;
const canRun = fresh && own !== undefined && host.isRoot && builtLauncherPath() !== undefined;
if (!canRun) console.log(`skipping the CLI prime test: ${fresh ? 'needs root, a v1 pids hierarchy and the built launcher' : "dist/ has no fresh run bundle (run 'npm run build')"}`);

afterAll(() => {
  // The CLI has exited, so its cgroup is empty.
  if (own && existsSync(own)) rmdirSync(own);
  removeCgroupBase(host, base);
});

describe.skipIf(!canRun)('captrap run primes the cgroup migration at start', () => {
  it('leaves captrap in the cgroup it started in, with the bundle and without it', () => {
    mkdirSync(own!);
    const rel = own!.slice(pidsRoot!.length);
    for (const env of [{}, { CAPTRAP_CLI_BUNDLE: '0' }]) {
      const r = spawnSync(
        'sh',
        ['-c', 'echo $$ > "$1/cgroup.procs" && exec "$2" "$3" run --no-confine --ns "" --pids 16 --cgroup-base "$4" -- sh -c \'cat /proc/$PPID/cgroup\'', 'sh', own!, process.execPath, cli, base],
        { encoding: 'utf8', env: { ...process.env, CAPTRAP_LOG_LEVEL: 'warn', ...env } },
      );
      expect(r.status, r.stderr).toBe(0);
      const pidsLine = r.stdout.split('\n').find((l) => /^\d+:([^:]*,)?pids(,[^:]*)?:/.test(l));
      expect(pidsLine).toBeDefined();
      expect(pidsLine!.endsWith(`:${rel}`)).toBe(true);
    }
  });
});
