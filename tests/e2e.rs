//! The one end-to-end test binary: a real OpenID provider (pinned
//! `oidc-provider`), a real recording upstream, real TLS and WebSockets,
//! all over loopback. Run with `cargo test`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed expectation is a failed test"
)]

mod cases;
mod support;
