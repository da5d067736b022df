// Network destinations. An allowedDomains entry is `host`, `*.host` or `*`, optionally
// followed by `:port`. `*.example.com` matches any name below example.com but not
// example.com itself; an entry without a port allows every port. Hosts compare
// case-insensitively, without a trailing dot; IP addresses only match exactly.

export interface DomainEntry {
  readonly source: string;
  /** Lower-case host; for wildcards the suffix after `*.`; '' for `*`. */
  readonly host: string;
  readonly wildcard: boolean;
  readonly any: boolean;
  readonly port: number | null;
}

const ENTRY = /^(\*|\*\.[a-z0-9.-]+|[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?$/;

export function parseDomainEntry(source: string): DomainEntry | null {
  const m = ENTRY.exec(source.trim().toLowerCase());
  if (!m) return null;
  const h = m[1]!.replace(/\.$/, '');
  const port = m[2] === undefined ? null : Number(m[2]);
  if (port !== null && (port < 1 || port > 65535)) return null;
  if (h === '*') return { source, host: '', wildcard: true, any: true, port };
  if (h.startsWith('*.')) return { source, host: h.slice(2), wildcard: true, any: false, port };
  return { source, host: h, wildcard: false, any: false, port };
}

const DEFAULT_PORTS: Record<string, number> = { 'http:': 80, 'https:': 443, 'ws:': 80, 'wss:': 443, 'ftp:': 21 };

export interface Destination {
  host: string;
  port: number;
}

/** Parses a URL argument into host and port; null when it has no host or a port cannot be known. */
export function destinationOf(url: string): Destination | null {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return null;
  }
  const host = u.hostname.toLowerCase().replace(/\.$/, '');
  if (!host) return null;
  const port = u.port ? Number(u.port) : DEFAULT_PORTS[u.protocol];
  if (port === undefined) return null;
  return { host, port };
}

const BARE_HOST = /^([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?$/;

/** A bare `host` or `host:port` (no scheme): its host and port (null = not named); undefined when it is not one. */
export function destinationOfHost(s: string): { host: string; port: number | null } | undefined {
  const m = BARE_HOST.exec(s.toLowerCase());
  if (!m) return undefined;
  const port = m[2] === undefined ? null : Number(m[2]);
  if (port !== null && (port < 1 || port > 65535)) return undefined;
  return { host: m[1]!.replace(/\.$/, ''), port };
}

export function entryMatches(e: DomainEntry, d: Destination): boolean {
  if (e.port !== null && e.port !== d.port) return false;
  if (e.any) return true;
  if (e.wildcard) return d.host.endsWith('.' + e.host);
  return d.host === e.host;
}

/** Whether every destination `child` allows is allowed by `parent`. */
export function entryCovers(parent: DomainEntry, child: DomainEntry): boolean {
  if (parent.port !== null && parent.port !== child.port) return false;
  if (parent.any) return true;
  if (child.any) return false;
  if (parent.wildcard) return child.host.endsWith('.' + parent.host);
  return !child.wildcard && child.host === parent.host;
}
