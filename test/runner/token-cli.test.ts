// `captrap keys` and `captrap token`: a state dir with a real key, the exported JWKS file, and
// tokens issued, narrowed, sealed and verified through the commands, including a refusal by code
// and a token read from stdin by a real process.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main as keys } from '../../src/runner/commands/keys.js';
import { main as token } from '../../src/runner/commands/token.js';

let root: string;
let stateDir: string;
let pubkeys: string;

async function run(main: (argv: string[]) => Promise<number>, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
  try {
    return { code: await main(argv), out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

beforeAll(() => {
  root = realpathSync(mkdtempSync(join(tmpdir(), 'captrap-token-cli-')));
  stateDir = join(root, 'state');
  pubkeys = join(root, 'keys.json');
  mkdirSync(join(root, 'ws'));
  writeFileSync(join(root, 'ws', 'a.csv'), 'x\n');
  writeFileSync(
    join(root, 'catalogue.json'),
    JSON.stringify({ version: 1, tools: [{ name: 'read_file', command: ['/bin/cat', '{path}'], args: { path: { type: 'string', required: true } }, resources: [{ kind: 'file', arg: 'path', access: 'read' }] }] }),
  );
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('captrap keys', () => {
  it('export before any key exists says how to make one', async () => {
    const r = await run(keys, ['export', '--state-dir', join(root, 'empty')]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/keys rotate/);
  });

  it('rotate creates a 0600 key in the state dir; export prints public keys only', async () => {
    const r = await run(keys, ['rotate', '--state-dir', stateDir, '--id', 'k1']);
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe('k1');
    expect(statSync(join(stateDir, 'token-keys', 'k1.pem')).mode & 0o777).toBe(0o600);
    const e = await run(keys, ['export', '--state-dir', stateDir]);
    expect(e.code).toBe(0);
    const jwks = JSON.parse(e.out) as { keys: Record<string, string>[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kty: 'OKP', crv: 'Ed25519', kid: 'k1', alg: 'EdDSA' });
    expect(jwks.keys[0]).not.toHaveProperty('d');
    writeFileSync(pubkeys, e.out);
    expect((await run(keys, ['list', '--state-dir', stateDir])).out).toMatch(/k1 {2}\(active\)/);
  });

  it('refuses a state dir others can write', async () => {
    const loose = join(root, 'loose');
    mkdirSync(loose, { mode: 0o777 });
    chmodSync(loose, 0o777);
    const r = await run(keys, ['rotate', '--state-dir', loose]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/E_STATE_DIR/);
  });
});

describe('captrap token', () => {
  let issued: string;
  beforeAll(async () => {
    const r = await run(token, [
      'issue', '--state-dir', stateDir, '--resource-type', 'tool', '--resource', '*', '--operations', 'invoke',
      '--principal', 'planner', '--ttl', '1h', '--constraints', JSON.stringify({ allowedTools: ['read_file', 'list_dir'], paths: [join(root, 'ws')] }),
    ]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    issued = r.out.trim();
    expect(issued.startsWith('ct2.')).toBe(true);
  });

  it('verify with the exported key set: valid, and allowed for a call', async () => {
    const v = await run(token, ['verify', '--pubkeys', pubkeys, issued]);
    expect(v.code).toBe(0);
    expect(v.out).toMatch(/^valid ct2 token tok_/);
    const a = await run(token, ['verify', '--pubkeys', pubkeys, issued, '--tool', 'read_file', '--args', JSON.stringify({ path: join(root, 'ws', 'a.csv') }), '--catalogue', join(root, 'catalogue.json'), '--json']);
    expect(a.code).toBe(0);
    expect(JSON.parse(a.out)).toMatchObject({ valid: true, allowed: true, request: { principal: 'planner', tool: 'read_file' } });
  });

  it('attenuate narrows offline; verify refuses what the new block forbids, with its code', async () => {
    const n = await run(token, ['attenuate', issued, '--principal', 'planner/worker', '--constraints', '{"allowedTools":["read_file"]}', '--when', 'args.path.endsWith(".csv")']);
    expect(n.code).toBe(0);
    const child = n.out.trim();
    const ok = await run(token, ['verify', '--pubkeys', pubkeys, child, '--tool', 'read_file', '--args', JSON.stringify({ path: join(root, 'ws', 'a.csv') })]);
    expect(ok.code).toBe(0);
    expect(ok.out).toMatch(/allowed: invoke read_file for planner\/worker/);
    const no = await run(token, ['verify', '--pubkeys', pubkeys, child, '--tool', 'list_dir', '--args', '{}', '--json']);
    expect(no.code).toBe(1);
    expect(JSON.parse(no.out)).toMatchObject({ valid: false, code: 'E_TOKEN_DENIED', details: { block: 1, reason: 'E_TOOL_NOT_ALLOWED' } });
    // Outside the roots, through the catalogue's path mapping:
    const out = await run(token, ['verify', '--pubkeys', pubkeys, child, '--tool', 'read_file', '--args', JSON.stringify({ path: '/etc/passwd.csv' }), '--catalogue', join(root, 'catalogue.json'), '--json']);
    expect(out.code).toBe(1);
    expect(JSON.parse(out.out)).toMatchObject({ code: 'E_TOKEN_DENIED', details: { reason: 'E_PATH_OUTSIDE_ROOTS' } });
    const widen = await run(token, ['attenuate', child, '--constraints', '{"allowedTools":["rm"]}']);
    expect(widen.code).toBe(1);
    expect(widen.err).toMatch(/E_TOKEN_WIDENS/);
    const badCel = await run(token, ['attenuate', child, '--when', 'args.x ==']);
    expect(badCel.code).toBe(2);
    expect(badCel.err).toMatch(/position \d+.*E_CEL_PARSE/);
  });

  it('a revoked block and a token from another issuer are refused', async () => {
    const ids = (JSON.parse((await run(token, ['verify', '--pubkeys', pubkeys, issued, '--json'])).out) as { revocationIds: string[] }).revocationIds;
    writeFileSync(join(root, 'revoked.txt'), `# revoked by ops\n${ids[0]}\n`);
    const r = await run(token, ['verify', '--pubkeys', pubkeys, issued, '--revoked', join(root, 'revoked.txt')]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/E_TOKEN_REVOKED/);
    const other = join(root, 'other-state');
    expect((await run(keys, ['rotate', '--state-dir', other, '--id', 'k1'])).code).toBe(0);
    const foreign = (await run(token, ['issue', '--state-dir', other, '--resource-type', 'tool', '--resource', '*', '--operations', 'invoke', '--ttl', '1h'])).out.trim();
    const f = await run(token, ['verify', '--pubkeys', pubkeys, foreign]);
    expect(f.code).toBe(1);
    expect(f.out).toMatch(/E_TOKEN_SIGNATURE/);
  });

  it('seal, then attenuate is refused; bad input exits 2', async () => {
    const s = (await run(token, ['seal', issued])).out.trim();
    expect((await run(token, ['verify', '--pubkeys', pubkeys, s])).out).toMatch(/sealed/);
    const again = await run(token, ['attenuate', s, '--when', 'true']);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/E_TOKEN_SEALED/);
    expect((await run(token, ['verify', issued])).code).toBe(2);
    expect((await run(token, ['verify', '--pubkeys', pubkeys, 'ct2.garbage'])).code).toBe(1);
    expect((await run(token, ['attenuate', issued, '--constraints', '{nope'])).code).toBe(2);
  });

  it('reads the token from stdin in a real process', () => {
    const code = "const m = await import(process.argv[1]); process.exitCode = await m.main(process.argv.slice(2));";
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code, join(process.cwd(), 'src/runner/commands/token.ts'), 'inspect', '-', '--json'], {
      input: issued + '\n',
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ rootKeyId: 'k1', sealed: false });
    expect(readFileSync(pubkeys, 'utf8')).toMatch(/"kid": "k1"/);
  });
});
