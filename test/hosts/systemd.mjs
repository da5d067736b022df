// Checks for a host with systemd as PID 1, run INSIDE the `systemd` test guest by
// scripts/hosts/guest-systemd.sh as the ExecStart of a Delegate=yes service, WITHOUT a cgroup
// namespace (conformance.mjs then runs in a second service that has one). Two things only such a
// host shows: captrap keeping its cgroups inside its unit's delegated cgroup, and the systemd-run
// backend (a transient scope per sandbox). Ends with `host systemd-delegated: N passed, ...`.
import { existsSync, readdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cleanupStaleCgroups, hostReport, probeHost, processRef, removeCgroupBase, runSandboxed } from '../../dist/index.js';
import { unifiedHome } from '../../dist/isolation/cgroup.js';
import { sliceFor } from '../../dist/isolation/systemd-run.js';
import { alive, check, expect, finish, lines, read, sleep, startOwner, waitGone } from './lib.mjs';

const project = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const T0 = performance.now();
const base = `captrap-hosts-${process.pid}`;
const host = probeHost();
const mount = host.unifiedRoot;
const unit = 'captrap-delegated.service';
const unitDir = `${mount}/system.slice/${unit}`;
const sliceDir = `${mount}/${sliceFor(base)}`;
const scopeDir = (sb) => `${sliceDir}/${sb.cgroupName}.scope`;
const SR = { cgroupBase: base, backend: 'systemd-run' };

console.log(`# host systemd-delegated: /proc/self/cgroup ${read('/proc/self/cgroup')}, layout ${host.layout}, systemd manager ${host.systemdManager}, PID 1 ${read('/proc/1/comm')}`);

await check('Delegate=yes without a cgroup namespace: captrap keeps its cgroups below its unit\'s cgroup (unifiedHome), moves itself into captrap-sidecar there, and creates nothing at the root', async () => {
  expect(read('/proc/self/cgroup') === `0::/system.slice/${unit}`, `/proc/self/cgroup ${read('/proc/self/cgroup')}`);
  expect(unifiedHome(host) === unitDir, `unifiedHome ${unifiedHome(host)}, want ${unitDir}: ${hostReport(host).cgroupHome?.why}`);
  const r = await runSandboxed('sh', ['-c', 'cat /proc/self/cgroup'], { cgroupBase: base, backend: 'cgroup-v2', memory: '64M', pids: 16, confine: false, namespaces: [] });
  expect(r.reason.kind === 'exited' && r.reason.code === 0, `reason ${JSON.stringify(r.reason)} stderr ${r.stderr.slice(0, 300)}`);
  const want = `0::/system.slice/${unit}/${base}/`;
  expect(r.stdout.trim().startsWith(want), `sandbox in ${r.stdout.trim()}, want under ${want}`);
  expect(read('/proc/self/cgroup') === `0::/system.slice/${unit}/captrap-sidecar`, `captrap is in ${read('/proc/self/cgroup')}`);
  expect(!existsSync(`${mount}/${base}`), `a base was created at the root: ${mount}/${base}`);
  expect(unifiedHome(host) === unitDir, `unifiedHome moved with captrap: ${unifiedHome(host)}`);
  return `sandbox in ${r.stdout.trim()}; doctor: cgroup home ${hostReport(host).cgroupHome?.dir} (${hostReport(host).cgroupHome?.why})`;
});

// Started after the first check (a process of captrap's own in its unit's cgroup would be a
// foreign one there), early enough to be up by its own check: a node start takes seconds here.
const { owner, info: ownerInfo } = startOwner(project, base, 'systemd-run');

await check('systemd-run: doctor reports it available; a sandbox runs in a transient scope with MemoryMax, TasksMax and CPUQuota applied by systemd, joined before exec; the scope is gone after', async () => {
  const rep = hostReport(host, 'systemd-run');
  expect(rep.systemdRun.available, `systemdRun ${JSON.stringify(rep.systemdRun)}`);
  const sb = runSandboxed('sh', ['-c', 'cat /proc/self/cgroup; read x'], { ...SR, memory: '48M', pids: 24, cpu: 0.5, stdin: 'pipe', confine: false, namespaces: [] });
  const [cg] = await lines(sb, 1);
  const dir = scopeDir(sb);
  const files = { mem: read(`${dir}/memory.max`), swap: read(`${dir}/memory.swap.max`), pids: read(`${dir}/pids.max`), cpu: read(`${dir}/cpu.max`) };
  sb.stdin.end('\n');
  const r = await sb;
  expect(cg === `0::/${sliceFor(base)}/${sb.cgroupName}.scope`, `leader in ${cg}`);
  expect(files.mem === String(48 * 1024 * 1024), `memory.max ${files.mem}`);
  expect(files.swap === '0', `memory.swap.max ${files.swap}`);
  expect(files.pids === '24', `pids.max ${files.pids}`);
  expect(files.cpu === '50000 100000', `cpu.max ${files.cpu}`);
  expect(r.reason.kind === 'exited' && r.reason.code === 0 && r.backend === 'systemd-run', `reason ${JSON.stringify(r.reason)} backend ${r.backend} stderr ${r.stderr.slice(0, 300)}`);
  for (let i = 0; i < 100 && existsSync(dir); i++) await sleep(20);
  expect(!existsSync(dir), `scope cgroup left: ${dir}`);
  return `${cg}; ${JSON.stringify(files)}`;
}, host.systemdManager ? undefined : 'no systemd manager');

await check('systemd-run: a memory hog ends oom and the OOM takes the whole scope, bystander included', async () => {
  const sb = runSandboxed('sh', ['-c', 'sleep 300 & echo s $!; (s=a; read x; while :; do s=$s$s; done) & wait'], { ...SR, memory: '32M', timeout: 60_000, stdin: 'pipe', confine: false, namespaces: [] });
  const [l] = await lines(sb, 1);
  const bystander = processRef(Number(l.split(' ')[1]));
  sb.stdin.end('go\n');
  const r = await sb;
  expect(r.reason.kind === 'oom', `reason ${JSON.stringify(r.reason)} counters ${JSON.stringify(r.counters)}`);
  expect(r.durationMs < 50_000, `took ${Math.round(r.durationMs)} ms: the scope outlived the OOM`);
  expect((await waitGone([bystander], 2000)).length === 0, 'bystander alive');
  return `oomKills ${r.counters.oomKills}, ${Math.round(r.durationMs)} ms`;
}, host.systemdManager ? undefined : 'no systemd manager');

await check('systemd-run: a fork bomb under TasksMax 20 ends pids-limit', async () => {
  const r = await runSandboxed('sh', ['-c', 'b() { b & b & wait; }; b'], { ...SR, pids: 20, timeout: 4000 });
  expect(r.reason.kind === 'pids-limit', `reason ${JSON.stringify(r.reason)} counters ${JSON.stringify(r.counters)}`);
  return `pids.events max delta ${r.counters.pidsMax}`;
}, host.systemdManager ? undefined : 'no systemd manager');

await check('systemd-run: kill() takes the whole scope, a setsid grandchild and a double-forked daemon included', async () => {
  const sb = runSandboxed('sh', ['-c', "setsid sh -c 'echo g $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &); trap '' TERM; echo l $$; while :; do sleep 1; done"], { ...SR, confine: false, namespaces: [], killGrace: 200 });
  const refs = (await lines(sb, 3)).map((l) => processRef(Number(l.split(' ')[1])));
  const members = (read(`${scopeDir(sb)}/cgroup.procs`) ?? '').split('\n').map(Number);
  for (const ref of refs) expect(ref && members.includes(ref.pid), `pid ${ref?.pid} not in the scope (${members})`);
  sb.kill();
  const r = await sb;
  expect(r.reason.kind === 'killed', `reason ${JSON.stringify(r.reason)}`);
  expect((await waitGone(refs, 2000)).length === 0, 'a member survived');
  return r.killMechanism;
}, host.systemdManager ? undefined : 'no systemd manager');

await check('systemd-run: the default confined sandbox (pid, mount, net, cgroup namespaces; nobody) runs in its scope', async () => {
  const r = await runSandboxed('sh', ['-c', 'echo $$; id -u; cat /proc/self/cgroup'], { ...SR, memory: '64M', pids: 32 });
  const [pid, uid, cg] = r.stdout.trim().split('\n');
  expect(r.reason.kind === 'exited' && r.reason.code === 0, `reason ${JSON.stringify(r.reason)} stderr ${r.stderr.slice(0, 300)}`);
  expect(['1', '2'].includes(pid) && uid === '65534' && cg === '0::/', `pid ${pid} uid ${uid} cgroup ${cg}`);
  expect(r.degraded.length === 0, `degraded ${JSON.stringify(r.degraded)}`);
  return r.confinement.namespaces.join(',');
}, host.systemdManager ? undefined : 'no systemd manager');

await check('systemd-run: a SIGKILLed owner leaves no process and no scope (the watchdog kills the scope: setsid + double fork, no pid namespace)', async () => {
  const info = await ownerInfo;
  const refs = [info.leader, ...info.pids].map((p) => processRef(p));
  const dir = `${sliceDir}/${info.name}.scope`;
  expect(existsSync(dir) && refs.every(alive), `sandbox not running in ${dir} before the kill`);
  owner.kill('SIGKILL');
  const left = await waitGone(refs, 5000);
  expect(left.length === 0, `alive after owner SIGKILL: ${left}`);
  for (let i = 0; i < 100 && existsSync(dir); i++) await sleep(20);
  expect(!existsSync(dir), `scope left: ${dir}`);
}, host.systemdManager ? undefined : 'no systemd manager');

await check('nothing left: no scope in the slice, no cgroup under the base, base removed', async () => {
  // An owner that never got as far as its check is killed here, and its scope is stale.
  if (owner.exitCode === null && owner.signalCode === null) {
    owner.kill('SIGKILL');
    await new Promise((r) => owner.once('exit', r));
  }
  await cleanupStaleCgroups(host, base);
  let scopes = [];
  try { scopes = readdirSync(sliceDir).filter((n) => n.endsWith('.scope')); } catch { /* the slice was collected */ }
  expect(scopes.length === 0, `scopes left: ${scopes}`);
  const left = removeCgroupBase(host, base);
  expect(left.length === 0, `base left: ${left}`);
});

finish('systemd-delegated', T0);
