// The library API: re-exports from kernel, isolation and runner. Both layers name a process
// `{ pid, startTime }` ProcessRef with the same shape; the kernel's (a zod type) is exported.
export * from './kernel/events.js';
export * from './kernel/errors.js';
export * from './kernel/keys.js';
export * from './kernel/capability.js';
export * from './kernel/constraints.js';
export * from './kernel/pattern.js';
export * from './kernel/paths.js';
export * from './kernel/domains.js';
export * from './kernel/urls.js';
export * from './kernel/keyring.js';
export * from './kernel/policy.js';
export * from './kernel/revocations.js';
export * from './kernel/issuance.js';
export * from './kernel/kernel.js';
export * from './kernel/audit.js';
// ct2 public-key tokens and CEL `when` constraints (docs/tokens.md).
export * from './kernel/tokens/index.js';
export { compileWhen, evaluateWhen, toCelActivation, CelError, CEL_LIMITS, CEL_ERROR_CODES, type CelErrorCode, type CelRequest, type CompiledWhen } from './kernel/cel.js';

export * from './isolation/sandbox.js';
export type { LeaderProcess } from './isolation/spawner.js';
export * from './isolation/errors.js';
export { probeHost, type HostInfo } from './isolation/host.js';
export { cleanupStaleCgroups, removeCgroupBase, type Degradation, type StaleCleanupResult } from './isolation/cgroup.js';
export { processRef, isSameProcess, descendants } from './isolation/proc.js';
export { normalizeOptions, type SandboxOptions, type BackendName, type NamespaceName } from './isolation/limits.js';
export { hostReport, type HostReport } from './isolation/report.js';
export { buildSystemdRunArgs } from './isolation/systemd-run.js';
export { WatchdogError } from './isolation/watchdog.js';
export type { LauncherKind } from './isolation/launcher/launcher.js';

export { Sidecar, publicKeyFileFor, type SidecarOptions } from './runner/sidecar.js';
export { loadConfig, parseConfig, ConfigError, revocationsConfig, type SidecarConfig, type TokensConfig } from './runner/config.js';
// ct2 in the sidecar: revocation sources (docs/tokens.md, "In the sidecar").
export { RevocationsUnavailableError, type TokenRevocations, type RevocationsConfig, type RevocationEntry, type RevocationStatus, type RevocationBackend } from './runner/token-revocations.js';
export { FileTokenRevocations, TokenRevocationsFileError, TOKEN_REVOCATIONS_FILE } from './runner/token-revocations-file.js';
export { TokenGate, DEFAULT_EXPORT_TTL_MS, type IssuedToken, type TokenGateStats } from './runner/token-gate.js';
export type { CapView } from './runner/supervisor.js';
export { AdminClient, AdminClientError, AdminCallError, resolveSocketPath, type AgentRow, type SidecarStats } from './runner/admin-client.js';

export { CaptrapError } from './errors.js';
