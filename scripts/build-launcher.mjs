// Compiles the sandbox launcher (src/isolation/launcher/captrap-launch.c) to build/captrap-launch,
// and the early death notice helper (captrap-deathwatch.c, see src/isolation/deathwatch.ts) to
// build/captrap-deathwatch, and the process starter for warm launchers (captrap-spawn.c, see
// src/isolation/spawner.ts) to build/captrap-spawn.
// Static if the C library allows it (no dynamic loader on the hot path of every sandbox start),
// else dynamic. Without a C compiler captrap still works through its setpriv + sh fallback, so a
// missing compiler is a warning, not a build failure; a compile error in the source is a failure.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const PROGRAMS = ['captrap-launch', 'captrap-deathwatch', 'captrap-spawn'];
const flags = ['-O2', '-std=c99', '-Wall', '-Wextra', '-Werror'];

function findCompiler() {
  for (const cc of [process.env.CC, 'cc', 'gcc', 'clang'].filter(Boolean)) {
    const r = spawnSync(cc, ['--version'], { stdio: 'ignore' });
    if (r.status === 0) return cc;
  }
  return undefined;
}

function compile(cc, extra, source, tmp) {
  return spawnSync(cc, [...flags, ...extra, '-o', tmp, source], { encoding: 'utf8' });
}

const cc = findCompiler();
if (!cc) {
  console.warn(`build-launcher: WARNING no C compiler (cc, gcc, clang) found; ${PROGRAMS.map((p) => `build/${p}`).join(', ')} not rebuilt (existing ones are left as they are); sandboxes use the slower setpriv + sh launch chain and agents are revoked on their exit notice alone`);
  process.exit(0);
}
for (const name of PROGRAMS) {
  const source = join(root, `src/isolation/launcher/${name}.c`);
  const out = join(root, `build/${name}`);
  const tmp = `${out}.tmp-${process.pid}`;
  mkdirSync(dirname(out), { recursive: true });
  let kind = 'static';
  let r = compile(cc, ['-static'], source, tmp);
  if (r.status !== 0) {
    kind = 'dynamic';
    const staticErr = r.stderr;
    r = compile(cc, [], source, tmp);
    if (r.status !== 0) {
      rmSync(tmp, { force: true });
      console.error(`build-launcher: ${cc} failed on ${name}.c:\n${r.stderr || staticErr}`);
      process.exit(1);
    }
  }
  chmodSync(tmp, 0o755);
  // Rename so a sandbox starting during the build never executes a half-written binary.
  renameSync(tmp, out);
  console.log(`build-launcher: built ${out} (${kind}, ${cc})`);
}
