//! The fake provider's endpoints: one request in, one response out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::jwt::random_token;
use super::token::token;
use super::{
    AuthorizeDraft, Behaviour, CodeGrant, FakeUser, RawResponse, State, UserinfoDraft, lock,
};

pub(super) type Resp = Response<Full<Bytes>>;

/// Largest request body read.
const MAX_BODY: usize = 1024 * 1024;

pub(super) async fn handle(req: Request<Incoming>, st: Arc<State>) -> Resp {
    let path = req.uri().path().to_owned();
    let o = &st.opts;
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        o.issuer_path.trim_end_matches('/')
    );
    let is = |p: &str| same_path(&path, p);
    if is(&discovery) {
        served(&st.counters.discovery, &st, |b| {
            b.discovery_response
                .clone()
                .unwrap_or_else(|| RawResponse::json(200, &Value::Object(b.discovery.clone())))
        })
    } else if is(&o.jwks_path) {
        served(&st.counters.jwks, &st, |b| {
            b.jwks_response
                .clone()
                .unwrap_or_else(|| RawResponse::json(200, &jwks(&st, b)))
        })
    } else if is(&o.authorization_path) {
        authorize(&req, &st)
    } else if is(&o.token_path) {
        token(req, &st).await
    } else if o.userinfo_path.as_deref().is_some_and(is) {
        userinfo(req, &st).await
    } else if o.end_session_path.as_deref().is_some_and(is) {
        end_session(req, &st).await
    } else {
        raw(RawResponse::json(404, &json!({ "error": "not_found" })))
    }
}

/// `/a/b/` and `/a/b` are the same endpoint (AD FS documents trailing slashes).
fn same_path(a: &str, b: &str) -> bool {
    let trim = |p: &str| p.trim_end_matches('/').to_owned();
    trim(a) == trim(b)
}

fn served(
    counter: &AtomicUsize,
    st: &State,
    answer: impl FnOnce(&Behaviour) -> RawResponse,
) -> Resp {
    counter.fetch_add(1, Ordering::SeqCst);
    raw(answer(&st.behaviour()))
}

pub(super) fn raw(r: RawResponse) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(ct) = HeaderValue::from_str(&r.content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(super) fn redirect(location: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(super) fn oauth_error(status: u16, error: &str, description: &str) -> Resp {
    let mut resp = raw(RawResponse::json(
        status,
        &json!({ "error": error, "error_description": description }),
    ));
    if status == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fake-idp\""),
        );
    }
    resp
}

fn page(status: u16, text: &str) -> Resp {
    raw(RawResponse::html(
        status,
        &format!("<!doctype html><title>fake provider</title><p>{text}</p>"),
    ))
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub(super) fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `{base}` replaced in every string of `value`.
pub(super) fn with_base(value: &Value, base: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("{base}", base)),
        Value::Array(items) => Value::Array(items.iter().map(|v| with_base(v, base)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), with_base(v, base)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn jwks(st: &State, b: &Behaviour) -> Value {
    let keys: Vec<Value> = b
        .keys
        .iter()
        .filter_map(|published| {
            let mut jwk = published.key.public_jwk(&st.opts.client_secret)?;
            let fields = [
                ("kid", &published.kid),
                ("alg", &published.alg),
                ("use", &published.use_),
            ];
            for (name, value) in fields {
                if let Some(v) = value {
                    jwk.insert(name.to_owned(), Value::from(v.as_str()));
                }
            }
            for (k, v) in &published.extra {
                jwk.insert(k.clone(), with_base(v, &st.base));
            }
            Some(Value::Object(jwk))
        })
        .collect();
    json!({ "keys": keys })
}

/// The issuer tokens carry: the document's, with Entra's `{tenantid}`
/// template filled from the user's `tid`.
pub(super) fn token_issuer(b: &Behaviour, user: &FakeUser) -> String {
    let issuer = b
        .discovery
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match &user.tid {
        Some(tid) => issuer.replace("{tenantid}", tid),
        None => issuer.to_owned(),
    }
}

// ------------------------------------------------------------ authorize

fn authorize(req: &Request<Incoming>, st: &State) -> Resp {
    st.counters.authorize.fetch_add(1, Ordering::SeqCst);
    let q = pairs(req.uri().query());
    lock(&st.log).authorize.push(q.clone());
    if get(&q, "client_id") != Some(st.opts.client_id.as_str()) {
        return page(400, "Unknown client_id.");
    }
    let Some(redirect_uri) = get(&q, "redirect_uri")
        .filter(|r| st.opts.redirect_uris.iter().any(|u| u == r))
        .map(str::to_owned)
    else {
        return page(400, "The redirect_uri is not registered for this client.");
    };
    let b = st.behaviour();
    let mut params = Vec::new();
    let challenge = get(&q, "code_challenge").map(str::to_owned);
    let method = get(&q, "code_challenge_method").unwrap_or("plain");
    let refusal = if let Some((error, description)) = &b.authorize_error {
        Some((error.clone(), description.clone()))
    } else if get(&q, "response_type") != Some("code") {
        Some((
            "unsupported_response_type".into(),
            "only response_type=code is supported".into(),
        ))
    } else if challenge.is_some() && method != "S256" {
        Some((
            "invalid_request".into(),
            "code_challenge_method must be S256".into(),
        ))
    } else if challenge.is_none() && b.require_pkce {
        Some(("invalid_request".into(), "PKCE is required".into()))
    } else {
        None
    };
    match refusal {
        Some((error, description)) => {
            params.push(("error".to_owned(), error));
            params.push(("error_description".to_owned(), description));
        }
        None => {
            let code = random_token();
            let grant = CodeGrant {
                client_id: st.opts.client_id.clone(),
                redirect_uri: redirect_uri.clone(),
                nonce: get(&q, "nonce").map(str::to_owned),
                challenge,
                scope: get(&q, "scope").unwrap_or("openid").to_owned(),
                user: b.user.clone(),
                auth_time: now(),
                issued: Instant::now(),
            };
            lock(&st.grants).codes.insert(code.clone(), grant);
            params.push(("code".to_owned(), code));
        }
    }
    if let Some(state) = get(&q, "state") {
        params.push(("state".to_owned(), state.to_owned()));
    }
    if b.authorize_iss {
        params.push(("iss".to_owned(), token_issuer(&b, &b.user)));
    }
    let mut draft = AuthorizeDraft {
        request: q.clone(),
        redirect_uri,
        params,
        raw_response: None,
    };
    if let Some(hook) = &b.authorize_hook {
        hook(&mut draft);
    }
    if let Some(r) = draft.raw_response {
        return raw(r);
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&draft.params)
        .finish();
    let sep = if draft.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    redirect(&format!("{}{sep}{query}", draft.redirect_uri))
}

pub(super) async fn read_form(
    req: Request<Incoming>,
) -> (HeaderMap, Method, Vec<(String, String)>) {
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let form = url::form_urlencoded::parse(&bytes).into_owned().collect();
    (parts.headers, parts.method, form)
}

// ------------------------------------------------------------ userinfo, logout

async fn userinfo(req: Request<Incoming>, st: &State) -> Resp {
    st.counters.userinfo.fetch_add(1, Ordering::SeqCst);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let user = bearer.and_then(|t| lock(&st.grants).access.get(&t).cloned());
    let Some(user) = user else {
        let mut resp = raw(RawResponse::json(401, &json!({ "error": "invalid_token" })));
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return resp;
    };
    let b = st.behaviour();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(user.sub.clone()));
    let optional = [
        ("email", &user.email),
        ("name", &user.name),
        ("preferred_username", &user.preferred_username),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            claims.insert(name.into(), Value::from(v.clone()));
        }
    }
    for (k, v) in &b.userinfo_claims {
        claims.insert(k.clone(), with_base(v, &st.base));
    }
    let mut draft = UserinfoDraft {
        claims,
        raw_response: None,
    };
    if let Some(hook) = &b.userinfo_hook {
        hook(&mut draft);
    }
    raw(draft
        .raw_response
        .unwrap_or_else(|| RawResponse::json(200, &Value::Object(draft.claims))))
}

async fn end_session(req: Request<Incoming>, st: &State) -> Resp {
    st.counters.end_session.fetch_add(1, Ordering::SeqCst);
    let mut params = pairs(req.uri().query());
    if req.method() == Method::POST {
        params.extend(read_form(req).await.2);
    }
    lock(&st.log).end_session.push(params.clone());
    let Some(target) = get(&params, "post_logout_redirect_uri") else {
        return page(200, "You are signed out.");
    };
    if !st
        .opts
        .post_logout_redirect_uris
        .iter()
        .any(|u| u == target)
    {
        return page(400, "The post_logout_redirect_uri is not registered.");
    }
    match get(&params, "state") {
        Some(state) => {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("state", state)
                .finish();
            let sep = if target.contains('?') { '&' } else { '?' };
            redirect(&format!("{target}{sep}{query}"))
        }
        None => redirect(target),
    }
}
