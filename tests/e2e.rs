//! The one end-to-end test binary: real provider, real upstream, real TLS.
mod cases;
mod support;
