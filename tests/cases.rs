//! End-to-end cases, one module per area.
mod bearer;
mod binary;
mod config;
mod health;
mod login;
mod logout;
mod logs;
mod providers;
mod providers_smoke;
mod proxy;
mod refresh;
mod rp_negatives;
mod session;
mod signin;
mod signout;
mod websocket;
