// Shared by the in-guest check scripts (conformance.mjs, systemd.mjs): a tiny check runner and
// process helpers over the built dist/ (no test framework: a node start costs seconds in a guest).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { isSameProcess } from '../../dist/index.js';
import { pidsInNamespace, sandboxPidNamespace } from '../../dist/isolation/confine.js';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const read = (p) => { try { return readFileSync(p, 'utf8').trim(); } catch { return undefined; } };
export const keyed = (p, k) => { const m = new RegExp(`^${k} (\\d+)$`, 'm').exec(read(p) ?? ''); return m ? Number(m[1]) : undefined; };
export const alive = (ref) => ref !== undefined && isSameProcess(ref) && !/^State:\s+Z/m.test(read(`/proc/${ref.pid}/status`) ?? '');

export const results = { passed: 0, failed: 0, skipped: 0 };
export const failures = [];

export class Check extends Error {}
export function expect(cond, what) {
  if (!cond) throw new Check(what);
}

/** Runs one named check; `skip` is a reason string to skip it. */
export async function check(name, fn, skip) {
  if (skip) {
    results.skipped++;
    console.log(`SKIP ${name}: ${skip}`);
    return;
  }
  const t = performance.now();
  try {
    const note = await fn();
    results.passed++;
    console.log(`ok   ${name} (${((performance.now() - t) / 1000).toFixed(1)} s)${note ? `: ${note}` : ''}`);
  } catch (err) {
    results.failed++;
    failures.push(name);
    const msg = err instanceof Check ? err.message : `${err?.code ?? ''} ${err?.stack ?? err}`;
    console.log(`FAIL ${name}: ${msg.replace(/\n/g, '\n       ')}`);
  }
}

/** Resolves with the first `n` lines a sandbox prints. */
export function lines(sb, n, ms = 60_000) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Check(`only got ${JSON.stringify(buf)} within ${ms} ms`)), ms);
    sb.stdout.on('data', (c) => {
      buf += c.toString();
      const ls = buf.split('\n').filter(Boolean);
      if (ls.length >= n) { clearTimeout(t); resolve(ls); }
    });
  });
}

/** Host pid of a pid printed inside a sandbox's pid namespace. */
export function hostPidOf(leader, nsPid) {
  const ns = sandboxPidNamespace(leader);
  for (const pid of ns ? pidsInNamespace(ns) : []) {
    const m = /^NSpid:\s+(.*)$/m.exec(read(`/proc/${pid}/status`) ?? '');
    if (m && Number(m[1].trim().split(/\s+/).at(-1)) === nsPid) return pid;
  }
  return undefined;
}

export async function waitGone(refs, ms) {
  const end = Date.now() + ms;
  while (refs.some(alive) && Date.now() < end) await sleep(20);
  return refs.filter(alive).map((r) => r.pid);
}

/** Prints the summary line scripts/hosts/run.mjs looks for and exits 0 iff nothing failed. */
export function finish(hostName, t0) {
  console.log(`# ${((performance.now() - t0) / 1000).toFixed(1)} s${failures.length ? `; failed: ${failures.join(' | ')}` : ''}`);
  console.log(`host ${hostName}: ${results.passed} passed, ${results.failed} failed, ${results.skipped} skipped`);
  process.exit(results.failed === 0 ? 0 : 1);
}

/**
 * Starts test/hosts/owner.mjs (a captrap-like owner of one sandbox tree, to be SIGKILLed) for
 * cgroup base `base`, optionally with `backend`. `info` resolves with the JSON line it prints.
 * A node start costs seconds in a guest, so it is given `waitMs` (default 150 s) to print.
 */
export function startOwner(project, base, backend, waitMs = 150_000) {
  const owner = spawn(process.execPath, [`${project}/test/hosts/owner.mjs`, base, ...(backend ? [backend] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  owner.stderr.on('data', (c) => (err += c));
  const info = new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Check(`owner printed nothing in ${waitMs / 1000} s: ${buf} ${err}`)), waitMs);
    owner.stdout.on('data', (c) => {
      buf += c;
      if (buf.includes('\n')) { clearTimeout(t); resolve(JSON.parse(buf.split('\n')[0])); }
    });
    owner.on('exit', (code) => reject(new Check(`owner exited ${code}: ${err}`)));
  });
  info.catch(() => undefined);
  return { owner, info };
}
