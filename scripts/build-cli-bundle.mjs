// Writes dist/runner/commands/run.bundle.cjs: the `captrap run` command and the modules it
// imports (runner/describe-error, isolation/*, log, errors) as one CommonJS file, which the
// `captrap` executable (src/runner/captrap.cts) loads instead of the ES module graph. Node 20's
// ES module loader resolves, reads, translates and links each module on its own, and that was
// about a fifth of a `captrap run -- /bin/true`; the CommonJS loader reads one file.
//
// Runs after tsc (`npm run build`) on its output. The bundle exports run.js's `main` and
// `describeError`. npm packages stay outside it (pino and pidusage are loaded lazily from
// node_modules, as before). Each module keeps its own import.meta.url (the path of its unbundled
// file in dist/), so what it finds relative to itself (build/captrap-launch, node_modules) is
// found the same way. The build fails if the bundle would take in the dispatcher or another
// command: their lazy imports would make every command part of `run`'s start.
//
// usage: node scripts/build-cli-bundle.mjs [distDir]   (default: <repo>/dist)
import { readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = resolve(process.argv[2] ?? join(root, 'dist'));
const entry = join(dist, 'runner/commands/run.js');
const out = join(dist, 'runner/commands/run.bundle.cjs');
const tmp = `${out}.tmp-${process.pid}`;

let esbuild;
try {
  esbuild = await import('esbuild');
} catch (err) {
  console.error(`build-cli-bundle: esbuild is not installed (a devDependency; run 'npm install'): ${err.message}`);
  process.exit(1);
}

const HELPER = '__captrapModuleUrl';
const keepModuleUrl = {
  name: 'keep-module-url',
  setup(build) {
    build.onLoad({ filter: /\.js$/ }, (args) => {
      const source = readFileSync(args.path, 'utf8');
      const rel = relative(dirname(out), args.path).split(sep).join('/');
      const contents = source.replace(/\bimport\.meta\.url\b/g, `${HELPER}(${JSON.stringify(rel)})`);
      if (/\bimport\.meta\b/.test(contents)) throw new Error(`${args.path}: uses import.meta beyond import.meta.url, which the bundle does not provide`);
      return { contents, loader: 'js' };
    });
  },
};

try {
  const result = await esbuild.build({
    stdin: {
      contents: "export { main } from './run.js';\nexport { describeError } from '../describe-error.js';\n",
      resolveDir: dirname(entry),
      sourcefile: 'run-bundle-entry.js',
      loader: 'js',
    },
    outfile: tmp,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    packages: 'external',
    // The modules were ES modules, strict by definition; CommonJS is not unless it says so.
    banner: { js: `'use strict';\nconst ${HELPER} = (rel) => require('node:url').pathToFileURL(require('node:path').join(__dirname, rel)).href;` },
    plugins: [keepModuleUrl],
    metafile: true,
    logLevel: 'warning',
    legalComments: 'none',
  });
  const inputs = Object.keys(result.metafile.inputs)
    .map((p) => relative(dist, resolve(p)).split(sep).join('/'))
    .filter((p) => p !== 'runner/commands/run-bundle-entry.js');
  const foreign = inputs.filter((p) => p.startsWith('..') || p === 'runner/cli.js' || (p.startsWith('runner/commands/') && p !== 'runner/commands/run.js'));
  if (foreign.length > 0) throw new Error(`the run bundle must not contain ${foreign.join(', ')} (a command imports the dispatcher or another command)`);
  renameSync(tmp, out);
  console.log(`build-cli-bundle: ${relative(root, out)} (${inputs.length} modules)`);
} catch (err) {
  rmSync(tmp, { force: true });
  rmSync(out, { force: true });
  console.error(`build-cli-bundle: ${err.message}`);
  process.exit(1);
}
