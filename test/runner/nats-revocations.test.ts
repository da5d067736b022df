// The nats revocation backend against a real nats-server (JetStream, own port and store dir),
// three hosts in this process, each reaching the server through its own TCP proxy so one can be
// partitioned away (silently: no reset) while the others keep going. Audit shipping at the end.
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main as doctorMain } from '../../src/runner/commands/doctor.js';
import { AuditLog } from '../../src/kernel/audit.js';
import { auditSubject, startAuditShipping } from '../../src/runner/nats-audit-ship.js';
import { openNatsRevocations, probeNatsRevocations, RevocationNotPropagatedError } from '../../src/runner/nats-revocations.js';
import { RevocationsUnavailableError, type RevocationEntry, type RevocationsConfig, type TokenRevocations } from '../../src/runner/token-revocations.js';
import { openRevocations } from '../../src/runner/token-gate.js';
import { findNatsServer, NatsServer, TcpProxy, waitFor } from './nats-harness.js';

const NATS = findNatsServer();
if (!NATS) console.warn(`nats-revocations tests skipped: nats-server is not installed (apt-get install nats-server)${process.env.CI ? '; under CI that is a failure' : ''}`);

const MAX = 1_000; // maxStaleness for these tests
const BUCKET = 'captrap_revocations_t';
const newId = () => randomBytes(32).toString('hex');

function cfg(host: string, url: string, extra: Partial<RevocationsConfig> = {}): RevocationsConfig {
  return { backend: 'nats', url, bucket: BUCKET, maxStalenessMs: MAX, host, shipAudit: false, auditStream: 'CAPTRAP_AUDIT_T', ...extra };
}

/** What onRevoked delivered to a host, by id; `calls` counts the batches. */
function collect(src: TokenRevocations): Map<string, RevocationEntry> & { calls: number } {
  const seen = Object.assign(new Map<string, RevocationEntry>(), { calls: 0 });
  src.onRevoked((entries) => {
    seen.calls++;
    for (const e of entries) seen.set(e.id, e);
  });
  return seen;
}

const refuses = (src: TokenRevocations, id: string) => {
  try {
    return src.isRevoked([id]) ? 'revoked' : 'allowed';
  } catch (err) {
    return err instanceof RevocationsUnavailableError ? 'unavailable' : `threw ${String(err)}`;
  }
};

it.runIf(!NATS && !!process.env.CI)('nats-server is installed (CI installs it)', () => {
  expect(NATS, 'nats-server must be on PATH under CI').not.toBeNull();
});

describe.skipIf(!NATS)('nats revocations across three hosts', () => {
  let server: NatsServer;
  const proxies: Record<string, TcpProxy> = {};
  const hosts: Record<string, TokenRevocations> = {};
  const learned: Record<string, ReturnType<typeof collect>> = {};

  beforeAll(async () => {
    server = await NatsServer.start(NATS!);
    for (const h of ['A', 'B', 'C']) {
      proxies[h] = await TcpProxy.start(server.port);
      hosts[h] = await openNatsRevocations(cfg(h, proxies[h]!.url));
      learned[h] = collect(hosts[h]!);
    }
  }, 60_000);

  afterAll(async () => {
    for (const h of Object.values(hosts)) await h.close();
    for (const p of Object.values(proxies)) await p.close();
    await server?.stop();
  });

  it('loads, creates the bucket, and reports healthy', () => {
    for (const h of ['A', 'B', 'C']) {
      const st = hosts[h]!.status();
      expect(st.healthy, st.detail).toBe(true);
      expect(st.backend).toBe('nats');
      expect(st.detail).toMatch(/in sync as of/);
      expect(refuses(hosts[h]!, newId())).toBe('allowed');
    }
  });

  it('a revocation on A is refused on B and C, and fires their onRevoked', async () => {
    const id = newId();
    const other = newId();
    const entries = await hosts.A!.revoke([id], 'leaked');
    expect(entries).toEqual([expect.objectContaining({ id, host: 'A', reason: 'leaked' })]);
    expect(refuses(hosts.A!, id)).toBe('revoked'); // at once on the revoking host
    await waitFor('B and C to learn the revocation', () => learned.B!.has(id) && learned.C!.has(id), 5_000);
    expect(refuses(hosts.B!, id)).toBe('revoked');
    expect(refuses(hosts.C!, id)).toBe('revoked');
    expect(hosts.B!.isRevoked([other, id])).toBe(true);
    expect(refuses(hosts.B!, other)).toBe('allowed');
    expect(learned.B!.get(id)).toMatchObject({ host: 'A', reason: 'leaked' });
    expect(learned.A!.has(id)).toBe(false); // not "learned from elsewhere"
  });

  it('refuses an id that is not a revocation id, and a bad config', async () => {
    await expect(hosts.A!.revoke(['not-hex'], 'x')).rejects.toMatchObject({ code: 'E_INVALID_ARGUMENTS' });
    await expect(openNatsRevocations(cfg('X', server.url, { bucket: 'bad.name' }))).rejects.toMatchObject({ code: 'E_REVOCATIONS_CONFIG' });
    await expect(openNatsRevocations(cfg('X', server.url, { maxStalenessMs: 5 }))).rejects.toMatchObject({ code: 'E_REVOCATIONS_CONFIG' });
  });

  it('a partitioned host fails closed while the others answer, and catches up before it is trusted again', async () => {
    const during = newId();
    proxies.C!.cut();
    const cutAt = Date.now();
    await waitFor('C to refuse', () => refuses(hosts.C!, newId()) === 'unavailable', MAX * 4);
    expect(Date.now() - cutAt).toBeGreaterThanOrEqual(MAX / 2); // not at once: only after maxStaleness since the last sync
    const st = hosts.C!.status();
    expect(st.healthy).toBe(false);
    expect(st.detail).toMatch(/refused since/);
    // A and B go on, and a revocation between them still works.
    await hosts.A!.revoke([during], 'revoked during the partition');
    await waitFor('B to learn it', () => learned.B!.has(during), 5_000);
    expect(hosts.A!.status().healthy).toBe(true);
    expect(hosts.B!.status().healthy).toBe(true);
    expect(refuses(hosts.C!, during)).toBe('unavailable');
    // Many more straight into the bucket (another tool, another host), so that C's reload takes
    // a while; the last one put is the one C would miss if it trusted itself too early.
    const nc = await connect({ servers: server.url });
    const kv = await new Kvm(nc).open(BUCKET);
    const filler = Array.from({ length: 3000 }, newId);
    for (let i = 0; i < filler.length; i += 500) {
      await Promise.all(filler.slice(i, i + 500).map((id) => kv.put(id, JSON.stringify({ id, host: 'ops', at: Date.now(), reason: 'bulk' }))));
    }
    const direct = newId();
    await kv.put(direct, JSON.stringify({ id: direct, host: 'ops', at: Date.now(), reason: 'direct put' }));
    await nc.close();

    const callsBefore = learned.C!.calls;
    proxies.C!.heal();
    // C must never be healthy without both: sample every 5 ms until it is healthy.
    await waitFor(
      'C to be healthy again',
      () => {
        const healthy = hosts.C!.status().healthy;
        if (healthy) {
          expect(refuses(hosts.C!, during)).toBe('revoked');
          expect(refuses(hosts.C!, direct)).toBe('revoked');
        }
        return healthy;
      },
      15_000,
    );
    expect(learned.C!.has(during) && learned.C!.has(direct)).toBe(true);
    expect(filler.every((id) => learned.C!.has(id))).toBe(true);
    // The reload reaches listeners in batches, not one call per id.
    expect(learned.C!.calls - callsBefore).toBeLessThan(filler.length / 10);
    expect(learned.C!.get(direct)).toMatchObject({ host: 'ops', reason: 'direct put' });
    expect(refuses(hosts.C!, newId())).toBe('allowed');
  }, 30_000);

  it('server killed: every host fails closed after maxStaleness, and recovers when it returns', async () => {
    const before = newId();
    await hosts.B!.revoke([before], 'before the crash');
    await waitFor('everyone to know it', () => learned.A!.has(before) && learned.C!.has(before), 5_000);
    const offline = newId();
    await server.kill();
    try {
      const killedAt = Date.now();
      await waitFor('all three to refuse', () => ['A', 'B', 'C'].every((h) => refuses(hosts[h]!, newId()) === 'unavailable'), MAX * 4);
      expect(Date.now() - killedAt).toBeGreaterThanOrEqual(MAX / 2);
      for (const h of ['A', 'B', 'C']) {
        const st = hosts[h]!.status();
        expect(st.healthy).toBe(false);
        // Which sign of the loss comes first depends on timing: the socket closing, a refused
        // reconnect, or the heartbeat's status request going unanswered.
        expect(st.detail).toMatch(/feed lost since .*(disconnected|cannot reach|no answer|connection closed)/);
        expect(refuses(hosts[h]!, before)).toBe('revoked'); // a known revocation still refuses as such
      }
      // A revocation while the server is down holds on A and says it did not propagate.
      const err = await hosts.A!.revoke([offline], 'while down').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RevocationNotPropagatedError);
      expect((err as RevocationNotPropagatedError).code).toBe('E_REVOCATION_NOT_PROPAGATED');
      expect(refuses(hosts.A!, offline)).toBe('revoked');
      expect(hosts.A!.status().detail).toMatch(/1 local revocation\(s\) not yet in the bucket/);
    } finally {
      // Later tests need the server: restart it even when an assertion above failed.
      await server.restart(); // same port, same store dir
    }
    await waitFor('all three healthy', () => ['A', 'B', 'C'].every((h) => hosts[h]!.status().healthy), 20_000);
    expect(refuses(hosts.B!, before)).toBe('revoked'); // the store dir kept it
    // A re-publishes what it revoked while the server was down.
    await waitFor('B and C to learn the offline revocation', () => learned.B!.has(offline) && learned.C!.has(offline), 10_000);
    expect(refuses(hosts.C!, offline)).toBe('revoked');
    await waitFor('A to clear its backlog', () => !hosts.A!.status().detail.includes('not yet in the bucket'), 5_000);
    // And the feed works as before.
    const after = newId();
    await hosts.C!.revoke([after], 'after');
    await waitFor('A to learn it', () => learned.A!.has(after), 5_000);
  }, 60_000);

  it('a host opened while the server is unreachable refuses until it has loaded the set', async () => {
    const proxy = await TcpProxy.start(server.port);
    proxy.cut();
    const t0 = Date.now();
    const d = await openNatsRevocations(cfg('D', proxy.url), { openWaitMs: 300 });
    try {
      expect(Date.now() - t0).toBeLessThan(3_000);
      expect(d.status().healthy).toBe(false);
      expect(d.status().lastSyncAt).toBeNull();
      expect(refuses(d, newId())).toBe('unavailable');
      proxy.heal();
      await waitFor('D to load', () => d.status().healthy, 15_000);
      expect(d.status().revoked).toBe(hosts.A!.status().revoked);
    } finally {
      await d.close();
      await proxy.close();
    }
    expect(d.status().healthy).toBe(false); // closed: refuses
  }, 30_000);

  it('doctor probe: reachable with the count, or the failure', async () => {
    const ok = await probeNatsRevocations(cfg('A', server.url));
    expect(ok).toMatchObject({ ok: true, bucketExists: true, revoked: hosts.A!.status().revoked });
    const absent = await probeNatsRevocations(cfg('A', server.url, { bucket: 'no_such_bucket' }));
    expect(absent).toMatchObject({ ok: true, bucketExists: false, revoked: 0 });
    const proxy = await TcpProxy.start(server.port);
    await proxy.close(); // a port nobody listens on
    const down = await probeNatsRevocations(cfg('A', proxy.url), 1_000);
    expect(down.ok).toBe(false);
    expect(down.detail.length).toBeGreaterThan(0);
  });

  it('captrap doctor --config: a line for the nats feed, and exit 1 when it is unreachable', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'captrap-doctor-'));
    const doctor = async (url: string, json: boolean) => {
      const file = join(dir, 'captrap.yaml');
      writeFileSync(file, ['stateDir: state', 'revocations:', '  backend: nats', `  url: ${url}`, `  bucket: ${BUCKET}`, '  maxStaleness: 1000', ''].join('\n'));
      const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
      try {
        const code = await doctorMain(['--config', file, ...(json ? ['--json'] : [])]);
        return { code, out: out.mock.calls.map((c) => String(c[0])).join('') };
      } finally {
        out.mockRestore();
      }
    };
    try {
      const text = await doctor(server.url, false);
      expect(text.out).toContain(`revocations:      nats ${server.url} bucket ${BUCKET}: reachable, ${hosts.A!.status().revoked} revoked`);
      const json = JSON.parse((await doctor(server.url, true)).out);
      expect(json.revocations).toMatchObject({ backend: 'nats', ok: true, revoked: hosts.A!.status().revoked });
      const proxy = await TcpProxy.start(server.port);
      await proxy.close();
      const down = await doctor(proxy.url, false);
      expect(down.code).toBe(1);
      expect(down.out).toMatch(/revocations: +nats .*UNREACHABLE: .*ct2 calls will be refused/);
      expect(down.out).toMatch(/NOT OK: .*revocations/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});

describe.skipIf(!NATS)('audit shipping to a JetStream stream', () => {
  let server: NatsServer;
  const dirs: string[] = [];
  beforeAll(async () => {
    server = await NatsServer.start(NATS!);
  }, 30_000);
  afterAll(async () => {
    await server?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('ships every record once under captrap.audit.<host>; a re-sent MAC is de-duplicated', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'captrap-ship-'));
    dirs.push(dir);
    const audit = await AuditLog.open({ dir, flushIntervalMs: 5 });
    const c = cfg('host.one*>', server.url, { shipAudit: true, auditStream: 'CAPTRAP_AUDIT_T' });
    const ship = startAuditShipping(audit, c);
    const macs: string[] = [];
    const untap = audit.tap((_seq, _e, mac) => macs.push(mac));
    try {
      for (let i = 0; i < 50; i++) audit.record({ type: 'capability_validated', principal: 'p', details: { i } });
      await waitFor('50 records shipped', () => ship.status().shipped >= 50, 10_000);
      expect(ship.status()).toMatchObject({ subject: 'captrap.audit.host_one__', dropped: 0, duplicates: 0, queued: 0 });
      expect(auditSubject('a.b c')).toBe('captrap.audit.a_b_c');

      const nc = await connect({ servers: server.url });
      const jsm = await jetstreamManager(nc);
      const info = await jsm.streams.info('CAPTRAP_AUDIT_T');
      expect(info.state.messages).toBe(50);
      expect(info.config.subjects).toEqual(['captrap.audit.>']);
      const first = await jsm.streams.getMessage('CAPTRAP_AUDIT_T', { seq: 1 });
      const body = first!.json<{ host: string; seq: number; mac: string; event: { details: { i: number } } }>();
      expect(body).toMatchObject({ host: 'host.one*>', mac: macs[0], event: { details: { i: 0 } } });
      expect(first!.header?.get('Nats-Msg-Id')).toBe(macs[0]);
      // A re-sent record (same MAC) is acknowledged as a duplicate and not stored again.
      const ack = await jetstream(nc).publish('captrap.audit.host_one__', JSON.stringify(body), { msgID: macs[0] });
      expect(ack.duplicate).toBe(true);
      expect((await jsm.streams.info('CAPTRAP_AUDIT_T')).state.messages).toBe(50);
      await nc.close();
    } finally {
      untap();
      await ship.close();
      await audit.close();
    }
  }, 30_000);

  it('with NATS down it counts dropped records and never blocks or fails the audit log', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'captrap-ship-'));
    dirs.push(dir);
    const audit = await AuditLog.open({ dir, flushIntervalMs: 5 });
    const proxy = await TcpProxy.start(server.port);
    await proxy.close(); // nobody listens there
    const ship = startAuditShipping(audit, cfg('down', proxy.url, { auditStream: 'CAPTRAP_AUDIT_T' }), { maxQueue: 10 });
    try {
      for (let i = 0; i < 25; i++) audit.record({ type: 'capability_validated', principal: 'p', details: { i } });
      await audit.flush();
      expect(audit.stats().eventsLogged).toBeGreaterThanOrEqual(25);
      const st = ship.status();
      expect(st).toMatchObject({ connected: false, shipped: 0, queued: 10, dropped: 15 });
    } finally {
      await ship.close();
      await audit.close();
    }
    expect(ship.status().dropped).toBe(25); // what was queued at close is counted too
  }, 30_000);
});


describe.skipIf(!NATS)('revocations are monotonic', () => {
  let server: NatsServer;
  let a: TokenRevocations;
  let b: TokenRevocations;
  let seenB: ReturnType<typeof collect>;
  beforeAll(async () => {
    server = await NatsServer.start(NATS!);
    a = await openNatsRevocations(cfg('A', server.url));
    b = await openNatsRevocations(cfg('B', server.url));
    seenB = collect(b);
  }, 30_000);
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await server?.stop();
  });

  it('a revocation is never withdrawn: a delete or purge in the bucket is ignored by hosts that saw the id', async () => {
    const id = newId();
    await a.revoke([id], 'leaked');
    await waitFor('B to learn it', () => seenB.has(id), 5_000);
    // Someone with write access to the bucket tries to keep the token alive.
    const nc = await connect({ servers: server.url });
    try {
      const kv = await new Kvm(jetstream(nc)).open(BUCKET);
      await kv.delete(id);
      await kv.purge(id);
    } finally {
      await nc.close();
    }
    await waitFor('B to see the delete', () => /delete\(s\) of revoked ids in the bucket ignored/.test(b.status().detail), 5_000);
    for (const h of [a, b]) expect(refuses(h, id)).toBe('revoked');
  });

});

describe.skipIf(!NATS)('a local copy: a host never forgets an id it has seen, and puts back what the bucket lost', () => {
  it('keeps learned ids across a restart after their keys were purged, and restores them to the bucket', async () => {
    const server = await NatsServer.start(NATS!);
    const stateDir = mkdtempSync(join(tmpdir(), 'captrap-nats-mirror-'));
    const opened: TokenRevocations[] = [];
    try {
      const other = await openNatsRevocations(cfg('other', server.url));
      opened.push(other);
      const before = newId();
      await other.revoke([before], 'before the host started');
      const host = await openRevocations(cfg('host', server.url), stateDir);
      const seen = collect(host);
      const after = newId();
      await other.revoke([after], 'while the host ran');
      await waitFor('the host to learn it', () => seen.has(after), 5_000);
      // Both are on the host's disk, the one loaded at start included.
      await waitFor('the local copy', () => /local copy .* \(2 ids/.test(host.status().detail), 5_000);
      await host.close();
      // The bucket loses both keys; a host that saw them must not forget them.
      const nc = await connect({ servers: server.url });
      try {
        const kv = await new Kvm(jetstream(nc)).open(BUCKET);
        for (const id of [before, after]) await kv.purge(id);
      } finally {
        await nc.close();
      }
      const fresh = await openNatsRevocations(cfg('fresh', server.url));
      opened.push(fresh);
      expect(refuses(fresh, after)).toBe('allowed'); // the purge did remove them from the bucket
      const again = await openRevocations(cfg('host', server.url), stateDir);
      opened.push(again);
      expect(refuses(again, before)).toBe('revoked');
      expect(refuses(again, after)).toBe('revoked');
      expect(again.status().detail).toMatch(/2 put back into the bucket at start/);
      // Put back: hosts that never saw them learn them again.
      await waitFor('the other hosts to learn them again', () => refuses(fresh, before) === 'revoked' && refuses(fresh, after) === 'revoked', 5_000);
    } finally {
      for (const o of opened) await o.close();
      await server.stop();
      rmSync(stateDir, { recursive: true, force: true });
    }
  }, 30_000);
});

describe.skipIf(!NATS)('securing the feed: authentication and TLS', () => {
  const dir = mkdtempSync(join(tmpdir(), 'captrap-nats-auth-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const secretFile = (name: string, text: string) => {
    const f = join(dir, name);
    writeFileSync(f, text, { mode: 0o600 });
    return f;
  };

  it('a server that requires a user refuses a host without it (which fails closed); with user and passwordFile it syncs', async () => {
    const server = await NatsServer.start(NATS!, ['--user', 'captrap', '--pass', 'p4ss-w0rd']);
    const opened: TokenRevocations[] = [];
    try {
      const anonymous = await openNatsRevocations(cfg('anon', server.url), { openWaitMs: 600 });
      opened.push(anonymous);
      expect(anonymous.status().healthy).toBe(false);
      expect(refuses(anonymous, newId())).toBe('unavailable');
      const wrong = await openNatsRevocations(cfg('wrong', server.url, { auth: { user: 'captrap', passwordFile: secretFile('wrong.pass', 'nope\n') } }), { openWaitMs: 600 });
      opened.push(wrong);
      expect(wrong.status().healthy).toBe(false);
      const good = await openNatsRevocations(cfg('good', server.url, { auth: { user: 'captrap', passwordFile: secretFile('good.pass', 'p4ss-w0rd\n') } }));
      opened.push(good);
      expect(good.status().healthy, good.status().detail).toBe(true);
      const id = newId();
      await good.revoke([id], 'x');
      expect(refuses(good, id)).toBe('revoked');
      // A password file others can read is refused at open, with its own code.
      const loose = secretFile('loose.pass', 'p4ss-w0rd');
      chmodSync(loose, 0o644);
      await expect(openNatsRevocations(cfg('loose', server.url, { auth: { user: 'captrap', passwordFile: loose } }))).rejects.toMatchObject({ code: 'E_REVOCATIONS_AUTH' });
    } finally {
      for (const o of opened) await o.close();
      await server.stop();
    }
  }, 30_000);

  it.skipIf(spawnSync('openssl', ['version']).error !== undefined)('over TLS: with the CA that signed the server it syncs; a server it cannot verify is refused', async () => {
    const key = join(dir, 'server.key');
    const cert = join(dir, 'server.pem');
    const made = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
    expect(made.status, made.stderr.toString()).toBe(0);
    const server = await NatsServer.start(NATS!, ['--tls', '--tlscert', cert, '--tlskey', key]);
    const opened: TokenRevocations[] = [];
    try {
      const untrusting = await openNatsRevocations(cfg('untrusting', server.url, { tls: {} }), { openWaitMs: 600 });
      opened.push(untrusting);
      expect(untrusting.status().healthy).toBe(false);
      const trusting = await openNatsRevocations(cfg('trusting', server.url, { tls: { caFile: cert } }));
      opened.push(trusting);
      expect(trusting.status().healthy, trusting.status().detail).toBe(true);
    } finally {
      for (const o of opened) await o.close();
      await server.stop();
    }
  }, 30_000);
});
