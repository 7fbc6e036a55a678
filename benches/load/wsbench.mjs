// The measuring half of benches/load/websockets.sh: memory of idle WebSocket
// connections held through the gate and through nginx, then echo throughput
// (closed loop, one message in flight per connection) direct, through nginx,
// through Apache with mod_auth_openidc and through the gate, in interleaved
// rounds.
//
//   node wsbench.mjs CONFIG.json OUT.json
//
// CONFIG: {wstool, duration, warmup, rounds, connections, sizes, idle_conns,
//          sources, clk_tck, procs: {name: pid},
//          targets: [{id, name, url, headers: ["K: V"], server}], extra}

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';

import { median, sampleTrees, treeMemory } from './proc.mjs';

const [configPath, outPath] = process.argv.slice(2);
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tick = 1e6 / cfg.clk_tck;
const byId = Object.fromEntries(cfg.targets.map((t) => [t.id, t]));
const hdrArgs = (t) => (t.headers ?? []).flatMap((h) => ['-H', h]);

function wstool(args, timeoutS) {
  return new Promise((resolve) => {
    const child = spawn(cfg.wstool, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const killer = setTimeout(() => child.kill('SIGKILL'), timeoutS * 1000);
    child.on('exit', (code) => {
      clearTimeout(killer);
      const line = out.trim().split('\n').pop() ?? '';
      let json;
      try { json = JSON.parse(line); } catch { json = { error: `no JSON (exit ${code}): ${out} ${err}` }; }
      resolve({ code, json });
    });
  });
}

const load = (t, conns, secs, size) => wstool(['load', t.url, String(conns), String(secs), String(size), ...hdrArgs(t)], secs + 60);

// ------------------------------------------------------------ checks

const checks = {};
let failed = false;
for (const t of cfg.targets) {
  const r = await load(t, 1, 0.5, 64);
  const ok = r.code === 0 && r.json.messages > 0 && r.json.errors === 0;
  checks[t.id] = r.json;
  log(`check ${t.id.padEnd(8)} ${ok ? 'ok  ' : 'FAIL'} ${JSON.stringify(r.json)}`);
  if (!ok) failed = true;
}
if (cfg.refused) {
  const t = byId[cfg.refused.id];
  const r = await wstool(['load', t.url, '1', '0.5', '64', ...(cfg.refused.headers ?? []).flatMap((h) => ['-H', h])], 30);
  const ok = r.code !== 0 && /HTTP 401/.test(r.json.error ?? '');
  checks[`${t.id}_without_cookie`] = r.json;
  log(`check ${t.id} without a cookie is refused: ${ok ? 'ok' : 'FAIL'} ${JSON.stringify(r.json)}`);
  if (!ok) failed = true;
}
if (failed) {
  fs.writeFileSync(outPath, `${JSON.stringify({ error: 'a WebSocket path does not work', checks }, null, 2)}\n`);
  log('wsbench: a WebSocket path does not work; nothing measured');
  process.exit(1);
}

// ------------------------------------------------------------ idle connections

async function idle(t) {
  const n = cfg.idle_conns;
  await sleep(1000);
  const before = treeMemory(cfg.procs[t.server]);
  const child = spawn(cfg.wstool, ['idle', t.url, String(n), cfg.sources.join(','), '600', ...hdrArgs(t)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let last;
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    const lines = buf.split('\n');
    buf = lines.pop();
    for (const l of lines) { try { last = JSON.parse(l); } catch { /* partial */ } }
  });
  let exited = false;
  child.on('exit', () => { exited = true; });
  const deadline = Date.now() + 200_000;
  while (!last && !exited && Date.now() < deadline) await sleep(100);
  const opened = last;
  await sleep(3000); // settle
  const held = treeMemory(cfg.procs[t.server]);
  await sleep(1100);
  const status = last;
  child.kill('SIGTERM');
  while (!exited) await sleep(50);
  await sleep(2000);
  const after = treeMemory(cfg.procs[t.server]);
  const open = status?.open ?? 0;
  const r = {
    target: t.id, server: t.server, requested: n, open, errors: status?.errors, dropped: status?.dropped,
    first_error: status?.first_error || undefined, open_secs: opened?.open_secs,
    rss_before_kb: before.rss_kb, rss_held_kb: held.rss_kb, rss_after_close_kb: after.rss_kb,
    hwm_kb: held.hwm_kb,
    kb_per_conn: open ? (held.rss_kb - before.rss_kb) / open : NaN,
  };
  log(`idle ${t.id.padEnd(6)} ${open}/${n} open (errors ${r.errors}, dropped ${r.dropped}) in ${r.open_secs}s: `
    + `RSS ${before.rss_kb} -> ${held.rss_kb} kB (${r.kb_per_conn.toFixed(2)} KB/connection), after close ${after.rss_kb} kB`
    + `${r.first_error ? `; first error: ${r.first_error}` : ''}`);
  return r;
}

const idleResults = {};
for (const id of cfg.idle_targets) idleResults[id] = await idle(byId[id]);

// ------------------------------------------------------------ echo throughput

const runs = {};
for (let round = 1; round <= cfg.rounds; round++) {
  for (const size of cfg.sizes) {
    // Odd rounds in the configured order, even ones reversed, so that no
    // target always follows the same other one.
    const order = round % 2 === 1 ? cfg.targets : [...cfg.targets].reverse();
    for (const t of order) {
      const key = `${t.id}_${size}`;
      runs[key] ??= [];
      if (cfg.warmup > 0) await load(t, cfg.connections, cfg.warmup, size);
      const before = sampleTrees(cfg.procs);
      const r = await load(t, cfg.connections, cfg.duration, size);
      const after = sampleTrees(cfg.procs);
      const m = r.json.messages;
      const cpu = {};
      for (const name of Object.keys(cfg.procs)) cpu[name] = m ? ((after[name] - before[name]) * tick) / m : NaN;
      const run = {
        round, msgs_per_s: r.json.msgs_per_s, mbytes_per_s: r.json.mbytes_per_s, p50_ms: r.json.p50_us / 1000,
        p99_ms: r.json.p99_us / 1000, messages: m, errors: r.json.errors ?? 1, cpu_us_per_msg: cpu,
        machine_busy: 1 - (after._idle - before._idle) / (after._total - before._total),
      };
      runs[key].push(run);
      log(`round ${round} ${key.padEnd(12)} ${String(Math.round(run.msgs_per_s)).padStart(7)} msg/s  p50 ${run.p50_ms.toFixed(2)} ms  `
        + `p99 ${run.p99_ms.toFixed(2)} ms  ${t.server} ${cpu[t.server].toFixed(1)} µs/msg  errors ${run.errors}`);
    }
  }
}

const summary = {};
for (const size of cfg.sizes) {
  for (const t of cfg.targets) {
    const rs = runs[`${t.id}_${size}`];
    summary[`${t.id}_${size}`] = {
      target: t.id, name: t.name, size, server: t.server,
      msgs_per_s: median(rs.map((r) => r.msgs_per_s)), mbytes_per_s: median(rs.map((r) => r.mbytes_per_s)),
      p50_ms: median(rs.map((r) => r.p50_ms)), p99_ms: median(rs.map((r) => r.p99_ms)),
      server_cpu_us_per_msg: median(rs.map((r) => r.cpu_us_per_msg[t.server])),
      upstream_cpu_us_per_msg: median(rs.map((r) => r.cpu_us_per_msg.upstream)),
      errors: rs.reduce((a, r) => a + r.errors, 0),
    };
  }
  for (const t of cfg.targets) {
    const s = summary[`${t.id}_${size}`];
    s.x_direct = s.msgs_per_s / summary[`direct_${size}`].msgs_per_s;
    s.x_nginx = s.msgs_per_s / summary[`nginx_${size}`].msgs_per_s;
    // The same ratio round by round (each round runs the two back to back).
    const nginxRuns = runs[`nginx_${size}`];
    s.x_nginx_rounds = runs[`${t.id}_${size}`].map((r, i) => r.msgs_per_s / nginxRuns[i].msgs_per_s);
    s.cpu_x_nginx = s.server_cpu_us_per_msg / summary[`nginx_${size}`].server_cpu_us_per_msg;
    const apache = summary[`apache_${size}`];
    if (apache && t.id !== 'apache') s.x_apache = s.msgs_per_s / apache.msgs_per_s;
  }
}

const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
function render(lines) {
  const widths = lines[0].map((_, i) => Math.max(...lines.map((l) => String(l[i]).length)));
  const out = lines.map((l) => `| ${l.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(' | ')} |`);
  out.splice(1, 0, `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`);
  return out.join('\n');
}
const echoTable = render([
  ['echo', 'msg/s', 'MB/s', '×direct', '×nginx', 'p50 ms', 'p99 ms', 'server CPU µs/msg', 'CPU ×nginx', 'upstream µs/msg', 'errors'],
  ...Object.values(summary).map((s) => [`${s.name}, ${s.size} B`, f(s.msgs_per_s, 0), f(s.mbytes_per_s, 1), f(s.x_direct), f(s.x_nginx),
    f(s.p50_ms), f(s.p99_ms), `${f(s.server_cpu_us_per_msg, 1)} (${s.server})`, f(s.cpu_x_nginx), f(s.upstream_cpu_us_per_msg, 1), s.errors]),
]);
const idleTable = render([
  ['idle WebSockets', 'open', 'errors', 'dropped', 'opened in s', 'RSS before kB', 'RSS held kB', 'KB per connection', 'RSS after close kB'],
  ...Object.values(idleResults).map((r) => [`through ${byId[r.target].name} (${r.server})`, `${r.open}/${r.requested}`, r.errors, r.dropped,
    f(r.open_secs, 1), r.rss_before_kb, r.rss_held_kb, f(r.kb_per_conn), r.rss_after_close_kb]),
]);

const targets = [];
const gi = idleResults.gate;
const ni = idleResults.nginx;
if (gi) {
  targets.push({
    what: 'idle WebSockets ≤ 10 KB of gate memory per connection', met: gi.kb_per_conn <= 10,
    detail: `${f(gi.kb_per_conn)} KB over ${gi.open} connections${ni ? ` (nginx ${f(ni.kb_per_conn)} KB)` : ''}`,
  });
}
for (const size of cfg.sizes) {
  const g = summary[`gate_${size}`];
  if (g) {
    targets.push({
      what: `echo throughput ≥ nginx (${size} B)`, met: g.x_nginx >= 1,
      detail: `${f(g.x_nginx)}× (rounds ${g.x_nginx_rounds.map((x) => f(x)).join(', ')})`,
    });
  }
}

fs.writeFileSync(outPath, `${JSON.stringify({
  when: new Date().toISOString(),
  machine: { cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model, mem_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release() },
  settings: { duration_s: cfg.duration, warmup_s: cfg.warmup, rounds: cfg.rounds, connections: cfg.connections, sizes: cfg.sizes, idle_conns: cfg.idle_conns, sources: cfg.sources },
  extra: cfg.extra, checks, idle: idleResults, summary, targets, tables: { idle: idleTable, echo: echoTable }, runs,
}, null, 2)}\n`);

process.stdout.write(`\n${idleTable}\n\n${echoTable}\n\ntargets (issue 7, item 3):\n`);
for (const t of targets) process.stdout.write(`  ${t.met ? 'MET    ' : 'NOT MET'}  ${t.what}: ${t.detail}\n`);
const overApache = cfg.sizes.filter((size) => summary[`gate_${size}`]?.x_apache !== undefined);
if (overApache.length) {
  process.stdout.write(`\ngate echo over Apache+mod_auth_openidc: ${overApache.map((size) => `${size} B ${f(summary[`gate_${size}`].x_apache)}×`).join(', ')}\n`);
}
process.stdout.write(`\nJSON: ${outPath}\n`);
