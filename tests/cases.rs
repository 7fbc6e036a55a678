//! End-to-end cases, one module per area.
mod bearer;
mod binary;
mod config;
mod health;
mod login;
mod logout;
mod proxy;
mod session;
mod signin;
mod websocket;
