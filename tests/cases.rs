//! End-to-end cases, one module per area.
mod login;
