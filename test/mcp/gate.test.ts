// The gate without processes: argument kinds from inputSchema, operations from annotations,
// list filtering, denial codes from the real kernel, redaction and the audit context.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryAuditSink } from '../../src/kernel/events.js';
import { Keyring } from '../../src/kernel/keyring.js';
import { generateSecret } from '../../src/kernel/keys.js';
import { SecurityKernel } from '../../src/kernel/kernel.js';
import type { Constraints } from '../../src/kernel/constraints.js';
import { ContextualAuditSink } from '../../src/mcp/audit-context.js';
import { McpGate } from '../../src/mcp/gate.js';
import { accessOf, argumentKinds, detectKind, rewriteArguments, toolOperation, type McpToolInfo } from '../../src/mcp/kinds.js';
import { parseConfig } from '../../src/runner/config.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-gate-'));
  mkdirSync(join(dir, 'root'));
  writeFileSync(join(dir, 'root', 'in.txt'), 'x');
  writeFileSync(join(dir, 'out.txt'), 'x');
  symlinkSync(join(dir, 'out.txt'), join(dir, 'root', 'escape'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const readFile: McpToolInfo = { name: 'read_file', inputSchema: { properties: { path: { type: 'string' }, api_token: { type: 'string' } } }, annotations: { readOnlyHint: true } };
const writeFile: McpToolInfo = { name: 'write_file', inputSchema: { properties: { path: { type: 'string' }, content: { type: 'string' } } }, annotations: { destructiveHint: true } };
const fetchTool: McpToolInfo = { name: 'fetch', inputSchema: { properties: { target: { type: 'string', format: 'uri' } } }, annotations: { readOnlyHint: true } };
const unannotated: McpToolInfo = { name: 'mystery', inputSchema: { properties: {} } };

describe('argument kinds and operations', () => {
  it('detects kinds from names (last word) and format: uri', () => {
    const cases: [string, unknown, string][] = [
      ['path', {}, 'file'], ['paths', { type: 'array' }, 'file'], ['file_path', {}, 'file'], ['sourceDir', {}, 'file'], ['source', {}, 'file'],
      ['destination', {}, 'file'], ['root', {}, 'file'], ['url', {}, 'url'], ['baseUri', {}, 'url'], ['endpoint', {}, 'url'], ['target', { format: 'uri' }, 'url'],
      ['command', {}, 'command'], ['cmd', {}, 'command'], ['content', {}, 'none'], ['pathology_notes', {}, 'none'],
    ];
    for (const [name, schema, kind] of cases) expect(detectKind(name, schema), name).toBe(kind);
  });

  it('lets the config override kinds and operations', () => {
    expect(argumentKinds(writeFile, { arguments: { content: 'file', path: 'none' } })).toEqual({ path: 'none', content: 'file' });
    expect(toolOperation(readFile)).toBe('read');
    expect(toolOperation(writeFile)).toBe('write');
    expect(toolOperation(unannotated)).toBe('write'); // the spec's default: destructive unless read-only
    expect(toolOperation(writeFile, { operation: 'execute' })).toBe('execute');
  });

  it('checks every element of an array argument and refuses other shapes', () => {
    const a = accessOf('t', { paths: ['/a', '/b'] }, { paths: 'file' }, 'read');
    expect(a.files?.map((f) => f.arg)).toEqual(['paths[0]', 'paths[1]']);
    expect(() => accessOf('t', { path: { nested: '/etc' } }, { path: 'file' }, 'read')).toThrow(/E_INVALID_ARGUMENTS|expected a string/);
    expect(rewriteArguments({ paths: ['/a/../b', '/c'], x: 1 }, { 'paths[0]': '/b' }, {})).toEqual({ paths: ['/b', '/c'], x: 1 });
  });
});

describe('McpGate with the real kernel', () => {
  function gate(operations: string[], constraints: Constraints, tools = {}) {
    const sink = new MemoryAuditSink();
    const audit = new ContextualAuditSink(sink);
    const kernel = new SecurityKernel({ keys: new Keyring({ id: 'k', secret: generateSecret() }), audit });
    const capability = kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, operations, constraints);
    return { g: new McpGate({ kernel, audit, server: 'srv', capability, tools }), sink, kernel, capability };
  }

  it('filters the list by allowedTools and by operation', () => {
    expect(gate(['invoke'], { allowedTools: ['read_file', 'fetch'] }).g.filterTools([readFile, writeFile, fetchTool]).map((t) => t.name)).toEqual(['read_file', 'fetch']);
    expect(gate(['read'], {}).g.filterTools([readFile, writeFile, fetchTool, unannotated]).map((t) => t.name)).toEqual(['read_file', 'fetch']);
  });

  it('denies with the kernel’s codes and rewrites allowed paths to what was checked', () => {
    const { g } = gate(['invoke'], { paths: [join(dir, 'root')], allowedDomains: ['example.com'] });
    const ok = g.checkCall('read_file', { path: join(dir, 'root', '.', 'in.txt') }, readFile);
    expect(ok).toEqual({ allowed: true, arguments: { path: join(dir, 'root', 'in.txt') } });
    for (const path of [join(dir, 'out.txt'), join(dir, 'root', '..', 'out.txt'), join(dir, 'root', 'escape'), 'relative.txt']) {
      const d = g.checkCall('read_file', { path }, readFile);
      expect(d.allowed, path).toBe(false);
      expect(!d.allowed && d.code).toBe('E_PATH_OUTSIDE_ROOTS');
    }
    expect(g.checkCall('fetch', { target: 'https://evil.com/' }, fetchTool)).toMatchObject({ allowed: false, code: 'E_DOMAIN_NOT_ALLOWED' });
    expect(g.checkCall('fetch', { target: 'https://example.com/a' }, fetchTool)).toMatchObject({ allowed: true });
    expect(g.checkCall('nope', {}, undefined)).toMatchObject({ allowed: false, code: 'E_UNKNOWN_TOOL' });
  });

  it('refuses everything once the capability is revoked', () => {
    const { g, kernel, capability } = gate(['invoke'], {});
    kernel.revokeCapability(capability.id);
    expect(g.checkCall('read_file', { path: '/tmp' }, readFile)).toMatchObject({ allowed: false, code: 'E_REVOKED' });
    expect(() => g.filterTools([readFile])).toThrow(/revoked/);
    expect(g.checkResourceRead('https://example.com/')).toMatchObject({ allowed: false, code: 'E_REVOKED' });
  });

  it('gates resources: file URIs by paths, other URIs by scheme and domain', () => {
    const { g } = gate(['read'], { paths: [join(dir, 'root')], allowedSchemes: ['https', 'demo'] });
    expect(g.checkResourceRead(`file://${join(dir, 'root', 'in.txt')}`)).toMatchObject({ allowed: true });
    expect(g.checkResourceRead(`file://${join(dir, 'root', 'escape')}`)).toMatchObject({ allowed: false, code: 'E_PATH_OUTSIDE_ROOTS' });
    expect(g.checkResourceRead('demo://resource/1')).toMatchObject({ allowed: true });
    expect(g.checkResourceRead('ftp://example.com/x')).toMatchObject({ allowed: false, code: 'E_SCHEME_NOT_ALLOWED' });
  });

  it('audits each decision with the server name and redacts secret arguments', () => {
    const { g, sink } = gate(['invoke'], { paths: [join(dir, 'root')] }, { read_file: { secret: ['path'] } });
    g.checkCall('read_file', { path: join(dir, 'out.txt'), api_token: 'hunter2-secret' }, readFile);
    const denied = sink.ofType('access_denied').at(-1)!;
    expect(denied.details).toMatchObject({ mcpServer: 'srv', mcpMethod: 'tools/call', tool: 'read_file', code: 'E_PATH_OUTSIDE_ROOTS' });
    expect((denied.details!['arguments'] as Record<string, unknown>)['api_token']).toBe('[redacted]');
    expect((denied.details!['arguments'] as Record<string, unknown>)['path']).toBe('[redacted]');
    expect(JSON.stringify(sink.events)).not.toContain('hunter2');
  });
});

describe('mcpServers in the config', () => {
  it('parses an entry with clients, tool policy and limits', () => {
    const c = parseConfig(
      { mcpServers: { files: { command: 'npx', args: ['-y', 'x'], limits: { memory: '256M' }, tools: { read_file: { operation: 'read', arguments: { path: 'file' } } }, clients: [{ principal: 'claude', token: 't'.repeat(20), timeout: '30s', constraints: { paths: ['/tmp'] } }] } } },
      'inline',
      '/',
    );
    const m = c.mcpServers![0]!;
    expect(m).toMatchObject({ name: 'files', command: 'npx', limits: { memoryBytes: 256 * 1024 * 1024 }, tools: { read_file: { operation: 'read' } } });
    expect(m.clients[0]).toMatchObject({ principal: 'claude', operations: ['invoke'], constraints: { paths: ['/tmp'], limits: { timeoutMs: 30_000 } } });
  });

  it('names the field of a bad entry', () => {
    expect(() => parseConfig({ mcpServers: { files: { command: 'x', clients: [] } } }, 'inline', '/')).toThrow(/mcpServers\.files\.clients/);
    expect(() => parseConfig({ mcpServers: { files: { command: 'x', tools: { t: { arguments: { p: 'folder' } } }, clients: [{ principal: 'a' }] } } }, 'inline', '/')).toThrow(/mcpServers\.files\.tools\.t\.arguments\.p/);
  });
});

describe('McpGateway sessions', () => {
  it('issue a capability that outlives the kernel’s default hour', async () => {
    const { McpGateway } = await import('../../src/mcp/gateway.js');
    const gw = new McpGateway(new Keyring({ id: 'k', secret: generateSecret() }), new MemoryAuditSink());
    const cap = gw.issue({ principal: 'p', operations: ['invoke'], constraints: {} }, 'srv');
    expect(cap.expiresAt - Date.now()).toBeGreaterThan(365 * 24 * 3_600_000);
    gw.close();
  });
});
