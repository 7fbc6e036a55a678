//! Who the user is; `proxy::headers` makes it headers for the upstream.

use http::HeaderName;
use serde::{Deserialize, Serialize};

pub const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
pub const X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
pub const X_FORWARDED_PREFERRED_USERNAME: HeaderName =
    HeaderName::from_static("x-forwarded-preferred-username");

/// The signed-in user's claims that the gate keeps and passes on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "sub")]
    pub sub: String,
    #[serde(rename = "em", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(rename = "nm", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "pu", default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}
