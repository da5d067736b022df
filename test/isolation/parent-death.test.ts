// Guarantee 3: if captrap is SIGKILLed, what it started dies (leaders by parent-death signal,
// their descendants by the owner watchdog), and the next captrap removes whatever stale cgroups
// are left. A real node process (tsx) starts sandboxes and is SIGKILLed.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { isAlive } from '../../src/isolation/proc.js';

const host = probeHost();
const base = `captrap-test-pd-${process.pid}-${Date.now().toString(36)}`;
const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(`${tmpdir()}/captrap-pd-`);
const trackRoot = host.unifiedRoot ?? host.v1.freezer ?? host.v1.pids;

const SCRIPT = `
import { runSandboxed } from ${JSON.stringify(`${root}src/isolation/sandbox.ts`)};
const base = process.argv[2];
const tree = "setsid sh -c 'exec sleep 300' & sh -c 'exec sleep 300' & echo ready; exec sleep 300";
// plain: unconfined, no pid namespace, so its descendants die by the owner watchdog alone.
const plain = runSandboxed('sh', ['-c', tree], { cgroupBase: base, confine: false });
// inNs: the default confinement (its own pid namespace, the launcher's init as pid 1).
const inNs = runSandboxed('sh', ['-c', tree], { cgroupBase: base${host.namespaces.pid ? '' : ', confine: false'} });
let ready = 0;
for (const sb of [plain, inNs]) sb.stdout.on('data', () => {
  if (++ready === 2) console.log(JSON.stringify({ plain: [plain.pid, plain.cgroupName], inNs: [inNs.pid, inNs.cgroupName] }));
});
setInterval(() => {}, 1000);
`;

function procsOf(name: string): number[] {
  const t = readFileSync(`${trackRoot}/${base}/${name}/cgroup.procs`, 'utf8');
  return t.split('\n').filter(Boolean).map(Number);
}

const waitGone = async (pids: number[], ms: number) => {
  const deadline = Date.now() + ms;
  while (pids.some(isAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return pids.filter(isAlive);
};

afterAll(async () => {
  await cleanupStaleCgroups(host, base);
  rmSync(dir, { recursive: true, force: true });
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(!trackRoot || !host.tools.setpriv)('guarantee 3: captrap SIGKILLed', () => {
  it('every sandboxed process dies, setsid escapees included, and the cgroups are removed', async () => {
    const script = `${dir}/starter.mts`;
    writeFileSync(script, SCRIPT);
    const starter = spawn(process.execPath, ['--import', 'tsx', script, base], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    const info = await new Promise<{ plain: [number, string]; inNs: [number, string] }>((resolve, reject) => {
      let buf = '';
      starter.stdout.on('data', (c: Buffer) => {
        buf += c.toString();
        const line = buf.split('\n').find((l) => l.startsWith('{'));
        if (line) resolve(JSON.parse(line));
      });
      starter.once('exit', (code) => reject(new Error(`starter exited early (${code})`)));
    });
    const plainAll = procsOf(info.plain[1]);
    const nsAll = procsOf(info.inNs[1]);
    expect(plainAll.length).toBe(3);
    expect(nsAll.length).toBeGreaterThanOrEqual(3);

    starter.kill('SIGKILL');
    await new Promise((r) => starter.once('exit', r));

    // The leaders die by their parent-death signal; inside a pid namespace, so does everything
    // (the namespace's init died). Without a namespace the setsid'd and background children
    // are killed by the owner watchdog, which also removes the cgroups.
    expect(await waitGone([info.plain[0]], 2000)).toEqual([]);
    if (host.namespaces.pid) expect(await waitGone(nsAll, 2000)).toEqual([]);
    expect(await waitGone(plainAll, 1500)).toEqual([]);
    const dirsOf = (names: string[]) => names.flatMap((n) => hierarchyRoots(host).map((h) => `${h.root}/${base}/${n}`)).filter((d) => existsSync(d));
    const deadline = Date.now() + 1500;
    while (dirsOf([info.plain[1], info.inNs[1]]).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(dirsOf([info.plain[1], info.inNs[1]])).toEqual([]);

    // The next captrap's stale cleanup then has nothing left to do.
    const result = await cleanupStaleCgroups(host, base);
    expect(result).toEqual({ removed: [], killed: 0, failed: [] });
  });

  it('stale cleanup still kills and removes what a captrap without a live watchdog left', async () => {
    const script = `${dir}/nowatchdog.mts`;
    writeFileSync(
      script,
      `import { runSandboxed } from ${JSON.stringify(`${root}src/isolation/sandbox.ts`)};
// Unconfined: in a pid namespace the setsid'd survivor this test needs would die with the
// namespace's init; stale cleanup is the last line for sandboxes without one.
const sb = runSandboxed('sh', ['-c', "setsid sh -c 'exec sleep 300' & echo ready; exec sleep 300"], { cgroupBase: process.argv[2], confine: false });
sb.stdout.on('data', () => console.log(JSON.stringify([sb.pid, sb.cgroupName])));
setInterval(() => {}, 1000);
`,
    );
    // A watchdog that exits at once stands in for one that was itself killed (e.g. by the OOM killer).
    const starter = spawn(process.execPath, ['--import', 'tsx', script, base], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, CAPTRAP_WATCHDOG_SH: '/bin/true' } });
    const [leader, name] = await new Promise<[number, string]>((resolve, reject) => {
      let buf = '';
      starter.stdout.on('data', (c: Buffer) => {
        buf += c.toString();
        const line = buf.split('\n').find((l) => l.startsWith('['));
        if (line) resolve(JSON.parse(line));
      });
      starter.once('exit', (code) => reject(new Error(`starter exited early (${code})`)));
    });
    const all = procsOf(name);
    expect(all.length).toBe(2);
    starter.kill('SIGKILL');
    await new Promise((r) => starter.once('exit', r));
    expect(await waitGone([leader], 2000)).toEqual([]);
    const survivors = all.filter(isAlive);
    expect(survivors.length).toBe(1);
    const result = await cleanupStaleCgroups(host, base);
    expect(result.failed).toEqual([]);
    expect(result.killed).toBeGreaterThanOrEqual(1);
    expect(await waitGone(survivors, 2000)).toEqual([]);
    for (const h of hierarchyRoots(host)) expect(existsSync(`${h.root}/${base}/${name}`)).toBe(false);
  });

  it('a normal captrap exit kills every live sandbox tree at once (exit hook, cgroup kill)', async () => {
    const script = `${dir}/exiter.mts`;
    writeFileSync(
      script,
      `import { readFileSync } from 'node:fs';
import { runSandboxed } from ${JSON.stringify(`${root}src/isolation/sandbox.ts`)};
import { pidsInNamespace, sandboxPidNamespace } from ${JSON.stringify(`${root}src/isolation/confine.ts`)};
const sb = runSandboxed('sh', ['-c', "setsid sh -c 'echo $$; exec sleep 300' & wait"], { cgroupBase: process.argv[2] });
// Confined, the escapee printed its pid inside the sandbox's pid namespace: report its host pid.
const hostPid = (inside) => {
  const ns = sandboxPidNamespace(sb.pid);
  if (!ns) return inside;
  return pidsInNamespace(ns).find((p) => /^NSpid:.*\\s(\\d+)$/m.exec(readFileSync('/proc/' + p + '/status', 'utf8'))?.[1] === String(inside));
};
sb.stdout.on('data', (c) => { console.log('escapee ' + hostPid(Number(c.toString().trim()))); process.exit(0); });
`,
    );
    const r = spawn(process.execPath, ['--import', 'tsx', script, base], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    r.stdout.on('data', (c: Buffer) => (out += c.toString()));
    await new Promise((res) => r.once('exit', res));
    const escapee = Number(/escapee (\d+)/.exec(out)?.[1]);
    expect(escapee).toBeGreaterThan(0);
    expect(await waitGone([escapee], 2000)).toEqual([]);
    // An exiting process cannot wait to rmdir; its owner watchdog removes the cgroups.
    expect((await cleanupStaleCgroups(host, base)).failed).toEqual([]);
  });

  it('refuses to look outside a captrap base', async () => {
    await expect(cleanupStaleCgroups(host, '../memory')).rejects.toMatchObject({ code: 'E_CGROUP' });
  });

  it('leaves the cgroups of a live owner alone', async () => {
    const { runSandboxed } = await import('../../src/isolation/sandbox.js');
    const sb = runSandboxed('sleep', ['10'], { cgroupBase: base });
    await new Promise((r) => setTimeout(r, 50));
    const result = await cleanupStaleCgroups(host, base);
    expect(result.removed).toEqual([]);
    expect(isAlive(sb.pid)).toBe(true);
    expect(readdirSync(`${trackRoot}/${base}`)).toContain(sb.cgroupName);
    sb.kill();
    await sb;
  });
});
