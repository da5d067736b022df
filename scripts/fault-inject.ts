// `npm run fault-inject -- --rounds 200 --seed S`: randomized kill-agent rounds against a real
// `captrap serve`. Each round a long-lived root agent spawns sub-agents (some nested), they make
// random calls (tools that finish, tools that hang, delegations, revocations, forged calls), and
// at random moments random processes are killed: agents by SIGKILL, SIGSTOP+SIGKILL or the
// admin socket, tool processes, parents of sub-agents, now and then the sidecar itself (then it
// is restarted on the same state). After every round and at the end the script asserts: no
// capability valid for a dead process, no process or cgroup left behind, and at the end a
// verifying audit log. Prints a summary; exits 1 on any violation, 2 on bad usage.
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { isSameProcess, type ProcessRef } from '../src/isolation/proc.js';
import { isEntryPoint } from '../src/runner/cli.js';
import {
  PROXY_AGENT,
  auditVerify,
  cgroupDirsOf,
  cgroupsUnder,
  collectAndClean,
  gone,
  liveCapsOfDeadHolders,
  processesInBase,
  ALL_TOOLS_CAP,
  proxyAgent,
  SPAWN_NODE_CAP,
  spawnCap,
  hangRefs,
  shutdown,
  sleep,
  startServe,
  toolCap,
  uniqueBase,
  waitFor,
  type CapView,
  type ProxyAgent,
  type ServeHandle,
} from '../test/fault/harness.js';

export interface RoundsOptions {
  rounds: number;
  seed: number;
  /** Probability per round of SIGKILLing the sidecar itself (then restarting it). Default 0.02. */
  sidecarKillRate?: number;
  /**
   * Confinement of every sandbox (default true: own pid, mount, net, ... namespaces, a uid per
   * agent). false is the limits-only sidecar (sandbox.confine: false).
   */
  confine?: boolean;
  /** Unconfined only: run tools in their own pid namespace (serve's sandbox.namespaces: [pid]); confined sandboxes have one anyway. */
  pidNamespace?: boolean;
  log?: (line: string) => void;
}

export interface RoundsSummary {
  rounds: number;
  seed: number;
  agentsSpawned: number;
  calls: number;
  callOutcomes: Record<string, number>;
  kills: Record<string, number>;
  sidecarRestarts: number;
  violations: string[];
  audit: { ok: boolean; records: number } | null;
  confine: boolean;
  pidNamespace: boolean;
  ms: number;
}

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Kill = 'sigkill-agent' | 'stop-then-kill' | 'admin-kill' | 'kill-tool' | 'kill-parent' | 'revoke-principal' | 'agent-exit';
const KILLS: Kill[] = ['sigkill-agent', 'stop-then-kill', 'admin-kill', 'kill-tool', 'kill-parent', 'revoke-principal', 'agent-exit'];

/** The root agent spawns sub-agents, so it holds a process capability for the proxy agent's command besides its tools. */
const ROOT_CAPS = { capabilities: [ALL_TOOLS_CAP, SPAWN_NODE_CAP] };

interface Sub {
  agent: ProxyAgent;
  cap: CapView;
  /** Its process capability (delegated from its parent's), to spawn sub-agents of its own. */
  spawnCap: CapView;
  parent: string;
  hangs: string[];
}

export async function runRounds(opts: RoundsOptions): Promise<RoundsSummary> {
  const rand = prng(opts.seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const log = opts.log ?? (() => {});
  const t0 = Date.now();
  const summary: RoundsSummary = {
    rounds: 0,
    seed: opts.seed,
    agentsSpawned: 0,
    calls: 0,
    callOutcomes: {},
    kills: {},
    sidecarRestarts: 0,
    violations: [],
    audit: null,
    confine: opts.confine !== false,
    pidNamespace: opts.confine === false ? opts.pidNamespace === true : true,
    ms: 0,
  };
  const violation = (round: number, what: string) => {
    summary.violations.push(`round ${round}: ${what}`);
    log(`VIOLATION round ${round}: ${what}`);
  };
  const count = (bucket: Record<string, number>, key: string) => (bucket[key] = (bucket[key] ?? 0) + 1);

  const cgroupBase = uniqueBase('fi');
  const sandbox = opts.confine === false ? { confine: false, ...(opts.pidNamespace ? { namespaces: ['pid'] } : {}) } : {};
  let h: ServeHandle = await startServe({ agents: [proxyAgent('root', ROOT_CAPS)], cgroupBase, sandbox });
  const dir = h.dir;
  let root = await h.agent('root');
  let rootCap = await toolCap(root);
  let rootSpawnCap = await spawnCap(root);
  let seq = 0;

  try {
    rounds: for (let round = 1; round <= opts.rounds; round++) {
      summary.rounds = round;
      const subs: Sub[] = [];
      const calls: Promise<unknown>[] = [];
      const deadIds = new Set<string>();

      const spawnSub = async (parent: ProxyAgent, parentCap: CapView, parentSpawnCap: CapView): Promise<Sub | undefined> => {
        const id = `r${round}.a${++seq}`;
        const r = await parent.call<{ id: string; pid: number; capabilities: CapView[] }>('agents.spawn', {
          id,
          capability: parentSpawnCap.id,
          command: process.execPath,
          args: [PROXY_AGENT, h.control.path],
          capabilities: [
            { capability: parentCap.id, operations: ['invoke'] },
            { capability: parentSpawnCap.id, operations: ['spawn'] },
          ],
        });
        if (r.error || !r.result) {
          count(summary.callOutcomes, `agents.spawn:${r.error?.data?.code ?? r.error?.code}`);
          return undefined;
        }
        summary.agentsSpawned++;
        // A sub-agent's principal is '<parent>/<id>'.
        const agent = await h.agent(r.result.id, 10_000);
        const sub: Sub = { agent, cap: r.result.capabilities[0]!, spawnCap: r.result.capabilities[1]!, parent: parent.id, hangs: [] };
        subs.push(sub);
        return sub;
      };

      const randomCall = (s: Sub): Promise<unknown> => {
        const roll = rand();
        summary.calls++;
        let p: Promise<{ error?: { code: number; data?: { code?: string } } }>;
        if (roll < 0.3) p = s.agent.call('tools.invoke', { tool: 'true', args: {}, capability: s.cap.id });
        else if (roll < 0.45) p = s.agent.call('tools.invoke', { tool: 'echo', args: { msg: `round ${round}` }, capability: s.cap.token });
        else if (roll < 0.55) p = s.agent.call('tools.invoke', { tool: 'nap', args: { secs: (rand() * 0.3).toFixed(2) }, capability: s.cap.id });
        else if (roll < 0.7) {
          // A unique argument: how the hang call's processes are found (nothing is written there).
          const hangDir = join(dir, `fi-${round}-${++seq}`);
          s.hangs.push(hangDir);
          p = s.agent.call('tools.invoke', { tool: 'hang', args: { dir: hangDir }, capability: s.cap.id }, 120_000);
        } else if (roll < 0.8) {
          const to = pick(subs).agent.id;
          p = s.agent.call('capabilities.delegate', { capability: s.cap.id, to, operations: ['invoke'], constraints: { allowedTools: ['true'] } });
        } else if (roll < 0.85) p = s.agent.call('capabilities.list');
        else if (roll < 0.9) p = s.agent.call('tools.list');
        else if (roll < 0.95) p = s.agent.call('tools.invoke', { tool: 'true', args: {}, capability: pick(subs).cap.id });
        else p = s.agent.call('tools.invoke', { tool: 'true', args: {}, capability: `cap_forged${round}x${seq}` });
        return p.then(
          (r) => count(summary.callOutcomes, r.error ? `error:${r.error.data?.code ?? r.error.code}` : 'ok'),
          () => count(summary.callOutcomes, 'agent-gone'),
        );
      };

      try {
        try {
          // 1-3 sub-agents of root, sometimes one nested under another.
          const n = 1 + Math.floor(rand() * 3);
          for (let i = 0; i < n; i++) await spawnSub(root, rootCap, rootSpawnCap);
          if (subs.length > 0 && rand() < 0.4) {
            const p = pick(subs);
            await spawnSub(p.agent, p.cap, p.spawnCap);
          }
          for (const s of [...subs]) for (let i = 0, k = 1 + Math.floor(rand() * 4); i < k; i++) calls.push(randomCall(s));

          // Random moment, random victim.
          await sleep(Math.floor(rand() * 250));
          if (rand() < (opts.sidecarKillRate ?? 0.02)) {
            count(summary.kills, 'sidecar');
            const refs = [...processesInBase(h.cgroupBase), ...[...subs.map((s) => s.agent), root].flatMap((a) => [a.ref, ...(a.leader ? [a.leader] : [])])];
            process.kill(h.ref.pid, 'SIGKILL');
            const t = Date.now();
            if (!(await waitFor(() => refs.every(gone), 1000, 2))) violation(round, `processes alive 1 s after the sidecar was SIGKILLed: ${JSON.stringify(refs.filter((r) => !gone(r)))}`);
            log(`round ${round}: sidecar SIGKILLed, its processes gone in ${Date.now() - t} ms; restarting`);
            await h.exited;
            h.admin.close();
            h.control.close();
            await Promise.allSettled(calls);
            h = await startServe({ dir, cgroupBase, sandbox, agents: [proxyAgent('root', ROOT_CAPS)] });
            summary.sidecarRestarts++;
            const stale = cgroupsUnder(cgroupBase).filter((d) => !d.includes(`/${h.ref.pid}.`));
            if (stale.length > 0) violation(round, `stale cgroups after restart: ${stale.join(', ')}`);
            const survivors = refs.filter((r) => !gone(r));
            if (survivors.length > 0) violation(round, `processes of the killed sidecar still alive after the restart: ${JSON.stringify(survivors)}`);
            root = await h.agent('root');
            rootCap = await toolCap(root);
            rootSpawnCap = await spawnCap(root);
            continue;
          }
          const live = subs.filter((s) => !gone(s.agent.ref));
          if (live.length > 0) {
            const kill = pick(KILLS);
            const victim = pick(live);
            count(summary.kills, kill);
            switch (kill) {
              case 'sigkill-agent':
                killIfSame(victim.agent.ref, 'SIGKILL');
                deadIds.add(victim.agent.id);
                break;
              case 'stop-then-kill':
                killIfSame(victim.agent.ref, 'SIGSTOP');
                await sleep(Math.floor(rand() * 50));
                killIfSame(victim.agent.ref, 'SIGKILL');
                deadIds.add(victim.agent.id);
                break;
              case 'admin-kill':
                await h.adminCall('agents.kill', { id: victim.agent.id }).catch(() => undefined);
                deadIds.add(victim.agent.id);
                break;
              case 'kill-tool': {
                // Found from outside: a confined tool cannot tell its host pids.
                const refs = victim.hangs.flatMap((d) => hangRefs(d));
                if (refs.length > 0) killIfSame(pick(refs), 'SIGKILL');
                break;
              }
              case 'kill-parent': {
                const parent = subs.find((s) => s.agent.id === victim.parent) ?? victim;
                killIfSame(parent.agent.ref, 'SIGKILL');
                deadIds.add(parent.agent.id);
                for (const s of subs) if (s.parent === parent.agent.id) deadIds.add(s.agent.id);
                break;
              }
              case 'revoke-principal':
                await h.adminCall('capabilities.revoke', { principal: victim.agent.id }).catch(() => undefined);
                break;
              case 'agent-exit':
                await victim.agent.order('exit', { code: Math.floor(rand() * 3) }, 5000).catch(() => undefined);
                deadIds.add(victim.agent.id);
                break;
            }
          }
          await sleep(Math.floor(rand() * 100));

          // Invariant while the sidecar runs: no capability valid for a dead process.
          // The agents' own processes and their sandbox leaders (the holders of their capabilities;
          // confined, the launcher outlives the agent's process by a moment).
          const deadRefs = subs.filter((s) => deadIds.has(s.agent.id)).flatMap((s) => [s.agent.ref, ...(s.agent.leader ? [s.agent.leader] : [])]);
          if (!(await waitFor(() => deadRefs.every(gone), 3000))) violation(round, `killed agents still alive: ${JSON.stringify(deadRefs.filter((r) => !gone(r)))}`);
          const settled = await waitFor(async () => liveCapsOfDeadHolders(await h.caps()).length === 0, 3000, 20);
          if (!settled) violation(round, `capabilities live for dead holders: ${JSON.stringify(liveCapsOfDeadHolders(await h.caps()).map((c) => `${c.id}@${c.principal}`))}`);
          for (const id of deadIds) {
            const caps = await h.caps(id);
            if (caps.some((c) => !c.revoked)) violation(round, `dead agent ${id} still has live capabilities`);
          }
        } catch (err) {
          // The harness or the sidecar failed in a way no check anticipated: record it and stop
          // (the state is unknown); the clean-up and the final checks still run.
            violation(round, `unexpected error: ${err instanceof Error ? err.message : String(err)}`);
          break rounds;
        }
      } finally {
        // End of round: the remaining sub-agents go, and only root may be left in the base.
        for (const s of subs) if (!gone(s.agent.ref)) await h.adminCall('agents.kill', { id: s.agent.id }).catch(() => undefined);
        await Promise.race([Promise.allSettled(calls), sleep(10_000)]);
      }
      // Only root's sandbox may be left: confined, its cgroups hold its launcher and namespace init besides root itself.
      // Root's sandbox is a leaf of root's agent group: the group's directories may stay too, nothing else at any depth.
      const rootDirs = new Set(cgroupDirsOf(root.pid, h.cgroupBase).flatMap((d) => withAncestors(d, h.cgroupBase)));
      const ofRoot = (r: ProcessRef) => r.pid === root.pid || cgroupDirsOf(r.pid, h.cgroupBase).every((d) => rootDirs.has(d));
      const clean = await waitFor(
        () => processesInBase(h.cgroupBase).every(ofRoot) && allCgroupsUnder(h.cgroupBase).every((d) => rootDirs.has(d)),
        5000,
        20,
      );
      if (!clean) {
        violation(round, `left after the round: processes ${JSON.stringify(processesInBase(h.cgroupBase).filter((r) => !ofRoot(r)))}, cgroups ${allCgroupsUnder(h.cgroupBase).filter((d) => !rootDirs.has(d)).join(', ')}`);
      }
      if (round % 10 === 0 || round === opts.rounds) log(`round ${round}/${opts.rounds}: ${summary.agentsSpawned} agents, ${summary.calls} calls, ${summary.violations.length} violation(s)`);
    }
  } finally {
    const left = await shutdown(h, { keepDir: true });
    if (left.exit.code !== 0) summary.violations.push(`serve exited with ${JSON.stringify(left.exit)} on SIGTERM`);
    if (left.processes.length > 0) summary.violations.push(`leaked processes: ${JSON.stringify(left.processes)}`);
    if (left.cgroups.length > 0) summary.violations.push(`leaked cgroups: ${left.cgroups.join(', ')}`);
    if (left.bases.length > 0) summary.violations.push(`cgroup base not removable: ${left.bases.join(', ')}`);
    const v = auditVerify(h);
    summary.audit = { ok: v.status === 0 && v.report.ok, records: v.report.records };
    if (!summary.audit.ok) summary.violations.push(`audit verify failed (exit ${v.status}): ${JSON.stringify(v.report).slice(0, 2000)} ${v.stderr}`);
    await collectAndClean({ cgroupBase, dir });
    rmSync(dir, { recursive: true, force: true });
    summary.ms = Date.now() - t0;
  }
  return summary;
}

function killIfSame(ref: ProcessRef, sig: NodeJS.Signals): void {
  if (!isSameProcess(ref)) return;
  try {
    process.kill(ref.pid, sig);
  } catch {
    // gone in between
  }
}

export function formatSummary(s: RoundsSummary): string {
  const kv = (o: Record<string, number>) => Object.entries(o).sort().map(([k, v]) => `${k}=${v}`).join(' ') || '-';
  return [
    `fault-inject: ${s.rounds} round(s), seed ${s.seed}, ${(s.ms / 1000).toFixed(1)} s, ${s.confine ? 'confined' : 'unconfined'}${s.pidNamespace ? ', tools in pid namespaces' : ''}`,
    `  agents spawned: ${s.agentsSpawned}; calls: ${s.calls}; sidecar restarts: ${s.sidecarRestarts}`,
    `  kills: ${kv(s.kills)}`,
    `  call outcomes: ${kv(s.callOutcomes)}`,
    `  audit: ${s.audit ? `${s.audit.ok ? 'VERIFIED' : 'NOT VERIFIED'} (${s.audit.records} records)` : 'not checked'}`,
    s.violations.length === 0 ? '  violations: none' : `  violations (${s.violations.length}):\n${s.violations.map((v) => `    - ${v}`).join('\n')}`,
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  let values: { rounds?: string; seed?: string; 'sidecar-kill-rate'?: string; unconfined?: boolean; 'pid-namespace'?: boolean; quiet?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { rounds: { type: 'string' }, seed: { type: 'string' }, 'sidecar-kill-rate': { type: 'string' }, unconfined: { type: 'boolean' }, 'pid-namespace': { type: 'boolean' }, quiet: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`fault-inject: ${(err as Error).message}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write('usage: npm run fault-inject -- [--rounds N (default 20)] [--seed S (default: time)] [--sidecar-kill-rate P (default 0.02)] [--unconfined [--pid-namespace]] [--quiet]\n');
    return 0;
  }
  const rounds = Number(values.rounds ?? 20);
  const seed = values.seed === undefined ? Date.now() % 2 ** 31 : Number(values.seed);
  const rate = Number(values['sidecar-kill-rate'] ?? 0.02);
  if (!Number.isInteger(rounds) || rounds < 1 || !Number.isInteger(seed) || !(rate >= 0 && rate <= 1)) {
    process.stderr.write('fault-inject: --rounds must be a positive integer, --seed an integer, --sidecar-kill-rate in [0, 1]\n');
    return 2;
  }
  const summary = await runRounds({ rounds, seed, sidecarKillRate: rate, confine: values.unconfined !== true, pidNamespace: values['pid-namespace'] === true, log: values.quiet ? undefined : (l) => process.stderr.write(l + '\n') });
  process.stdout.write(formatSummary(summary) + '\n');
  return summary.violations.length === 0 ? 0 : 1;
}

if (isEntryPoint(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`fault-inject: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}

/** `dir` and each directory above it below `<hierarchy>/<base>` (an agent's leaf, its group, its parent's groups). */
function withAncestors(dir: string, base: string): string[] {
  const out: string[] = [];
  for (let p = dir; p.includes(`/${base}/`); p = p.slice(0, p.lastIndexOf('/'))) out.push(p);
  return out;
}

/** Every cgroup directory below the base, at any depth (groups nest). */
function allCgroupsUnder(base: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let names: string[];
    try {
      names = readdirSync(d, { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name);
    } catch {
      return;
    }
    for (const n of names) {
      out.push(`${d}/${n}`);
      walk(`${d}/${n}`);
    }
  };
  for (const top of cgroupsUnder(base)) {
    out.push(top);
    walk(top);
  }
  return out;
}
