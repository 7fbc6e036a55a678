// Start-to-ready time of the gate: exec the binary, poll GET /sso/readyz every
// 5 ms, stop the clock at the first 200. The environment (provider, upstream,
// secrets) comes from our own; each run gets a fresh loopback port.
//
//   node ready.mjs BINARY RUNS      prints {"runs_ms":[...],"median_ms":..,"min_ms":..,"max_ms":..}

import { spawn } from 'node:child_process';
import * as http from 'node:http';
import * as net from 'node:net';

const [bin, runsArg = '5'] = process.argv.slice(2);
const runs = Number(runsArg);
const POLL_MS = 5;
const TIMEOUT_MS = 10_000;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function probe(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/sso/readyz', agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => { req.destroy(); resolve(0); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function once() {
  const port = await freePort();
  const env = { ...process.env, CT_LISTEN_ADDR: `127.0.0.1:${port}`, CT_SERVER_URL: `http://127.0.0.1:${port}` };
  const t0 = performance.now();
  const child = spawn(bin, [], { env, stdio: ['ignore', 'ignore', 'ignore'] });
  let exited = false;
  child.on('exit', () => { exited = true; });
  try {
    for (;;) {
      const next = performance.now() + POLL_MS;
      const status = await probe(port);
      const now = performance.now();
      if (status === 200) return now - t0;
      if (exited) throw new Error('the gate exited before it was ready');
      if (now - t0 > TIMEOUT_MS) throw new Error(`not ready within ${TIMEOUT_MS} ms (last status ${status})`);
      await sleep(Math.max(0, next - now));
    }
  } finally {
    child.kill('SIGKILL');
    if (!exited) await new Promise((r) => child.once('exit', r));
  }
}

const results = [];
for (let i = 0; i < runs; i++) results.push(await once());
const sorted = [...results].sort((a, b) => a - b);
const round = (x) => Math.round(x * 10) / 10;
process.stdout.write(`${JSON.stringify({
  runs_ms: results.map(round),
  median_ms: round(sorted[Math.floor(sorted.length / 2)]),
  min_ms: round(sorted[0]),
  max_ms: round(sorted[sorted.length - 1]),
})}\n`);
