// Compiles the sandbox launcher (src/isolation/launcher/captrap-launch.c) to build/captrap-launch.
// Static if the C library allows it (no dynamic loader on the hot path of every sandbox start),
// else dynamic. Without a C compiler captrap still works through its setpriv + sh fallback, so a
// missing compiler is a warning, not a build failure; a compile error in the source is a failure.
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'src/isolation/launcher/captrap-launch.c');
const out = join(root, 'build/captrap-launch');
const tmp = `${out}.tmp-${process.pid}`;
const flags = ['-O2', '-std=c99', '-Wall', '-Wextra', '-Werror'];

function findCompiler() {
  for (const cc of [process.env.CC, 'cc', 'gcc', 'clang'].filter(Boolean)) {
    const r = spawnSync(cc, ['--version'], { stdio: 'ignore' });
    if (r.status === 0) return cc;
  }
  return undefined;
}

function compile(cc, extra) {
  return spawnSync(cc, [...flags, ...extra, '-o', tmp, source], { encoding: 'utf8' });
}

const cc = findCompiler();
if (!cc) {
  const stale = existsSync(out) ? ' (the existing one is left as is)' : '; sandboxes will use the slower setpriv + sh launch chain';
  console.warn(`build-launcher: WARNING no C compiler (cc, gcc, clang) found; build/captrap-launch not rebuilt${stale}`);
  process.exit(0);
}
mkdirSync(dirname(out), { recursive: true });
let kind = 'static';
let r = compile(cc, ['-static']);
if (r.status !== 0) {
  kind = 'dynamic';
  const staticErr = r.stderr;
  r = compile(cc, []);
  if (r.status !== 0) {
    rmSync(tmp, { force: true });
    console.error(`build-launcher: ${cc} failed:\n${r.stderr || staticErr}`);
    process.exit(1);
  }
}
chmodSync(tmp, 0o755);
// Rename so a sandbox starting during the build never executes a half-written binary.
renameSync(tmp, out);
console.log(`build-launcher: built ${out} (${kind}, ${cc})`);
