//! `/sso/healthz` (the process serves) and `/sso/readyz` (providers loaded).

use http::{Response, StatusCode};

use crate::respond::{self, Body};
use crate::router::State;

pub fn healthz() -> Response<Body> {
    respond::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

pub fn readyz(state: &State) -> Response<Body> {
    if state.registry.is_ready() {
        respond::json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
    } else {
        respond::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "reason": "the identity provider's discovery document and keys are not loaded yet" }),
        )
    }
}
