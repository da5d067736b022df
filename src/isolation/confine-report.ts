// What `captrap doctor` says about confinement: per property, whether a default (confined)
// sandbox gets it on this host and by which mechanism, or why not and how to fix the host.
// Derived from the same probe and launcher choice a sandbox uses, so doctor and a run agree.
import { CONFINE_NAMESPACES } from './confine.js';
import type { HostInfo } from './host.js';
import type { LauncherChoice } from './launcher/launcher.js';

export interface ConfinementProperty {
  name: string;
  holds: boolean;
  how: string;
  /** Why not, and the fix. */
  note?: string;
}

export function confinementStatus(host: HostInfo, launcher: LauncherChoice | undefined): ConfinementProperty[] {
  const c = launcher?.kind === 'captrap-launch';
  const needC = "needs the compiled launcher: run 'npm run build' with a C compiler and leave CAPTRAP_LAUNCHER unset";
  const out: ConfinementProperty[] = [];
  out.push(
    host.isRoot
      ? { name: 'identity', holds: true, how: 'tools run as uid 65534 (the sidecar: one uid per agent from identity.firstUid) unless allowRoot' }
      : { name: 'identity', holds: true, how: `captrap is not root: sandboxes run as its own uid ${process.getuid?.() ?? '?'} (no switching possible)` },
  );
  for (const n of CONFINE_NAMESPACES) {
    const can = host.namespaces[n];
    out.push({
      name: `${n} namespace`,
      holds: c && can,
      how: c && can ? 'made by captrap-launch before the command runs' : 'not available',
      ...(c && can ? {} : { note: !c ? needC : `this host does not let captrap create a ${n} namespace${host.isRoot ? '' : ' (captrap is not root)'}` }),
    });
  }
  const mount = c && host.namespaces.mount;
  out.push({ name: 'filesystem view', holds: mount, how: mount ? 'new root: system read-only, given roots at their real paths, fresh /proc, minimal /dev, private /tmp' : 'the whole host filesystem is visible', ...(mount ? {} : { note: c ? 'needs a mount namespace' : needC }) });
  out.push({ name: 'cgroupfs read-only', holds: mount, how: mount ? 'absent from the view (no /sys), so no cgroup.procs or limit file can be written' : 'visible: a root tool could leave its cgroups', ...(mount ? {} : { note: 'needs the filesystem view' }) });
  out.push({ name: 'hidden state', holds: mount, how: mount ? "the sidecar's state dir, keys, audit dir and admin socket are covered in every view" : 'visible to any process that can read them', ...(mount ? {} : { note: 'needs the filesystem view' }) });
  out.push({ name: 'capabilities dropped', holds: c, how: c ? 'bounding, ambient, inheritable, permitted and effective sets emptied; no_new_privs' : 'kept', ...(c ? {} : { note: needC }) });
  out.push({ name: 'descriptors closed', holds: c, how: c ? 'every fd above 2 closed before the command (the agent channel is handed over on fd 0)' : 'inherited fds without CLOEXEC reach the command', ...(c ? {} : { note: needC }) });
  const net = c && host.namespaces.net && host.namespaces.pid;
  out.push({ name: 'network', holds: net, how: net ? 'none (loopback only); capabilities with allowedDomains reach their hosts through the egress proxy' : "the host's network", ...(net ? {} : { note: c ? 'needs net and pid namespaces' : needC }) });
  out.push({ name: 'seccomp', holds: false, how: 'no syscall filter', note: 'not implemented: a kernel exploit through a reachable syscall is outside the threat model (docs/threat-model.md)' });
  return out;
}
