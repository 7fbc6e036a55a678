//! The token endpoint: client authentication, code and refresh grants,
//! and the default answer a [`super::TokenHook`] may change.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::jwt::{left_half_hash, random_token, s256, sign_compact};
use super::routes::{Resp, get, now, oauth_error, raw, read_form, token_issuer, with_base};
use super::{
    Behaviour, ClientAuth, FakeUser, Grant, IdTokenDraft, RawResponse, RefreshGrant, State,
    TokenRequest, lock,
};

/// How long an authorization code stays usable.
const CODE_TTL: Duration = Duration::from_secs(600);

/// `(client_id, client_secret)` of an `Authorization: Basic` header
/// (each part form-urlencoded, RFC 6749 2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

pub(super) async fn token(req: Request<Incoming>, st: &State) -> Resp {
    st.counters.token.fetch_add(1, Ordering::SeqCst);
    let (headers, method, form) = read_form(req).await;
    let basic = basic_credentials(&headers);
    let post = get(&form, "client_secret").map(|secret| {
        (
            get(&form, "client_id").unwrap_or_default().to_owned(),
            secret.to_owned(),
        )
    });
    let auth_method = match (&basic, &post) {
        (Some(_), Some(_)) => "both",
        (Some(_), None) => "client_secret_basic",
        (None, Some(_)) => "client_secret_post",
        (None, None) => "none",
    };
    lock(&st.log).token.push(TokenRequest {
        grant_type: get(&form, "grant_type").map(str::to_owned),
        auth_method,
        form: form.clone(),
    });
    if method != Method::POST {
        return oauth_error(405, "invalid_request", "the token endpoint takes POST");
    }
    let b = st.behaviour();
    let credentials = match (auth_method, b.client_auth) {
        ("both", _) => {
            return oauth_error(
                400,
                "invalid_request",
                "more than one client authentication",
            );
        }
        ("client_secret_basic", ClientAuth::Any | ClientAuth::BasicOnly) => basic,
        ("client_secret_post", ClientAuth::Any | ClientAuth::PostOnly) => post,
        _ => None,
    };
    let authenticated = credentials
        .is_some_and(|(id, secret)| id == st.opts.client_id && secret == st.opts.client_secret);
    if !authenticated {
        return oauth_error(401, "invalid_client", "client authentication failed");
    }
    let (grant, user, nonce, scope, auth_time) = match get(&form, "grant_type") {
        Some("authorization_code") => match redeem_code(st, &form) {
            Ok((user, nonce, scope, auth_time)) => {
                (Grant::AuthorizationCode, user, nonce, scope, auth_time)
            }
            Err(reason) => return oauth_error(400, "invalid_grant", reason),
        },
        Some("refresh_token") => match redeem_refresh(st, &b, &form) {
            Ok((user, scope, auth_time)) => (Grant::RefreshToken, user, None, scope, auth_time),
            Err(reason) => return oauth_error(400, "invalid_grant", reason),
        },
        _ => return oauth_error(400, "unsupported_grant_type", "unsupported grant_type"),
    };
    let mut draft = default_draft(st, &b, grant, &user, nonce, &scope, auth_time, &form);
    if let Some(hook) = &b.token_hook {
        hook(&mut draft);
    }
    if let Some(delay) = draft.delay.or(b.token_delay) {
        tokio::time::sleep(delay).await;
    }
    if let Some(r) = draft.raw_response {
        return raw(r);
    }
    {
        let mut grants = lock(&st.grants);
        if let Some(at) = draft.access_token() {
            grants.access.insert(at.to_owned(), user.clone());
        }
        if let Some(rt) = draft.response.get("refresh_token").and_then(Value::as_str) {
            grants.refresh.insert(
                rt.to_owned(),
                RefreshGrant {
                    client_id: st.opts.client_id.clone(),
                    scope: scope.clone(),
                    user: user.clone(),
                    auth_time,
                },
            );
        }
    }
    let mut body = draft.response;
    if !draft.omit_id_token {
        let id_token = sign_compact(
            &draft.header,
            &draft.claims,
            &draft.key,
            &st.opts.client_secret,
            draft.corrupt_signature,
        );
        body.insert("id_token".into(), Value::from(id_token));
    }
    let mut resp = raw(RawResponse::json(200, &Value::Object(body)));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

type Redeemed = (FakeUser, Option<String>, String, u64);

fn redeem_code(st: &State, form: &[(String, String)]) -> Result<Redeemed, &'static str> {
    let code = get(form, "code").ok_or("no code")?;
    let mut grants = lock(&st.grants);
    if grants.used_codes.contains(code) {
        return Err("authorization code already used");
    }
    let grant = grants
        .codes
        .remove(code)
        .ok_or("unknown authorization code")?;
    grants.used_codes.insert(code.to_owned());
    drop(grants);
    if grant.client_id != st.opts.client_id {
        return Err("code issued to another client");
    }
    if grant.issued.elapsed() > CODE_TTL {
        return Err("authorization code expired");
    }
    if get(form, "redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return Err("redirect_uri differs from the authorization request's");
    }
    if let Some(challenge) = &grant.challenge {
        match get(form, "code_verifier") {
            Some(verifier) if s256(verifier) == *challenge => {}
            Some(_) => return Err("PKCE verification failed"),
            None => return Err("code_verifier missing"),
        }
    }
    Ok((grant.user, grant.nonce, grant.scope, grant.auth_time))
}

fn redeem_refresh(
    st: &State,
    b: &Behaviour,
    form: &[(String, String)],
) -> Result<(FakeUser, String, u64), &'static str> {
    let token = get(form, "refresh_token").ok_or("no refresh_token")?;
    let mut grants = lock(&st.grants);
    if grants.spent_refresh.contains(token) {
        return Err("refresh token already used or revoked");
    }
    let grant = if b.rotate_refresh_tokens {
        let grant = grants.refresh.remove(token);
        grants.spent_refresh.insert(token.to_owned());
        grant
    } else {
        grants.refresh.get(token).map(|g| RefreshGrant {
            client_id: g.client_id.clone(),
            scope: g.scope.clone(),
            user: g.user.clone(),
            auth_time: g.auth_time,
        })
    }
    .ok_or("unknown refresh token")?;
    if grant.client_id != st.opts.client_id {
        return Err("refresh token issued to another client");
    }
    Ok((grant.user, grant.scope, grant.auth_time))
}

/// The answer a correct provider gives, before the hook.
#[allow(clippy::too_many_arguments)]
fn default_draft(
    st: &State,
    b: &Behaviour,
    grant: Grant,
    user: &FakeUser,
    nonce: Option<String>,
    scope: &str,
    auth_time: u64,
    form: &[(String, String)],
) -> IdTokenDraft {
    let access_token = format!("at-{}", random_token());
    let mut response = Map::new();
    response.insert("access_token".into(), Value::from(access_token.clone()));
    response.insert("token_type".into(), Value::from("Bearer"));
    response.insert("expires_in".into(), Value::from(b.access_token_ttl));
    response.insert("scope".into(), Value::from(scope));
    if b.issue_refresh_tokens {
        let refresh = match (grant, b.rotate_refresh_tokens) {
            (Grant::RefreshToken, false) => get(form, "refresh_token").map(str::to_owned),
            _ => None,
        }
        .unwrap_or_else(|| format!("rt-{}", random_token()));
        response.insert("refresh_token".into(), Value::from(refresh));
    }

    let published = b.keys.iter().find(|k| k.key == b.signing_key);
    let kid = match published {
        Some(p) => p.kid.clone(),
        None => b.signing_key.default_kid().map(str::to_owned),
    };
    let alg = b.signing_key.default_alg();
    let mut header = Map::new();
    header.insert("alg".into(), Value::from(alg));
    header.insert("typ".into(), Value::from("JWT"));
    if let Some(kid) = kid {
        header.insert("kid".into(), Value::from(kid));
    }

    let now = now();
    let mut claims = Map::new();
    claims.insert("iss".into(), Value::from(token_issuer(b, user)));
    claims.insert("sub".into(), Value::from(user.sub.clone()));
    claims.insert("aud".into(), Value::from(st.opts.client_id.clone()));
    claims.insert("exp".into(), Value::from(now + b.id_token_ttl));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("auth_time".into(), Value::from(auth_time));
    if let Some(nonce) = nonce {
        claims.insert("nonce".into(), Value::from(nonce));
    }
    if b.azp {
        claims.insert("azp".into(), Value::from(st.opts.client_id.clone()));
    }
    claims.insert(
        "at_hash".into(),
        Value::from(left_half_hash(&access_token, alg)),
    );
    let optional = [
        ("email", &user.email),
        ("name", &user.name),
        ("preferred_username", &user.preferred_username),
        ("upn", &user.upn),
        ("tid", &user.tid),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            claims.insert(name.into(), Value::from(v.clone()));
        }
    }
    for (k, v) in &user.extra {
        claims.insert(k.clone(), with_base(v, &st.base));
    }
    IdTokenDraft {
        grant,
        header,
        claims,
        key: b.signing_key.clone(),
        corrupt_signature: false,
        omit_id_token: grant == Grant::RefreshToken && !b.id_token_on_refresh,
        response,
        raw_response: None,
        delay: None,
    }
}
