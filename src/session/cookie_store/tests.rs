use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};

use super::*;
use crate::config::Secret;
use crate::fields::Fields;
use crate::identity::Identity;

fn store(key: u8) -> CookieStore {
    CookieStore::new(
        Arc::new(Sealer::new(&[Secret::new(vec![key; 32])]).unwrap()),
        CookieNames::new(true),
    )
}

fn session(id_token_len: usize) -> Session {
    Session {
        id: "sid-1".into(),
        option: "oidc".into(),
        identity: Identity {
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            ..Default::default()
        },
        sid: None,
        created_at: 1_000,
        issued_at: 0,
        expires_at: 5_000,
        refresh_token: Some(Secret::new("rt".into())),
        id_token: Some(Secret::new("x".repeat(id_token_len))),
    }
}

/// Turns `Set-Cookie` values into the `Cookie` header a browser would send back.
fn as_request(set_cookies: &[HeaderValue]) -> HeaderMap {
    let pairs: Vec<String> = set_cookies
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .filter(|p| !p.ends_with('='))
        .collect();
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        HeaderValue::from_str(&pairs.join("; ")).unwrap(),
    );
    h
}

#[test]
fn small_session_is_one_cookie_and_round_trips() {
    let s = store(1);
    let mut out = Vec::new();
    s.save(&session(10), &HeaderMap::new(), 1_000, &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].to_str().unwrap().starts_with("__Host-ssogate="));
    let back = s.load(&as_request(&out)).unwrap();
    assert_eq!(back.identity.sub, "alice");
    assert_eq!(back.id_token.unwrap().expose().len(), 10);
}

#[test]
fn large_session_is_split_and_reassembled_never_truncated() {
    let s = store(1);
    let mut out = Vec::new();
    s.save(&session(9_000), &HeaderMap::new(), 1_000, &mut out)
        .unwrap();
    assert!(out.len() >= 3, "expected several parts, got {}", out.len());
    for v in &out {
        assert!(v.len() < 4096, "a cookie exceeds what browsers keep");
    }
    let back = s.load(&as_request(&out)).unwrap();
    assert_eq!(back.id_token.unwrap().expose().len(), 9_000);
}

#[test]
fn a_missing_or_tampered_part_means_no_session() {
    let s = store(1);
    let mut out = Vec::new();
    s.save(&session(9_000), &HeaderMap::new(), 1_000, &mut out)
        .unwrap();
    assert!(
        s.load(&as_request(&out[1..])).is_none(),
        "missing first part"
    );
    let mut tampered = out.clone();
    let text = tampered[1].to_str().unwrap().replacen("=", "=A", 1);
    tampered[1] = HeaderValue::from_str(&text).unwrap();
    assert!(s.load(&as_request(&tampered)).is_none());
}

#[test]
fn a_foreign_key_means_no_session() {
    let mut out = Vec::new();
    store(1)
        .save(&session(10), &HeaderMap::new(), 1_000, &mut out)
        .unwrap();
    assert!(store(2).load(&as_request(&out)).is_none());
}

#[test]
fn too_large_is_an_error_not_a_truncation() {
    let mut out = Vec::new();
    let err = store(1)
        .save(&session(40_000), &HeaderMap::new(), 1_000, &mut out)
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge(_)));
    assert!(out.is_empty());
}

#[test]
fn shrinking_session_removes_stale_parts_and_clear_removes_all() {
    let s = store(1);
    let mut big = Vec::new();
    s.save(&session(9_000), &HeaderMap::new(), 1_000, &mut big)
        .unwrap();
    let req = as_request(&big);
    let mut small = Vec::new();
    s.save(&session(10), &req, 1_000, &mut small).unwrap();
    let removed = small
        .iter()
        .filter(|v| v.to_str().unwrap().contains("Max-Age=0"))
        .count();
    assert_eq!(removed, big.len(), "every old part is deleted");
    let mut cleared = Vec::new();
    s.clear(&req, &mut cleared);
    assert_eq!(cleared.len(), big.len());
    assert!(
        cleared
            .iter()
            .all(|v| v.to_str().unwrap().contains("Max-Age=0"))
    );
}

#[test]
fn absurd_part_names_are_ignored() {
    let s = store(1);
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        HeaderValue::from_static("__Host-ssogate_1of10000000000=x; __Host-ssogate_9of9=y"),
    );
    assert!(s.load(&h).is_none());
}

#[test]
fn a_revoked_session_no_longer_loads_but_others_do() {
    let s = store(1);
    let mut out = Vec::new();
    s.save(&session(10), &HeaderMap::new(), 1_000, &mut out)
        .unwrap();
    let req = as_request(&out);
    let mut other = session(10);
    other.id = "sid-2".into();
    let mut out2 = Vec::new();
    s.save(&other, &HeaderMap::new(), 1_000, &mut out2).unwrap();
    s.revoke(
        crate::session::Revocation::Session { id: "sid-1".into() },
        u64::MAX,
        1_000,
    );
    assert!(
        s.load(&req).is_none(),
        "a copied cookie is refused after sign-out"
    );
    assert!(s.load(&as_request(&out2)).is_some());
}

#[test]
fn a_connections_recent_session_answers_its_cookie_and_still_sees_revocation() {
    let s = store(1);
    let recent = crate::session::Recent::default();
    let mut out = Vec::new();
    s.save(&session(3_000), &HeaderMap::new(), 1_000, &mut out)
        .unwrap();
    let req = as_request(&out);
    assert!(out.len() > 1, "split over parts: {}", out.len());
    let first = s.load_recent(Fields::Map(&req), &recent).unwrap();
    let again = s.load_recent(Fields::Map(&req), &recent).unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the second request is answered from the memo"
    );

    // Another cookie on the same connection opens as usual and replaces it.
    let mut other = session(10);
    other.id = "sid-2".into();
    let mut out2 = Vec::new();
    s.save(&other, &HeaderMap::new(), 1_000, &mut out2).unwrap();
    let second = s
        .load_recent(Fields::Map(&as_request(&out2)), &recent)
        .unwrap();
    assert_eq!(second.id, "sid-2");
    let back = s.load_recent(Fields::Map(&req), &recent).unwrap();
    assert!(!Arc::ptr_eq(&first, &back), "opened anew");

    // A tampered value is never taken for the remembered one.
    let mut tampered = out.clone();
    let v = tampered[0].to_str().unwrap().replacen('=', "=A", 1);
    tampered[0] = HeaderValue::from_str(&v).unwrap();
    assert!(
        s.load_recent(Fields::Map(&as_request(&tampered)), &recent)
            .is_none()
    );

    s.revoke(
        crate::session::Revocation::Session { id: "sid-1".into() },
        u64::MAX,
        1_000,
    );
    assert!(
        s.load_recent(Fields::Map(&req), &recent).is_none(),
        "revoked while remembered"
    );
}
