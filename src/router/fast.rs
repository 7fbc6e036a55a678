//! The gate's decision and forwarding for the server's own HTTP/1.1 path
//! (`server/fast.rs`): a request whose head was parsed in place and that
//! can be decided without waiting for anything — a session that needs no
//! refresh, a bearer token checked with keys already loaded, or no login
//! option at all — is forwarded here and its answer handed back as the
//! upstream's head bytes. Every other request is declined before anything
//! was done for it, and hyper serves it through [`super::handle`]: sign-in
//! routes, refreshes, key reloads, 401s and 302s. The rules are the same
//! functions the usual path calls ([`gate::decide`], [`Store::load_recent`],
//! [`headers::to_upstream`](crate::proxy::headers::to_upstream)), over
//! [`Fields`] instead of a header map.
//!
//! [`Store::load_recent`]: crate::session::Store::load_recent

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{ClientConn, Note, State, Tie, forward_failed};
use crate::fields::Fields;
use crate::gate::{self, Credential, Decision};
use crate::lifecycle;
use crate::provider::Bearer;
use crate::proxy::h1::AnswerHead;
use crate::respond::{self, Body};
use crate::telemetry::metrics::Outcome;
use crate::telemetry::request_id::RequestId;
use crate::telemetry::request_log;

/// A request head the server parsed in place, with what it checked: an
/// HTTP/1.1 request in origin form whose path is already normal and not the
/// gate's, without an upgrade or an `Expect`, its body (if any) framed by
/// one `Content-Length`.
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The path and query, as the client sent them.
    pub target: &'a [u8],
    pub path: &'a str,
    pub fields: Fields<'a>,
    /// Its `Content-Length`.
    pub length: Option<u64>,
}

/// A request the fast path may forward, and what its connection lives as
/// long as.
pub struct Admitted(Tie);

/// The gate's decision, taken without waiting; `None` declines the request
/// (hyper serves it the usual way, which may refresh, reload keys, answer
/// 401 or 302).
pub fn admit(state: &State, conn: &ClientConn, fields: Fields<'_>, now: u64) -> Option<Admitted> {
    if state.registry.is_empty() {
        // Only with CT_ALLOW_UNAUTHENTICATED=true (validation refuses otherwise).
        return Some(Admitted(Tie::Nothing));
    }
    if let Some(session) = state
        .store
        .load_recent(fields, &conn.recent)
        .filter(|s| state.registry.get(&s.option).is_some())
    {
        return matches!(lifecycle::decide(state, &session, now), Decision::Allow)
            .then_some(Admitted(Tie::Session(session)));
    }
    let token = super::bearer_token_in(fields)?;
    let epoch = crate::provider::keys_epoch();
    let (identity, expires_at) = match conn.recent_bearer.get(token.as_bytes(), now, epoch) {
        Some(found) => found,
        None => {
            let (identity, expires_at, until) = verify_bearer_now(state, token, now)?;
            conn.recent_bearer
                .put(token.as_bytes(), &identity, expires_at, until, epoch);
            (identity, expires_at)
        }
    };
    matches!(
        gate::decide(false, Credential::Bearer { expires_at }, &state.policy, now),
        Decision::Allow
    )
    .then_some(Admitted(Tie::Bearer {
        identity,
        expires_at,
    }))
}

/// [`super::verify_bearer`] without its key reload: `None` as soon as an
/// option does not know the token's key (the usual path reloads and asks
/// again), or when no option accepts the token (the usual path answers
/// 401, and logs why).
fn verify_bearer_now(
    state: &State,
    token: &str,
    now: u64,
) -> Option<(Arc<crate::identity::Identity>, u64, u64)> {
    for option in state.registry.iter() {
        match option.verify_bearer(token, now) {
            Bearer::Valid {
                identity,
                expires_at,
                until,
            } => return Some((identity, expires_at, until)),
            Bearer::UnknownKey => return None,
            Bearer::Invalid(_) | Bearer::NotAccepted => {}
        }
    }
    None
}

/// What the upstream answered, or the gate's own answer in its place.
pub enum Answered {
    Upstream(AnswerHead, Body),
    Gate(http::Response<Body>),
}

/// Forwards an admitted request and records it (metrics, the request log
/// line) as [`super::handle`] does.
pub async fn forward(
    state: &Arc<State>,
    conn: &ClientConn,
    req: &Request<'_>,
    body: Option<respond::BoxBody>,
    admitted: Admitted,
    id: &RequestId,
) -> Answered {
    let start = Instant::now();
    let mut scope = request_log::Scope::start(req.method, req.path, id);
    let note = Note::default();
    let forwarded = forward_noted(state, conn, req, body, admitted, id, &note);
    let answered = if scope.is_none() {
        forwarded.await
    } else {
        request_log::InScope::new(forwarded, &mut scope).await
    };
    let status = match &answered {
        Answered::Upstream(head, _) => head.status,
        Answered::Gate(resp) => resp.status(),
    };
    let elapsed = start.elapsed();
    let upstream = note.upstream();
    state.metrics.request(
        note.outcome().unwrap_or(Outcome::Error),
        elapsed.saturating_sub(upstream.unwrap_or_default()),
        upstream,
    );
    if let Some(scope) = &scope {
        request_log::finish(
            scope,
            status.as_u16(),
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
    }
    answered
}

async fn forward_noted(
    state: &Arc<State>,
    conn: &ClientConn,
    req: &Request<'_>,
    body: Option<respond::BoxBody>,
    Admitted(tie): Admitted,
    id: &RequestId,
    note: &Note,
) -> Answered {
    if let Some(identity) = tie.identity() {
        request_log::record_sub(&identity.sub);
    }
    let sent = Instant::now();
    let forwarded = state
        .proxy
        .forward_raw(
            req,
            body,
            conn.forward(tie.identity(), id.made(), false),
            || tie.guard(state),
        )
        .await;
    let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
    note.upstream_us.store(took + 1, Ordering::Relaxed);
    match forwarded {
        Ok((head, body)) => {
            note.set(Outcome::Forwarded);
            Answered::Upstream(head, body)
        }
        Err(e) => {
            let html = respond::wants_html_in(req.fields);
            Answered::Gate(forward_failed(state, note, &e, html, Vec::new()))
        }
    }
}
