//! Micro-benchmarks of the authenticated hot path: opening the session
//! cookie, verifying a bearer JWT with a cached key, rewriting request
//! headers, validating `rd`, the gate decision, and relaying WebSocket
//! messages. `cargo bench`.
#![allow(
    clippy::unwrap_used,
    reason = "benchmark setup: a failure is a broken benchmark"
)]

use std::hint::black_box;

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use ssogate::config::Secret;
use ssogate::fields::Fields;
use ssogate::gate::{self, Credential};
use ssogate::identity::Identity;
use ssogate::provider::oidc::keys::{KeySet, Trust};
use ssogate::provider::oidc::quirks::IssuerRule;
use ssogate::proxy::headers::{Outbound, to_upstream};
use ssogate::proxy::relay::{Frames, relay};
use ssogate::routes::return_to;
use ssogate::session::{CookieNames, CookieStore, Recent, Sealer, Session, Store};

fn session(id_token_len: usize) -> Session {
    Session {
        id: "Zx3mQ0b1Yq2Jx8cVt6WlKg".into(),
        option: "oidc".into(),
        identity: Identity {
            sub: "00u1abcd2EFGH3ijk4x7".into(),
            email: Some("alice@example.com".into()),
            name: Some("Alice Example".into()),
            preferred_username: Some("alice".into()),
        },
        sid: Some("sid-123".into()),
        created_at: 1_700_000_000,
        issued_at: 0,
        expires_at: u64::MAX / 2,
        refresh_token: Some(Secret::new("r".repeat(64))),
        id_token: Some(Secret::new("i".repeat(id_token_len))),
    }
}

/// The request headers a browser sends with a session of this size.
fn request_with_session(store: &CookieStore, id_token_len: usize) -> HeaderMap {
    let mut set = Vec::new();
    store
        .save(
            &session(id_token_len),
            &HeaderMap::new(),
            1_700_000_000,
            &mut set,
        )
        .unwrap();
    let cookie: Vec<String> = set
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("ct.example.com"));
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/html,application/xhtml+xml"),
    );
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64)"),
    );
    h.insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("app=1; {}", cookie.join("; "))).unwrap(),
    );
    h
}

fn cookies(c: &mut Criterion) {
    let sealer = Arc::new(Sealer::new(&[Secret::new(vec![7; 32])]).unwrap());
    let store = CookieStore::new(sealer, CookieNames::new(true));
    for (label, len) in [("small_1_cookie", 800), ("entra_sized_3_cookies", 7_000)] {
        let req = request_with_session(&store, len);
        c.bench_function(&format!("session_open/{label}"), |b| {
            b.iter(|| black_box(store.load(black_box(&req))))
        });
        // The next request of the same connection with the same cookie.
        let recent = Recent::default();
        c.bench_function(&format!("session_open/{label}/connection_repeat"), |b| {
            b.iter(|| black_box(store.load_recent(Fields::Map(black_box(&req)), &recent)))
        });
    }
}

fn bearer(c: &mut Criterion) {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let key = rcgen::KeyPair::generate().unwrap();
    let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = serde_json::json!({ "keys": [jwk] });
    let key_set = || {
        KeySet::from_jwks(
            &jwks,
            Trust {
                issuer: IssuerRule::Exact("https://idp.example.com".into()),
                allowed_tenants: Vec::new(),
            },
            "ssogate",
            Duration::from_secs(60),
        )
    };
    let keys = key_set();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({
        "iss": "https://idp.example.com", "aud": "ssogate", "sub": "alice", "email": "alice@example.com",
        "exp": jsonwebtoken::get_current_timestamp() + 3600, "iat": jsonwebtoken::get_current_timestamp(),
    });
    let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
    // A token seen before: answered from the verified-token cache.
    c.bench_function("bearer_verify/es256_repeat", |b| {
        b.iter(|| black_box(keys.verify(black_box(&token))))
    });
    // A token's first use: the signature check with the cached key.
    c.bench_function("bearer_verify/es256_first_use", |b| {
        b.iter_batched(
            key_set,
            |fresh| black_box(fresh.verify(black_box(&token))),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn headers(c: &mut Criterion) {
    let sealer = Arc::new(Sealer::new(&[Secret::new(vec![7; 32])]).unwrap());
    let store = CookieStore::new(sealer, CookieNames::new(true));
    let template = request_with_session(&store, 800);
    let identity = session(0).identity;
    let (proto, host, peer) = (
        HeaderValue::from_static("https"),
        HeaderValue::from_static("ct.example.com"),
        HeaderValue::from_static("127.0.0.1"),
    );
    let out = Outbound {
        peer: &peer,
        proto: &proto,
        host: &host,
        identity: Some(&identity),
        upgrade: false,
        trusted_peer: false,
        request_id: Some(b"6f1c0a9d2b7e4c3a0000000000000042"),
    };
    // The head buffer is reused, as the proxy's thread-local one is.
    let mut head = Vec::with_capacity(4096);
    c.bench_function("headers_to_upstream", |b| {
        b.iter(|| {
            head.clear();
            to_upstream(Fields::Map(black_box(&template)), &out, &mut head);
            black_box(head.len())
        })
    });
    // The same headers as the own HTTP/1.1 path reads them: parsed in place.
    let (wire, spans) = ssogate::fields::head_of(&template).unwrap();
    c.bench_function("headers_to_upstream/in_place", |b| {
        b.iter(|| {
            head.clear();
            let fields = Fields::Spans {
                head: black_box(&wire),
                spans: &spans,
            };
            to_upstream(fields, &out, &mut head);
            black_box(head.len())
        })
    });
}

fn decisions(c: &mut Criterion) {
    c.bench_function("return_to/sanitize", |b| {
        b.iter(|| {
            black_box(return_to::sanitize(Some(black_box(
                "/app/session/42?tab=files",
            ))))
        })
    });
    c.bench_function("return_to/reject_encoded", |b| {
        b.iter(|| black_box(return_to::sanitize(Some(black_box("/%2F%2Fevil.example")))))
    });
    let s = session(0);
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/html,application/xhtml+xml"),
    );
    let policy = gate::Policy {
        refresh_skew: 60,
        max_age: Some(86_400),
    };
    c.bench_function("gate_decide", |b| {
        b.iter(|| {
            let nav = gate::is_navigation(&Method::GET, black_box(&h));
            let credential = Credential::Session {
                session: black_box(&s),
                refreshable: true,
            };
            black_box(gate::decide(nav, credential, &policy, 1_700_000_100))
        })
    });
}

/// An unmasked binary frame with `payload` bytes (upstream to client).
fn ws_frame(payload: usize) -> Vec<u8> {
    let mut f = vec![0x82];
    match payload {
        0..=125 => f.push(u8::try_from(payload).unwrap()),
        126..=65_535 => {
            f.push(126);
            f.extend_from_slice(&u16::try_from(payload).unwrap().to_be_bytes());
        }
        _ => {
            f.push(127);
            f.extend_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    f.resize(f.len() + payload, 7);
    f
}

fn websocket(c: &mut Criterion) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Where the frame ends fall, over a burst of 64 small frames.
    let burst: Vec<u8> = (0..64).flat_map(|_| ws_frame(64)).collect();
    c.bench_function("websocket_frames/64x64B", |b| {
        b.iter(|| {
            let mut frames = Frames::default();
            frames.advance(black_box(&burst));
            black_box(frames.at_boundary())
        })
    });
    // A message each way through the relay, over in-memory connections
    // (their own cost included: compare runs, not absolute figures).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for size in [64usize, 16 * 1024] {
        let message = ws_frame(size);
        let (client_gate, mut client) = tokio::io::duplex(64 * 1024);
        let (upstream_gate, mut upstream) = tokio::io::duplex(64 * 1024);
        rt.spawn(relay(client_gate, upstream_gate, None));
        let mut buf = vec![0u8; message.len()];
        c.bench_function(&format!("websocket_relay/{size}B_each_way"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    client.write_all(&message).await.unwrap();
                    upstream.read_exact(&mut buf).await.unwrap();
                    upstream.write_all(&message).await.unwrap();
                    client.read_exact(&mut buf).await.unwrap();
                });
                black_box(&buf);
            })
        });
    }
}

criterion_group!(benches, cookies, bearer, headers, decisions, websocket);
criterion_main!(benches);
