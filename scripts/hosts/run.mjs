#!/usr/bin/env node
// `npm run test:hosts`: prepares the kernel and initramfs (prepare.sh), boots each test host as a
// qemu guest (software emulation, TCG: /dev/kvm hangs a stock kernel here), and collects the one
// line each host's conformance run prints on the serial console:
//   host <name>: N passed, M failed, K skipped
// Exits non-zero if a host failed, printed no such line, or did not finish within its timeout.
//
//   node scripts/hosts/run.mjs [host...]      hosts: v2, ctr, systemd (default: all)
//   CAPTRAP_HOSTS_TIMEOUT=<seconds>           per-host wall-clock limit (default 600)
//   CAPTRAP_HOSTS_CACHE=<dir>                 cache directory (default <project>/.cache/hosts)
//   CAPTRAP_HOSTS_VERBOSE=1                   echo the whole console, kernel messages included
// Each guest's full console is kept in <cache>/<host>.log.
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const project = resolve(here, '../..');
const cache = process.env.CAPTRAP_HOSTS_CACHE ?? `${project}/.cache/hosts`;
const timeoutS = Number(process.env.CAPTRAP_HOSTS_TIMEOUT ?? 600);
const verbose = process.env.CAPTRAP_HOSTS_VERBOSE === '1';

/** The hosts this harness can boot: the kernel command line and the stage-2 script of each. */
const HOSTS = {
  v2: {
    what: 'pure cgroup v2, no systemd (cgroup_no_v1=all, a shell as PID 1)',
    append: ['cgroup_no_v1=all'],
    stage2: `${project}/scripts/hosts/guest-v2.sh`,
  },
  ctr: {
    what: 'container-style: a delegated cgroup v2 subtree as cgroup namespace root, captrap inside it (same kernel, cgroup_no_v1=all)',
    append: ['cgroup_no_v1=all'],
    stage2: `${project}/scripts/hosts/guest-ctr.sh`,
  },
  systemd: {
    what: 'systemd 252 as PID 1 (same kernel, pure v2): the systemd-run backend and captrap in a Delegate=yes service\'s cgroup, then the conformance in such a service seen through a cgroup namespace',
    append: ['cgroup_no_v1=all', 'systemd.unit=captrap-hosts.service', 'systemd.show_status=0'],
    stage2: `${project}/scripts/hosts/guest-systemd.sh`,
    // Two runs in this guest, each with its own result line (test/hosts/systemd.mjs first).
    results: ['systemd-delegated', 'systemd'],
  },
};

const t0 = Date.now();
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
const wanted = process.argv.slice(2);
for (const h of wanted) if (!(h in HOSTS)) { console.error(`test:hosts: unknown host '${h}' (known: ${Object.keys(HOSTS).join(', ')})`); process.exit(2); }
const hosts = wanted.length > 0 ? wanted : Object.keys(HOSTS);

if (!existsSync(`${project}/dist/index.js`) || !existsSync(`${project}/build/captrap-launch`)) {
  console.error('test:hosts: dist/ or build/captrap-launch is missing: run `npm run build` first (the guest runs the built JS)');
  process.exit(2);
}
// The guest runs dist/, not src/: say so when a source file is newer than the build.
{
  const built = statSync(`${project}/dist/index.js`).mtimeMs;
  const newer = (dir) => readdirSync(dir, { withFileTypes: true }).some((e) => (e.isDirectory() ? newer(`${dir}/${e.name}`) : e.name.endsWith('.ts') && statSync(`${dir}/${e.name}`).mtimeMs > built));
  if (newer(`${project}/src`)) console.warn('test:hosts: warning: src/ has changes newer than dist/: the guests test the old build (run `npm run build`)');
}
// The guest sees this file system read-only at the moment it boots: make sure what it reads is on disk.
spawnSync('sync');

const prep = spawnSync('sh', [`${here}/prepare.sh`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, CAPTRAP_HOSTS_CACHE: cache } });
if (prep.status !== 0) {
  console.error(`test:hosts: prepare.sh failed (exit ${prep.status})`);
  process.exit(2);
}
const vars = Object.fromEntries(prep.stdout.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
console.log(`test:hosts: prepared in ${secs(Date.now() - t0)} (${vars.KERNEL})`);

const RESULT = /^host (\S+): (\d+) passed, (\d+) failed, (\d+) skipped\s*$/;

function boot(name) {
  const h = HOSTS[name];
  const logFile = `${cache}/${name}.log`;
  const log = createWriteStream(logFile);
  const append = ['console=ttyS0', 'quiet', 'loglevel=3', 'panic=-1', 'random.trust_cpu=on', `captrap.host=${name}`, `captrap.stage2=${h.stage2}`, ...h.append].join(' ');
  const args = [
    '-accel', 'tcg', '-cpu', 'max', '-m', '2048', '-smp', '2',
    '-nographic', '-no-reboot', '-net', 'none',
    '-kernel', vars.KERNEL, '-initrd', vars.INITRD, '-append', append,
    // The host's root, read-only; the guest puts a tmpfs overlay on top. remap: the export spans
    // several file systems (/proc, /sys, /work ...), whose inode numbers would otherwise collide.
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
  ];
  const started = Date.now();
  console.log(`test:hosts: booting ${name}: ${h.what}`);
  return new Promise((done) => {
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const expected = h.results ?? [name];
    const results = new Map();
    let buf = '';
    let timedOut = false;
    const onData = (chunk) => {
      log.write(chunk);
      buf += chunk.toString('utf8');
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        // The serial console ends lines with \r\n and may carry terminal escapes from the BIOS.
        const line = buf.slice(0, nl).replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1bc/g, '');
        buf = buf.slice(nl + 1);
        const m = RESULT.exec(line);
        if (m && expected.includes(m[1])) results.set(m[1], { passed: Number(m[2]), failed: Number(m[3]), skipped: Number(m[4]), line });
        // Quiet by default: the conformance's own lines (and anything from the guest's init).
        if (verbose || /^(guest|host |  |ok |FAIL|SKIP|not ok|doctor|#)/.test(line)) console.log(`[${name}] ${line}`);
      }
    };
    qemu.stdout.on('data', onData);
    qemu.stderr.on('data', (c) => {
      log.write(c);
      if (!/Multiple devices detected/.test(c.toString())) process.stderr.write(`[${name}] ${c}`);
    });
    // The kill is by pid, of the qemu this harness started and nothing else.
    const timer = setTimeout(() => {
      timedOut = true;
      console.error(`test:hosts: ${name} did not finish within ${timeoutS} s: killing qemu (pid ${qemu.pid})`);
      try { process.kill(qemu.pid, 'SIGKILL'); } catch { /* already gone */ }
    }, timeoutS * 1000);
    qemu.once('error', (e) => {
      clearTimeout(timer);
      console.error(`test:hosts: cannot start qemu-system-x86_64: ${e.message}`);
      done({ name, ok: false, why: 'qemu did not start' });
    });
    qemu.once('exit', (code, signal) => {
      clearTimeout(timer);
      log.end();
      const ms = Date.now() - started;
      if (timedOut) return done({ name, ok: false, ms, why: `timed out after ${timeoutS} s (console in ${logFile})` });
      const missing = expected.filter((e) => !results.has(e));
      const lines = [...results.values()].map((r) => r.line);
      if (missing.length > 0) return done({ name, ok: false, ms, lines, why: `no result line for ${missing.join(', ')} (qemu exit ${code ?? signal}; console in ${logFile})` });
      done({ name, ok: [...results.values()].every((r) => r.failed === 0 && r.passed > 0), ms, lines });
    });
  });
}

let ok = true;
const summary = [];
for (const name of hosts) {
  const r = await boot(name);
  ok &&= r.ok;
  for (const line of r.lines ?? []) summary.push(`${line}  (${secs(r.ms)})`);
  if (r.why) summary.push(`host ${name}: FAILED: ${r.why}`);
}
console.log('');
for (const s of summary) console.log(s);
console.log(`test:hosts: ${ok ? 'all hosts passed' : 'FAILED'} in ${secs(Date.now() - t0)}`);
process.exit(ok ? 0 : 1);
