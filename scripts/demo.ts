// `npm run demo`: the sidecar end to end, as a printed transcript. `captrap serve` starts with
// examples/demo.yaml and launches two agents: "planner" (TypeScript, captrap/agent) and "scribe"
// (Python speaking JSON-RPC by hand on fd 3). The planner reads a file under its root, is denied
// a tool and a path it was not given (nothing is spawned for either), and launches a sub-agent
// with a narrower capability; the demo SIGKILLs the sub-agent and shows its capabilities revoked.
// The scribe runs a tool past its memory limit, reported as `oom`. Then serve stops on SIGTERM
// and `captrap audit verify` checks the log. Every claim is checked: any miss exits 1.
// Everything lives in a temp dir and a unique cgroup, both removed at the end.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cleanupStaleCgroups, hierarchyRoots, removeCgroupBase } from '../src/isolation/cgroup.js';
import { probeHost, which } from '../src/isolation/host.js';
import { DEFAULT_PATH } from '../src/isolation/limits.js';
import { cgroupsOf, isSameProcess, listPids, readStat, type ProcessRef } from '../src/isolation/proc.js';
import { readAuditRecords } from '../src/kernel/audit-verify.js';
import { AdminClient, type AgentRow } from '../src/runner/admin-client.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const EXAMPLES = join(ROOT, 'examples');
const CLI = join(ROOT, 'src/runner/cli.ts');
// A sub-agent's principal lives in its parent's namespace.
const WORKER = 'planner/worker';
const TSX = import.meta.resolve('tsx');
const STEP_TIMEOUT_MS = 20_000;
const t0 = Date.now();

// ---------------------------------------------------------------------------------------------
// Transcript

let step = 0;
const failures: string[] = [];
const say = (text: string) => console.log(`\n${++step}. ${text}`);
const show = (text: string) => console.log(text.replace(/\n$/, '').replace(/^/gm, '   '));
const note = (text: string) => console.log(`   ${text}`);

/** A claim the demo makes: printed with ✓, or recorded as a failure (exit 1) with ✗. */
function check(ok: boolean, claim: string): boolean {
  if (ok) note(`✓ ${claim}`);
  else {
    note(`✗ NOT TRUE: ${claim}`);
    failures.push(claim);
  }
  return ok;
}

class DemoError extends Error {}

// ---------------------------------------------------------------------------------------------
// Processes

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `p`, or undefined after `ms`; the timer is cleared either way so it never holds the process open. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs the captrap CLI the way a user would (from the config's directory) and returns its output. */
function captrap(dir: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', TSX, CLI, ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('close', (code) => resolve({ code, out, err }));
  });
}

/** Runs and prints a CLI command; `excerpt` picks what of its stdout to print (all by default). */
async function showCommand(dir: string, args: string[], excerpt: (out: string) => string = (o) => o): Promise<{ code: number | null; out: string; err: string }> {
  console.log(`\n   $ captrap ${args.join(' ')}`);
  const r = await captrap(dir, args);
  if (r.out) show(excerpt(r.out));
  if (r.err) show(r.err);
  return r;
}

interface AgentLine {
  agent: string;
  text: string;
}

/** What serve writes to stderr: agents' lines (`[id] text`) are kept for the transcript, its own log for errors. */
class ServeOutput {
  readonly lines: AgentLine[] = [];
  private log = '';
  private partial = '';
  private wake: (() => void) | undefined;

  attach(child: ChildProcess): void {
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.partial += chunk;
      let nl: number;
      while ((nl = this.partial.indexOf('\n')) >= 0) {
        const line = this.partial.slice(0, nl);
        this.partial = this.partial.slice(nl + 1);
        const m = /^\[([A-Za-z][\w./-]*)\] (.*)$/.exec(line);
        if (m) this.lines.push({ agent: m[1]!, text: m[2]! });
        else this.log = (this.log + line + '\n').slice(-8000);
      }
      this.wake?.();
    });
  }

  tail(): string {
    return this.log.trim() || '(serve wrote nothing else)';
  }

  /** The first match of `re` in serve's own lines so far. */
  find(re: RegExp): RegExpExecArray | null {
    return re.exec(this.log);
  }

  /**
   * Prints the lines of `agents` as they arrive (from where the last call for them stopped)
   * until `done` holds for all lines of those agents seen so far.
   */
  async follow(agents: string[], done: (lines: AgentLine[]) => boolean, what: string, printed: Set<number>): Promise<AgentLine[]> {
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    for (;;) {
      const mine: AgentLine[] = [];
      this.lines.forEach((l, i) => {
        if (!agents.includes(l.agent)) return;
        mine.push(l);
        if (!printed.has(i)) {
          printed.add(i);
          note(`[${l.agent}] ${l.text}`);
        }
      });
      if (done(mine)) return mine;
      if (Date.now() > deadline) throw new DemoError(`timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 200);
        this.wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  }
}

const has = (lines: AgentLine[], agent: string, re: RegExp) => lines.some((l) => l.agent === agent && re.test(l.text));

async function waitFor<T>(fn: () => Promise<T | undefined> | T | undefined, timeoutMs: number, everyMs = 20): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined || Date.now() > deadline) return v;
    await sleep(everyMs);
  }
}

/** Processes (live, not zombies) in any cgroup under `base`: must be none once serve is gone. */
function processesIn(base: string): ProcessRef[] {
  const out: ProcessRef[] = [];
  for (const pid of listPids()) {
    const paths = cgroupsOf(pid);
    if (!paths) continue;
    if ([...paths.values()].some((p) => p === `/${base}` || p.startsWith(`/${base}/`))) {
      const st = readStat(pid);
      if (st && st.state !== 'Z') out.push({ pid, startTime: st.startTime });
    }
  }
  return out;
}

/** Sandbox cgroup directories below `base` in any hierarchy. */
function cgroupsUnder(base: string): string[] {
  const out: string[] = [];
  for (const h of hierarchyRoots(probeHost())) {
    let names: string[] = [];
    try {
      names = readdirSync(join(h.root, base), { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
    } catch {
      continue; // no such base here: nothing left
    }
    out.push(...names.map((n) => join(h.root, base, n)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The demo

interface ServeRef {
  child?: ChildProcess;
  exited?: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output?: ServeOutput;
}

/** The scribe is Python; on a host without python3 the same agent in POSIX shell stands in (CAPTRAP_DEMO_SCRIBE=sh forces it). */
const scribeInShell = process.env.CAPTRAP_DEMO_SCRIBE === 'sh' || which('python3', DEFAULT_PATH) === undefined;
const scribeLanguage = scribeInShell ? 'a POSIX shell script' : 'a Python script';
// `npm run demo -- --dashboard`: serve also runs the dashboard, and the demo waits for Ctrl-C
// before it stops serve, so the page can be looked at.
const DASHBOARD = process.argv.includes('--dashboard');
let ctrlC: (() => void) | undefined;

function prepare(dir: string, cgroupBase: string): void {
  const ws = join(dir, 'workspace');
  mkdirSync(join(ws, 'reports'), { recursive: true });
  writeFileSync(join(ws, 'notes.txt'), 'ship the sidecar on friday\n');
  writeFileSync(join(ws, 'reports', 'summary.txt'), 'all green\n');
  // Agents run under uids of their own: they may read the directory, not the secret in it.
  chmodSync(dir, 0o755);
  writeFileSync(join(dir, 'secrets.env'), 'TOKEN=not-for-agents\n', { mode: 0o600 });
  let config = readFileSync(join(EXAMPLES, 'demo.yaml'), 'utf8');
  if (scribeInShell) config = config.replace('command: python3', 'command: /bin/sh').replace('agents/scribe.py', 'agents/scribe.sh');
  config = config
    .replaceAll('{{CGROUP_BASE}}', cgroupBase)
    // Process capabilities name real paths (a symlinked node is judged by its target).
    .replaceAll('{{NODE}}', realpathSync(process.execPath))
    .replaceAll('{{TSX}}', TSX)
    .replaceAll('{{EXAMPLES}}', EXAMPLES)
    .replaceAll('{{ROOT}}', ROOT.replace(/\/$/, ''))
    .replaceAll('{{DIR}}', dir);
  if (DASHBOARD) config = `${config.replace(/\n*$/, '\n')}dashboard:\n  listen: 127.0.0.1:0\n  actions: true\n`;
  writeFileSync(join(dir, 'demo.yaml'), config);
}

async function run(dir: string, cgroupBase: string, serveRef: ServeRef): Promise<void> {
  prepare(dir, cgroupBase);
  say('The config (examples/demo.yaml, copied into a temporary directory):');
  note('tools    read_file, word_count, write_file, hog (tail /dev/zero under a 32 MiB limit)');
  note('planner  TypeScript agent using captrap/agent   may invoke [read_file, word_count] under workspace/');
  note(`scribe   ${scribeInShell ? 'shell' : 'Python'} agent, raw JSON-RPC on fd 3${scribeInShell ? '  ' : ''}     may invoke [word_count, hog] under workspace/`);
  if (scribeInShell) note('         (no python3 on this host, or CAPTRAP_DEMO_SCRIBE=sh: examples/agents/scribe.sh stands in for scribe.py)');
  note(`cgroup   ${cgroupBase} (unique to this run)`);

  say('Start the sidecar. It launches both agents, each in its own sandbox with a private channel on fd 3.');
  console.log('\n   $ captrap serve --config demo.yaml');
  // setpriv --pdeathsig: should this demo die without cleaning up (SIGKILL), serve still gets
  // SIGTERM and shuts down gracefully instead of living on with its agents.
  const setpriv = which('setpriv');
  const serveArgv = [process.execPath, '--import', TSX, CLI, 'serve', '--config', 'demo.yaml'];
  const child = spawn(setpriv ?? serveArgv[0]!, setpriv ? ['--pdeathsig', 'TERM', ...serveArgv] : serveArgv.slice(1), {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, CAPTRAP_LOG_LEVEL: process.env.CAPTRAP_LOG_LEVEL ?? 'warn' },
  });
  serveRef.child = child;
  serveRef.exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
  const output = new ServeOutput();
  output.attach(child);
  serveRef.output = output;
  const started = Date.now();
  const socketPath = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new DemoError(`serve was not ready within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      out += c;
      const m = /^captrap: ready (.+)\n/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    void serveRef.exited!.then((e) => {
      clearTimeout(timer);
      reject(new DemoError(`serve exited before it was ready (code ${e.code}, signal ${e.signal})`));
    });
  });
  note(`captrap: ready ${socketPath}   (${Date.now() - started} ms)`);
  const admin = await AdminClient.connect(socketPath);
  try {
    await showCommand(dir, ['ps']);

    say('planner works through its capability; the sidecar forwards its output:');
    const printed = new Set<number>();
    const pw = await output.follow(
      ['planner', WORKER],
      (ls) => has(ls, 'planner', /^spawned worker/) && has(ls, WORKER, /^idle/),
      'the planner to launch its worker',
      printed,
    );
    check(has(pw, 'planner', /^read_file workspace\/notes\.txt -> allowed, exited\(0\): "ship the sidecar/), 'a tool allowed by the capability ran and read the file under its root');
    check(has(pw, 'planner', /^write_file .* -> denied E_TOOL_NOT_ALLOWED/), 'a tool outside allowedTools was denied (E_TOOL_NOT_ALLOWED)');
    check(has(pw, 'planner', /^read_file workspace\/\.\.\/secrets\.env -> denied E_PATH_OUTSIDE_ROOTS/), 'a path outside the root was denied, `..` and all (E_PATH_OUTSIDE_ROOTS)');
    check(
      has(pw, 'planner', /^word_count workspace\/notes\.txt with the narrowed ct2 token -> allowed, exited\(0\)/) &&
        has(pw, 'planner', /^read_file workspace\/notes\.txt with the narrowed ct2 token -> denied E_TOKEN_DENIED/),
      'a ct2 token exported from the capability and narrowed offline by the agent allows word_count only (E_TOKEN_DENIED for read_file)',
    );
    check(has(pw, WORKER, /^read_file workspace\/reports\/summary\.txt -> allowed/) && has(pw, WORKER, /^read_file workspace\/notes\.txt -> denied E_PATH_OUTSIDE_ROOTS/), 'the sub-agent got only the narrower share: reports/ yes, the rest of the workspace no');

    say('The worker is SIGKILLed. Its capabilities were bound to its process, so they die with it.');
    const { agents } = await admin.agents();
    const worker = agents.find((a: AgentRow) => a.id === WORKER);
    if (!worker || worker.state !== 'running') throw new DemoError(`the worker is not running: ${JSON.stringify(worker)}`);
    const ref: ProcessRef = { pid: worker.pid, startTime: worker.startTime };
    if (!isSameProcess(ref)) throw new DemoError(`the worker's pid ${worker.pid} no longer names it`);
    const before = (await admin.capabilities(WORKER)).capabilities;
    process.kill(ref.pid, 'SIGKILL');
    const killedAt = Date.now();
    note(`kill -KILL ${ref.pid}   (the worker held ${before.filter((c) => !c.revoked).length} live capability)`);
    const revokedAfter = await waitFor(async () => {
      const { capabilities } = await admin.capabilities(WORKER);
      return capabilities.length > 0 && capabilities.every((c) => c.revoked) ? Date.now() - killedAt : undefined;
    }, 5000);
    await showCommand(dir, ['caps', '--principal', WORKER]);
    check(revokedAfter !== undefined, `every capability of the worker is revoked${revokedAfter !== undefined ? ` (seen ${revokedAfter} ms after the kill)` : ''}`);
    const plannerCaps = (await admin.capabilities('planner')).capabilities;
    check(plannerCaps.some((c) => !c.revoked), "the planner's own capability is untouched: only what was delegated to the dead process went");
    await waitFor(async () => ((await admin.agents()).agents.find((a) => a.id === WORKER)?.state === 'exited' ? true : undefined), 5000);
    await showCommand(dir, ['ps']);

    say(`Meanwhile scribe, ${scribeLanguage} speaking JSON-RPC by hand, ran its tools:`);
    const sc = await output.follow(['scribe'], (ls) => has(ls, 'scribe', /^done/) || has(ls, 'scribe', /Traceback|Error/), 'the scribe to finish', printed);
    await sleep(100); // a traceback is several lines: let them all arrive before judging
    check(has(sc, 'scribe', /^word_count .* -> exited\(0\): 5 words/), `a language-independent agent: ${scribeInShell ? 'plain shell' : 'plain Python'} called tools over the NDJSON channel`);
    check(has(sc, 'scribe', /^read_file .* -> denied E_TOOL_NOT_ALLOWED/), "the scribe's capability does not cover read_file");
    check(has(sc, 'scribe', /^hog \(32 MiB limit\) -> oom,/), 'the tool that outgrew its memory limit is reported as `oom`');

    say('Counters of the running sidecar:');
    const stats = await showCommand(dir, ['stats'], (out) => {
      const kernelAt = out.indexOf('\nkernel\n');
      return kernelAt < 0 ? out : `${out.slice(0, kernelAt)}\n(kernel and audit counters left out here)\n`;
    });
    check(/ {4}oom\s+1\b/.test(stats.out), 'the sandbox counters record one OOM');
  } finally {
    admin.close();
  }

  if (DASHBOARD) {
    const url = await waitFor(async () => output.find(/dashboard: (http:\/\/\S+)/)?.[1], 5000);
    if (!url) throw new DemoError('serve printed no dashboard URL');
    say(`The dashboard: ${url}`);
    note('open it in a browser (the token in the address moves into a cookie); Ctrl-C stops the demo');
    await new Promise<void>((resolve) => (ctrlC = resolve));
    ctrlC = undefined;
  }

  say('Stop the sidecar with SIGTERM: it kills every sandbox, revokes everything and closes the audit log.');
  const stopAt = Date.now();
  child.kill('SIGTERM');
  const exit = await within(serveRef.exited!, STEP_TIMEOUT_MS);
  if (!exit) throw new DemoError('serve did not exit within 20 s of SIGTERM');
  check(exit.code === 0, `serve exited with code ${exit.code}${exit.signal ? ` (signal ${exit.signal})` : ''} after ${Date.now() - stopAt} ms`);

  say('Check the audit log.');
  const auditDir = join(dir, '.captrap', 'audit');
  const verify = await showCommand(dir, ['audit', 'verify', '.captrap/audit', '--key', '.captrap/audit.key', '--pubkey', '.captrap/audit-signing.pub']);
  check(verify.code === 0, '`captrap audit verify` passes');
  const records = readAuditRecords(auditDir);
  const toolStarts = records.filter((r) => r.type === 'sandbox_started' && r.details?.['kind'] === 'tool');
  const denials = records.filter((r) => r.type === 'access_denied');
  note(`${records.length} records; tool sandboxes started: ${toolStarts.map((r) => String(r.details?.['tool'])).join(', ')}; calls denied: ${denials.length}`);
  check(toolStarts.length === 5 && !toolStarts.some((r) => r.details?.['tool'] === 'write_file'), 'only the 5 allowed tool calls started a sandbox; the denied ones spawned nothing');
  const cleanups = records.filter((r) => r.type === 'principal_cleanup').map((r) => r.principal);
  check(cleanups.includes(WORKER), `principal_cleanup recorded for the dead worker (cleanups: ${[...new Set(cleanups)].join(', ')})`);

  say('Leftovers:');
  const procs = processesIn(cgroupBase);
  check(procs.length === 0, `no process left in ${cgroupBase}${procs.length ? `: ${procs.map((p) => p.pid).join(', ')}` : ''}`);
  const cgroups = cgroupsUnder(cgroupBase);
  check(cgroups.length === 0, `no sandbox cgroup left under ${cgroupBase}${cgroups.length ? `: ${cgroups.join(', ')}` : ''}`);
}

async function main(): Promise<number> {
  console.log('captrap demo: agents call tools through the sidecar; capabilities decide, sandboxes contain, the audit log remembers.');
  if (process.getuid?.() !== 0) {
    console.log('\nThe demo needs root: the sidecar puts agents and tools in cgroups it creates under /sys/fs/cgroup.');
    return 2;
  }
  const host = probeHost();
  const dir = mkdtempSync(join(tmpdir(), 'captrap-demo-'));
  const cgroupBase = `captrap-demo-${process.pid}-${randomBytes(3).toString('hex')}`;
  const serve: ServeRef = {};
  let status = 0;
  // Stopped half-way (Ctrl-C, a closed pipe such as `| head`): stop serve, so the clean-up below runs.
  const interrupt = (why: string) => {
    failures.push(why);
    serve.child?.kill('SIGTERM');
  };
  // While the dashboard is being looked at, Ctrl-C is the way on, not an interruption.
  const onSignal = (sig: NodeJS.Signals) => (ctrlC && sig === 'SIGINT' ? ctrlC() : interrupt(`interrupted by ${sig}`));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
  process.stdout.on('error', () => interrupt('stdout closed'));
  try {
    await run(dir, cgroupBase, serve);
  } catch (err) {
    status = 1;
    console.log(`\n✗ the demo stopped: ${(err as Error).message}`);
    if (!(err instanceof DemoError)) console.log((err as Error).stack);
    if (serve.output) console.log(`\n   serve's own log (tail):\n${serve.output.tail().replace(/^/gm, '   ')}`);
  } finally {
    // Whatever happened above: serve gets SIGTERM, then SIGKILL; then the cgroups and the dir go.
    const { child, exited } = serve;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      if (!(await within(exited!, 10_000))) {
        child.kill('SIGKILL');
        await exited;
      }
    }
    for (const p of processesIn(cgroupBase)) if (isSameProcess(p)) process.kill(p.pid, 'SIGKILL');
    await cleanupStaleCgroups(host, cgroupBase).catch(() => undefined);
    // serve removes its cgroup base when it stops; this only matters after a failure.
    const left = removeCgroupBase(host, cgroupBase);
    rmSync(dir, { recursive: true, force: true });
    if (left.length > 0) check(false, `cgroup directories removed (still there: ${left.join(', ')})`);
    note('removed the temporary directory');
  }
  if (status === 0 && failures.length > 0) status = 1;
  console.log(status === 0 ? `\nDone in ${((Date.now() - t0) / 1000).toFixed(1)} s: every claim above held.` : `\nThe demo FAILED (${failures.length} claim(s) did not hold).`);
  return status;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  },
);
