//! Forwarding to `CT_UPSTREAM_URL` over kept-alive HTTP/1.1 connections
//! (see [`pool`] and [`h1`]): bodies stream both ways, WebSocket upgrades
//! are spliced.

pub mod cutoff;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod idle;
mod lazy_buf;
pub mod pool;
pub mod relay;
mod stream;
pub mod upgrade;
pub(crate) mod wake_flag;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::request_body::RequestBody;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use url::Url;

use self::cutoff::{Cutoff, Guard};
use self::pool::Pool;
use crate::fields::Fields;
use crate::identity::Identity;
use crate::respond::{self, Body};

/// Answers longer than this are tied to their session like streams.
const LONG_BODY_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream request failed: {0}")]
    Upstream(h1::H1Error),
    #[error("upstream HTTP/2 request failed: {0}")]
    Http2(h2::H2Error),
    /// The client's request body failed while it was being sent on.
    #[error("the request body failed: {0}")]
    ClientBody(respond::BoxError),
    #[error("cannot connect to the upstream: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot build the upstream URI")]
    Uri,
    #[error("upstream TLS setup failed: {0}")]
    Tls(String),
}

impl ProxyError {
    /// Why the request cannot go to an HTTP/2 upstream at all (a target
    /// or header HTTP/2 cannot carry, such as a raw backtick or a byte
    /// that is not UTF-8 in the path): the client's to mend, so 400.
    pub fn refused(&self) -> Option<&'static str> {
        match self {
            ProxyError::Http2(h2::H2Error::Request(why)) => Some(why),
            _ => None,
        }
    }

    /// Whether the failure came from the client's side: its request body
    /// failed (the client went away) or went quiet past
    /// `CT_BODY_IDLE_TIMEOUT`; `Some(true)` for the latter.
    pub fn client_body(&self) -> Option<bool> {
        let ProxyError::ClientBody(e) = self else {
            return None;
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(err) = source {
            if err.downcast_ref::<idle::BodyIdle>().is_some() {
                return Some(true);
            }
            source = err.source();
        }
        Some(false)
    }
}

pub struct Proxy {
    /// Connections to the upstream.
    pool: Pool,
    /// `CT_UPSTREAM_HTTP2`: requests other than WebSocket upgrades go over
    /// HTTP/2 ([`h2`]).
    http2: bool,
    /// The upstream URL's path without its trailing `/` ("" for the root).
    base_path: String,
    proto: HeaderValue,
    public_host: HeaderValue,
    /// `CT_BODY_IDLE_TIMEOUT`.
    body_idle_timeout: Duration,
    /// `CT_TRUSTED_PROXIES`.
    trusted_proxies: Vec<ipnet::IpNet>,
    websockets_open: metrics::Gauge,
}

/// How the proxy treats clients (from the configuration).
pub struct ClientPolicy {
    pub body_idle_timeout: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `ssogate_websockets_open`.
    pub websockets_open: metrics::Gauge,
    /// `ssogate_upstream_connections_opened_total`.
    pub upstream_opened: pool::Opened,
}

/// What the router tells the proxy about one request.
pub struct Forward<'a> {
    pub peer: IpAddr,
    /// `peer` as an `X-Forwarded-For` value (rendered once per connection).
    pub peer_value: &'a HeaderValue,
    pub identity: Option<&'a Identity>,
    /// The client connection's upstream connection.
    pub upstream: &'a Arc<pool::Slot>,
    /// Kept by a WebSocket relay for its life ([`crate::router::Held`]).
    pub held: &'a crate::router::Held,
    /// The request id, when the gate made it (the client's goes on as it came).
    pub request_id: Option<&'a [u8]>,
    /// The request asks for a WebSocket ([`upgrade::is_websocket`]).
    pub websocket: bool,
}

impl Proxy {
    pub fn new(
        upstream: &Url,
        server_url: &Url,
        extra_roots: Option<&[u8]>,
        http2: bool,
        clients: ClientPolicy,
    ) -> Result<Self, ProxyError> {
        let base_path = upstream.path().trim_end_matches('/').to_string();

        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_roots {
            for cert in crate::config::parse_certs(pem).map_err(ProxyError::Tls)? {
                roots
                    .add(cert)
                    .map_err(|e| ProxyError::Tls(e.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let host = server_url.host_str().ok_or(ProxyError::Uri)?;
        let public_host = match server_url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Self {
            pool: Pool::new(upstream, tls, http2, clients.upstream_opened)?,
            http2,
            base_path,
            proto: HeaderValue::from_static(if server_url.scheme() == "https" {
                "https"
            } else {
                "http"
            }),
            public_host: HeaderValue::from_str(&public_host).map_err(|_| ProxyError::Uri)?,
            body_idle_timeout: clients.body_idle_timeout,
            trusted_proxies: clients.trusted_proxies,
            websockets_open: clients.websockets_open,
        })
    }

    /// Forwards an authenticated request; the caller has checked everything.
    /// `guard` is asked for only when the answer is a WebSocket, a streamed
    /// body (no `Content-Length`) or a long one: that connection then ends
    /// when it fires.
    pub async fn forward(
        &self,
        mut req: Request<RequestBody>,
        fwd: Forward<'_>,
        guard: impl FnOnce() -> Option<Guard>,
    ) -> Result<Response<Body>, ProxyError> {
        let is_upgrade = fwd.websocket;
        let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let body = if is_upgrade || http_body::Body::is_end_stream(&body) {
            None
        } else {
            Some(Body::boxed(idle::Idle::new(body, self.body_idle_timeout)))
        };
        let out = self.outbound(&fwd, is_upgrade);
        // Origin-form, under the upstream URL's path.
        let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut wire = pool::HeadBuf::take();
        let framing = h1::encode_head(
            parts.method.as_str().as_bytes(),
            (self.base_path.as_bytes(), target.as_bytes()),
            h1::content_length(&parts.headers),
            body.is_none(),
            &mut wire.0,
            |h| headers::to_upstream(Fields::Map(&parts.headers), &out, h),
        );
        let head = parts.method == Method::HEAD;
        if self.http2 && !is_upgrade {
            let resp = h2::send(&self.pool, &wire.0, body).await;
            drop(wire);
            let (mut parts, body) = resp?.into_parts();
            headers::from_upstream(&mut parts.headers, false);
            let length = h1::content_length(&parts.headers);
            let body = follow_session(
                body,
                length,
                bodiless(head, parts.status),
                guard,
                Body::boxed,
            );
            return Ok(Response::from_parts(parts, body));
        }
        let resp: Response<h1::Answer> = self
            .pool
            .send(
                pool::Encoded {
                    method: &parts.method,
                    head: &wire.0,
                    framing,
                    body,
                },
                is_upgrade,
                fwd.upstream,
            )
            .await?;
        drop(wire);
        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, resp.status())
        {
            let (mut parts, answer) = resp.into_parts();
            if let Some(upstream) = answer.into_switched() {
                upgrade::splice(
                    client_upgrade,
                    upstream,
                    guard(),
                    self.websockets_open.clone(),
                    fwd.held.clone(),
                );
            }
            headers::from_upstream(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, respond::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        headers::from_upstream(&mut parts.headers, false);
        let length = h1::content_length(&parts.headers);
        let bodiless = bodiless(head, parts.status);
        Ok(Response::from_parts(
            parts,
            follow_session(body, length, bodiless, guard, Body::Answer),
        ))
    }

    /// [`Proxy::forward`] for a request the server's own HTTP/1.1 path
    /// parsed in place (no upgrade; its body, if any, framed by its
    /// `Content-Length`): the upstream's answer head comes back as its
    /// bytes, for that path to copy to the client.
    pub async fn forward_raw(
        &self,
        req: &crate::router::fast::Request<'_>,
        body: Option<respond::BoxBody>,
        fwd: Forward<'_>,
        guard: impl FnOnce() -> Option<Guard>,
    ) -> Result<(h1::AnswerHead, Body), ProxyError> {
        let out = self.outbound(&fwd, false);
        // Cut when it goes quiet, as on hyper's path.
        let body = body.map(|b| Body::boxed(idle::Idle::new(b, self.body_idle_timeout)));
        let mut wire = pool::HeadBuf::take();
        let framing = h1::encode_head(
            req.method,
            (self.base_path.as_bytes(), req.target),
            req.length,
            body.is_none(),
            &mut wire.0,
            |h| headers::to_upstream(req.fields, &out, h),
        );
        if self.http2 {
            let resp = h2::send(&self.pool, &wire.0, body).await;
            drop(wire);
            let (parts, body) = resp?.into_parts();
            let bodiless = bodiless(req.method == b"HEAD", parts.status);
            let head = h1::AnswerHead::of_map(parts.status, &parts.headers, bodiless);
            let body = follow_session(body, head.length, head.bodiless, guard, Body::boxed);
            return Ok((head, body));
        }
        // A token the server checked (httparse); standard ones cost no allocation.
        let method = Method::from_bytes(req.method).map_err(|_| ProxyError::Uri)?;
        let answer: h1::RawAnswer = self
            .pool
            .send(
                pool::Encoded {
                    method: &method,
                    head: &wire.0,
                    framing,
                    body,
                },
                false,
                fwd.upstream,
            )
            .await?;
        drop(wire);
        let h1::RawAnswer { head, body } = answer;
        let body = follow_session(body, head.length, head.bodiless, guard, Body::Answer);
        Ok((head, body))
    }

    /// What the gate adds to a forwarded request's headers.
    fn outbound<'a>(&'a self, fwd: &Forward<'a>, upgrade: bool) -> headers::Outbound<'a> {
        headers::Outbound {
            peer: fwd.peer_value,
            proto: &self.proto,
            host: &self.public_host,
            identity: fwd.identity,
            upgrade,
            trusted_peer: !self.trusted_proxies.is_empty()
                && self.trusted_proxies.iter().any(|n| n.contains(&fwd.peer)),
            request_id: fwd.request_id,
        }
    }
}

/// Whether an answer has no body whatever its headers say: the answer to a
/// `HEAD` (`head_request`), an interim one, 204 or 304.
fn bodiless(head_request: bool, status: StatusCode) -> bool {
    head_request
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
}

/// An answer's body, tied to its session when it is long: streams of
/// unknown length and large downloads end when the session does. Small
/// ones finish long before a session could end and skip the cost of a
/// lease. `bodiless`: the answer has no body whatever it says; `plain`
/// makes a body that is not tied.
fn follow_session<B>(
    body: B,
    length: Option<u64>,
    bodiless: bool,
    guard: impl FnOnce() -> Option<Guard>,
    plain: impl FnOnce(B) -> Body,
) -> Body
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<respond::BoxError>,
{
    let long = length.is_none_or(|n| n > LONG_BODY_BYTES);
    match (!bodiless && long).then(guard).flatten() {
        Some(guard) => Body::boxed(Cutoff::new(body, guard)),
        None => plain(body),
    }
}
