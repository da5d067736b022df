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

const argv = process.argv.slice(2);
const bundle = argv[0] === 'run' ? freshBundle('run') : undefined;
if (bundle) {
  const run = require(bundle) as CommandBundle;
  finish(run.main(argv.slice(1)), run.describeError);
} else {
  void import('./cli.js').then((m) => finish(m.cli(argv), m.describeError));
}
