//! Request bodies framed by `Content-Length` on a kept-alive connection:
//! streamed to the upstream whole, pipelined requests after them served in
//! order, an upstream that refuses an upload before reading it answered
//! and the connection closed, and a client that hangs up mid-body.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::clients::the_only_slot;
use super::conn::{Conn, assert_echo, request, signed_in, with};
use super::raw_upstream::RawUpstream;
use crate::cases::hostile::{
    assert_upload_ended_short, plain_world, served_within, session_cookie,
};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A POST of `body` to `path` with `auth`, head only (the body goes after it).
fn post_head(path: &str, port: u16, auth: &[String], length: usize) -> String {
    let lines = with(
        &with(auth, "Content-Type: application/octet-stream"),
        &format!("Content-Length: {length}"),
    );
    request("POST", path, port, &lines)
}

/// On one kept-alive connection: a 1 MiB upload sent in pieces with pauses
/// reaches the upstream whole (its length and SHA-256); then a small POST
/// with a GET right behind it in the same write get two answers in order;
/// then the connection still serves a GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_upstream_whole_and_the_connection_stays_in_step() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;

    let big: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    c.send(post_head("/upload", port, &auth, big.len())).await;
    for (i, piece) in big.chunks(64 * 1024).enumerate() {
        c.send(piece).await;
        if i % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let a = c.answer("the 1 MiB upload").await;
    assert_eq!(a.status, 200, "{}", a.head);
    let got = a.json();
    assert_eq!(got["bytes"], big.len() as u64, "{got}");
    assert_eq!(got["sha256"], sha256_hex(&big), "{got}");

    let mut both = post_head("/upload", port, &auth, 5);
    both.push_str("hello");
    both.push_str(&request("GET", "/after-upload", port, &auth));
    c.send(&both).await;
    let a = c.answer("the small upload").await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.json()["sha256"], sha256_hex(b"hello"));
    let a = c.answer("the GET behind it").await;
    assert_echo(&a, "/after-upload", "the GET behind the upload");

    let a = c
        .exchange(&request("GET", "/last", port, &auth), "last")
        .await;
    assert_echo(&a, "/last", "last");
}

/// An upstream that answers 413 before reading an upload: the client gets
/// the 413 while it is still sending, and the gate then closes the
/// connection (the rest of the body can no longer be told from a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_refused_before_it_is_read_is_answered_and_the_connection_closes() {
    let up = RawUpstream::start().await;
    let w = plain_world(&[("CT_UPSTREAM_URL", &up.url)]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;
    c.send(post_head("/refuse", port, &auth, 1 << 20)).await;
    c.send(vec![b'x'; 16 * 1024]).await;
    let a = c.answer("the refused upload").await;
    assert_eq!(a.status, 413, "{}", a.head);
    assert_eq!(a.text(), "too big");
    c.assert_ends_with(&a, "after an upload the upstream refused")
        .await;
}

/// With `CT_MAX_CONNECTIONS=1`: a client that hangs up 10 bytes into a
/// 100-byte body frees its slot at once, and the upstream's side of the
/// body ends short instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_body_frees_its_slot_and_ends_the_upstreams_body() {
    let w = plain_world(&[("CT_MAX_CONNECTIONS", "1")]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = the_only_slot(port).await;
    c.send(post_head("/upload", port, &auth, 100)).await;
    c.send(b"0123456789").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(c);
    let again = served_within(port, Duration::from_secs(3)).await;
    assert!(
        again.is_some(),
        "the only slot was still held after the client hung up mid-body"
    );
    assert_upload_ended_short(&w.upstream, 100, Duration::from_secs(5), "cut at 10").await;
}
