//! The one service: `/sso/*` goes to the gate's routes, everything else
//! through the gate decision to the proxy. It never returns an error to
//! hyper; every failure is a response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, header};
use hyper::body::Incoming;
use tracing::Instrument as _;

use crate::config::Config;
use crate::gate::{self, Credential, Decision};
use crate::identity::Identity;
use crate::provider::{Bearer, Registry};
use crate::proxy::{Forward, Proxy, upgrade};
use crate::respond::{self, Body, Failure};
use crate::routes;
use crate::session::{LoginStates, Store};

/// Everything a request may need, built once at startup.
pub struct State {
    pub config: Config,
    pub registry: Registry,
    pub store: Arc<dyn Store>,
    pub login_states: LoginStates,
    pub proxy: Proxy,
    /// `CT_SERVER_URL`'s origin, as browsers send it in `Origin`.
    pub origin: String,
}

/// Handles one request.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, std::convert::Infallible> {
    let start = Instant::now();
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), sub = tracing::field::Empty);
    let resp = route(&state, req, peer).instrument(span.clone()).await;
    let _enter = span.enter();
    tracing::info!(
        status = resp.status().as_u16(),
        latency_us = start.elapsed().as_micros() as u64,
        "request"
    );
    Ok(resp)
}

/// Whether a path is the gate's own: `/sso` and everything below it.
pub fn is_gate_path(path: &str) -> bool {
    path == "/sso" || path.starts_with("/sso/")
}

async fn route(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if is_gate_path(req.uri().path()) {
        return routes::handle(state, req).await;
    }
    if state.registry.is_empty() {
        // Only reachable with CT_ALLOW_UNAUTHENTICATED=true (validation refuses otherwise).
        return forward(state, req, peer, None).await;
    }
    let now = crate::clock::now();
    let navigation = gate::is_navigation(req.method(), req.headers());
    let session = state
        .store
        .load(req.headers())
        .filter(|s| state.registry.get(&s.option).is_some());
    let (credential, identity) = match &session {
        Some(s) => (Credential::Session(s), Some(s.identity.clone())),
        None => match bearer_token(req.headers()) {
            Some(token) => match verify_bearer(&state.registry, token, now).await {
                Some((identity, expires_at)) => (Credential::Bearer { expires_at }, Some(identity)),
                None => (Credential::InvalidBearer, None),
            },
            None => (Credential::None, None),
        },
    };
    match gate::decide(navigation, credential, now) {
        Decision::Allow => {
            if let Some(id) = &identity {
                tracing::Span::current().record("sub", id.sub.as_str());
            }
            forward(state, req, peer, identity.as_ref()).await
        }
        Decision::SignIn => respond::redirect(&sign_in_location(req.uri())),
        Decision::Unauthorized { invalid_token } => respond::unauthorized(invalid_token),
    }
}

async fn forward(
    state: &State,
    req: Request<Incoming>,
    peer: SocketAddr,
    identity: Option<&Identity>,
) -> Response<Body> {
    let html = respond::wants_html(req.headers());
    if upgrade::is_websocket(req.headers())
        && !upgrade::origin_allowed(req.headers(), &state.origin, &state.config.allowed_origins)
    {
        tracing::warn!("websocket refused: Origin is not this gate's");
        return Failure::ForbiddenOrigin.respond(html);
    }
    match state
        .proxy
        .forward(
            req,
            Forward {
                peer: peer.ip(),
                identity,
            },
        )
        .await
    {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "upstream unavailable");
            Failure::UpstreamUnavailable.respond(html)
        }
    }
}

/// The token of `Authorization: Bearer …`, if that is the scheme.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks a bearer token with every option that accepts them; an unknown
/// key id triggers one (rate-limited) key reload and a second look.
pub async fn verify_bearer(registry: &Registry, token: &str, now: u64) -> Option<(Identity, u64)> {
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
            } => return Some((identity, expires_at)),
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
