// The namespace probe's remembered answer (src/isolation/host.ts): a yes from a real unshare(1)
// run is kept for this boot under a key, read back only from a file and directory that are this
// uid's alone, never a no; and a forged yes cannot run anything unconfined: the launcher refuses.
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { namespaceProbeKey, probeHost, rememberedAllNamespaces } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'captrap-nscache-'));
const host = probeHost();
const unshare = host.tools.unshare;
const savedDir = process.env.CAPTRAP_NS_CACHE_DIR;
const base = `captrap-test-nsc-${process.pid}-${Date.now().toString(36)}`;

afterEach(() => {
  if (savedDir === undefined) delete process.env.CAPTRAP_NS_CACHE_DIR;
  else process.env.CAPTRAP_NS_CACHE_DIR = savedDir;
});
afterAll(() => {
  removeCgroupBase(host, base);
  rmSync(scratch, { recursive: true, force: true });
});

// A process like captrap's but without CAP_SYS_ADMIN: as root it can still use cgroups (file
// permissions), but creating a namespace is refused.
const setpriv = host.tools.setpriv;
const withoutSysAdmin = (args: string[], env: NodeJS.ProcessEnv) =>
  spawnSync(setpriv!, ['--bounding-set', '-sys_admin', '--', process.execPath, '--import', 'tsx', ...args], { cwd: root, env, encoding: 'utf8', timeout: 60_000 });

describe('remembered namespace probe', () => {
  it.skipIf(!unshare)('remembers a yes under its key, and ignores a changed key, an unsafe file or directory, a symlink, and an empty dir setting', () => {
    const dir = join(scratch, 'yes');
    process.env.CAPTRAP_NS_CACHE_DIR = dir;
    const fresh = probeHost(true);
    if (!fresh.namespaces.pid) {
      // This host (or this uid) cannot create the namespaces: nothing may be remembered.
      console.log('namespace probe said no here: only checking that no answer was written');
      expect(existsSync(join(dir, 'namespaces-probe'))).toBe(false);
      return;
    }
    const file = join(dir, 'namespaces-probe');
    const key = namespaceProbeKey(unshare!);
    expect(key).toContain(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
    expect(readFileSync(file, 'utf8')).toBe(key);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(rememberedAllNamespaces(unshare)).toBe(true);

    writeFileSync(file, key!.replace(/^max_net:.*$/m, 'max_net:0'));
    expect(rememberedAllNamespaces(unshare)).toBe(false);
    writeFileSync(file, key!);
    expect(rememberedAllNamespaces(unshare)).toBe(true);

    chmodSync(file, 0o622);
    expect(rememberedAllNamespaces(unshare)).toBe(false);
    chmodSync(file, 0o600);
    chmodSync(dir, 0o777);
    expect(rememberedAllNamespaces(unshare)).toBe(false);
    chmodSync(dir, 0o700);
    if (process.geteuid?.() === 0) {
      chownSync(file, 65534, 65534);
      expect(rememberedAllNamespaces(unshare)).toBe(false);
      chownSync(file, 0, 0);
    }
    renameSync(file, join(scratch, 'elsewhere'));
    symlinkSync(join(scratch, 'elsewhere'), file);
    expect(rememberedAllNamespaces(unshare)).toBe(false);
    rmSync(file);
    renameSync(join(scratch, 'elsewhere'), file);
    expect(rememberedAllNamespaces(unshare)).toBe(true);

    process.env.CAPTRAP_NS_CACHE_DIR = '';
    expect(rememberedAllNamespaces(unshare)).toBe(false);
  });

  const canDrop = !!unshare && !!setpriv && host.isRoot && host.layout !== 'none' && builtLauncherPath() !== undefined;
  if (!canDrop) console.log('skipping the forged-answer tests: they need root, unshare, setpriv, cgroups and the built launcher');

  it.skipIf(!canDrop)('a probe that fails is not remembered', () => {
    const dir = join(scratch, 'no');
    const r = withoutSysAdmin(['-e', `import { probeHost } from ${JSON.stringify(`${root}src/isolation/host.ts`)}; console.log(probeHost().namespaces.pid)`], { ...process.env, CAPTRAP_NS_CACHE_DIR: dir });
    expect(r.stdout.trim()).toBe('false');
    expect(existsSync(join(dir, 'namespaces-probe'))).toBe(false);
  });

  it.skipIf(!canDrop)('a forged yes fails closed: the launcher refuses with exit 125 and the command never runs', () => {
    const dir = join(scratch, 'forged');
    mkdirSync(dir, { mode: 0o700 });
    const env = { ...process.env, CAPTRAP_NS_CACHE_DIR: dir };
    const cli = [join(root, 'src/runner/cli.ts'), 'run', '--cgroup-base', base, '--', '/bin/echo', 'RAN-UNCONFINED'];

    // Without the forged file: the probe says no and captrap refuses before starting anything.
    const honest = withoutSysAdmin(cli, env);
    expect(honest.status).toBe(125);
    expect(honest.stderr).toContain('refusing to start');
    expect(honest.stderr).toContain('namespace:pid');
    expect(honest.stdout).not.toContain('RAN-UNCONFINED');

    // The key as that process sees it (no CAP_SYS_ADMIN in CapEff), claimed as a yes.
    const k = withoutSysAdmin(['-e', `import { namespaceProbeKey } from ${JSON.stringify(`${root}src/isolation/host.ts`)}; process.stdout.write(namespaceProbeKey(${JSON.stringify(unshare)}) ?? '')`], env);
    expect(k.stdout).toContain('cap:');
    writeFileSync(join(dir, 'namespaces-probe'), k.stdout, { mode: 0o600 });

    const forged = withoutSysAdmin(cli, env);
    expect(forged.status).toBe(125);
    expect(forged.stderr).toMatch(/captrap-launch.*cannot create (a pid namespace|namespaces)/);
    expect(forged.stdout).not.toContain('RAN-UNCONFINED');
  });
});
