//! Who the user is, and how that becomes headers for the upstream.

use http::{HeaderMap, HeaderName, HeaderValue};
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

impl Identity {
    /// Adds `X-Forwarded-User`, `-Email` and `-Preferred-Username`. A claim
    /// that cannot be a header value (control characters) is left out rather
    /// than mangled; the caller has already removed client-sent copies.
    pub fn insert_headers(&self, headers: &mut HeaderMap) {
        let pairs = [
            (X_FORWARDED_USER, Some(&self.sub)),
            (X_FORWARDED_EMAIL, self.email.as_ref()),
            (
                X_FORWARDED_PREFERRED_USERNAME,
                self.preferred_username.as_ref(),
            ),
        ];
        for (name, value) in pairs {
            if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
                headers.insert(name, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_become_headers_and_hostile_values_are_dropped() {
        let id = Identity {
            sub: "alice".into(),
            email: Some("a@example.com\r\nX-Evil: 1".into()),
            name: Some("Alice".into()),
            preferred_username: Some("Ålice".into()),
        };
        let mut h = HeaderMap::new();
        id.insert_headers(&mut h);
        assert_eq!(h[&X_FORWARDED_USER], "alice");
        assert!(
            h.get(&X_FORWARDED_EMAIL).is_none(),
            "CR/LF must never reach a header"
        );
        assert_eq!(
            h[&X_FORWARDED_PREFERRED_USERNAME].as_bytes(),
            "Ålice".as_bytes()
        );
    }
}
