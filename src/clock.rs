//! Wall-clock time in unix seconds; passed as a parameter everywhere else so
//! decisions are testable without clocks.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
