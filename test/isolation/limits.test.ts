import { describe, expect, it } from 'vitest';
import { normalizeOptions, parseBytes, parseCpu, parseDuration } from '../../src/isolation/limits.js';
import { buildSystemdRunArgs, sliceFor } from '../../src/isolation/systemd-run.js';

describe('sandbox options', () => {
  it('parses sizes, durations and CPU shares', () => {
    expect(parseBytes('memory', '256M')).toBe(256 * 1024 * 1024);
    expect(parseBytes('memory', '1g')).toBe(1024 ** 3);
    expect(parseBytes('memory', '64KiB')).toBe(64 * 1024);
    expect(parseBytes('memory', 4096)).toBe(4096);
    expect(parseDuration('timeout', '10s')).toBe(10_000);
    expect(parseDuration('timeout', '250ms')).toBe(250);
    expect(parseDuration('timeout', '2m')).toBe(120_000);
    expect(parseCpu('50%')).toBe(0.5);
    expect(parseCpu(0.2)).toBe(0.2);
    expect(parseCpu('150%')).toBe(1.5);
  });

  it.each([
    [{ memory: 'lots' }, 'memory'],
    [{ memory: -1 }, 'memory'],
    [{ memory: '10k' }, 'memory'],
    [{ pids: 0 }, 'pids'],
    [{ pids: 1.5 }, 'pids'],
    [{ cpu: '0%' }, 'cpu'],
    [{ cpu: 'half' }, 'cpu'],
    [{ timeout: '-5s' }, 'timeout'],
    [{ uid: -1 }, 'uid'],
    [{ uid: 4294967295 }, 'uid'],
    [{ namespaces: ['time'] }, 'namespaces'],
    [{ backend: 'docker' }, 'backend'],
    [{ cgroupBase: '../etc' }, 'cgroupBase'],
    [{ env: { 'A=B': 'x' } }, 'env'],
  ])('rejects %j with a typed error naming the option', (opts, option) => {
    expect(() => normalizeOptions(opts as never)).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION', details: expect.objectContaining({ option }) }));
  });

  it('rejects an unknown option', () => {
    expect(() => normalizeOptions({ memroy: '1G' } as never)).toThrow(/unknown sandbox option 'memroy'/);
  });

  it('scrubs the environment: only PATH, passed and allow-listed names', () => {
    process.env.CAPTRAP_TEST_ALLOWED = 'yes';
    process.env.CAPTRAP_TEST_SECRET = 'no';
    const o = normalizeOptions({ env: { FOO: 'bar' }, envAllow: ['CAPTRAP_TEST_ALLOWED'] });
    expect(Object.keys(o.env).sort()).toEqual(['CAPTRAP_TEST_ALLOWED', 'FOO', 'PATH']);
    expect(o.limits.swapBytes).toBe(0);
    expect(o.noNewPrivs).toBe(true);
  });
});

describe('systemd-run backend arguments', () => {
  it('maps every limit to a scope property and ends with --', () => {
    const p = buildSystemdRunArgs('captrap-1.2.3', { memoryBytes: 268435456, swapBytes: 0, pids: 64, cpu: 0.5 }, { timeoutMs: 1500, user: false });
    expect(p.unit).toBe('captrap-1.2.3.scope');
    expect(p.args.slice(0, 3)).toEqual(['--scope', '--quiet', '--unit=captrap-1.2.3.scope']);
    for (const prop of ['MemoryMax=268435456', 'MemorySwapMax=0', 'TasksMax=64', 'CPUQuota=50%', 'RuntimeMaxSec=2', 'KillMode=control-group']) {
      expect(p.args[p.args.indexOf(prop) - 1]).toBe('-p');
    }
    expect(p.args.at(-1)).toBe('--');
    expect(p.args).not.toContain('--user');
  });

  it('adds --user for a non-root captrap and omits limits not asked for', () => {
    const p = buildSystemdRunArgs('captrap-x', { swapBytes: 0 }, { user: true });
    expect(p.args).toContain('--user');
    expect(p.args.join(' ')).not.toMatch(/MemoryMax|TasksMax|CPUQuota|RuntimeMaxSec/);
    expect(() => buildSystemdRunArgs('bad name; rm', { swapBytes: 0 }, { user: false })).toThrow(/invalid systemd unit name/);
  });

  it('puts every scope of a base in one slice whose name nests nothing (no - in a slice name)', () => {
    expect(sliceFor('captrap')).toBe('captrap.slice');
    expect(sliceFor('captrap-hosts-12.x')).toBe('captrap_hosts_12_x.slice');
    const p = buildSystemdRunArgs('1.2.3', { swapBytes: 0 }, { user: false, slice: sliceFor('captrap-a') });
    expect(p.args).toContain('--slice=captrap_a.slice');
    // No --collect: an OOM-failed scope must stay loaded until its Result is read.
    expect(p.args).not.toContain('--collect');
    expect(() => buildSystemdRunArgs('1.2.3', { swapBytes: 0 }, { user: false, slice: 'x;y.slice' })).toThrow(/invalid systemd slice name/);
  });
});
