import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig } from '../../src/runner/config.js';

const dir = mkdtempSync(join(tmpdir(), 'captrap-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const f = join(dir, name);
  writeFileSync(f, text);
  return f;
}

function errorOf(f: () => unknown): ConfigError {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

describe('config', () => {
  it('reads the documented example: units become numbers, paths resolve against the config file', () => {
    const f = write(
      'captrap.yaml',
      `stateDir: state
cgroupBase: captrap-x
keys: { capabilityKeyFile: state/cap.key }
audit: { dir: state/audit, keyFile: state/audit.key, signingKeyFile: state/audit-signing.pem, flushIntervalMs: 100 }
sandbox: { memory: 256M, pids: 128, cpu: 1, timeout: 30s, maxOutputBytes: 1M, allowDegraded: false }
onAgentExit: kill
tools:
  - name: read_file
    command: [cat, '{path}']
    args: { path: { type: string } }
    resources: [{ kind: file, arg: path, access: read }]
agents:
  - id: planner
    command: node
    args: [agent.js]
    env: { FOO: bar }
    limits: { memory: 512M, pids: 64 }
    capabilities:
      - resource: { type: tool, pattern: '*' }
        operations: [invoke]
        constraints: { allowedTools: [read_file], paths: [/srv/data] }
        ttlMs: 3600000
    requestable: []
`,
    );
    const c = loadConfig(f);
    expect(c.stateDir).toBe(join(dir, 'state'));
    expect(c.adminSocket).toBe(join(dir, 'state/admin.sock'));
    expect(c.audit).toEqual({ dir: join(dir, 'state/audit'), keyFile: join(dir, 'state/audit.key'), signingKeyFile: join(dir, 'state/audit-signing.pem'), flushIntervalMs: 100 });
    expect(c.sandbox.limits).toEqual({ memoryBytes: 256 * 1024 ** 2, pids: 128, cpu: 1, timeoutMs: 30_000 });
    expect(c.sandbox.maxOutputBytes).toBe(1024 ** 2);
    expect(c.agents[0]).toMatchObject({ id: 'planner', cwd: dir, env: { FOO: 'bar' }, limits: { memoryBytes: 512 * 1024 ** 2, pids: 64 } });
    expect(c.agents[0]!.capabilities[0]!.constraints.allowedTools).toEqual(['read_file']);
    expect(c.catalogue.tools[0]!.name).toBe('read_file');
    // --state-dir replaces the configured one, and the defaults under it follow.
    const o = loadConfig(f, join(dir, 'other'));
    expect(o.stateDir).toBe(join(dir, 'other'));
  });

  it('defaults: state in .captrap next to the config, JSON accepted', () => {
    const c = loadConfig(write('min.json', '{}'));
    expect(c.stateDir).toBe(join(dir, '.captrap'));
    expect(c.adminSocket).toBe(join(dir, '.captrap/admin.sock'));
    expect(c.capabilityKeyFile).toBe(join(dir, '.captrap/cap.key'));
    expect(c.onAgentExit).toBe('kill');
    expect(c.cgroupBase).toBe('captrap');
    expect(c.agents).toEqual([]);
  });

  it('errors name the file and the field', () => {
    const bad = (value: unknown) => errorOf(() => parseConfig(value, 'cfg.yaml', dir)).message;
    expect(bad({ agents: [{ id: 'a', command: 'x', limits: { memory: 'lots' } }] })).toMatch(/^cfg\.yaml: agents\[0\]\.limits\.memory: expected a size/);
    expect(bad({ agents: [{ id: 'a', command: 'x' }, { id: 'a', command: 'y' }] })).toContain('agents[1].id');
    expect(bad({ cgroupBase: 'mine' })).toContain('cgroupBase');
    expect(bad({ onAgentExit: 'explode' })).toContain('onAgentExit');
    expect(bad({ agents: [{ id: 'a', command: 'x', capabilities: [{ resource: { type: 'disk', pattern: '*' }, operations: ['r'] }] }] })).toContain('agents[0].capabilities[0].resource.type');
    expect(bad({ tools: [{ name: 't', command: ['x', '{nope}'] }] })).toContain('cfg.yaml: tools[0].command[1] (tool t)');
    expect(bad({ surprise: 1 })).toContain('cfg.yaml');
    const e = errorOf(() => loadConfig(write('broken.yaml', 'agents: [')));
    expect(e.message).toContain('broken.yaml');
    expect(e.code).toBe('E_CONFIG');
    expect(errorOf(() => loadConfig(join(dir, 'missing.yaml'))).message).toContain('cannot read');
  });
});
