// The dashboard's one page: plain HTML, CSS and script, no framework and no chart library (the
// sparklines are inline SVG polylines), nothing fetched from anywhere but this server. Text from
// the sidecar is only ever set with textContent, never parsed as HTML.
export const DASHBOARD_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>captrap</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:16px;margin:0} header .st{opacity:.8}
main{display:grid;grid-template-columns:1fr 1fr;gap:12px;padding:12px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 10px;min-width:0}
section.wide{grid-column:1/3} h2{font-size:13px;margin:0 0 6px;text-transform:uppercase;letter-spacing:.04em;color:#4a5468}
table{border-collapse:collapse;width:100%} td,th{padding:2px 6px;text-align:left;border-bottom:1px solid #eef0f3;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:340px}
th{font-weight:600;color:#4a5468} .mono{font-family:ui-monospace,monospace;font-size:12px}
.denied{color:#b3261e} .allowed{color:#1e7b34} .revoked{color:#999;text-decoration:line-through} .badge{display:inline-block;padding:0 5px;border-radius:3px;font-size:11px;background:#eee;color:#333;text-decoration:none}
.badge.bad{background:#fde7e7;color:#b3261e} .badge.ok{background:#e3f4e7;color:#1e7b34} .sev-critical,.sev-high{color:#b3261e;font-weight:600}
#decisions{max-height:320px;overflow:auto;display:block} button{font-size:11px;padding:0 6px} svg{vertical-align:middle}
</style></head><body>
<header><h1>captrap</h1><span class="st" id="chain">audit: …</span><span class="st" id="conn">connecting…</span></header>
<main>
<section><h2>Agents</h2><table id="agents"><thead><tr><th>agent</th><th>state</th><th>pid</th><th>memory</th><th>cpu</th><th>pids</th><th></th></tr></thead><tbody></tbody></table></section>
<section><h2>Violations and alerts</h2><table id="alerts"><thead><tr><th>time</th><th>severity</th><th>principal</th><th>violation</th><th>count</th></tr></thead><tbody></tbody></table>
<div id="quarantine"></div></section>
<section class="wide"><h2>Capabilities</h2><table id="caps"><thead><tr><th>capability</th><th>principal</th><th>resource</th><th>operations</th><th>state</th><th></th></tr></thead><tbody></tbody></table></section>
<section class="wide"><h2>Decisions</h2><table id="decisions"><thead><tr><th>seq</th><th>time</th><th>event</th><th>principal</th><th>what</th><th>outcome</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
let state = { actions: false, csrf: null };
const series = new Map();
const $ = (s) => document.querySelector(s);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
function mb(n) { return n === null || n === undefined ? '' : (n / 1048576).toFixed(1) + ' MiB'; }
function spark(values) {
  const ns = 'http://www.w3.org/2000/svg'; const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', '80'); svg.setAttribute('height', '18');
  const max = Math.max(1, ...values); const pts = values.map((v, i) => (i * 80 / Math.max(1, values.length - 1)).toFixed(1) + ',' + (17 - v * 16 / max).toFixed(1));
  const pl = document.createElementNS(ns, 'polyline'); pl.setAttribute('points', pts.join(' ')); pl.setAttribute('fill', 'none'); pl.setAttribute('stroke', '#3b6fd8');
  svg.appendChild(pl); return svg;
}
async function act(name, target) {
  const r = await fetch('/api/' + name, { method: 'POST', headers: { 'content-type': 'application/json', 'x-captrap-csrf': state.csrf }, body: JSON.stringify({ target }) });
  const body = await r.json(); if (!r.ok || !body.ok) alert(name + ' failed: ' + (body.message || body.error));
  refresh();
}
function button(label, name, target) { const b = el('button', label); b.dataset.action = name; b.onclick = () => act(name, target); return b; }
function drawAgents(agents) {
  const tb = $('#agents tbody'); tb.textContent = '';
  const byParent = new Map(); for (const a of agents) { const k = a.parent || ''; if (!byParent.has(k)) byParent.set(k, []); byParent.get(k).push(a); }
  const walk = (parent, depth) => { for (const a of byParent.get(parent) || []) {
    const s = series.get(a.id) || { mem: [], cpu: [], pids: [], lastCpu: null, lastAt: null }; series.set(a.id, s);
    const tr = el('tr'); tr.dataset.agent = a.id; tr.dataset.state = a.state;
    const name = el('td', '\\u00a0\\u00a0'.repeat(depth) + a.id, 'mono'); tr.appendChild(name);
    tr.appendChild(el('td', a.state + (a.exitReason ? ' (' + a.exitReason + ')' : ''), a.state === 'running' ? 'allowed' : ''));
    tr.appendChild(el('td', a.pid, 'mono'));
    const m = el('td', mb(a.group ? a.group.usage.memoryBytes : a.usage.memoryBytes) + ' '); m.appendChild(spark(s.mem)); tr.appendChild(m);
    const c = el('td', ''); c.appendChild(spark(s.cpu)); tr.appendChild(c);
    const p = el('td', (a.group ? a.group.usage.processes : '') + ' '); p.appendChild(spark(s.pids)); tr.appendChild(p);
    const t = el('td'); if (state.actions && a.state === 'running') t.appendChild(button('kill', 'kill', a.id)); tr.appendChild(t);
    tb.appendChild(tr); walk(a.id, depth + 1);
  } };
  walk('', 0);
}
function sample(agents, at) {
  for (const a of agents) {
    const s = series.get(a.id) || { mem: [], cpu: [], pids: [], lastCpu: null, lastAt: null }; series.set(a.id, s);
    const u = a.group ? a.group.usage : a.usage; const cpu = u.cpuUsageUs;
    s.mem.push(u.memoryBytes || 0); s.pids.push(a.group ? a.group.usage.processes : 0);
    s.cpu.push(s.lastCpu !== null && cpu !== null && at > s.lastAt ? Math.max(0, (cpu - s.lastCpu) / ((at - s.lastAt) * 10)) : 0);
    s.lastCpu = cpu; s.lastAt = at;
    for (const k of ['mem', 'cpu', 'pids']) if (s[k].length > 60) s[k].shift();
  }
}
function drawCaps(caps) {
  const tb = $('#caps tbody'); tb.textContent = '';
  const depthOf = new Map();
  for (const c of caps) {
    const d = c.parent && depthOf.has(c.parent) ? depthOf.get(c.parent) + 1 : 0; depthOf.set(c.id, d);
    const tr = el('tr'); tr.dataset.cap = c.id; if (c.revoked) tr.className = 'revoked-row';
    tr.appendChild(el('td', '\\u00a0\\u00a0'.repeat(d) + c.id, 'mono' + (c.revoked ? ' revoked' : '')));
    tr.appendChild(el('td', c.principal, 'mono'));
    tr.appendChild(el('td', c.resource.type + ':' + c.resource.pattern + (c.constraints && c.constraints.allowedTools ? ' [' + c.constraints.allowedTools.join(',') + ']' : '')));
    tr.appendChild(el('td', c.operations.join(',')));
    const st = el('td'); st.appendChild(el('span', c.revoked ? 'revoked' : 'live', 'badge ' + (c.revoked ? 'bad' : 'ok'))); tr.appendChild(st);
    const t = el('td'); if (state.actions && !c.revoked) t.appendChild(button('revoke', 'revoke', c.id)); tr.appendChild(t);
    tb.appendChild(tr);
  }
}
function drawAlerts(alerts, quarantined) {
  const tb = $('#alerts tbody'); tb.textContent = '';
  for (const a of alerts.slice().reverse()) {
    const tr = el('tr'); tr.dataset.alert = a.type;
    tr.appendChild(el('td', a.at.slice(11, 19))); tr.appendChild(el('td', a.severity, 'sev-' + a.severity));
    tr.appendChild(el('td', a.principal, 'mono')); tr.appendChild(el('td', a.type)); tr.appendChild(el('td', a.count));
    tb.appendChild(tr);
  }
  const q = $('#quarantine'); q.textContent = '';
  for (const x of quarantined) { const d = el('div', 'quarantined: ' + x.principal + ' since ' + x.since + ' (' + x.type + ') ', 'denied'); d.dataset.quarantined = x.principal; if (state.actions) d.appendChild(button('release', 'release', x.principal)); q.appendChild(d); }
}
function drawChain(c) {
  if (!c) return;
  const v = c.verify;
  $('#chain').dataset.verify = v ? (v.ok ? 'passed' : 'failed') : 'pending';
  $('#chain').textContent = 'audit: seq ' + c.seq + (c.available === false ? ' (log UNAVAILABLE)' : '') +
    (v ? '; verify at ' + v.at.slice(11, 19) + ': ' + (v.ok ? 'chain intact' : 'FAILED' + (v.error ? ' (' + v.error + ')' : ' (' + v.problems + ' problems)')) +
      ', last checkpoint ' + (v.lastCheckpointSeq ?? 'none') + (v.uncovered ? ', ' + v.uncovered + ' newer records not yet checkpointed' : '') : '; verify pending');
}
function decision(e) {
  const d = e.details || {};
  const tr = el('tr'); tr.dataset.decision = e.type; if (d.code) tr.dataset.code = d.code;
  const denied = e.type === 'access_denied' || e.type === 'capability_denied' || (e.type === 'egress' && d.allowed === false) || e.type === 'sandbox_escape' || e.type === 'violation_alert';
  tr.appendChild(el('td', e.seq, 'mono')); tr.appendChild(el('td', (e.at || '').slice(11, 19)));
  tr.appendChild(el('td', e.type)); tr.appendChild(el('td', e.principal || '', 'mono'));
  tr.appendChild(el('td', d.tool || d.host || d.violation || d.reason || e.capabilityId || ''));
  tr.appendChild(el('td', denied ? (d.code || d.severity || 'denied') : (d.reason || 'allowed'), denied ? 'denied' : 'allowed'));
  const tb = $('#decisions tbody'); tb.insertBefore(tr, tb.firstChild); while (tb.children.length > 300) tb.removeChild(tb.lastChild);
}
let pending;
function refresh() { clearTimeout(pending); pending = setTimeout(load, 150); }
async function load() {
  const r = await fetch('/api/state'); if (!r.ok) { $('#conn').textContent = 'not authorized (' + r.status + ')'; return; }
  state = await r.json();
  drawAgents(state.agents || []); drawCaps(state.capabilities || []); drawAlerts(state.alerts || [], state.quarantined || []); drawChain(state.chain);
  document.body.dataset.loaded = '1';
}
function connect() {
  const es = new EventSource('/events');
  es.onopen = () => { $('#conn').textContent = 'live'; };
  es.onerror = () => { $('#conn').textContent = 'reconnecting…'; };
  es.addEventListener('audit', (m) => { const e = JSON.parse(m.data); decision(e); if (!/^sandbox_started$|^capability_validated$|^egress$/.test(e.type)) refresh(); });
  es.addEventListener('agents', (m) => { const x = JSON.parse(m.data); sample(x.agents, x.at); drawAgents(x.agents); });
  es.addEventListener('reset', () => { $('#decisions tbody').textContent = ''; load(); });
}
load().then(connect);
</script></body></html>
`;
