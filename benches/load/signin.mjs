// Scripted sign-in against the pinned test provider (tests/idp/server.mjs),
// the way a browser does it: a cookie jar, no automatic redirects, the
// provider's login form (login/password) and consent form ("Continue").
// No dependencies: node >= 20.
//
//   node signin.mjs session START_URL [USER PASS]
//       GET START_URL as a browser navigation, follow the gate's (or
//       mod_auth_openidc's) redirect to the provider, sign in, follow back and
//       expect a 200 at the end. Prints the Cookie header value a browser
//       would now send to START_URL's origin.
//
//   node signin.mjs idtoken ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI [USER PASS]
//       The authorization-code flow itself (PKCE S256): signs in at the
//       provider, stops at the redirect to REDIRECT_URI (never requests it),
//       exchanges the code at the token endpoint (client_secret_basic) and
//       prints the ID token (aud = CLIENT_ID).

import * as crypto from 'node:crypto';
import * as http from 'node:http';

const NAV_ACCEPT = 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8';
const MAX_STEPS = 40;

function die(msg) {
  process.stderr.write(`signin: ${msg}\n`);
  process.exit(1);
}

// ------------------------------------------------------------ cookie jar
// Keyed by host:port (each server here has its own origin); paths ignored.
class Jar {
  constructor() { this.byOrigin = new Map(); }

  store(url, setCookies) {
    const key = new URL(url).host;
    const jar = this.byOrigin.get(key) ?? new Map();
    for (const sc of setCookies) {
      const [pair, ...attrs] = sc.split(';');
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      let gone = value === '';
      for (const a of attrs) {
        const [k, v = ''] = a.split('=');
        const attr = k.trim().toLowerCase();
        if (attr === 'max-age' && Number(v) <= 0) gone = true;
        if (attr === 'expires' && Date.parse(v) < Date.now()) gone = true;
      }
      if (gone) jar.delete(name);
      else jar.set(name, value);
    }
    this.byOrigin.set(key, jar);
  }

  header(url) {
    const jar = this.byOrigin.get(new URL(url).host);
    if (!jar || jar.size === 0) return undefined;
    return [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

// node:http rather than fetch: fetch always sends `Sec-Fetch-Mode: cors`,
// which mod_auth_openidc rightly takes for a script, not a navigation.
function request(jar, url, { method = 'GET', form } = {}) {
  const h = {
    accept: NAV_ACCEPT, 'user-agent': 'ssogate-bench-signin/1',
    'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document',
  };
  const cookie = jar.header(url);
  if (cookie) h.cookie = cookie;
  let body;
  if (form) {
    body = new URLSearchParams(form).toString();
    h['content-type'] = 'application/x-www-form-urlencoded';
    h['content-length'] = Buffer.byteLength(body);
  }
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: h, agent: false, timeout: 15000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const sc = res.headers['set-cookie'] ?? [];
        jar.store(url, Array.isArray(sc) ? sc : [sc]);
        const loc = res.headers.location;
        resolve({
          url, status: res.statusCode, body: Buffer.concat(chunks).toString('utf8'),
          location: loc ? new URL(loc, url).toString() : undefined,
        });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${method} ${url}`)));
    req.on('error', reject);
    req.end(body);
  });
}

function forms(page) {
  const out = [];
  const re = /<form\b([^>]*)>([\s\S]*?)<\/form>/gi;
  let m;
  while ((m = re.exec(page.body))) {
    const attr = (name, s) => (new RegExp(`\\b${name}\\s*=\\s*"([^"]*)"`, 'i').exec(s) ?? [])[1];
    const action = new URL((attr('action', m[1]) ?? '').replace(/&amp;/g, '&'), page.url).toString();
    const method = (attr('method', m[1]) ?? 'GET').toUpperCase();
    const fields = {};
    for (const inp of m[2].matchAll(/<input\b([^>]*)>/gi)) {
      const name = attr('name', inp[1]);
      if (name) fields[name] = (attr('value', inp[1]) ?? '').replace(/&amp;/g, '&');
    }
    out.push({ action, method, fields });
  }
  return out;
}

// Follows redirects and fills the provider's forms until `stop(url)` is true
// for a redirect target (returns that URL) or a final page is reached.
async function drive(jar, startUrl, user, pass, stop = () => false) {
  let page = await request(jar, startUrl);
  let loggedIn = false;
  const visited = [startUrl];
  for (let i = 0; i < MAX_STEPS; i++) {
    if ([301, 302, 303, 307, 308].includes(page.status) && page.location) {
      if (stop(page.location)) return { stoppedAt: page.location, visited };
      visited.push(page.location);
      page = await request(jar, page.location);
      continue;
    }
    if (page.status !== 200) return { page, visited };
    const form = forms(page).find((f) => /\/interaction\/[^/]+\/(login|confirm)$/.test(new URL(f.action).pathname));
    if (!form) return { page, visited };
    if (form.action.endsWith('/login')) {
      if (loggedIn) die(`the provider refused ${user}/${pass}`);
      loggedIn = true;
      form.fields.login = user;
      form.fields.password = pass;
    }
    visited.push(form.action);
    page = await request(jar, form.action, { method: 'POST', form: form.fields });
  }
  die(`no end after ${MAX_STEPS} steps: ${visited.join(' -> ')}`);
}

async function session(startUrl, user = 'alice', pass = 'alice-pass') {
  const jar = new Jar();
  const { page, visited } = await drive(jar, startUrl, user, pass);
  if (!page || page.status !== 200) {
    die(`sign-in via ${startUrl} ended with ${page?.status} at ${page?.url} after ${visited.join(' -> ')}\n${page?.body?.slice(0, 500)}`);
  }
  const cookie = jar.header(startUrl);
  if (!cookie) die(`sign-in via ${startUrl} left no cookie for its origin`);
  process.stdout.write(`${cookie}\n`);
}

async function idtoken(issuer, clientId, secret, redirectUri, user = 'alice', pass = 'alice-pass') {
  const disco = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = crypto.randomBytes(16).toString('base64url');
  const auth = new URL(disco.authorization_endpoint);
  auth.search = new URLSearchParams({
    response_type: 'code', client_id: clientId, redirect_uri: redirectUri,
    scope: 'openid profile email', state, nonce: crypto.randomBytes(16).toString('base64url'),
    code_challenge: challenge, code_challenge_method: 'S256',
  }).toString();
  const target = new URL(redirectUri);
  const jar = new Jar();
  const out = await drive(jar, auth.toString(), user, pass, (u) => {
    const x = new URL(u);
    return x.origin === target.origin && x.pathname === target.pathname;
  });
  if (!out.stoppedAt) die(`the code flow did not come back to ${redirectUri}: ${out.visited.join(' -> ')}`);
  const back = new URL(out.stoppedAt).searchParams;
  if (back.get('state') !== state || !back.get('code')) die(`bad authorization response: ${out.stoppedAt}`);
  const resp = await fetch(disco.token_endpoint, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code: back.get('code'), redirect_uri: redirectUri, code_verifier: verifier,
    }).toString(),
  });
  const tokens = await resp.json();
  if (!resp.ok || !tokens.id_token) die(`token endpoint: ${resp.status} ${JSON.stringify(tokens)}`);
  process.stdout.write(`${tokens.id_token}\n`);
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'session' && args.length >= 1) await session(...args);
else if (mode === 'idtoken' && args.length >= 4) await idtoken(...args);
else die('usage: signin.mjs session START_URL [USER PASS] | idtoken ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI [USER PASS]');
