// A captrap-like owner for the conformance's watchdog check (conformance.mjs starts it, then
// SIGKILLs it). One unconfined sandbox without a pid namespace — so only the owner watchdog's
// cgroup.kill can take its tree — whose leader starts a setsid grandchild and a double-forked
// daemon (backend as the optional second argument). Prints one JSON line once both are up, then idles until it is killed.
import { runSandboxed } from '../../dist/index.js';
import { ownerWatchdogs } from '../../dist/isolation/watchdog.js';

const [base, backend] = process.argv.slice(2);
const tree = "setsid sh -c 'echo g $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &); exec sleep 300";
const sb = runSandboxed('sh', ['-c', tree], { cgroupBase: base, confine: false, namespaces: [], ...(backend ? { backend } : {}) });
const pids = [];
sb.stdout.on('data', (c) => {
  for (const m of c.toString().matchAll(/[gd] (\d+)/g)) pids.push(Number(m[1]));
  if (pids.length === 2) console.log(JSON.stringify({ leader: sb.pid, pids, name: sb.cgroupName, watchdog: ownerWatchdogs()[0] ?? null }));
});
setInterval(() => {}, 1000);
