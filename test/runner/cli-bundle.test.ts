// `captrap run` from one CommonJS bundle (scripts/build-cli-bundle.mjs), loaded by the `captrap`
// executable (src/runner/captrap.cts): the build keeps each module's import.meta.url and refuses
// a bundle that would take in the dispatcher; the executable uses the bundle only when it is
// fresh and not turned off; and the built bundle behaves exactly like the ES module graph (exit
// codes, output, messages).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { transformSync } from 'esbuild';
import { afterAll, describe, expect, it } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'captrap-bundle-'));
const buildScript = join(root, 'scripts/build-cli-bundle.mjs');
const base = `captrap-test-bundle-${process.pid}-${Date.now().toString(36)}`;
afterAll(() => {
  removeCgroupBase(probeHost(), base);
  rmSync(scratch, { recursive: true, force: true });
});

const DESCRIBE = 'export function describeError(e) { return String(e); }\n';

function fakeDist(name: string, files: Record<string, string>): string {
  const dist = join(scratch, name, 'dist');
  for (const [path, text] of Object.entries({ 'runner/describe-error.js': DESCRIBE, ...files })) {
    mkdirSync(dirname(join(dist, path)), { recursive: true });
    writeFileSync(join(dist, path), text);
  }
  return dist;
}

const bundle = (dist: string) => spawnSync(process.execPath, [buildScript, dist], { encoding: 'utf8' });

describe('build-cli-bundle', () => {
  it('bundles run.js and what it imports into one CommonJS file exporting main and describeError; each module keeps its own import.meta.url', async () => {
    const dist = fakeDist('ok', {
      'isolation/where.js': 'export const here = import.meta.url;\n',
      'runner/commands/run.js': "import { here } from '../../isolation/where.js';\nexport const urls = { here, own: import.meta.url };\nexport async function main() { globalThis.seenUrls = urls; return 7; }\n",
    });
    const r = bundle(dist);
    expect(r.status, r.stderr).toBe(0);
    const out = join(dist, 'runner/commands/run.bundle.cjs');
    expect(readFileSync(out, 'utf8').startsWith("'use strict';")).toBe(true);
    const mod = createRequire(import.meta.url)(out) as Record<string, unknown> & { main(argv: string[]): Promise<number>; describeError(e: unknown): string };
    expect(Object.keys(mod).sort()).toEqual(['describeError', 'main']);
    expect(await mod.main([])).toBe(7);
    expect((globalThis as { seenUrls?: unknown }).seenUrls).toEqual({
      here: pathToFileURL(join(dist, 'isolation/where.js')).href,
      own: pathToFileURL(join(dist, 'runner/commands/run.js')).href,
    });
    expect(mod.describeError('x')).toBe('x');
  });

  it('refuses a bundle that would contain the dispatcher (and so every command), leaving no file', () => {
    const dist = fakeDist('cycle', {
      'runner/cli.js': "export const cli = () => import('./commands/other.js');\n",
      'runner/commands/other.js': 'export const x = 1;\n',
      'runner/commands/run.js': "import { cli } from '../cli.js';\nexport async function main() { return typeof cli; }\n",
    });
    const r = bundle(dist);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('must not contain');
    expect(r.stderr).toContain('runner/cli.js');
    expect(existsSync(join(dist, 'runner/commands/run.bundle.cjs'))).toBe(false);
  });

  it('refuses import.meta beyond import.meta.url', () => {
    const dist = fakeDist('meta', { 'runner/commands/run.js': 'export async function main() { return import.meta.dirname ? 0 : 1; }\n' });
    const r = bundle(dist);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('import.meta');
  });
});

describe('the captrap executable and the bundle', () => {
  // The executable and the dispatcher (transpiled from src) next to a `run` that says how it was
  // loaded: in the CommonJS bundle `require` is a function, in an ES module it does not exist.
  const dist = fakeDist('dispatch', {
    'runner/commands/run.js': "export async function main() { process.stdout.write(typeof require === 'function' ? 'bundle' : 'modules'); return 0; }\n",
  });
  for (const name of ['cli', 'describe-error']) {
    const ts = readFileSync(join(root, `src/runner/${name}.ts`), 'utf8');
    writeFileSync(join(dist, `runner/${name}.js`), transformSync(ts, { loader: 'ts', format: 'esm' }).code);
  }
  const entry = readFileSync(join(root, 'src/runner/captrap.cts'), 'utf8');
  writeFileSync(join(dist, 'runner/captrap.cjs'), transformSync(entry, { loader: 'ts', format: 'cjs', supported: { 'dynamic-import': true } }).code);
  const runIt = (env: NodeJS.ProcessEnv = {}) => spawnSync(process.execPath, [join(dist, 'runner/captrap.cjs'), 'run'], { encoding: 'utf8', env: { ...process.env, ...env } });

  it('uses the bundle when it is there and fresh; the modules without it, with CAPTRAP_CLI_BUNDLE=0, or when it is stale', () => {
    expect(runIt().stdout).toBe('modules');
    expect(bundle(dist).status).toBe(0);
    expect(runIt().stdout).toBe('bundle');
    expect(runIt({ CAPTRAP_CLI_BUNDLE: '0' }).stdout).toBe('modules');
    // tsc ran again without the bundle step: run.js is newer than the bundle.
    const later = new Date(statSync(join(dist, 'runner/commands/run.bundle.cjs')).mtimeMs + 60_000);
    utimesSync(join(dist, 'runner/commands/run.js'), later, later);
    expect(runIt().stdout).toBe('modules');
  });

  it('every other command goes through the dispatcher', () => {
    const r = spawnSync(process.execPath, [join(dist, 'runner/captrap.cjs'), 'no-such-command'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown command 'no-such-command'");
  });
});

// The shipped artifact: only when `npm run build` has produced a fresh bundle.
const cli = join(root, 'dist/runner/captrap.cjs');
const built = join(root, 'dist/runner/commands/run.bundle.cjs');
const fresh = existsSync(built) && existsSync(cli) && statSync(built).mtimeMs >= statSync(join(root, 'dist/runner/commands/run.js')).mtimeMs;
const host = probeHost();
const canRun = fresh && host.layout !== 'none' && builtLauncherPath() !== undefined;
if (!canRun) console.log(`skipping the built-bundle comparison: ${fresh ? 'no cgroup or no built launcher here' : "dist/ has no fresh run bundle (run 'npm run build')"}`);

describe.skipIf(!canRun)('the built run bundle behaves like the module graph', () => {
  const cases: [string, string[]][] = [
    ['exit code and both streams', ['--memory', '64M', '--pids', '32', '--cgroup-base', base, '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']],
    ['a signal', ['--cgroup-base', base, '--', 'sh', '-c', 'kill -TERM $$']],
    ['an unknown option', ['--bogus']],
    ['a missing command', ['--cgroup-base', base, '--', '/nonexistent/command']],
    ['a malformed limit', ['--memory', 'lots', '--', '/bin/true']],
    ['an output cap', ['--max-output-bytes', '5', '--cgroup-base', base, '--', 'sh', '-c', 'echo 0123456789']],
    ['help', ['--help']],
  ];
  for (const [what, args] of cases) {
    it(what, () => {
      const go = (env: NodeJS.ProcessEnv) => spawnSync(process.execPath, [cli, 'run', ...args], { encoding: 'utf8', env: { ...process.env, CAPTRAP_LOG_LEVEL: 'warn', ...env } });
      const viaBundle = go({});
      const viaModules = go({ CAPTRAP_CLI_BUNDLE: '0' });
      expect({ status: viaBundle.status, stdout: viaBundle.stdout, stderr: viaBundle.stderr }).toEqual({ status: viaModules.status, stdout: viaModules.stdout, stderr: viaModules.stderr });
    });
  }

  it('the bundle is what runs (a debug stack names it)', () => {
    const r = spawnSync(process.execPath, [cli, 'run', '--bogus'], { encoding: 'utf8', env: { ...process.env, CAPTRAP_DEBUG: '1' } });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('run.bundle.cjs');
    const m = spawnSync(process.execPath, [cli, 'run', '--bogus'], { encoding: 'utf8', env: { ...process.env, CAPTRAP_DEBUG: '1', CAPTRAP_CLI_BUNDLE: '0' } });
    expect(m.stderr).not.toContain('run.bundle.cjs');
  });
});

