// Who a sandbox runs as. Each running agent gets a uid of its own from the configured range (gid
// the same number), so no agent can signal, ptrace or take the descriptors of another; its tools
// run as its uid. A uid returns to the pool only when the agent's sandbox is gone, so a uid is
// never shared by two live agents.
import { isAbsolute } from 'node:path';
import { publicKeyFileFor, type AgentConfig, type SidecarConfig } from './config.js';

export interface Identity {
  uid?: number;
  gid?: number;
  allowRoot: boolean;
}

export class UidPool {
  private readonly inUse = new Set<number>();
  private next: number;

  constructor(private readonly range: SidecarConfig['identity']) {
    this.next = range.firstUid;
  }

  /** A free uid, round-robin so a just-released uid is the last to be reused. */
  allocate(): number {
    const { firstUid, count } = this.range;
    for (let i = 0; i < count; i++) {
      const uid = this.next;
      this.next = uid + 1 >= firstUid + count ? firstUid : uid + 1;
      if (!this.inUse.has(uid)) {
        this.inUse.add(uid);
        return uid;
      }
    }
    throw new Error(`no free uid in ${firstUid}..${firstUid + count - 1} (identity.count)`);
  }

  release(uid: number): void {
    this.inUse.delete(uid);
  }

  get used(): number {
    return this.inUse.size;
  }
}

/**
 * The identity of an agent's sandbox: its configured uid/gid, or root if allowed and none is
 * configured, or a pooled uid. `pooled` says whether to release it when the agent is gone.
 */
export function agentIdentity(spec: Pick<AgentConfig, 'uid' | 'gid' | 'allowRoot'>, config: SidecarConfig, pool: UidPool): Identity & { pooled: boolean } {
  const allowRoot = spec.allowRoot ?? config.sandbox.allowRoot;
  if (spec.uid !== undefined) return { uid: spec.uid, gid: spec.gid ?? spec.uid, allowRoot, pooled: false };
  if (allowRoot) return { ...(spec.gid !== undefined ? { gid: spec.gid } : {}), allowRoot, pooled: false };
  const uid = pool.allocate();
  return { uid, gid: spec.gid ?? uid, allowRoot, pooled: true };
}

/** The sidecar's own files: no sandbox's view may show them, wherever they sit. */
export function sidecarSecrets(config: SidecarConfig): string[] {
  const { audit } = config;
  // `source` is a label, not a file, for configs built in code: only a path can be hidden.
  return [config.stateDir, config.adminSocket, config.capabilityKeyFile, audit.dir, audit.keyFile, audit.signingKeyFile, publicKeyFileFor(audit.signingKeyFile), config.source].filter((p) => isAbsolute(p));
}
