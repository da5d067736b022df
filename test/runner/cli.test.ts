import { describe, expect, it, vi } from 'vitest';
import { cli, describeError, usage } from '../../src/runner/cli.js';

describe('captrap CLI dispatcher', () => {
  it('rejects an unknown command with exit 2 and the usage text', async () => {
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(await cli(['no-such-command'])).toBe(2);
      expect(String(err.mock.calls[0]?.[0])).toContain("unknown command 'no-such-command'");
    } finally {
      err.mockRestore();
    }
  });

  it('lists every command in the usage text', () => {
    for (const c of ['run', 'doctor', 'audit']) expect(usage()).toContain(`  ${c}`);
  });

  it('describes errors in one line with their code, without a stack', () => {
    const e = Object.assign(new Error('memory limit is malformed'), { code: 'E_BAD_LIMIT' });
    expect(describeError(e)).toBe('memory limit is malformed [E_BAD_LIMIT]');
  });
});
