// captrap's isolation conformance for one host, run INSIDE a test guest by scripts/hosts (not by
// vitest: the guest is ~100x slower than native, so this is one node process over the built
// dist/, with as few extra node starts as possible). Prints one line per check and ends with
//   host <name>: N passed, M failed, K skipped
// Exit status 0 iff nothing failed. Usage: node test/hosts/conformance.mjs --host v2|ctr|systemd
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cleanupStaleCgroups, createSandboxGroup, hostReport, parseConfig, prioritiseSelf, probeHost, processRef, removeCgroupBase, runSandboxed, Sidecar } from '../../dist/index.js';
import { pidsInNamespace, sandboxPidNamespace } from '../../dist/isolation/confine.js';
import { alive, Check, check, expect, finish, lines, read, sleep, startOwner, waitGone } from './lib.mjs';

const project = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const hostName = process.argv[process.argv.indexOf('--host') + 1] ?? 'local';
const base = `captrap-hosts-${process.pid}`;
const host = probeHost();
const root = host.unifiedRoot;
const T0 = performance.now();

const cgDir = (name) => `${root}/${base}/${name}`;
const children = (dir) => { try { return readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name); } catch { return []; } };

// ------------------------------------------------------------------------------------------
console.log(`# host ${hostName}: kernel ${read('/proc/sys/kernel/osrelease')}, layout ${host.layout}, cgroup2 at ${root}, controllers [${host.unifiedControllers.join(' ')}], cgroup.kill ${host.cgroupKill}, systemd manager ${host.systemdManager}, PID 1 ${read('/proc/1/comm')}`);
const v2 = host.layout === 'v2' && root !== undefined;
const notV2 = v2 ? undefined : `layout is ${host.layout}, not pure cgroup v2`;

// The two extra node processes (doctor, and an owner to SIGKILL) start now and run alongside the
// first checks: a node start costs seconds in the guest.
function startDoctor() {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [`${project}/dist/runner/cli.js`, 'doctor', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let o = '', e = '';
    p.stdout.on('data', (c) => (o += c));
    p.stderr.on('data', (c) => (e += c));
    p.on('exit', (code) => resolve({ code, o, e }));
  });
}
const systemdHost = hostName === 'systemd';
await check(`host: pure cgroup v2 with memory, pids, cpu and cgroup.kill; auto backend is cgroup-v2; no v1 hierarchy; ${systemdHost ? 'systemd is PID 1 and probeHost sees its manager' : 'no systemd'}`, () => {
  expect(host.layout === 'v2', `layout ${host.layout}`);
  for (const c of ['memory', 'pids', 'cpu']) expect(host.unifiedControllers.includes(c), `controller ${c} missing from [${host.unifiedControllers}]`);
  expect(host.cgroupKill, 'no cgroup.kill');
  expect(Object.keys(host.v1).length === 0, `v1 hierarchies: ${JSON.stringify(host.v1)}`);
  expect(!read('/proc/mounts').split('\n').some((l) => l.split(' ')[2] === 'cgroup'), 'a v1 cgroup is mounted');
  expect(hostReport(host).backend === 'cgroup-v2', `auto backend ${hostReport(host).backend}`);
  if (systemdHost) {
    expect(host.systemdManager, 'probeHost: systemdManager false (/run/systemd/system or systemd-run missing)');
    expect(read('/proc/1/comm') === 'systemd', `PID 1 is ${read('/proc/1/comm')}`);
  } else {
    expect(!host.systemdManager, 'a systemd manager answers');
  }
  return systemdHost ? `systemdManager ${host.systemdManager}, PID 1 ${read('/proc/1/comm')}` : undefined;
}, ['v2', 'ctr', 'systemd'].includes(hostName) ? undefined : 'only for the v2, ctr and systemd hosts');

// ctr and systemd: captrap starts alone in the root of a cgroup namespace rooted at a delegated,
// non-root cgroup (on systemd, the Delegate=yes service's). Runs before any other node process is started from here (they would be born in the
// namespace root too, and captrap may move only itself and its own helpers out of it).
await check('delegated subtree: with a foreign process in the namespace root captrap fails closed naming it; alone, it moves itself (and its watchdog) into captrap-sidecar and enables memory pids cpu there', async () => {
  const self0 = read('/proc/self/cgroup');
  expect(self0 === '0::/', `/proc/self/cgroup ${self0}: want 0::/ (the namespace root)`);
  expect(existsSync(`${root}/cgroup.type`), `${root} has no cgroup.type: it is the real root, not a delegated cgroup`);
  const before = (read(`${root}/cgroup.subtree_control`) ?? '').split(' ').filter(Boolean);
  expect(before.length === 0, `controllers already enabled in the namespace root: ${before}`);
  // A process that is not captrap's (a plain child, not a helper) shares the root: EBUSY, explained.
  const foreign = spawn('sleep', ['300'], { stdio: 'ignore' });
  let err;
  try { await runSandboxed('true', [], { cgroupBase: base, backend: 'cgroup-v2', memory: '64M' }); } catch (e) { err = e; }
  expect(err?.code === 'E_CGROUP', `with a foreign process: ${err ? `${err.code} ${err.message}` : 'no error'}`);
  expect(err.message.includes(String(foreign.pid)) && /leaf/.test(err.message) && /no internal processes/.test(err.message), `error does not name the pid and the fix: ${err.message}`);
  expect(read('/proc/self/cgroup') === '0::/', `captrap moved although the move could not help: ${read('/proc/self/cgroup')}`);
  foreign.kill('SIGKILL');
  await new Promise((r) => foreign.once('exit', r));
  // Alone (with its watchdog, started by the refused attempt): moves, enables, runs.
  const r = await runSandboxed('sh', ['-c', 'cat /proc/self/cgroup'], { cgroupBase: base, backend: 'cgroup-v2', memory: '64M', pids: 10, cpu: 0.5, confine: false, namespaces: [] });
  expect(r.reason.kind === 'exited' && r.reason.code === 0, `reason ${JSON.stringify(r.reason)} stderr ${r.stderr.slice(0, 300)}`);
  const self1 = read('/proc/self/cgroup');
  expect(self1 === '0::/captrap-sidecar', `captrap is in ${self1}, want 0::/captrap-sidecar`);
  const sc = (read(`${root}/cgroup.subtree_control`) ?? '').split(' ');
  for (const c of ['memory', 'pids', 'cpu']) expect(sc.includes(c), `namespace root subtree_control lacks ${c}: ${sc}`);
  const inRoot = read(`${root}/cgroup.procs`);
  expect(inRoot === '', `processes left in the namespace root: ${inRoot}`);
  const inLeaf = read(`${root}/captrap-sidecar/cgroup.procs`).split('\n');
  expect(inLeaf.length >= 2 && inLeaf.includes(String(process.pid)), `captrap-sidecar holds ${inLeaf}: want captrap and its watchdog`);
  expect(r.stdout.trim().startsWith(`0::/${base}/`), `sandbox in ${r.stdout.trim()}, want under /${base}`);
  return `${err.message.slice(0, 90)}...; then moved to ${self1} with ${inLeaf.length - 1} helper(s); sandbox in ${r.stdout.trim()}`;
}, hostName === 'ctr' || systemdHost ? undefined : 'only for the ctr and systemd hosts (a delegated namespace root)');

const doctorRun = v2 ? startDoctor() : undefined;
const ownerRun = v2 ? startOwner(project, base) : undefined;

await check('memory: a hog over memory.max 32M ends oom (memory.events oom_kill), memory.oom.group=1, memory.swap.max=0', async () => {
  const sb = runSandboxed('sh', ['-c', 'read x; s=a; while :; do s=$s$s; done'], { cgroupBase: base, backend: 'cgroup-v2', memory: '32M', timeout: 60_000, stdin: 'pipe' });
  const dir = cgDir(sb.cgroupName);
  const files = { max: read(`${dir}/memory.max`), oomGroup: read(`${dir}/memory.oom.group`), swap: read(`${dir}/memory.swap.max`) };
  sb.stdin.end('go\n');
  const r = await sb;
  expect(files.max === String(32 * 1024 * 1024), `memory.max ${files.max}`);
  expect(files.oomGroup === '1', `memory.oom.group ${files.oomGroup}`);
  expect(files.swap === '0', `memory.swap.max ${files.swap}`);
  expect(r.reason.kind === 'oom', `reason ${JSON.stringify(r.reason)} (counters ${JSON.stringify(r.counters)}, stderr ${r.stderr.slice(0, 200)})`);
  expect(r.counters.oomKills > 0, `oomKills ${r.counters.oomKills}`);
  expect(r.cleanedUp && !existsSync(dir), 'cgroup left behind');
  return `oomKills ${r.counters.oomKills}, peak ${r.usage.memoryPeakBytes ?? '?'} B, ${Math.round(r.durationMs)} ms`;
}, notV2);

await check('memory.oom.group: an OOM takes the whole sandbox at once, bystanders included (not only the biggest process)', async () => {
  // Two bystanders (a sleep and a waiting shell) and one hog. Without oom.group only the hog
  // dies and the leader's `wait` keeps the sandbox alive until the timeout.
  const sb = runSandboxed('sh', ['-c', 'sleep 300 & echo s $!; (s=a; read x; while :; do s=$s$s; done) & wait'], { cgroupBase: base, backend: 'cgroup-v2', memory: '32M', timeout: 60_000, stdin: 'pipe', confine: false, namespaces: [] });
  const [l] = await lines(sb, 1);
  const bystander = processRef(Number(l.split(' ')[1]));
  expect(alive(bystander), 'bystander not running');
  sb.stdin.end('go\n');
  const r = await sb;
  expect(r.reason.kind === 'oom', `reason ${JSON.stringify(r.reason)}`);
  expect(r.counters.oomKills >= 3, `oom_kill delta ${r.counters.oomKills}: the group kill did not take every member`);
  expect(r.durationMs < 50_000, `took ${Math.round(r.durationMs)} ms: the leader outlived the OOM`);
  expect(!alive(bystander), 'bystander alive');
  return `oom_kill delta ${r.counters.oomKills} (hog, sleep, shells), ${Math.round(r.durationMs)} ms`;
}, notV2);

await check('pids: a fork bomb under pids.max 20 ends pids-limit (pids.events max)', async () => {
  const sb = runSandboxed('sh', ['-c', 'b() { b & b & wait; }; b'], { cgroupBase: base, backend: 'cgroup-v2', pids: 20, timeout: 4000 });
  const max = read(`${cgDir(sb.cgroupName)}/pids.max`);
  const r = await sb;
  expect(max === '20', `pids.max ${max}`);
  expect(r.reason.kind === 'pids-limit', `reason ${JSON.stringify(r.reason)} counters ${JSON.stringify(r.counters)}`);
  expect(r.counters.pidsMax > 0, `pidsMax ${r.counters.pidsMax}`);
  expect(r.cleanedUp, 'cgroup left behind');
  return `pids.events max delta ${r.counters.pidsMax}`;
}, notV2);

await check('cgroup.kill: kill() takes a setsid grandchild and a double-forked daemon (unconfined: no pid namespace helps)', async () => {
  const sb = runSandboxed('sh', ['-c', "setsid sh -c 'echo g $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &); trap '' TERM; echo l $$; while :; do sleep 1; done"], { cgroupBase: base, backend: 'cgroup-v2', confine: false, namespaces: [], killGrace: 200 });
  const ls = await lines(sb, 3);
  const refs = ls.map((l) => processRef(Number(l.split(' ')[1])));
  const dir = cgDir(sb.cgroupName);
  const members = read(`${dir}/cgroup.procs`).split('\n').map(Number);
  for (const r of refs) expect(r && members.includes(r.pid), `pid ${r?.pid} not in ${dir}/cgroup.procs (${members})`);
  sb.kill();
  const r = await sb;
  expect(r.reason.kind === 'killed', `reason ${JSON.stringify(r.reason)}`);
  expect(/cgroup\.kill/.test(r.killMechanism), `killMechanism ${r.killMechanism}`);
  const left = await waitGone(refs, 2000);
  expect(left.length === 0, `still alive: ${left}`);
  expect(!existsSync(dir), 'cgroup left behind');
  return r.killMechanism;
}, notV2);

await check('doctor --json: exit 0, cgroup-v2 backend, every default guarantee holds', async () => {
  const out = await doctorRun;
  let doc;
  try { doc = JSON.parse(out.o); } catch { throw new Check(`not JSON (exit ${out.code}): ${out.o.slice(0, 300)} ${out.e.slice(0, 300)}`); }
  const g = Object.fromEntries(doc.guarantees.map((x) => [x.name, x]));
  console.log(`doctor: backend ${doc.backend}, layout ${doc.layout}, controllers [${doc.unifiedControllers.join(' ')}], cgroupKill ${doc.cgroupKill}, launcher ${doc.launcher?.kind}, systemd-run ${doc.systemdRun.available ? 'yes' : 'no'}`);
  console.log(`doctor: ${doc.guarantees.map((x) => `${x.name}=${x.holds ? 'yes' : 'NO'} (${x.mechanism})`).join('; ')}`);
  console.log(`doctor: systemd-run available ${doc.systemdRun.available}: ${doc.systemdRun.reason}`);
  console.log(`doctor: namespaces ${Object.entries(doc.namespaces).filter(([, v]) => v).map(([k]) => k).join(' ')}`);
  expect(out.code === 0, `doctor exited ${out.code}: ${out.e.slice(0, 300)}`);
  expect(doc.backend === 'cgroup-v2' && doc.layout === 'v2', `backend ${doc.backend} layout ${doc.layout}`);
  const notHeld = doc.guarantees.filter((x) => !x.holds).map((x) => `${x.name}: ${x.note ?? x.mechanism}`);
  expect(notHeld.length === 0, `guarantees not held: ${notHeld.join('; ')}`);
  expect(/cgroup\.kill/.test(g['tree-kill'].mechanism), `tree-kill mechanism ${g['tree-kill'].mechanism}`);
  expect(doc.systemdRun.available === systemdHost, `systemd-run available ${doc.systemdRun.available} on host ${hostName}: ${doc.systemdRun.reason}`);
}, notV2);

await check('owner watchdog: a SIGKILLed owner leaves no process and no cgroup (setsid + double fork, no pid namespace)', async () => {
  const { owner, info: infoP } = ownerRun;
  const info = await infoP;
  const refs = [info.leader, ...info.pids].map((p) => processRef(p));
  const dir = cgDir(info.name);
  expect(existsSync(dir) && refs.every(alive), 'sandbox not running before the kill');
  expect(info.watchdog, 'owner has no watchdog');
  const t = performance.now();
  owner.kill('SIGKILL');
  const left = await waitGone(refs, 5000);
  const ms = performance.now() - t;
  expect(left.length === 0, `alive after owner SIGKILL: ${left}`);
  for (let i = 0; i < 100 && existsSync(dir); i++) await sleep(20);
  expect(!existsSync(dir), `cgroup left: ${dir}`);
  return `tree gone ${Math.round(ms)} ms after the SIGKILL`;
}, notV2);

await check('confined default sandbox: joined before exec, cgroup/pid/mount/net namespaces, nobody, read-only view, private /tmp', async () => {
  const script = [
    'cat /proc/self/cgroup', 'echo pid $$', 'id -u', 'hostname',
    'echo net: $(ls /sys/class/net)', 'touch /usr/x 2>/dev/null && echo usr-writable || echo usr-ro',
    'ls -A /tmp | wc -l', `test -e ${project}/package.json && echo project-visible || echo project-hidden`, 'read x',
  ].join('; ');
  const sb = runSandboxed('sh', ['-c', script], { cgroupBase: base, memory: '64M', pids: 32, stdin: 'pipe' });
  const ls = await lines(sb, 8);
  const members = [sb.pid, ...(sandboxPidNamespace(sb.pid) ? pidsInNamespace(sandboxPidNamespace(sb.pid)) : [])];
  const suffix = `/${base}/${sb.cgroupName}`;
  for (const pid of members) {
    const cg = read(`/proc/${pid}/cgroup`);
    if (cg !== undefined) expect(cg === `0::${suffix}`, `pid ${pid} in ${cg}, not ${suffix}`);
  }
  sb.stdin.end('\n');
  const r = await sb;
  expect(r.reason.kind === 'exited' && r.reason.code === 0, `reason ${JSON.stringify(r.reason)} stderr ${r.stderr.slice(0, 300)}`);
  const [cg, pid, uid, , nets, usr, tmpCount] = ls;
  expect(cg === '0::/', `own /proc/self/cgroup ${cg} (want 0::/ in its cgroup namespace)`);
  expect(pid === 'pid 2' || pid === 'pid 1', `${pid}: not in a pid namespace`);
  expect(uid === '65534', `uid ${uid}`);
  expect(nets === 'net:' || nets === 'net: lo', `network interfaces: ${nets}`);
  expect(usr === 'usr-ro', usr);
  expect(tmpCount === '0', `/tmp has ${tmpCount} entries`);
  for (const ns of ['pid', 'mount', 'net', 'cgroup']) expect(r.confinement.namespaces.includes(ns), `namespace ${ns} missing: ${r.confinement.namespaces}`);
  expect(r.degraded.length === 0, `degraded: ${JSON.stringify(r.degraded)}`);
  expect(r.launcher === 'captrap-launch', `launcher ${r.launcher}`);
  return `${r.confinement.namespaces.join(',')}; ${ls[7]}; launcher ${r.launcher}`;
}, notV2);

await check('cpu.max: a spinner under cpu 0.2 uses about 20% of a core (cpu.stat usage_usec)', async () => {
  const sb = runSandboxed('sh', ['-c', 'while :; do :; done'], { cgroupBase: base, backend: 'cgroup-v2', cpu: 0.2, killGrace: 100 });
  const max = read(`${cgDir(sb.cgroupName)}/cpu.max`);
  await sleep(1000);
  const u0 = (await sb.usage()).cgroup.cpuUsageUs;
  const t0 = performance.now();
  await sleep(4000);
  const u1 = (await sb.usage()).cgroup.cpuUsageUs;
  const share = (u1 - u0) / ((performance.now() - t0) * 1000);
  sb.kill();
  await sb;
  expect(max === '20000 100000', `cpu.max ${max}`);
  expect(share < 0.3 && share > 0.1, `measured ${(share * 100).toFixed(1)}%`);
  return `measured ${(share * 100).toFixed(1)}% of a core`;
}, notV2);

await check('group: createSandboxGroup bounds two sandboxes (cpu 0.3 for both; memory 48M: the hog ends oom, its sibling lives), nested cgroups, destroy() removes all', async () => {
  const g = createSandboxGroup({ cgroupBase: base, limits: { cpu: 0.3, memory: '48M', pids: 40 } });
  const gdir = `${root}/${g.path}`;
  expect(read(`${gdir}/cpu.max`) === '30000 100000', `group cpu.max ${read(`${gdir}/cpu.max`)}`);
  expect(read(`${gdir}/memory.max`) === String(48 * 1024 * 1024), `group memory.max ${read(`${gdir}/memory.max`)}`);
  const sc = (read(`${gdir}/cgroup.subtree_control`) ?? '').split(' ');
  for (const c of ['memory', 'pids', 'cpu']) expect(sc.includes(c), `group subtree_control lacks ${c}: ${sc}`);
  // Memory first: the group's 48M, not the sandbox's own 1G, is what a hog meets; a sleeping
  // sibling in the same group survives (oom.group is set on each sandbox, not on the group).
  const sib = runSandboxed('sleep', ['300'], { group: g, memory: '1G', killGrace: 100 });
  const hog = runSandboxed('sh', ['-c', 's=a; while :; do s=$s$s; done'], { group: g, memory: '1G', timeout: 60_000 });
  expect(existsSync(`${gdir}/${sib.cgroupName}`) && existsSync(`${gdir}/${hog.cgroupName}`), 'sandboxes not nested in the group');
  expect(read(`${gdir}/${hog.cgroupName}/memory.oom.group`) === '1' && read(`${gdir}/memory.oom.group`) === '0', 'memory.oom.group: want 1 on the sandbox, 0 on the group');
  const rh = await hog;
  expect(rh.reason.kind === 'oom', `hog reason ${JSON.stringify(rh.reason)}`);
  expect(sib.child.exitCode === null && sib.child.signalCode === null, 'the sibling died with the hog');
  // CPU: two spinners allowed a whole core each share the group's 0.3.
  const spin = () => runSandboxed('sh', ['-c', 'while :; do :; done'], { group: g, cpu: 1, memory: '1G', killGrace: 100 });
  const a = spin();
  const b = spin();
  await sleep(1000);
  const u0 = g.usage().cpuUsageUs;
  const t0 = performance.now();
  await sleep(4000);
  const share = (g.usage().cpuUsageUs - u0) / ((performance.now() - t0) * 1000);
  expect(share < 0.4 && share > 0.15, `two spinners with cpu 1 each used ${(share * 100).toFixed(1)}% together under a group cpu 0.3`);
  const refs = [a.ref, b.ref, sib.ref];
  await g.destroy('revoked');
  const rs = await Promise.all([a, b, sib]);
  expect(rs.every((r) => r.reason.kind === 'revoked'), `after destroy: ${JSON.stringify(rs.map((r) => r.reason))}`);
  expect((await waitGone(refs, 2000)).length === 0, 'a sandbox survived destroy()');
  expect(!existsSync(gdir), `group dir left: ${gdir}`);
  return `group cpu share ${(share * 100).toFixed(1)}%, hog oom in the group, sibling lived`;
}, notV2);

await check('prioritiseSelf: <base> gets cpu.weight 25', () => {
  const r = prioritiseSelf(base, host);
  expect(read(`${root}/${base}/cpu.weight`) === '25', `cpu.weight ${read(`${root}/${base}/cpu.weight`)}; ${JSON.stringify(r)}`);
}, notV2);

await check('stale cleanup: a dead owner\'s populated cgroup is killed and removed, a live owner\'s is kept', async () => {
  // A cgroup named for a pid that cannot exist, holding a sleep.
  const stale = `${root}/${base}/4194303.1.1`;
  mkdirSync(stale);
  const sl = spawn('sleep', ['300'], { stdio: 'ignore' });
  writeFileSync(`${stale}/cgroup.procs`, String(sl.pid));
  const ref = processRef(sl.pid);
  const live = runSandboxed('sleep', ['300'], { cgroupBase: base, killGrace: 100 });
  const r = await cleanupStaleCgroups(host, base);
  expect(!existsSync(stale), `stale cgroup left; ${JSON.stringify(r)}`);
  expect((await waitGone([ref], 2000)).length === 0, 'stale member alive');
  expect(existsSync(cgDir(live.cgroupName)), 'a live owner\'s cgroup was removed');
  live.kill();
  await live;
  return `removed ${r.removed.length}, killed ${r.killed}`;
}, notV2);

await check('sidecar: an agent runs in its own group under the base, its tool call in a sandbox nested in that group (limits on the group); everything removed after', async () => {
  const scBase = `${base}-sc`;
  const dir = mkdtempSync('/tmp/captrap-hosts-sc-');
  chmodSync(dir, 0o755);
  const config = parseConfig({
    cgroupBase: scBase,
    tools: [{ name: 'nap', command: ['/bin/sleep', '3'] }],
    agents: [{
      id: 'probe', command: '/bin/sh', args: [`${project}/test/fixtures/agents/call-tool.sh`, 'nap'],
      limits: { memory: '128M', pids: 64 },
      capabilities: [{ resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: ['nap'] } }],
    }],
  }, `${dir}/captrap.json`, dir);
  const out = [];
  const sc = await Sidecar.start(config, { output: (_id, _s, line) => out.push(line), notice: () => undefined });
  let seen;
  try {
    const scRoot = `${root}/${scBase}`;
    const deadline = Date.now() + 60_000;
    // The tool's sandbox: the cgroup whose members include the `sleep`.
    const find = (d, rel) => {
      for (const c of children(d)) {
        const sub = `${d}/${c}`;
        const pids = (read(`${sub}/cgroup.procs`) ?? '').split('\n').filter(Boolean);
        if (pids.some((p) => read(`/proc/${p}/comm`) === 'sleep')) return { rel: [...rel, c], dir: sub };
        const deeper = find(sub, [...rel, c]);
        if (deeper) return deeper;
      }
      return undefined;
    };
    while (!seen && Date.now() < deadline) { seen = find(scRoot, []); if (!seen) await sleep(20); }
    expect(seen, `no tool sandbox appeared under ${scRoot}; agent said ${out.join(' | ')}`);
    expect(seen.rel.length === 2, `tool sandbox at ${seen.rel.join('/')}: want <agent group>/<sandbox>`);
    const group = `${scRoot}/${seen.rel[0]}`;
    const siblings = children(group);
    expect(siblings.length >= 2, `the agent's group holds ${siblings}: want the agent's sandbox and the tool's`);
    if (v2) {
      expect(read(`${group}/memory.max`) === String(128 * 1024 * 1024) && read(`${group}/pids.max`) === '64', `group limits memory.max ${read(`${group}/memory.max`)} pids.max ${read(`${group}/pids.max`)}`);
    }
    while (sc.supervisor.running().length > 0 && Date.now() < deadline) await sleep(50);
    expect(out.some((l) => l.includes('"reason":"exited"')), `tool answer: ${out.join(' | ')}`);
  } finally {
    await sc.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const left = children(`${root}/${scBase}`);
  expect(left.length === 0, `cgroups left under ${scBase}: ${left}`);
  expect(removeCgroupBase(host, scBase).length === 0, 'sidecar base not removable');
  return `tool sandbox at <base>/${seen.rel.join('/')}`;
}, root ? undefined : 'no cgroup2 tree');

await check(`nothing left: no cgroup under ${base}, base removed, no sleep/sh left from the sandboxes`, async () => {
  const under = children(`${root}/${base}`);
  expect(under.length === 0, `cgroups left under the base: ${under}`);
  const left = removeCgroupBase(host, base);
  expect(left.length === 0 && !existsSync(`${root}/${base}`), `base left: ${left}`);
  const stray = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    const st = read(`/proc/${p}/stat`);
    return st && /\) [^Z] /.test(st) && ['sleep'].includes(read(`/proc/${p}/comm`));
  });
  expect(stray.length === 0, `sleep processes still running: ${stray}`);
}, notV2);

finish(hostName, T0);
