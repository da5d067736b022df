import { describe, expect, it } from 'vitest';
import { DelegationError } from '../../src/kernel/errors.js';
import { sandboxLimits, tightest } from '../../src/runner/runner.js';
import { narrowLimits, toAnswerError } from '../../src/runner/server.js';
import { AccessDeniedError, InvalidRequestError } from '../../src/kernel/errors.js';
import { SandboxSpawnError } from '../../src/isolation/errors.js';
import { RPC_ERROR } from '../../src/runner/jsonrpc.js';

describe('limits', () => {
  it('tightest takes the smallest of every set, field by field, and keeps fields only one set has', () => {
    expect(tightest({ memoryBytes: 256, pids: 64, timeoutMs: 30_000 }, { memoryBytes: 128, cpu: 0.5 }, { memoryBytes: 512, pids: 8 }, undefined)).toEqual({
      memoryBytes: 128,
      pids: 8,
      cpu: 0.5,
      timeoutMs: 30_000,
    });
    expect(tightest()).toEqual({});
  });

  it('maps kernel limits to sandbox options', () => {
    expect(sandboxLimits({ memoryBytes: 1 << 20, pids: 4, cpu: 0.25, timeoutMs: 500 })).toEqual({ memory: 1 << 20, pids: 4, cpu: 0.25, timeout: 500 });
    expect(sandboxLimits({})).toEqual({});
  });

  it('a sub-agent inherits what it leaves out and may only tighten the rest', () => {
    expect(narrowLimits({ memoryBytes: 100, pids: 10 }, { memoryBytes: 50 })).toEqual({ memoryBytes: 50, pids: 10 });
    expect(narrowLimits({}, { cpu: 2 })).toEqual({ cpu: 2 }); // an unlimited parent
    expect(() => narrowLimits({ pids: 10 }, { pids: 11 })).toThrow(DelegationError);
    try {
      narrowLimits({ timeoutMs: 10 }, { timeoutMs: 20 });
    } catch (e) {
      expect((e as DelegationError).details).toEqual({ dimension: 'limits.timeoutMs' });
    }
  });
});

describe('error answers', () => {
  it('keeps the kernel code and sorts errors into the protocol codes', () => {
    const denied = toAnswerError(new AccessDeniedError('E_REVOKED', 'capability x was revoked'));
    expect(denied.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);
    expect(denied.data).toEqual({ code: 'E_REVOKED', reason: 'capability x was revoked' });
    expect(toAnswerError(new AccessDeniedError('E_UNKNOWN_CAPABILITY', 'no')).rpcCode).toBe(RPC_ERROR.NOT_FOUND);
    expect(toAnswerError(new InvalidRequestError('constraints.paths: relative', { path: ['paths'] })).rpcCode).toBe(RPC_ERROR.INVALID_PARAMS);
    expect(toAnswerError(new SandboxSpawnError('E_COMMAND_NOT_FOUND', 'gone')).rpcCode).toBe(RPC_ERROR.SANDBOX_ERROR);
    const opaque = toAnswerError(new Error('secret internals'));
    expect(opaque.rpcCode).toBe(RPC_ERROR.INTERNAL_ERROR);
    expect(opaque.message).not.toContain('secret');
  });
});
