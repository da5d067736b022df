// `captrap doctor [--json] [--backend B] [--require g1,g2]`: what this host provides and, per
// guarantee, whether it holds and how. Exits 1 when a required guarantee does not hold
// (default: tree-kill, die-with-parent, join-before-exec, memory, pids, cpu).
import { probeHost } from '../../isolation/host.js';
import { BACKEND_NAMES, type BackendName } from '../../isolation/limits.js';
import { GUARANTEE_NAMES, hostReport, type GuaranteeName } from '../../isolation/report.js';

const DEFAULT_REQUIRED: GuaranteeName[] = ['join-before-exec', 'tree-kill', 'die-with-parent', 'memory', 'pids', 'cpu'];
const HELP = `usage: captrap doctor [--json] [--backend auto|${BACKEND_NAMES.join('|')}] [--require ${GUARANTEE_NAMES.join(',')}]
Reports the cgroup layout, writable controllers, cgroup.kill, setpriv, namespaces and systemd-run,
and whether each guarantee holds. Exit 1 if a required guarantee (default: ${DEFAULT_REQUIRED.join(',')}) does not.
`;

export async function main(argv: string[]): Promise<number> {
  let json = false;
  let backend: BackendName | undefined;
  let required = DEFAULT_REQUIRED;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--json') json = true;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(HELP);
      return 0;
    } else if (a === '--backend' || a === '--require') {
      const v = argv[++i];
      if (v === undefined) return usageError(`${a} needs a value`);
      if (a === '--backend') {
        if (v === 'auto') backend = undefined;
        else if ((BACKEND_NAMES as readonly string[]).includes(v)) backend = v as BackendName;
        else return usageError(`unknown backend '${v}'`);
      } else {
        const list = v.split(',').filter(Boolean);
        const unknown = list.filter((x) => !(GUARANTEE_NAMES as readonly string[]).includes(x));
        if (unknown.length > 0) return usageError(`unknown guarantee(s) ${unknown.join(', ')}`);
        required = list as GuaranteeName[];
      }
    } else return usageError(`unknown option '${a}'`);
  }
  const report = hostReport(probeHost(), backend);
  const failing = report.guarantees.filter((g) => required.includes(g.name) && !g.holds);
  if (json) {
    process.stdout.write(JSON.stringify({ ...report, required, ok: failing.length === 0 }, null, 2) + '\n');
  } else {
    const lines = [
      `backend:          ${report.backend}`,
      `cgroup layout:    ${report.layout}${report.unifiedRoot ? ` (cgroup2 at ${report.unifiedRoot}, controllers: ${report.unifiedControllers.join(' ') || 'none'})` : ''}`,
      `v1 controllers:   ${Object.keys(report.v1Controllers).join(' ') || 'none writable'}`,
      `cgroup.kill:      ${report.cgroupKill ? 'yes' : 'no'}`,
      `setpriv:          ${report.tools.setpriv ?? 'missing'}`,
      `launcher:         ${report.launcher.kind ?? 'NONE'} (${report.launcher.why})`,
      `unshare:          ${report.tools.unshare ?? 'missing'}   namespaces: ${Object.entries(report.namespaces).map(([k, v]) => `${k}=${v ? 'yes' : 'no'}`).join(' ')}`,
      `systemd-run:      ${report.systemdRun.available ? 'available' : 'unavailable'} (${report.systemdRun.reason})`,
      `bubblewrap:       ${report.tools.bwrap ?? 'not installed'}`,
      '',
      'guarantees:',
      ...report.guarantees.map(
        (g) => `  ${g.holds ? 'yes' : 'NO '}  ${g.name.padEnd(17)} ${g.mechanism}${g.note ? `\n         ${''.padEnd(17)} ${g.note}` : ''}${required.includes(g.name) ? '' : '  (not required)'}`,
      ),
    ];
    if (report.guarantees.find((g) => g.name === 'tree-kill' && !g.holds)) {
      lines.push('', 'WARNING: without a cgroup, a process that calls setsid (or double-forks) escapes the kill and is NOT contained.');
    }
    lines.push('', failing.length === 0 ? 'ok: every required guarantee holds' : `NOT OK: ${failing.map((g) => g.name).join(', ')} cannot be met on this host`);
    process.stdout.write(lines.join('\n') + '\n');
  }
  return failing.length === 0 ? 0 : 1;
}

function usageError(msg: string): number {
  process.stderr.write(`captrap doctor: ${msg}\n\n${HELP}`);
  return 2;
}
