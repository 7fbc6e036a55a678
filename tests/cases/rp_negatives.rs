//! Relying-party negatives, after the OpenID Foundation's RP certification
//! tests: every hostile or broken answer of the (fake) provider must end the
//! callback on a "sign in again" page naming the reason — 4xx for a token
//! the gate refuses, 502 for a token endpoint that answered nonsense — with
//! no trace of the ID token, no session and nothing sent to the upstream. Plus the
//! positives around them: key rotation and clock skew within the leeway.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::browser::{Browser, Page};
use crate::support::fake_idp::{
    Behaviour, FakeUser, IdTokenDraft, Preset, PublishedKey, RawResponse, SigningKey, sign_compact,
};
use crate::support::fake_rig::Rig;
use crate::support::gate::{CLIENT_ID, CLIENT_SECRET, api_client};

/// The session cookie's name on an https gate (parts are `…_1of3`).
const SESSION_COOKIE: &str = "__Host-ssogate";

/// The generic fake provider, its behaviour adjusted by `setup` before the
/// gate loads it.
async fn rig_with(setup: impl FnOnce(&mut Behaviour)) -> Rig {
    Rig::start_with(Preset::Generic, &[], |o| setup(&mut o.behaviour), false).await
}

impl Rig {
    /// Makes every token answer go through `edit`; returns the ID tokens
    /// actually sent (signed here exactly as the fake signs them).
    fn token_hook(
        &self,
        edit: impl Fn(&mut IdTokenDraft) + Send + Sync + 'static,
    ) -> Arc<Mutex<Vec<String>>> {
        let issued = Arc::new(Mutex::new(Vec::new()));
        let log = issued.clone();
        self.idp.set(move |b| {
            b.token_hook = Some(Arc::new(move |d| {
                edit(d);
                if d.raw_response.is_none() && !d.omit_id_token {
                    let t = sign_compact(
                        &d.header,
                        &d.claims,
                        &d.key,
                        CLIENT_SECRET,
                        d.corrupt_signature,
                    );
                    log.lock().unwrap().push(t);
                }
            }));
        });
        issued
    }

    /// Signs in with a fresh browser up to the gate's callback and returns
    /// the browser and the callback's answer (redirects not followed).
    async fn callback(&self, start: &str) -> (Browser, Page) {
        let b = self.browser();
        let cb = b
            .sign_in_until_callback(&self.gate.url(start), "alice", "alice-pass")
            .await;
        let page = b.get(&cb).await;
        (b, page)
    }

    /// The full refusal check (a)–(d) for one sign-in attempt, for a token
    /// the gate refuses (4xx).
    async fn assert_refused(&self, reason: &str, issued: &Arc<Mutex<Vec<String>>>) -> Page {
        self.assert_refused_with(400..500, reason, issued).await
    }

    /// The same for an answer the provider got wrong: 502, the gateway's
    /// word for an unusable answer from the server behind it.
    async fn assert_provider_fault(&self, reason: &str, issued: &Arc<Mutex<Vec<String>>>) -> Page {
        self.assert_refused_with(502..503, reason, issued).await
    }

    /// Every problem is collected so one run reports all of them.
    async fn assert_refused_with(
        &self,
        status: std::ops::Range<u16>,
        reason: &str,
        issued: &Arc<Mutex<Vec<String>>>,
    ) -> Page {
        let (b, page) = self.callback("/app").await;
        let tokens = issued.lock().unwrap().clone();
        let mut problems = Vec::new();
        // (a) an HTML page of that status naming the reason, with a way to start again.
        if !status.contains(&page.status) {
            problems.push(format!("status {} (expected {status:?})", page.status));
        }
        if !page
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
        {
            problems.push(format!(
                "not an HTML page: {:?}",
                page.header("content-type")
            ));
        }
        if !page.body.to_lowercase().contains(&reason.to_lowercase()) {
            problems.push(format!("the page does not name the reason {reason:?}"));
        }
        if !page
            .body
            .contains(r#"<a href="/sso/login">Sign in again</a>"#)
        {
            problems.push("no 'Sign in again' link".into());
        }
        // (b) nothing of the ID token, in the body or any header.
        let headers: Vec<String> = page
            .headers
            .values()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        for token in &tokens {
            for (i, part) in token.split('.').enumerate() {
                let leaked = part.len() >= 8
                    && (page.body.contains(part) || headers.iter().any(|h| h.contains(part)));
                if leaked {
                    problems.push(format!("segment {i} of the ID token is in the answer"));
                }
            }
        }
        if page.body.contains("eyJ") {
            problems.push("the page holds base64 JSON (a JWT part?)".into());
        }
        // (c) no session: none set, none in the jar, and sent to sign in again.
        let set = session_cookies_set(&page);
        if !set.is_empty() {
            problems.push(format!("a session cookie was set: {set:?}"));
        }
        if b.cookie(&self.gate.url("/"), SESSION_COOKIE).is_some() {
            problems.push("the browser holds a session cookie".into());
        }
        let next = b.get(&self.gate.url("/app")).await;
        let to_sign_in = next.status == 302
            && next
                .location()
                .and_then(|l| url::Url::parse(&l).ok())
                .is_some_and(|u| u.path() == "/sso/login");
        if !to_sign_in {
            problems.push(format!(
                "a protected path was not sent to sign in: {} {:?}",
                next.status,
                next.header("location")
            ));
        }
        // (d) the upstream saw nothing.
        let seen = self.upstream.requests();
        if !seen.is_empty() {
            problems.push(format!(
                "the upstream received {:?}",
                seen.iter().map(|r| &r.path_and_query).collect::<Vec<_>>()
            ));
        }
        assert!(
            problems.is_empty(),
            "expected a refusal for {reason:?}; problems:\n- {}\n\ncallback answer {}:\n{}",
            problems.join("\n- "),
            page.status,
            snippet(&page.body)
        );
        page
    }

    /// Signs in with a fresh browser and asserts it lands on the upstream.
    async fn assert_signs_in(&self, path: &str, user: &str) -> Browser {
        let (b, page) = self.callback(path).await;
        assert_eq!(
            page.status,
            302,
            "the callback refused: {}",
            snippet(&page.body)
        );
        let set = session_cookies_set(&page);
        assert!(
            !set.is_empty(),
            "no live session cookie set: {:?}",
            page.set_cookies()
        );
        let landed = b.follow_page(page, &mut Vec::new()).await;
        assert_eq!(
            landed.status,
            200,
            "signed in, but {path} was not served: {} {:?}\n{}",
            landed.url,
            landed.header("location"),
            snippet(&landed.body)
        );
        let seen = self
            .upstream
            .last_request()
            .expect("the upstream saw the request");
        assert_eq!(seen.path_and_query, path);
        assert_eq!(seen.header("x-forwarded-user"), Some(user));
        b
    }
}

/// Session cookies (whole or parts) the answer sets with a value and a
/// lifetime, i.e. not deletions.
fn session_cookies_set(page: &Page) -> Vec<String> {
    page.set_cookies()
        .into_iter()
        .filter(|c| {
            let (name, rest) = c.split_once('=').unwrap_or((c, ""));
            let is_session = name == SESSION_COOKIE
                || name
                    .strip_prefix(SESSION_COOKIE)
                    .is_some_and(|r| r.starts_with('_'));
            let value = rest.split(';').next().unwrap_or_default();
            let deleted = value.is_empty() || c.to_ascii_lowercase().contains("max-age=0");
            is_session && !deleted
        })
        .collect()
}

fn snippet(body: &str) -> &str {
    let end = body.char_indices().nth(1500).map_or(body.len(), |(i, _)| i);
    &body[..end]
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token answer replaced as a whole (no ID token to leak).
fn raw_answer(rig: &Rig, answer: RawResponse) -> Arc<Mutex<Vec<String>>> {
    rig.token_hook(move |d| d.raw_response = Some(answer.clone()))
}

// ------------------------------------------------------------ signatures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_alg_none_id_token_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| {
        d.header.insert("alg".into(), "none".into());
        d.header.remove("kid");
        d.key = SigningKey::None;
    });
    rig.assert_refused("unsigned token", &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rs256_signature_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| d.corrupt_signature = true);
    rig.assert_refused("bad signature", &issued).await;
}

/// Algorithm confusion: HS256 keyed with the client secret, naming the
/// published RSA key's kid, while only RSA keys are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs256_token_keyed_with_the_client_secret_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| {
        d.sign_with(SigningKey::Hs256Secret);
        d.header.insert("kid".into(), "k1".into());
        d.recompute_at_hash();
    });
    rig.assert_refused("signature algorithm not accepted", &issued)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_the_keys_once_and_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    assert_eq!(rig.idp.jwks_fetches(), 1, "the gate loads the keys once");
    // Signed with k2, which the provider does not publish.
    rig.idp.set(|b| b.signing_key = SigningKey::Rsa2);
    let issued = rig.token_hook(|_| {});
    rig.assert_refused("signed with an unknown key", &issued)
        .await;
    assert_eq!(
        rig.idp.jwks_fetches(),
        2,
        "exactly one JWKS refetch for the unknown kid"
    );
}

/// Several RSA keys and a token without `kid`, signed by one of them. The
/// README's "tried against every key of its type" is about bearer tokens
/// (`keys.rs`); the ID-token path goes through openidconnect, which refuses
/// as OpenID Connect Core 10.1 says (a kid is required with several keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_kid_with_several_rsa_keys_is_refused_as_ambiguous() {
    let rig = rig_with(|b| {
        b.keys = vec![
            PublishedKey::new(SigningKey::Rsa1),
            PublishedKey::new(SigningKey::Rsa2),
        ];
    })
    .await;
    let issued = rig.token_hook(|d| {
        d.header.remove("kid");
    });
    rig.assert_refused("no key id and several matching keys", &issued)
        .await;
    assert_eq!(
        rig.idp.jwks_fetches(),
        1,
        "an ambiguous key is no reason to refetch"
    );
}

// ------------------------------------------------------------ claims

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_issuer_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| d.set_claim("iss", "https://evil.example"));
    rig.assert_refused("wrong issuer", &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_audience_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| d.set_claim("aud", "another-client"));
    rig.assert_refused("wrong audience", &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_list_without_the_client_id_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| d.set_claim("aud", json!(["another-client", "a-third"])));
    rig.assert_refused("wrong audience", &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_azp_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| {
        d.set_claim("aud", CLIENT_ID);
        d.set_claim("azp", "another-client");
    });
    rig.assert_refused("azp is not this client", &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_id_token_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| {
        let now = now();
        d.set_claim("iat", now - 3600);
        d.set_claim("exp", now - 600);
    });
    rig.assert_refused("expired", &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iat_beyond_the_leeway_in_the_future_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| {
        let now = now();
        d.set_claim("iat", now + 600);
        d.set_claim("exp", now + 3600);
    });
    rig.assert_refused("issued in the future", &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_nonce_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| d.remove_claim("nonce"));
    rig.assert_refused("nonce missing or mismatched", &issued)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_nonce_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| d.set_claim("nonce", "not-the-nonce-the-gate-sent"));
    rig.assert_refused("nonce missing or mismatched", &issued)
        .await;
}

/// The ID token lacks `email`, so the gate asks userinfo, which names
/// another subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_userinfo_sub_other_than_the_id_tokens_is_refused() {
    let rig = rig_with(|b| {
        b.user = FakeUser {
            email: None,
            ..FakeUser::new("alice")
        };
        b.userinfo_hook = Some(Arc::new(|u| {
            u.claims.insert("sub".into(), Value::from("mallory"));
            u.claims
                .insert("email".into(), Value::from("mallory@example.com"));
        }));
    })
    .await;
    let issued = rig.token_hook(|d| assert!(!d.claims.contains_key("email")));
    rig.assert_refused("userinfo sub differs", &issued).await;
    assert_eq!(
        rig.idp.userinfo_requests(),
        1,
        "the gate asked userinfo once"
    );
}

// ------------------------------------------------------------ token endpoint

/// What the gate says of a token answer that is no JSON (`claims::token_error`).
const NOT_JSON: &str = "the token endpoint did not answer a JSON token response";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_oauth_error_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    for (status, error) in [(400, "invalid_request"), (401, "invalid_client")] {
        let issued = raw_answer(&rig, RawResponse::oauth_error(status, error));
        let page = rig.assert_provider_fault("token endpoint", &issued).await;
        assert!(
            page.body.contains(error),
            "{error} not named: {}",
            page.body
        );
    }
    assert_eq!(rig.idp.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_html_500_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let html = "<!doctype html><title>Oops</title><h1>Internal Server Error</h1>";
    let issued = raw_answer(&rig, RawResponse::html(500, html));
    let page = rig.assert_provider_fault(NOT_JSON, &issued).await;
    assert!(!page.body.contains("Oops"), "the provider's page is echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_200_non_json_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let html = "<!doctype html><title>Welcome</title><p>Sign in to continue</p>";
    let issued = raw_answer(&rig, RawResponse::html(200, html));
    let page = rig.assert_provider_fault(NOT_JSON, &issued).await;
    assert!(
        !page.body.contains("Welcome"),
        "the provider's page is echoed"
    );
}

/// A 3 MB claim: the gate reads at most 1 MiB of a provider's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_megabyte_id_token_is_refused() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let issued = rig.token_hook(|d| d.set_claim("filler", "x".repeat(3 * 1024 * 1024)));
    rig.assert_provider_fault("larger than 1024 KiB", &issued)
        .await;
}

// ------------------------------------------------------------ positives

/// The provider replaces its key (new kid, old one gone): the next sign-in
/// refetches the JWKS once and succeeds, with the same running gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_at_the_provider_is_followed_without_a_restart() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let first = rig.assert_signs_in("/before", "alice").await;
    assert_eq!(rig.idp.jwks_fetches(), 1);
    let discoveries = rig.idp.discovery_fetches();

    rig.idp.set(|b| {
        b.keys = vec![PublishedKey::new(SigningKey::Rsa2)];
        b.signing_key = SigningKey::Rsa2;
        b.user = FakeUser::new("bob");
    });
    rig.assert_signs_in("/after", "bob").await;
    assert_eq!(
        rig.idp.jwks_fetches(),
        2,
        "exactly one refetch for the new kid"
    );
    rig.assert_signs_in("/again", "bob").await;
    assert_eq!(rig.idp.jwks_fetches(), 2, "the new key is kept");
    assert_eq!(rig.idp.discovery_fetches(), discoveries, "no rediscovery");

    // The session made before the rotation still works.
    let page = first.get(&rig.gate.url("/still")).await;
    assert_eq!(page.status, 200, "{}", snippet(&page.body));
}

/// With the default 60 s leeway: `iat` 30 s ahead, and `exp` 30 s ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_within_the_default_leeway_still_signs_in() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    rig.token_hook(|d| {
        let now = now();
        d.set_claim("iat", now + 30);
        d.set_claim("exp", now + 3600);
    });
    rig.assert_signs_in("/iat-ahead", "alice").await;

    rig.token_hook(|d| {
        let now = now();
        d.set_claim("iat", now - 600);
        d.set_claim("exp", now - 30);
    });
    rig.assert_signs_in("/exp-behind", "alice").await;
}

/// A flood of bearer tokens naming unknown key ids costs the provider at
/// most one key-set fetch per reload interval, and each is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_key_ids_fetches_the_keys_once() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let before = rig.idp.jwks_fetches();
    let client = api_client(&rig.pki);
    let now = now();
    let calls = (0..30).map(|i| {
        let header = json!({ "alg": "RS256", "kid": format!("forged-{i}") });
        let claims = json!({
            "iss": rig.idp.issuer, "aud": CLIENT_ID, "sub": "mallory",
            "iat": now, "exp": now + 600,
        });
        let (Value::Object(header), Value::Object(claims)) = (header, claims) else {
            unreachable!()
        };
        let token = rig.idp.sign_jwt(&header, &claims, &SigningKey::Rsa2);
        client
            .get(rig.gate.url("/api/data"))
            .bearer_auth(token)
            .send()
    });
    for resp in futures_util::future::join_all(calls).await {
        assert_eq!(resp.unwrap().status(), 401);
    }
    assert_eq!(
        rig.idp.jwks_fetches() - before,
        1,
        "30 unknown kids within the reload interval: one fetch"
    );
    assert!(rig.upstream.requests().is_empty());
}
