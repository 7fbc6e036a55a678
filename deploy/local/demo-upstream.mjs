// A demo "protected application" for deploy/local/run.sh: node:http only, no npm packages.
//
// It shows what ssogate forwards: the identity headers, the application's
// own cookie, WebSockets and streamed responses.
//   GET /api/headers  JSON echo of the request (method, path, headers)
//   GET /api/stream   five lines, one per second (streamed through the gate)
//   /ws               WebSocket echo (says who it was opened as, then echoes)
//   GET /healthz      "ok"
//   anything else     an HTML page: "Hello <name>" and the headers it received
//
// Environment: DEMO_UPSTREAM_HOST (127.0.0.1), DEMO_UPSTREAM_PORT (9000).

import * as crypto from 'node:crypto';
import * as http from 'node:http';

const host = process.env.DEMO_UPSTREAM_HOST || '127.0.0.1';
const port = Number(process.env.DEMO_UPSTREAM_PORT || 9000);

const IDENTITY = ['x-forwarded-user', 'x-forwarded-email', 'x-forwarded-preferred-username'];
const FORWARDING = ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host'];

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function displayName(headers) {
  return headers['x-forwarded-preferred-username']
    || headers['x-forwarded-email']
    || headers['x-forwarded-user']
    || 'stranger (no identity headers: are you reaching me without the gate?)';
}

function cookies(req) {
  const out = {};
  for (const part of (req.headers.cookie || '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

function send(res, status, body, type, extra = {}) {
  res.writeHead(status, {
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...extra,
  });
  res.end(body);
}

function rows(headers, names) {
  return names.map((n) => `<tr><th>${escapeHtml(n)}</th><td>${
    headers[n] === undefined ? '<em>absent</em>' : `<code>${escapeHtml(headers[n])}</code>`
  }</td></tr>`).join('\n');
}

function page(req) {
  const visits = (Number.parseInt(cookies(req).demo_visits, 10) || 0) + 1;
  const others = Object.keys(req.headers)
    .filter((n) => !IDENTITY.includes(n) && !FORWARDING.includes(n))
    .sort();
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ssogate demo</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; max-width: 56rem; margin: 2rem auto; padding: 0 1rem; }
  table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
  th, td { text-align: left; padding: .25rem .75rem; border-bottom: 1px solid #ddd; vertical-align: top; }
  code { word-break: break-all; } #log { background: #f4f4f4; padding: .5rem; min-height: 3rem; }
</style></head>
<body>
<h1>Hello ${escapeHtml(displayName(req.headers))}</h1>
<p>This page is the protected application behind ssogate. You asked for
<code>${escapeHtml(req.url)}</code>; this is visit ${visits} according to the
application's own cookie <code>demo_visits</code>, which passes through the gate.</p>
<h2>Identity headers set by the gate</h2>
<table>${rows(req.headers, IDENTITY)}</table>
<h2>Forwarding headers</h2>
<table>${rows(req.headers, FORWARDING)}</table>
<h2>Everything else the application received</h2>
<table>${rows(req.headers, others)}</table>
<h2>Try</h2>
<ul>
  <li><a href="/api/headers">/api/headers</a>: the same as JSON</li>
  <li><a href="/api/stream">/api/stream</a>: a response streamed line by line</li>
  <li><a href="/sso/userinfo">/sso/userinfo</a>: the gate's view of your session</li>
  <li><form method="post" action="/sso/logout" style="display:inline">
      <button type="submit">Sign out</button></form> (ends the session here and at the provider)</li>
</ul>
<h2>WebSocket</h2>
<form id="ws-form"><input id="ws-input" value="hello through the gate" size="40">
<button>Send</button></form>
<pre id="log"></pre>
<script>
  const log = (line) => { document.getElementById('log').textContent += line + '\\n'; };
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  ws.onopen = () => log('open');
  ws.onmessage = (e) => log('< ' + e.data);
  ws.onclose = (e) => log('closed (' + e.code + ')');
  document.getElementById('ws-form').onsubmit = (e) => {
    e.preventDefault();
    const text = document.getElementById('ws-input').value;
    log('> ' + text);
    ws.send(text);
  };
</script>
</body></html>
`;
  return { html, visits };
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://demo').pathname;
  if (path === '/healthz') return send(res, 200, 'ok\n', 'text/plain');
  if (path === '/api/headers') {
    const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers }, null, 2);
    return send(res, 200, `${body}\n`, 'application/json');
  }
  if (path === '/api/stream') {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
    let i = 0;
    const tick = () => {
      res.write(`line ${i} at ${new Date().toISOString()}\n`);
      i += 1;
      if (i < 5) timer = setTimeout(tick, 1000);
      else res.end();
    };
    let timer = setTimeout(tick, 0);
    res.on('close', () => clearTimeout(timer));
    return undefined;
  }
  if (path === '/ws') return send(res, 426, 'WebSocket upgrade required\n', 'text/plain');
  const { html, visits } = page(req);
  return send(res, 200, html, 'text/html; charset=utf-8', {
    'set-cookie': `demo_visits=${visits}; Path=/; HttpOnly; SameSite=Lax`,
  });
});

// A minimal WebSocket echo (RFC 6455): frames come back as they were sent,
// unmasked; pings get pongs; a close is answered and ends the connection.
server.on('upgrade', (req, socket, head) => {
  const key = req.headers['sec-websocket-key'];
  if ((req.headers.upgrade || '').toLowerCase() !== 'websocket' || !key) {
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    return;
  }
  const accept = crypto.createHash('sha1')
    .update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n'
    + `sec-websocket-accept: ${accept}\r\n\r\n`);
  socket.setNoDelay(true);
  const frame = (opcode, payload) => {
    const len = payload.length;
    const header = len < 126 ? Buffer.from([0x80 | opcode, len])
      : len < 65536 ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 0xff])
        : Buffer.concat([Buffer.from([0x80 | opcode, 127]), (() => {
          const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(len)); return b;
        })()]);
    return Buffer.concat([header, payload]);
  };
  socket.write(frame(1, Buffer.from(`connected as ${displayName(req.headers)}`)));
  let buffer = head && head.length ? Buffer.from(head) : Buffer.alloc(0);
  const drain = () => {
    for (;;) {
      if (buffer.length < 2) return;
      const fin = buffer[0] & 0x80;
      const opcode = buffer[0] & 0x0f;
      const masked = buffer[1] & 0x80;
      let len = buffer[1] & 0x7f;
      let offset = 2;
      if (len === 126) {
        if (buffer.length < 4) return;
        len = buffer.readUInt16BE(2); offset = 4;
      } else if (len === 127) {
        if (buffer.length < 10) return;
        len = Number(buffer.readBigUInt64BE(2)); offset = 10;
      }
      const maskOffset = offset;
      if (masked) offset += 4;
      if (buffer.length < offset + len) return;
      const payload = Buffer.from(buffer.subarray(offset, offset + len));
      if (masked) for (let i = 0; i < len; i += 1) payload[i] ^= buffer[maskOffset + (i % 4)];
      buffer = buffer.subarray(offset + len);
      if (opcode === 0x8) { socket.end(frame(0x8, payload.subarray(0, 2))); return; }
      if (opcode === 0x9) { socket.write(frame(0xa, payload)); continue; }
      if (opcode === 0xa) continue;
      // Text, binary or continuation: echo with the same opcode and FIN bit.
      const out = frame(opcode, payload);
      if (!fin) out[0] &= 0x7f;
      socket.write(out);
    }
  };
  socket.on('data', (chunk) => { buffer = Buffer.concat([buffer, chunk]); drain(); });
  socket.on('error', () => socket.destroy());
  drain();
});

server.listen(port, host, () => {
  process.stderr.write(`demo-upstream: listening on http://${host}:${server.address().port}\n`);
});

const stop = () => {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
