//! The one service: `/sso/*` goes to the gate's routes, everything else
//! through the gate decision to the proxy. It never returns an error to
//! hyper; every failure is a response.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::request_body::RequestBody;
use http::{Request, Response, header};

pub mod fast;

use crate::config::Config;
use crate::fields::Fields;
use crate::gate::{self, Credential, Decision, Policy};
use crate::identity::Identity;
use crate::lifecycle::{self, Checked};
use crate::live::Live;
use crate::provider::recent_bearer::RecentBearer;
use crate::provider::{Bearer, Registry};
use crate::proxy::{Forward, Proxy, upgrade};
use crate::respond::{self, Body, Failure};
use crate::routes;
use crate::session::refresh::SingleFlight;
use crate::session::{LoginStates, Recent, Session, Store};
use crate::telemetry::metrics::{Metrics, Outcome};
use crate::telemetry::{request_id, request_log};

/// Everything a request may need, built once at startup.
pub struct State {
    pub config: Config,
    pub registry: Registry,
    pub store: Arc<dyn Store>,
    pub login_states: LoginStates,
    pub proxy: Proxy,
    /// `CT_SERVER_URL`'s origin, as browsers send it in `Origin`.
    pub origin: String,
    /// How sessions age (refresh skew, maximum age), in seconds.
    pub policy: Policy,
    /// `CT_SSO_REFRESH_GRACE` in seconds.
    pub grace: u64,
    /// Refreshes under way, one per session.
    pub refreshes: SingleFlight,
    /// Live connections by session.
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
}

/// What keeps a client connection counted — its `CT_MAX_CONNECTIONS`
/// slot, its place in its serving thread's load — for as long as anything
/// serving it lives: its requests, and the WebSocket it may switch to
/// (hyper's connection ends at the switch, the relay goes on).
pub type Held = Arc<dyn std::any::Any + Send + Sync>;

/// What the gate keeps per client connection, for all its requests.
pub struct ClientConn {
    /// The peer's address, IPv4-mapped addresses as IPv4.
    ip: std::net::IpAddr,
    /// `ip` as an `X-Forwarded-For` value.
    peer_value: http::HeaderValue,
    /// The session this connection showed last.
    recent: Recent,
    /// The bearer token this connection showed last.
    recent_bearer: RecentBearer,
    /// The upstream connection its last request used.
    upstream: Arc<crate::proxy::pool::Slot>,
    held: Held,
}

impl ClientConn {
    pub fn new(peer: SocketAddr, held: Held) -> Self {
        let ip = peer.ip().to_canonical();
        Self {
            ip,
            // An address's text is always a valid header value.
            peer_value: http::HeaderValue::from_str(&ip.to_string())
                .unwrap_or(http::HeaderValue::from_static("unknown")),
            recent: Recent::default(),
            recent_bearer: RecentBearer::default(),
            upstream: Arc::default(),
            held,
        }
    }
}

/// Handles one request.
pub async fn handle(
    state: Arc<State>,
    req: Request<RequestBody>,
    conn: Arc<ClientConn>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let start = Instant::now();
    let id = request_id::of(req.headers());
    let mut scope =
        request_log::Scope::start(req.method().as_str().as_bytes(), req.uri().path(), &id);
    let note = Note::default();
    let cx = Context {
        conn: &conn,
        note: &note,
        // The upstream sees the same id (headers::to_upstream).
        request_id: id.made(),
    };
    let routed = route(&state, req, &cx);
    // Without request lines (the level is off) the future is not wrapped.
    let mut resp = if scope.is_none() {
        routed.await
    } else {
        request_log::InScope::new(routed, &mut scope).await
    };
    resp.headers_mut()
        .insert(request_id::X_REQUEST_ID, id.into_value());
    let elapsed = start.elapsed();
    let upstream = note.upstream();
    let outcome = note.outcome().unwrap_or(match resp.status().as_u16() {
        302 => Outcome::SignIn,
        500.. => Outcome::Error,
        _ => Outcome::Rejected,
    });
    state.metrics.request(
        outcome,
        elapsed.saturating_sub(upstream.unwrap_or_default()),
        upstream,
    );
    if let Some(scope) = &scope {
        request_log::finish(
            scope,
            resp.status().as_u16(),
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
    }
    Ok(resp)
}

/// What a request's routing carries along besides the request.
struct Context<'a> {
    conn: &'a ClientConn,
    note: &'a Note,
    /// The request id the gate made, if it did.
    request_id: Option<&'a [u8]>,
}

/// What the routing learnt that the response does not show: whether the
/// request was the gate's own or went to the upstream, and how long the
/// upstream took. Atomics, so the note can be shared across awaits.
#[derive(Default)]
struct Note {
    /// 0: not set; else `Outcome as u8 + 1`.
    outcome: AtomicU8,
    /// Microseconds until the upstream's response head, +1 (0: not forwarded).
    upstream_us: AtomicU64,
}

impl Note {
    fn set(&self, outcome: Outcome) {
        self.outcome.store(outcome as u8 + 1, Ordering::Relaxed);
    }

    fn outcome(&self) -> Option<Outcome> {
        const ALL: [Outcome; 5] = [
            Outcome::Forwarded,
            Outcome::SignIn,
            Outcome::Rejected,
            Outcome::Error,
            Outcome::Sso,
        ];
        let stored = usize::from(self.outcome.load(Ordering::Relaxed));
        stored.checked_sub(1).and_then(|i| ALL.get(i).copied())
    }

    fn upstream(&self) -> Option<Duration> {
        match self.upstream_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us - 1)),
        }
    }
}

/// Whether a path is the gate's own: `/sso` and everything below it.
pub fn is_gate_path(path: &str) -> bool {
    path == "/sso" || path.starts_with("/sso/")
}

/// What a forwarded connection lives as long as.
enum Tie {
    /// Unauthenticated mode: nothing.
    Nothing,
    Session(Arc<Session>),
    Bearer {
        identity: Arc<Identity>,
        expires_at: u64,
    },
}

impl Tie {
    fn identity(&self) -> Option<&Identity> {
        match self {
            Tie::Session(s) => Some(&s.identity),
            Tie::Bearer { identity, .. } => Some(identity),
            Tie::Nothing => None,
        }
    }

    /// What ends a WebSocket or a long answer forwarded for it.
    fn guard(&self, state: &Arc<State>) -> Option<crate::proxy::cutoff::Guard> {
        match self {
            Tie::Session(s) => Some(lifecycle::guard(state, s)),
            Tie::Bearer { expires_at, .. } => Some(lifecycle::bearer_guard(*expires_at)),
            Tie::Nothing => None,
        }
    }
}

impl ClientConn {
    /// What the proxy is told about a request of this connection.
    fn forward<'a>(
        &'a self,
        identity: Option<&'a Identity>,
        request_id: Option<&'a [u8]>,
        websocket: bool,
    ) -> Forward<'a> {
        Forward {
            peer: self.ip,
            peer_value: &self.peer_value,
            identity,
            upstream: &self.upstream,
            held: &self.held,
            request_id,
            websocket,
        }
    }
}

async fn route(
    state: &Arc<State>,
    mut req: Request<RequestBody>,
    cx: &Context<'_>,
) -> Response<Body> {
    if req.extensions().get::<AmbiguousFraming>().is_some() {
        return ambiguous_framing(&req);
    }
    if !host_is_single(&req) {
        return bad_request(&req, "The request must carry one Host header.");
    }
    // One normal form for every decision below and for the upstream.
    match crate::path::normalise(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => {}
        Ok(Cow::Owned(normal)) => match with_path(req.uri(), &normal) {
            Some(uri) => *req.uri_mut() = uri,
            None => return bad_path(&req, "the path cannot be used"),
        },
        Err(e) => return bad_path(&req, &e.to_string()),
    }
    if is_gate_path(req.uri().path()) {
        cx.note.set(Outcome::Sso);
        return routes::handle(state, req).await;
    }
    if crate::path::is_reserved(req.uri().path()) {
        // `/SSO/…`, `/sso./…`: the gate's prefix in another spelling.
        return Failure::NotFound.respond(respond::wants_html(req.headers()));
    }
    if state.registry.is_empty() {
        // Only reachable with CT_ALLOW_UNAUTHENTICATED=true (validation refuses otherwise).
        return forward(state, req, cx, Tie::Nothing, Vec::new()).await;
    }
    let now = crate::clock::now();
    let navigation = gate::is_navigation(req.method(), req.headers());
    if let Some(session) = state
        .store
        .load_recent(Fields::Map(req.headers()), &cx.conn.recent)
        .filter(|s| state.registry.get(&s.option).is_some())
    {
        return with_session(state, req, cx, session, navigation, now).await;
    }
    let (credential, identity) = match bearer_token(req.headers()) {
        Some(token) => {
            match verify_bearer_recent(state, token, now, &cx.conn.recent_bearer).await {
                Some((identity, expires_at)) => (
                    Credential::Bearer { expires_at },
                    Some((identity, expires_at)),
                ),
                None => (Credential::InvalidBearer, None),
            }
        }
        None => (Credential::None, None),
    };
    match (
        gate::decide(navigation, credential, &state.policy, now),
        identity,
    ) {
        (Decision::Allow, Some((identity, expires_at))) => {
            request_log::record_sub(&identity.sub);
            forward(
                state,
                req,
                cx,
                Tie::Bearer {
                    identity,
                    expires_at,
                },
                Vec::new(),
            )
            .await
        }
        (decision, _) => challenge(&decision, req.uri()),
    }
}

/// A request carrying a session: forward it, refreshing first when due.
async fn with_session(
    state: &Arc<State>,
    req: Request<RequestBody>,
    cx: &Context<'_>,
    session: Arc<Session>,
    navigation: bool,
    now: u64,
) -> Response<Body> {
    request_log::record_sub(&session.identity.sub);
    let expired = if navigation {
        Decision::SignIn
    } else {
        Decision::Unauthorized {
            invalid_token: false,
        }
    };
    match lifecycle::check(state, session, req.headers(), now).await {
        Checked::Valid { session, cookies } => {
            forward(state, req, cx, Tie::Session(session), cookies).await
        }
        Checked::Ended { cookies } => routes::with_cookies(challenge(&expired, req.uri()), cookies),
        Checked::Expired => challenge(&expired, req.uri()),
        Checked::Unavailable => {
            Failure::ProviderUnavailable.respond(respond::wants_html(req.headers()))
        }
    }
}

/// The request's URI with `path` (already normal) and its query, as origin-form.
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    http::Uri::builder().path_and_query(pq).build().ok()
}

/// Marks a request whose head framed its body ambiguously (both
/// `Content-Length` and `Transfer-Encoding`, or `Content-Length` twice), or
/// one that came after such a request on its connection; set by the server's
/// framing watcher, which sees the headers hyper drops or merges.
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// 400, and the connection closed: the bytes after an ambiguous head could be
/// a request smuggled past a proxy in front, so none of them is read.
fn ambiguous_framing(req: &Request<RequestBody>) -> Response<Body> {
    tracing::debug!("request refused: ambiguous message framing");
    let mut resp = Failure::BadRequest(
        "The request frames its body ambiguously (Content-Length with Transfer-Encoding, or Content-Length twice).".into(),
    )
    .respond(respond::wants_html(req.headers()));
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, an HTTP/1.0
/// one at most (HTTP/2 carries `:authority` instead, and at most one `Host`).
fn host_is_single(req: &Request<RequestBody>) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => false,
        (None, None) => req.version() != http::Version::HTTP_11,
        (Some(_), None) => true,
    }
}

fn bad_request(req: &Request<RequestBody>, why: &str) -> Response<Body> {
    tracing::debug!(reason = why, "request refused");
    Failure::BadRequest(why.into()).respond(respond::wants_html(req.headers()))
}

fn bad_path(req: &Request<RequestBody>, why: &str) -> Response<Body> {
    tracing::debug!(reason = why, "request refused: unusable path");
    Failure::BadRequest(format!("{why}.")).respond(respond::wants_html(req.headers()))
}

/// 302 to sign in, or 401.
fn challenge(decision: &Decision, uri: &http::Uri) -> Response<Body> {
    match decision {
        Decision::SignIn => respond::redirect(&sign_in_location(uri)),
        Decision::Unauthorized { invalid_token } => respond::unauthorized(*invalid_token),
        Decision::Allow | Decision::Refresh => respond::unauthorized(false),
    }
}

async fn forward(
    state: &Arc<State>,
    req: Request<RequestBody>,
    cx: &Context<'_>,
    tie: Tie,
    cookies: Vec<http::HeaderValue>,
) -> Response<Body> {
    let Context {
        conn,
        note,
        request_id,
    } = *cx;
    let html = respond::wants_html(req.headers());
    let websocket = upgrade::is_websocket(req.headers());
    if websocket
        && !upgrade::origin_allowed(req.headers(), &state.origin, &state.config.allowed_origins)
    {
        tracing::warn!("websocket refused: Origin is not this gate's");
        return Failure::ForbiddenOrigin.respond(html);
    }
    let sent = Instant::now();
    let forwarded = state
        .proxy
        .forward(
            req,
            conn.forward(tie.identity(), request_id, websocket),
            || tie.guard(state),
        )
        .await;
    let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
    note.upstream_us.store(took + 1, Ordering::Relaxed);
    match forwarded {
        Ok(resp) => {
            note.set(Outcome::Forwarded);
            routes::with_cookies(resp, cookies)
        }
        Err(e) => forward_failed(state, note, &e, html, cookies),
    }
}

/// The answer when forwarding failed: 400 when the client's request body
/// failed or stalled (a client that vanished or stalled mid-upload is no
/// upstream failure), else 502.
fn forward_failed(
    state: &State,
    note: &Note,
    e: &crate::proxy::ProxyError,
    html: bool,
    cookies: Vec<http::HeaderValue>,
) -> Response<Body> {
    if let Some(why) = e.refused() {
        tracing::debug!(why, "the request cannot be sent over HTTP/2");
        let why = format!("the request cannot be sent to the upstream over HTTP/2: {why}");
        return routes::with_cookies(Failure::BadRequest(why).respond(html), cookies);
    }
    match e.client_body() {
        Some(idle) => {
            tracing::debug!(error = %e, "the client's request body failed");
            let why = if idle {
                "the request body stopped arriving"
            } else {
                "the request body could not be read"
            };
            routes::with_cookies(Failure::BadRequest(why.into()).respond(html), cookies)
        }
        None => {
            tracing::warn!(error = %e, "upstream unavailable");
            state.metrics.upstream_errors.increment(1);
            note.set(Outcome::Error);
            routes::with_cookies(Failure::UpstreamUnavailable.respond(html), cookies)
        }
    }
}

/// The token of `Authorization: Bearer …`, if that is the scheme.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    bearer_token_in(Fields::Map(headers))
}

/// [`bearer_token`] over header fields in either form.
pub fn bearer_token_in(fields: Fields<'_>) -> Option<&str> {
    let v = fields.get("authorization")?;
    // What `HeaderValue::to_str` accepts: visible ASCII and tabs. Control
    // characters never get this far (httparse and `HeaderValue` refuse
    // them), so ASCII it is: one vectorised check.
    if !v.is_ascii() {
        return None;
    }
    let v = std::str::from_utf8(v).ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// [`verify_bearer`], answered from the connection's memo when it shows
/// the token it showed last (see [`RecentBearer`]).
async fn verify_bearer_recent(
    state: &State,
    token: &str,
    now: u64,
    recent: &RecentBearer,
) -> Option<(Arc<Identity>, u64)> {
    let epoch = crate::provider::keys_epoch();
    if let Some(found) = recent.get(token.as_bytes(), now, epoch) {
        return Some(found);
    }
    let (identity, expires_at, until) = verify_bearer(&state.registry, token, now).await?;
    recent.put(token.as_bytes(), &identity, expires_at, until, epoch);
    Some((identity, expires_at))
}

/// Checks a bearer token with every option that accepts them; an unknown
/// key id triggers one (rate-limited) key reload and a second look. Gives
/// the identity, the token's expiry and until when the answer may be reused.
pub async fn verify_bearer(
    registry: &Registry,
    token: &str,
    now: u64,
) -> Option<(Arc<Identity>, u64, u64)> {
    for option in registry.iter() {
        let mut outcome = option.verify_bearer(token, now);
        if matches!(outcome, Bearer::UnknownKey) {
            option.reload_keys().await;
            outcome = option.verify_bearer(token, now);
        }
        match outcome {
            Bearer::Valid {
                identity,
                expires_at,
                until,
            } => return Some((identity, expires_at, until)),
            Bearer::Invalid(reason) => {
                tracing::debug!(option = option.id(), %reason, "bearer token refused")
            }
            Bearer::UnknownKey | Bearer::NotAccepted => {}
        }
    }
    None
}

/// `/sso/login?rd=<the original path and query>`.
fn sign_in_location(uri: &http::Uri) -> String {
    let original = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let rd: String = url::form_urlencoded::byte_serialize(original.as_bytes()).collect();
    format!("{}?rd={rd}", routes::LOGIN)
}
