//! ssogate: an OpenID Connect gate in front of an on-prem collaboration server.
//!
//! Requests reach the upstream only with a valid session or bearer token;
//! the `/sso/` routes sign people in and out. See `README.md`.
#![forbid(unsafe_code)]

pub mod app;
pub mod check;
pub mod clock;
pub mod config;
pub mod fields;
pub mod gate;
pub mod identity;
pub mod lifecycle;
pub mod live;
pub mod path;
pub mod provider;
pub mod proxy;
pub mod request_body;
pub mod respond;
pub mod router;
pub mod routes;
pub mod server;
pub mod session;
pub mod tcp;
pub mod telemetry;

pub use app::App;
pub use config::Config;
