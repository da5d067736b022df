// The library API: re-exports from kernel, isolation and runner.
export * from './kernel/events.js';
