// `captrap doctor [--json] [--backend B] [--require g1,g2] [--config FILE]`: what this host provides
// and, per guarantee and confinement property, whether it holds and how. Exits 1 when a required one
// does not hold (default: tree-kill, die-with-parent, join-before-exec, memory, pids, cpu,
// confinement), or when the config's nats revocation feed cannot be reached (ct2 calls would be refused).
import { confinementStatus } from '../../isolation/confine-report.js';
import { probeHost } from '../../isolation/host.js';
import { DeathWatch, type DeathWatchStatus } from '../../isolation/deathwatch.js';
import { spawnerStatus } from '../../isolation/spawner.js';
import { chooseLauncher } from '../../isolation/launcher/launcher.js';
import { BACKEND_NAMES, type BackendName } from '../../isolation/limits.js';
import { GUARANTEE_NAMES, hostReport, type GuaranteeName } from '../../isolation/report.js';
import { loadConfig } from '../config.js';
import type { RevocationsConfig } from '../token-revocations.js';

/** Every confinement property but seccomp (not implemented) is part of the default sandbox. */
type Requirable = GuaranteeName | 'confinement';
const REQUIRABLE: readonly Requirable[] = [...GUARANTEE_NAMES, 'confinement'];
const DEFAULT_REQUIRED: Requirable[] = ['join-before-exec', 'tree-kill', 'die-with-parent', 'memory', 'pids', 'cpu', 'confinement'];
const HELP = `usage: captrap doctor [--json] [--backend auto|${BACKEND_NAMES.join('|')}] [--require ${REQUIRABLE.join(',')}] [--config FILE]
Reports the cgroup layout, writable controllers, cgroup.kill, setpriv, namespaces and systemd-run,
and whether each guarantee holds. Exit 1 if a required guarantee (default: ${DEFAULT_REQUIRED.join(',')}) does not.
With --config, also checks the config's revocation source (backend nats: the server and bucket are
reachable); exit 1 if it is not, since every ct2 call would be refused.
`;

interface RevocationsCheck {
  backend: RevocationsConfig['backend'];
  url?: string;
  bucket?: string;
  ok: boolean;
  revoked: number | null;
  detail: string;
  /** Revocations cross the network without TLS or authentication. */
  warning?: string;
}

async function checkRevocations(cfg: RevocationsConfig): Promise<RevocationsCheck> {
  if (cfg.backend !== 'nats') return { backend: cfg.backend, ok: true, revoked: null, detail: 'file in the state dir (this host only)' };
  // Loaded only when asked for: the nats client is not needed by every doctor run.
  const { probeNatsRevocations } = await import('../nats-revocations.js');
  const { natsExposure } = await import('../nats-connect.js');
  const p = await probeNatsRevocations(cfg);
  const exposure = natsExposure(cfg);
  return {
    backend: 'nats',
    url: p.url,
    bucket: p.bucket,
    ok: p.ok,
    revoked: p.revoked,
    detail: (p.ok ? p.detail : `UNREACHABLE: ${p.detail}; ct2 calls will be refused (fail closed) until it is reachable`) + (exposure ? `; WARNING: ${exposure}` : ''),
    ...(exposure ? { warning: exposure } : {}),
  };
}

export async function main(argv: string[]): Promise<number> {
  let json = false;
  let backend: BackendName | undefined;
  let required: Requirable[] = DEFAULT_REQUIRED;
  let configFile: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--json') json = true;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(HELP);
      return 0;
    } else if (a === '--config') {
      configFile = argv[++i];
      if (configFile === undefined) return usageError('--config needs a file');
    } else if (a === '--backend' || a === '--require') {
      const v = argv[++i];
      if (v === undefined) return usageError(`${a} needs a value`);
      if (a === '--backend') {
        if (v === 'auto') backend = undefined;
        else if ((BACKEND_NAMES as readonly string[]).includes(v)) backend = v as BackendName;
        else return usageError(`unknown backend '${v}'`);
      } else {
        const list = v.split(',').filter(Boolean);
        const unknown = list.filter((x) => !(REQUIRABLE as readonly string[]).includes(x));
        if (unknown.length > 0) return usageError(`unknown guarantee(s) ${unknown.join(', ')}`);
        required = list as Requirable[];
      }
    } else return usageError(`unknown option '${a}'`);
  }
  let revocations: RevocationsCheck | undefined;
  if (configFile !== undefined) {
    let cfg: RevocationsConfig | undefined;
    try {
      cfg = loadConfig(configFile).revocations;
    } catch (err) {
      return usageError((err as Error).message);
    }
    if (cfg) revocations = await checkRevocations(cfg);
  }
  const host = probeHost();
  const report = hostReport(host, backend);
  let launcher;
  try {
    launcher = chooseLauncher(host.tools.setpriv !== undefined);
  } catch {
    launcher = undefined;
  }
  const confinement = confinementStatus(host, launcher);
  const deathNotice = await probeDeathNotice();
  const warmRefills = spawnerStatus();
  const failing: string[] = report.guarantees.filter((g) => required.includes(g.name) && !g.holds).map((g) => g.name);
  const unconfined = confinement.filter((p) => !p.holds && p.name !== 'seccomp');
  if (required.includes('confinement') && unconfined.length > 0) failing.push(`confinement (${unconfined.map((p) => p.name).join(', ')})`);
  if (revocations && !revocations.ok) failing.push('revocations (ct2 calls will be refused)');
  if (json) {
    process.stdout.write(JSON.stringify({ ...report, confinement, deathNotice, warmRefills, ...(revocations ? { revocations } : {}), required, ok: failing.length === 0 }, null, 2) + '\n');
  } else {
    const lines = [
      `backend:          ${report.backend}`,
      `cgroup layout:    ${report.layout}${report.unifiedRoot ? ` (cgroup2 at ${report.unifiedRoot}, controllers: ${report.unifiedControllers.join(' ') || 'none'})` : ''}`,
      ...(report.cgroupHome ? [`cgroup home:      ${report.cgroupHome.dir} (${report.cgroupHome.why})`] : []),
      `v1 controllers:   ${Object.keys(report.v1Controllers).join(' ') || 'none writable'}`,
      `cgroup.kill:      ${report.cgroupKill ? 'yes' : 'no'}`,
      `setpriv:          ${report.tools.setpriv ?? 'missing'}`,
      `launcher:         ${report.launcher.kind ?? 'NONE'} (${report.launcher.why})`,
      `unshare:          ${report.tools.unshare ?? 'missing'}   namespaces: ${Object.entries(report.namespaces).map(([k, v]) => `${k}=${v ? 'yes' : 'no'}`).join(' ')}`,
      `systemd-run:      ${report.systemdRun.available ? 'available' : 'unavailable'} (${report.systemdRun.reason})`,
      `bubblewrap:       ${report.tools.bwrap ?? 'not installed'}`,
      `warm refills:     ${warmRefills.available ? `through captrap-spawn (${warmRefills.why}): a refill does not fork captrap` : `spawned by captrap itself (${warmRefills.why}): each refill forks captrap`}`,
      `death notice:     ${deathNotice.available ? `early (taskstats v${deathNotice.version}): an agent is revoked as it starts to exit` : `exit only (${deathNotice.reason}): an agent is revoked when its exit is seen`}`,
      '',
      'guarantees:',
      ...report.guarantees.map(
        (g) => `  ${g.holds ? 'yes' : 'NO '}  ${g.name.padEnd(17)} ${g.mechanism}${g.note ? `\n         ${''.padEnd(17)} ${g.note}` : ''}${required.includes(g.name) ? '' : '  (not required)'}`,
      ),
    ];
    lines.push(
      '',
      `confinement (the default for every sandbox${required.includes('confinement') ? '' : '; not required'}):`,
      ...confinement.map((p) => `  ${p.holds ? 'yes' : 'NO '}  ${p.name.padEnd(21)} ${p.how}${p.note ? `\n         ${''.padEnd(21)} ${p.note}` : ''}`),
    );
    if (revocations) {
      const where = revocations.backend === 'nats' ? `nats ${revocations.url} bucket ${revocations.bucket}` : revocations.backend;
      lines.push('', `revocations:      ${where}: ${revocations.detail}`);
    }
    if (report.guarantees.find((g) => g.name === 'tree-kill' && !g.holds)) {
      lines.push('', 'WARNING: without a cgroup, a process that calls setsid (or double-forks) escapes the kill and is NOT contained.');
    }
    lines.push('', failing.length === 0 ? 'ok: every required guarantee holds' : `NOT OK: ${failing.join(', ')} cannot be met on this host`);
    process.stdout.write(lines.join('\n') + '\n');
  }
  return failing.length === 0 ? 0 : 1;
}

/** Whether agents can be revoked on the early death notice here (the helper says why not). */
async function probeDeathNotice(): Promise<DeathWatchStatus> {
  const dw = DeathWatch.start();
  // Its self test gives up after about 2 s; the timer keeps this process alive until then (the helper does not).
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<DeathWatchStatus>((r) => (timer = setTimeout(() => r({ available: false, reason: 'no answer from captrap-deathwatch within 5 s' }), 5000)));
  try {
    return await Promise.race([dw.status, timeout]);
  } finally {
    clearTimeout(timer);
    dw.close();
  }
}

function usageError(msg: string): number {
  process.stderr.write(`captrap doctor: ${msg}\n\n${HELP}`);
  return 2;
}
