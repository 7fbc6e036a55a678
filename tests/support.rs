//! Real parts the end-to-end cases drive: the pinned OpenID provider, a
//! recording upstream, a browser-like client, throwaway certificates and
//! a harness that starts the gate in-process.
#![allow(dead_code)]
pub mod browser;
pub mod certs;
pub mod fake_idp;
pub mod fake_rig;
pub mod gate;
pub mod idp;
pub mod upstream;
