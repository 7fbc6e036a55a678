// A real OpenID provider (npm `oidc-provider`, pinned in package.json) for
// ssogate's end-to-end tests. Configured entirely by environment variables;
// tests/support/idp.rs starts it from Rust. Node >= 20.19.
//
// stdout carries exactly one line, the JSON "ready" line:
//   {"issuer": "...", "port": N, "kid": "...", "private_key_pem": "..."}
// Everything else (logs, oidc-provider notices) goes to stderr.
//
// Environment:
//   IDP_PORT                       port to listen on; 0 (default) = any free port
//   IDP_HOST                       loopback address to bind, default 127.0.0.1
//   IDP_TLS_CERT, IDP_TLS_KEY      PEM files; when both are set serve https
//   IDP_CLIENT_ID                  required
//   IDP_CLIENT_SECRET              required
//   IDP_REDIRECT_URIS              required, comma-separated
//   IDP_POST_LOGOUT_REDIRECT_URIS  comma-separated, optional
//   IDP_BACKCHANNEL_LOGOUT_URI     optional
//   IDP_BACKCHANNEL_LOGOUT_SESSION_REQUIRED  1 (default) = logout tokens carry `sid`; 0 = not
//   IDP_AUTH_METHOD                client_secret_basic (default) or client_secret_post; the other
//                                  one is refused (401 invalid_client) at token, introspection, revocation
//   IDP_ID_TOKEN_TTL               seconds, default 3600
//   IDP_ACCESS_TOKEN_TTL           seconds, default 3600
//   IDP_REFRESH_TOKEN_TTL          seconds, default 86400
//   IDP_ROTATE_REFRESH_TOKENS      1 = rotate on every refresh (reuse revokes the grant); default 0 = never rotate
//   IDP_PKCE_REQUIRED              1 (default) = PKCE (S256) required at /auth; 0 = optional
//   IDP_SKIP_CONSENT               1 = no consent page, requested scopes are granted right after login; default 0
//   IDP_TOKENS_OUTLIVE_SESSION     1 = tokens are not bound to the provider's browser session (as
//                                  with offline_access) and survive its end; default 0 (see below)
//   IDP_WATCH_STDIN                1 = exit when stdin closes (the parent died)
//   NODE_EXTRA_CA_CERTS            (read by node itself) extra roots for back-channel logout calls to an https gate
//
// Test users (real password check): alice/alice-pass, bob/bob-pass,
// carol/carol-pass (carol has no email claims).
//
// Test hooks: GET /test/stats, POST /test/reset-stats.
//
// How it behaves (oidc-provider 9):
// - Sign-in: GET /interaction/<uid> shows a login form (fields `login`,
//   `password`, POST to /interaction/<uid>/login); a wrong password shows it
//   again (200, "Invalid username or password."). Then, unless
//   IDP_SKIP_CONSENT=1, a consent page (POST /interaction/<uid>/confirm, one
//   "Continue" button) that grants every requested scope. With a provider
//   session and an existing grant the authorization endpoint redirects straight
//   back with a code: no form at all.
// - offline_access is dropped from an authorization request unless it also
//   has prompt=consent. A refresh token is issued on every code exchange
//   anyway, but then it (and the access token) is bound to the provider's
//   browser session: it stops working when that session ends (sign-out at the
//   provider, or another account signing in with the same browser), unless
//   IDP_TOKENS_OUTLIVE_SESSION=1.
// - ID tokens carry the claims of the granted scopes (profile: name,
//   preferred_username; email: email, email_verified), `nonce`, and `sid`
//   when a back-channel logout URI is registered; refreshed ID tokens too.
//   Access tokens are opaque.
// - end_session (GET or POST /session/end with id_token_hint and a registered
//   post_logout_redirect_uri, optional state): with a provider session it
//   answers 200 with a confirmation page whose form
//   (POST /session/end/confirm, hidden `xsrf` and `logout=yes`) must be
//   submitted with the provider's cookies; without one, a self-submitting
//   form with the same fields. The confirm POST revokes the grants, sends the
//   back-channel logout tokens (awaited, 2.5 s timeout) and then answers 303
//   to post_logout_redirect_uri (?state=... when given).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

// oidc-provider prints notices with console.info (stdout); stdout is reserved
// for the ready line, so route every console method to stderr before loading it.
// Two warnings every start are expected here (node 20 is "unsupported" by
// oidc-provider 9 but works; the in-memory adapter is what tests want): drop them.
const EXPECTED_NOISE = [/Unsupported runtime/, /in-memory adapter is used/];
const toStderr = console.error.bind(console);
for (const m of ['log', 'info', 'debug', 'warn', 'error']) {
  console[m] = (...args) => {
    if (typeof args[0] === 'string' && EXPECTED_NOISE.some((re) => re.test(args[0]))) return;
    toStderr(...args);
  };
}

// Start-up progress on stderr, so a start that hangs shows where.
const startedAt = Date.now();
const progress = (what) => process.stderr.write(`idp: ${what} after ${Date.now() - startedAt} ms\n`);
progress(`node ${process.version} pid ${process.pid} started`);
const { default: Provider } = await import('oidc-provider');
progress('oidc-provider loaded');

function fail(msg) {
  process.stderr.write(`idp: ${msg}\n`);
  process.exit(2);
}

function env(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v;
}

function envInt(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) fail(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return n;
}

function envBool(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) return fallback;
  return ['1', 'true', 'yes', 'on'].includes(raw.toLowerCase());
}

function envList(name) {
  return env(name, '').split(',').map((s) => s.trim()).filter(Boolean);
}

const host = env('IDP_HOST', '127.0.0.1');
const loopback = host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
if (!loopback) fail(`IDP_HOST must be a loopback address, got ${host}`);
const port = envInt('IDP_PORT', 0);
if (port > 65535) fail('IDP_PORT out of range');

const tlsCert = env('IDP_TLS_CERT', undefined);
const tlsKey = env('IDP_TLS_KEY', undefined);
if (Boolean(tlsCert) !== Boolean(tlsKey)) fail('IDP_TLS_CERT and IDP_TLS_KEY go together');

const clientId = env('IDP_CLIENT_ID', undefined) ?? fail('IDP_CLIENT_ID is required');
const clientSecret = env('IDP_CLIENT_SECRET', undefined) ?? fail('IDP_CLIENT_SECRET is required');
const redirectUris = envList('IDP_REDIRECT_URIS');
if (redirectUris.length === 0) fail('IDP_REDIRECT_URIS is required');
const postLogoutRedirectUris = envList('IDP_POST_LOGOUT_REDIRECT_URIS');
const backchannelLogoutUri = env('IDP_BACKCHANNEL_LOGOUT_URI', undefined);
const backchannelSessionRequired = envBool('IDP_BACKCHANNEL_LOGOUT_SESSION_REQUIRED', true);
const authMethod = env('IDP_AUTH_METHOD', 'client_secret_basic');
if (!['client_secret_basic', 'client_secret_post'].includes(authMethod)) {
  fail('IDP_AUTH_METHOD must be client_secret_basic or client_secret_post');
}

const idTokenTtl = envInt('IDP_ID_TOKEN_TTL', 3600);
const accessTokenTtl = envInt('IDP_ACCESS_TOKEN_TTL', 3600);
const refreshTokenTtl = envInt('IDP_REFRESH_TOKEN_TTL', 86400);
const rotateRefreshTokens = envBool('IDP_ROTATE_REFRESH_TOKENS', false);
const pkceRequired = envBool('IDP_PKCE_REQUIRED', true);
const skipConsent = envBool('IDP_SKIP_CONSENT', false);
const tokensOutliveSession = envBool('IDP_TOKENS_OUTLIVE_SESSION', false);

// ---------------------------------------------------------------- accounts

const USERS = {
  alice: {
    password: 'alice-pass',
    claims: {
      sub: 'alice', email: 'alice@example.com', email_verified: true, name: 'Alice Example', preferred_username: 'alice',
    },
  },
  bob: {
    password: 'bob-pass',
    claims: {
      sub: 'bob', email: 'bob@example.com', email_verified: true, name: 'Bob Example', preferred_username: 'bob',
    },
  },
  carol: {
    password: 'carol-pass',
    claims: { sub: 'carol', name: 'Carol NoMail', preferred_username: 'carol' },
  },
};

function checkPassword(login, password) {
  const user = Object.hasOwn(USERS, login) ? USERS[login] : undefined;
  if (!user) return undefined;
  const a = Buffer.from(String(password));
  const b = Buffer.from(user.password);
  if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) return undefined;
  return user.claims.sub;
}

async function findAccount(_ctx, sub) {
  const user = Object.hasOwn(USERS, sub) ? USERS[sub] : undefined;
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { ...user.claims };
    },
  };
}

// ---------------------------------------------------------------- keys

const kid = crypto.randomBytes(12).toString('base64url');
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const privateKeyPem = privateKey.export({ format: 'pem', type: 'pkcs8' });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
progress('signing key made');

// ---------------------------------------------------------------- stats

function freshStats() {
  return {
    token: { authorization_code: 0, refresh_token: 0, client_credentials: 0 },
    token_errors: 0,
    token_error_codes: {},
    backchannel_logout: { success: 0, error: 0 },
    end_session: 0,
    logins: 0,
    failed_logins: 0,
  };
}
let stats = freshStats();

// ---------------------------------------------------------------- server

const useTls = Boolean(tlsCert);
const handlerRef = { current: (_req, res) => { res.statusCode = 503; res.end(); } };
const server = useTls
  ? https.createServer({ cert: fs.readFileSync(tlsCert), key: fs.readFileSync(tlsKey) }, (q, s) => handlerRef.current(q, s))
  : http.createServer((q, s) => handlerRef.current(q, s));

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, host, () => { server.off('error', reject); resolve(); });
}).catch((err) => fail(`cannot listen on ${host}:${port}: ${err.message}`));

const actualPort = server.address().port;
const issuerHost = host === 'localhost' ? '127.0.0.1' : host;
const issuer = `${useTls ? 'https' : 'http'}://${issuerHost.includes(':') ? `[${issuerHost}]` : issuerHost}:${actualPort}`;

const client = {
  client_id: clientId,
  client_secret: clientSecret,
  client_name: 'ssogate under test',
  redirect_uris: redirectUris,
  post_logout_redirect_uris: postLogoutRedirectUris,
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code'],
  token_endpoint_auth_method: authMethod,
  id_token_signed_response_alg: 'RS256',
};
if (backchannelLogoutUri) {
  client.backchannel_logout_uri = backchannelLogoutUri;
  client.backchannel_logout_session_required = backchannelSessionRequired;
}

const longTtl = Math.max(refreshTokenTtl, accessTokenTtl, idTokenTtl, 14 * 24 * 3600);

const provider = new Provider(issuer, {
  clients: [client],
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  findAccount,
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true, logoutSource },
    backchannelLogout: { enabled: true },
    revocation: { enabled: true, allowedPolicy: async (_ctx, c, token) => token.clientId === c.clientId },
    introspection: { enabled: true, allowedPolicy: async () => true },
    clientCredentials: { enabled: true },
    userinfo: { enabled: true },
  },
  pkce: { required: () => pkceRequired },
  // Always hand out a refresh token on code exchange (the gate does not send
  // prompt=consent, and may not ask for offline_access).
  issueRefreshToken: async (_ctx, c) => c.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: rotateRefreshTokens,
  // oidc-provider drops offline_access unless prompt=consent is sent, so the
  // gate's tokens are normally bound to the provider's browser session.
  ...(tokensOutliveSession ? { expiresWithSession: async () => false } : {}),
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    IdToken: idTokenTtl,
    RefreshToken: refreshTokenTtl,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: longTtl,
    Grant: longTtl,
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  // oidc-provider's outgoing requests (back-channel logout) refuse special-use
  // addresses such as 127.0.0.1 through an SSRF-protecting dispatcher; the
  // gate under test lives on loopback, so use node's plain fetch.
  fetch: (url, options) => {
    const { dispatcher: _ssrfGuard, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1>Error</h1>${Object.entries(out).map(([k, v]) => `<p><b>${esc(k)}</b>: ${esc(v)}</p>`).join('')}`);
  },
});
provider.proxy = false;

provider.on('grant.success', (ctx) => {
  const gty = ctx.oidc?.params?.grant_type;
  if (gty) stats.token[gty] = (stats.token[gty] ?? 0) + 1;
});
provider.on('grant.error', (_ctx, err) => {
  stats.token_errors += 1;
  const code = err?.error ?? 'unknown';
  stats.token_error_codes[code] = (stats.token_error_codes[code] ?? 0) + 1;
  process.stderr.write(`idp: token error ${code}: ${err?.error_description ?? err?.message ?? ''}\n`);
});
provider.on('server_error', (_ctx, err) => {
  process.stderr.write(`idp: server_error ${err?.stack ?? err}\n`);
});
provider.on('backchannel.success', () => { stats.backchannel_logout.success += 1; });
provider.on('backchannel.error', (_ctx, err, _client, accountId) => {
  stats.backchannel_logout.error += 1;
  process.stderr.write(`idp: back-channel logout for ${accountId} failed: ${err?.message ?? err}\n`);
});
provider.on('end_session.success', () => { stats.end_session += 1; });

// ---------------------------------------------------------------- html

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
${body}
</body></html>
`;
}

// The default page keeps its buttons outside the <form> (form="op.logoutForm")
// and only the "yes" button carries logout=yes. Put that value in the form as
// a hidden input, so submitting the form as it is signs the user out of the
// provider (all clients), like pressing "Yes, sign me out".
async function logoutSource(ctx, form) {
  const full = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/><button type="submit">Yes, sign me out</button></form>');
  ctx.type = 'html';
  ctx.body = page('Sign out', `<h1>Do you want to sign out from ${esc(ctx.host)}?</h1>\n${full}`);
}

function loginPage(uid, params, error) {
  return page('Sign in', `<h1>Sign in</h1>
<p>Client: ${esc(params.client_id)}</p>
${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<input type="text" name="login" placeholder="Username" value="" autofocus>
<input type="password" name="password" placeholder="Password">
<button type="submit">Sign in</button>
</form>`);
}

function consentPage(uid, params, details) {
  const scopes = [...new Set([...(details.missingOIDCScope ?? [])])];
  return page('Consent', `<h1>Authorize</h1>
<p>Client ${esc(params.client_id)} asks for: ${esc(scopes.join(' ') || '(nothing new)')}</p>
<form method="post" action="/interaction/${esc(uid)}/confirm">
<button type="submit" autofocus>Continue</button>
</form>`);
}

// ---------------------------------------------------------------- interaction

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

async function grantConsent(req, res, details) {
  const { prompt: { details: missing }, params, session } = details;
  let { grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const savedId = await grant.save();
  const consent = {};
  if (!grantId) {
    grantId = savedId;
    consent.grantId = grantId;
  }
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    send(res, 400, page('Error', `<h1>Error</h1><p>${esc(err.message)}</p>`));
    return;
  }
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<h1>Error</h1><p>interaction mismatch</p>'));
    return;
  }
  const { prompt, params } = details;

  if (req.method === 'GET' && action === undefined) {
    if (prompt.name === 'login') {
      send(res, 200, loginPage(uid, params));
    } else if (prompt.name === 'consent') {
      if (skipConsent) await grantConsent(req, res, details);
      else send(res, 200, consentPage(uid, params, prompt.details));
    } else {
      send(res, 400, page('Error', `<h1>Error</h1><p>unknown prompt ${esc(prompt.name)}</p>`));
    }
    return;
  }

  if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const sub = checkPassword(form.get('login') ?? '', form.get('password') ?? '');
    if (!sub) {
      stats.failed_logins += 1;
      send(res, 200, loginPage(uid, params, 'Invalid username or password.'));
      return;
    }
    stats.logins += 1;
    await provider.interactionFinished(req, res, { login: { accountId: sub } }, { mergeWithLastSubmission: false });
    return;
  }

  if (req.method === 'POST' && action === 'confirm' && prompt.name === 'consent') {
    await readForm(req);
    await grantConsent(req, res, details);
    return;
  }

  send(res, 400, page('Error', `<h1>Error</h1><p>unexpected ${esc(req.method)} ${esc(action ?? '')} for prompt ${esc(prompt.name)}</p>`));
}

// ---------------------------------------------------------------- routing

const providerCallback = provider.callback();
const CLIENT_AUTH_ROUTES = new Set(['/token', '/token/introspection', '/token/revocation']);

async function handle(req, res) {
  const url = new URL(req.url, issuer);
  const path = url.pathname;

  if (path === '/test/stats' && req.method === 'GET') {
    send(res, 200, JSON.stringify(stats), 'application/json');
    return;
  }
  if (path === '/test/reset-stats' && req.method === 'POST') {
    stats = freshStats();
    send(res, 200, JSON.stringify(stats), 'application/json');
    return;
  }

  // oidc-provider accepts client_secret_basic and client_secret_post for a
  // client registered with either; be strict about the registered one.
  if (req.method === 'POST' && CLIENT_AUTH_ROUTES.has(path)) {
    const basic = /^basic\s/i.test(req.headers.authorization ?? '');
    const wrong = authMethod === 'client_secret_basic' ? !basic : basic;
    if (wrong) {
      if (path === '/token') {
        stats.token_errors += 1;
        stats.token_error_codes.invalid_client = (stats.token_error_codes.invalid_client ?? 0) + 1;
      }
      process.stderr.write(`idp: ${path}: client authentication is not ${authMethod}\n`);
      res.setHeader('WWW-Authenticate', 'Basic realm="idp"');
      send(res, 401, JSON.stringify({
        error: 'invalid_client',
        error_description: `client authentication must use ${authMethod}`,
      }), 'application/json');
      return;
    }
  }

  const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm))?$/.exec(path);
  if (m) {
    await interaction(req, res, m[1], m[2]);
    return;
  }

  providerCallback(req, res);
}

handlerRef.current = (req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`idp: handler error ${err?.stack ?? err}\n`);
    if (!res.headersSent) send(res, 500, 'internal error', 'text/plain');
    else res.destroy();
  });
};

function exit() {
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', exit);
process.on('SIGINT', exit);
if (envBool('IDP_WATCH_STDIN', false)) {
  process.stdin.on('end', exit);
  process.stdin.on('close', exit);
  process.stdin.resume();
}

process.stdout.write(`${JSON.stringify({
  issuer, port: actualPort, kid, private_key_pem: privateKeyPem,
})}\n`);
process.stderr.write(`idp: listening on ${issuer} (client ${clientId}, rotate=${rotateRefreshTokens}, pkce_required=${pkceRequired}, skip_consent=${skipConsent})\n`);
