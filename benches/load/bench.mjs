// The measuring half of benches/load/run.sh: checks every variant's status,
// runs wrk against each variant in interleaved rounds, samples each server's
// CPU time from /proc around every run, prints the table and writes JSON.
//
//   node bench.mjs CONFIG.json OUT.json
//
// CONFIG: {duration, warmup, rounds, connections, threads, clk_tck, wrk_lua,
//          procs: {name: root pid}, extra: {...copied into the output...},
//          variants: [{id, name, group, base, nginx, url, cookie?, bearer?, accept?,
//                      expect, server, body_bytes?, same?, rp?}]}
// `server` names the process tree (in procs) whose CPU per request is the
// variant's "server CPU"; `base` is the id of the variant's group's direct run,
// `nginx` that of its nginx run, `same` that of nginx sent the same request,
// `rp` that of nginx listening with reuseport.

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';

import { median, sampleTrees, treeMemory } from './proc.mjs';

const [configPath, outPath] = process.argv.slice(2);
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);

// BENCH_ONLY=id,id…: just these variants (and the direct and nginx runs their
// ratios need), for a quick look; a published table runs them all.
if (process.env.BENCH_ONLY) {
  const want = new Set(process.env.BENCH_ONLY.split(',').map((x) => x.trim()));
  for (const v of cfg.variants) {
    if (want.has(v.id)) { want.add(v.base); want.add(v.nginx); if (v.same) want.add(v.same); if (v.rp) want.add(v.rp); }
  }
  cfg.variants = cfg.variants.filter((v) => want.has(v.id));
}

const sampleCpu = () => sampleTrees(cfg.procs);

// ------------------------------------------------------------ wrk

function wrk(v, seconds, tally = false) {
  const env = {
    ...process.env,
    BENCH_COOKIE: v.cookie ?? '', BENCH_BEARER: v.bearer ?? '', BENCH_ACCEPT: v.accept ?? '',
    BENCH_TALLY: tally ? '1' : '',
  };
  const args = [`-t${cfg.threads}`, `-c${cfg.connections}`, `-d${seconds}s`, '--timeout', '5s', '--latency',
    '-s', cfg.wrk_lua, v.url];
  return new Promise((resolve, reject) => {
    const child = spawn('wrk', args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const killer = setTimeout(() => child.kill('SIGKILL'), (seconds + 30) * 1000);
    child.on('exit', (code) => {
      clearTimeout(killer);
      const line = out.split('\n').find((l) => l.startsWith('JSON '));
      if (!line) { reject(new Error(`wrk for ${v.id} (exit ${code}) printed no summary:\n${out}\n${err}`)); return; }
      resolve(JSON.parse(line.slice(5)));
    });
  });
}

// ------------------------------------------------------------ checks

async function checkOne(v) {
  const headers = {};
  if (v.cookie) headers.cookie = v.cookie;
  if (v.bearer) headers.authorization = `Bearer ${v.bearer}`;
  if (v.accept) headers.accept = v.accept;
  const resp = await fetch(v.url, { headers, redirect: 'manual' });
  const body = Buffer.from(await resp.arrayBuffer());
  const problems = [];
  if (resp.status !== v.expect) problems.push(`status ${resp.status}, expected ${v.expect}: ${body.toString('utf8', 0, 200)}`);
  if (v.body_bytes !== undefined && resp.status === 200 && body.length !== v.body_bytes) {
    problems.push(`body is ${body.length} bytes, expected ${v.body_bytes}`);
  }
  const tally = await wrk(v, 1, true);
  const other = Object.entries(tally.statuses).filter(([s]) => Number(s) !== v.expect);
  if (tally.requests === 0) problems.push('wrk got no responses');
  if (other.length) problems.push(`under load: ${JSON.stringify(tally.statuses)}`);
  const errs = tally.connect_errors + tally.read_errors + tally.write_errors + tally.timeouts;
  if (errs) problems.push(`under load: ${errs} socket errors`);
  return { status: resp.status, body_bytes: body.length, tally: tally.statuses, problems };
}

// ------------------------------------------------------------ run

const checks = {};
let failed = false;
for (const v of cfg.variants) {
  const c = await checkOne(v);
  checks[v.id] = c;
  log(`check ${v.id.padEnd(18)} ${c.problems.length ? 'FAIL' : 'ok  '} status ${c.status}, ${c.body_bytes} B, under load ${JSON.stringify(c.tally)}${c.problems.length ? `: ${c.problems.join('; ')}` : ''}`);
  if (c.problems.length) failed = true;
}
if (failed) {
  fs.writeFileSync(outPath, `${JSON.stringify({ error: 'a variant does not answer as expected', checks }, null, 2)}\n`);
  log('bench: a variant does not answer as expected; nothing measured');
  process.exit(1);
}

const tick = 1e6 / cfg.clk_tck; // µs per clock tick
const runs = Object.fromEntries(cfg.variants.map((v) => [v.id, []]));
for (let round = 1; round <= cfg.rounds; round++) {
  for (const v of cfg.variants) {
    if (cfg.warmup > 0) await wrk(v, cfg.warmup);
    const before = sampleCpu();
    const r = await wrk(v, cfg.duration);
    const after = sampleCpu();
    const cpu = {};
    for (const name of Object.keys(cfg.procs)) {
      cpu[name] = r.requests ? ((after[name] - before[name]) * tick) / r.requests : NaN;
    }
    const busy = 1 - (after._idle - before._idle) / (after._total - before._total);
    const seconds = r.duration_us / 1e6;
    const errors = r.connect_errors + r.read_errors + r.write_errors + r.timeouts;
    const statusOk = v.expect >= 400 ? r.non2xx3xx === r.requests : r.non2xx3xx === 0;
    const run = {
      round, rps: r.requests / seconds, p50_ms: r.p50_us / 1000, p99_ms: r.p99_us / 1000,
      requests: r.requests, bytes_per_req: r.requests ? r.bytes / r.requests : 0,
      non2xx3xx: r.non2xx3xx, socket_errors: errors, status_ok: statusOk,
      cpu_us_per_req: cpu, machine_busy: busy,
    };
    runs[v.id].push(run);
    log(`round ${round} ${v.id.padEnd(18)} ${run.rps.toFixed(0).padStart(7)} req/s  p50 ${run.p50_ms.toFixed(2)} ms  p99 ${run.p99_ms.toFixed(2)} ms  `
      + `${v.server} ${cpu[v.server].toFixed(1)} µs/req  non-2xx/3xx ${r.non2xx3xx}  errors ${errors}  busy ${(busy * 100).toFixed(0)}%${statusOk ? '' : '  STATUS MISMATCH'}`);
  }
}

// ------------------------------------------------------------ summary

const summary = {};
for (const v of cfg.variants) {
  const rs = runs[v.id];
  summary[v.id] = {
    name: v.name, group: v.group, server: v.server, expect: v.expect,
    rps: median(rs.map((r) => r.rps)),
    p50_ms: median(rs.map((r) => r.p50_ms)),
    p99_ms: median(rs.map((r) => r.p99_ms)),
    server_cpu_us_per_req: median(rs.map((r) => r.cpu_us_per_req[v.server])),
    upstream_cpu_us_per_req: median(rs.map((r) => r.cpu_us_per_req.upstream)),
    bytes_per_req: median(rs.map((r) => r.bytes_per_req)),
    non2xx3xx: rs.reduce((a, r) => a + r.non2xx3xx, 0),
    socket_errors: rs.reduce((a, r) => a + r.socket_errors, 0),
    status_ok: rs.every((r) => r.status_ok),
    machine_busy: median(rs.map((r) => r.machine_busy)),
  };
}
for (const v of cfg.variants) {
  const s = summary[v.id];
  const direct = summary[v.base];
  const nginx = summary[v.nginx];
  s.x_direct = s.rps / direct.rps;
  s.x_nginx = s.rps / nginx.rps;
  s.p99_added_ms = s.p99_ms - direct.p99_ms;
  s.p50_added_ms = s.p50_ms - direct.p50_ms;
  s.cpu_x_nginx = s.server_cpu_us_per_req / nginx.server_cpu_us_per_req;
  for (const [key, ref] of [['same', summary[v.same]], ['rp', summary[v.rp]]]) {
    if (!ref) continue;
    s[`x_nginx_${key}`] = s.rps / ref.rps;
    s[`cpu_x_nginx_${key}`] = s.server_cpu_us_per_req / ref.server_cpu_us_per_req;
  }
}

// Each round's gate req/s over the same round's nginx req/s: the spread of a
// ratio whose median alone hides how far the rounds disagree.
const perRound = (id, ref) => {
  const refs = new Map(runs[ref].map((r) => [r.round, r.rps]));
  return runs[id].map((r) => r.rps / refs.get(r.round));
};
const perRoundIds = ['gate_cookie', 'gate_bearer', 'gate_cookie_h2', 'gate_b_cookie', 'gate_b_bearer'].filter((id) => summary[id]);
for (const id of perRoundIds) {
  if (summary.nginx) summary[id].x_nginx_rounds = perRound(id, 'nginx');
  if (summary.nginx_same) summary[id].x_nginx_same_rounds = perRound(id, 'nginx_same');
  if (summary.nginx_rp) summary[id].x_nginx_rp_rounds = perRound(id, 'nginx_rp');
}

const memory = {};
for (const [name, pid] of Object.entries(cfg.procs)) memory[name] = treeMemory(pid);

const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const header = ['variant', 'req/s', '×direct', '×nginx', 'p50 ms', 'p99 ms', 'p99 +direct', 'server CPU µs/req', 'CPU ×nginx', 'upstream µs/req', 'non-2xx/3xx', 'errors'];
const lines = [header];
for (const v of cfg.variants) {
  const s = summary[v.id];
  lines.push([v.name, f(s.rps, 0), f(s.x_direct), f(s.x_nginx), f(s.p50_ms), f(s.p99_ms), f(s.p99_added_ms),
    `${f(s.server_cpu_us_per_req, 1)} (${s.server})`, f(s.cpu_x_nginx), f(s.upstream_cpu_us_per_req, 1),
    String(s.non2xx3xx), String(s.socket_errors)]);
}
const widths = header.map((_, i) => Math.max(...lines.map((l) => l[i].length)));
const table = lines.map((l) => `| ${l.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`);
table.splice(1, 0, `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`);

// ------------------------------------------------------------ targets (issue 7, item 3)

const S = summary;
const targets = [];
const target = (what, ok, detail, beyond = false) => targets.push({ what, met: Boolean(ok), detail, ...(beyond ? { beyond } : {}) });
if (S.gate_cookie && S.nginx) {
  target('cookie ≥ 1.0× nginx req/s', S.gate_cookie.x_nginx >= 1.0, `${f(S.gate_cookie.x_nginx)}×`);
  target('cookie CPU/req ≤ nginx CPU/req', S.gate_cookie.cpu_x_nginx <= 1.0,
    `${f(S.gate_cookie.server_cpu_us_per_req, 1)} vs ${f(S.nginx.server_cpu_us_per_req, 1)} µs/req (${f(S.gate_cookie.cpu_x_nginx)}×)`);
}
if (S.gate_cookie && S.nginx_same) {
  target('cookie ≥ 1.0× nginx given the same request (like for like)', S.gate_cookie.x_nginx_same >= 1.0,
    `${f(S.gate_cookie.x_nginx_same)}×`);
  target('cookie CPU/req ≤ nginx CPU/req given the same request', S.gate_cookie.cpu_x_nginx_same <= 1.0,
    `${f(S.gate_cookie.server_cpu_us_per_req, 1)} vs ${f(S.nginx_same.server_cpu_us_per_req, 1)} µs/req (${f(S.gate_cookie.cpu_x_nginx_same)}×)`);
}
// Beyond the issue's list: nginx with a listening socket per worker
// (reuseport), which Debian's nginx does not set by default.
if (S.gate_cookie && S.nginx_rp) {
  target('cookie ≥ 1.0× nginx with reuseport', S.gate_cookie.x_nginx_rp >= 1.0, `${f(S.gate_cookie.x_nginx_rp)}×`, true);
  target('cookie CPU/req ≤ nginx with reuseport', S.gate_cookie.cpu_x_nginx_rp <= 1.0,
    `${f(S.gate_cookie.server_cpu_us_per_req, 1)} vs ${f(S.nginx_rp.server_cpu_us_per_req, 1)} µs/req (${f(S.gate_cookie.cpu_x_nginx_rp)}×)`, true);
}
if (S.gate_cookie && S.apache) {
  target('cookie ≥ 3× mod_auth_openidc req/s', S.gate_cookie.rps >= 3 * S.apache.rps, `${f(S.gate_cookie.rps / S.apache.rps)}×`);
}
if (S.gate_bearer) target('bearer ≥ 0.9× nginx req/s', S.gate_bearer.x_nginx >= 0.9, `${f(S.gate_bearer.x_nginx)}×`);
if (S.gate_bearer && S.nginx_rp) {
  target('bearer ≥ 0.9× nginx with reuseport', S.gate_bearer.x_nginx_rp >= 0.9, `${f(S.gate_bearer.x_nginx_rp)}×`, true);
}
if (S.gate_401 && S.gate_cookie) {
  target('401 ≥ 1.5× cookie req/s', S.gate_401.rps >= 1.5 * S.gate_cookie.rps, `${f(S.gate_401.rps / S.gate_cookie.rps)}×`);
}
for (const id of ['gate_cookie', 'gate_bearer']) {
  if (S[id]) target(`${id} p99 added over direct ≤ 0.5 ms`, S[id].p99_added_ms <= 0.5, `${S[id].p99_added_ms >= 0 ? "+" : ""}${f(S[id].p99_added_ms)} ms`);
}
const ready = cfg.extra?.ready;
if (ready) target('start to ready < 100 ms', ready.median_ms < 100, `median ${ready.median_ms} ms (${ready.runs_ms.join(', ')})`);
if (memory.gate) target('gate peak memory under load < 30 MB', memory.gate.hwm_kb < 30 * 1024, `VmHWM ${f(memory.gate.hwm_kb / 1024, 1)} MiB`);

const out = {
  when: new Date().toISOString(),
  machine: { cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model, mem_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release() },
  settings: {
    duration_s: cfg.duration, warmup_s: cfg.warmup, rounds: cfg.rounds, connections: cfg.connections, wrk_threads: cfg.threads,
    aggregate: 'median over rounds',
  },
  extra: cfg.extra, checks, summary, memory, targets, table: table.join('\n'), runs,
};
fs.writeFileSync(outPath, `${JSON.stringify(out, null, 2)}\n`);

process.stdout.write(`\n${table.join('\n')}\n\n`);
process.stdout.write('memory (kB, summed over each server\'s processes):\n');
for (const [name, m] of Object.entries(memory)) {
  process.stdout.write(`  ${name.padEnd(12)} ${String(m.processes).padStart(2)} proc  VmRSS ${String(m.rss_kb).padStart(7)}  VmHWM ${String(m.hwm_kb).padStart(7)}\n`);
}
if (ready) process.stdout.write(`gate start to ready: median ${ready.median_ms} ms (${ready.runs_ms.join(', ')} ms)\n`);
if (perRoundIds.length) process.stdout.write('\nper round, req/s over the same round\'s nginx run:\n');
for (const id of perRoundIds) {
  for (const key of ['x_nginx', 'x_nginx_same', 'x_nginx_rp']) {
    const xs = summary[id][`${key}_rounds`];
    if (!xs) continue;
    const ref = `${key.replace('x_', '×')}:`.padEnd(12);
    process.stdout.write(`  ${id.padEnd(13)} per-round ${ref} ${xs.map((x) => f(x)).join(' ')} (median ${f(median(xs))})\n`);
  }
}
const printTargets = (title, ts) => {
  if (!ts.length) return;
  process.stdout.write(`\n${title}:\n`);
  for (const t of ts) process.stdout.write(`  ${t.met ? 'MET    ' : 'NOT MET'}  ${t.what}: ${t.detail}\n`);
};
printTargets('targets (issue 7, item 3)', targets.filter((t) => !t.beyond));
printTargets('beyond the targets (nginx tuned with reuseport)', targets.filter((t) => t.beyond));
process.stdout.write(`\nJSON: ${outPath}\n`);
