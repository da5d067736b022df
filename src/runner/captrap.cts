#!/usr/bin/env node
// The `captrap` executable (package.json "bin"). CommonJS on purpose: with an ES module as its
// entry, Node 20 sets up its ES module loader before the first line of captrap runs, about a
// tenth of a whole `captrap run -- /bin/true`. `run`, the command started most often, needs none
// of it: it comes from one CommonJS bundle of run.js and the modules it imports, written by
// scripts/build-cli-bundle.mjs (`npm run build`). Every other command, and `run` when the bundle
// is missing, older than run.js (tsc ran without the bundle step) or turned off with
// CAPTRAP_CLI_BUNDLE=0, goes through the ES module dispatcher in cli.ts, as before.
import fs = require('node:fs');
import path = require('node:path');

interface CommandBundle {
  main(argv: string[]): Promise<number>;
  describeError(err: unknown): string;
}

function freshBundle(name: string): string | undefined {
  if (process.env.CAPTRAP_CLI_BUNDLE === '0') return undefined;
  const bundle = path.join(__dirname, 'commands', `${name}.bundle.cjs`);
  try {
    return fs.statSync(bundle).mtimeMs >= fs.statSync(path.join(__dirname, 'commands', `${name}.js`)).mtimeMs ? bundle : undefined;
  } catch {
    return undefined;
  }
}

function finish(code: Promise<number>, describeError: (err: unknown) => string): void {
  code.then(
    (c) => {
      process.exitCode = c;
    },
    (err: unknown) => {
      process.stderr.write(`captrap: ${describeError(err)}\n`);
      process.exitCode = 1;
    },
  );
}

// The kernel's wait before a sandbox's first cgroup join (src/isolation/migration-prime.ts)
// starts here, before a line of `run` is loaded, so it passes while Node loads `run`; `run`
// renews it on the way to the launcher's spawn. The same no-op self-migration, into the v1
// cgroup this process is already in. Skipped where no cgroup is made (--backend none, --help);
// a misread (an option of the command itself) only loses the head start. Never throws.
const PRIME_CONTROLLERS = ['pids', 'freezer', 'cpuacct', 'cpu', 'memory'];

function primeCgroupMigration(args: readonly string[]): void {
  const end = args.indexOf('--');
  const opts = end < 0 ? args : args.slice(0, end);
  if (opts.some((a, i) => a === '--help' || a === '-h' || a === '--backend=none' || (a === '--backend' && opts[i + 1] === 'none'))) return;
  try {
    const own = fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n').map((l) => l.split(':'));
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' '));
    for (const c of PRIME_CONTROLLERS) {
      const rel = own.find((f) => f.length >= 3 && f[1]!.split(',').includes(c))?.slice(2).join(':');
      const mount = mounts.find((f) => f[2] === 'cgroup' && (f[3] ?? '').split(',').includes(c))?.[1]?.replace(/\\040/g, ' ');
      if (rel === undefined || !rel.startsWith('/') || mount === undefined) continue;
      // Opened here, written on libuv's pool, so the main thread never waits for it.
      const fd = fs.openSync(`${mount}${rel === '/' ? '' : rel}/cgroup.procs`, 'w');
      fs.write(fd, `${process.pid}\n`, () => fs.close(fd, () => undefined));
      return;
    }
  } catch {
    // a head start only
  }
}

const argv = process.argv.slice(2);
if (argv[0] === 'run') primeCgroupMigration(argv.slice(1));
const bundle = argv[0] === 'run' ? freshBundle('run') : undefined;
if (bundle) {
  const run = require(bundle) as CommandBundle;
  finish(run.main(argv.slice(1)), run.describeError);
} else {
  void import('./cli.js').then((m) => finish(m.cli(argv), m.describeError));
}
