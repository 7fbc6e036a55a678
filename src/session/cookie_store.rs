//! The first [`Store`]: the whole session sealed into the browser's cookies,
//! split over numbered cookies when it is too large for one.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::cookies::{CookieNames, MAX_PARTS, Part, cookie_bytes};
use super::{Recent, Revocation, Revocations, Sealer, Session, Store, StoreError};
use crate::fields::Fields;

/// Longest value in one cookie; with name and attributes it stays under the
/// ~4096 bytes browsers accept.
pub const PART_MAX: usize = 3800;
/// Largest sealed session, over all parts.
pub const TOTAL_MAX: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct CookieStore {
    sealer: Arc<Sealer>,
    names: CookieNames,
    /// Sessions ended before their cookies expire (in memory, per process).
    revoked: Arc<Revocations>,
}

impl CookieStore {
    pub fn new(sealer: Arc<Sealer>, names: CookieNames) -> Self {
        Self {
            sealer,
            names,
            revoked: Arc::new(Revocations::default()),
        }
    }

    /// Keeps at most `n` revocations (the list is empty, so replace it).
    pub fn with_max_revocations(mut self, n: usize) -> Self {
        self.revoked = Arc::new(Revocations::new(n));
        self
    }

    fn open(&self, sealed: &[u8]) -> Option<Session> {
        let plain = self.sealer.open(self.names.session(), sealed)?;
        serde_json::from_slice(&plain)
            .ok()
            .filter(|s| !self.revoked.is_revoked(s))
    }
}

/// The session cookies a request carries, by part; values are bounded before use.
struct Found<'a> {
    whole: Option<&'a [u8]>,
    /// `parts[count][index - 1]`.
    parts: [[Option<&'a [u8]>; MAX_PARTS]; MAX_PARTS + 1],
}

impl<'a> Found<'a> {
    fn scan(names: &CookieNames, fields: Fields<'a>) -> Self {
        let mut f = Found {
            whole: None,
            parts: [[None; MAX_PARTS]; MAX_PARTS + 1],
        };
        for (name, value) in cookie_bytes(fields) {
            if value.len() > PART_MAX + 64 {
                continue;
            }
            // Values stay bytes: a sealed value is base64, which opening checks.
            match std::str::from_utf8(name)
                .ok()
                .and_then(|n| names.session_part(n))
            {
                Some(Part::Whole) => f.whole = Some(value),
                Some(Part::Of { index, count }) => f.parts[count][index - 1] = Some(value),
                None => {}
            }
        }
        f
    }

    /// Every part name present, for deletion.
    fn present(&self) -> impl Iterator<Item = Part> + '_ {
        let whole = self.whole.map(|_| Part::Whole);
        let parts = (2..=MAX_PARTS).flat_map(move |count| {
            (1..=count).filter_map(move |index| {
                self.parts[count][index - 1].map(|_| Part::Of { index, count })
            })
        });
        whole.into_iter().chain(parts)
    }
}

impl CookieStore {
    /// The first sealed value among the request's session cookies (whole,
    /// then split over 2, 3, … parts) that `open` accepts.
    fn find<T>(&self, fields: Fields<'_>, open: impl Fn(&[u8]) -> Option<T>) -> Option<T> {
        let found = Found::scan(&self.names, fields);
        if let Some(session) = found.whole.and_then(&open) {
            return Some(session);
        }
        for count in 2..=MAX_PARTS {
            let parts = &found.parts[count][..count];
            if parts.iter().all(Option::is_some) {
                let total: usize = parts.iter().flatten().map(|p| p.len()).sum();
                if total > TOTAL_MAX {
                    continue;
                }
                let mut joined = Vec::with_capacity(total);
                parts
                    .iter()
                    .flatten()
                    .for_each(|p| joined.extend_from_slice(p));
                if let Some(session) = open(&joined) {
                    return Some(session);
                }
            }
        }
        None
    }
}

impl Store for CookieStore {
    fn load(&self, headers: &HeaderMap) -> Option<Session> {
        self.find(Fields::Map(headers), |sealed| self.open(sealed))
    }

    fn load_recent(&self, fields: Fields<'_>, recent: &Recent) -> Option<Arc<Session>> {
        self.find(fields, |sealed| match recent.get(sealed) {
            Some(session) => (!self.revoked.is_revoked(&session)).then_some(session),
            None => {
                let session = Arc::new(self.open(sealed)?);
                recent.put(sealed, &session);
                Some(session)
            }
        })
    }

    fn save(
        &self,
        session: &Session,
        request: &HeaderMap,
        now: u64,
        out: &mut Vec<HeaderValue>,
    ) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(session).map_err(|_| StoreError::Encode)?;
        let sealed = self.sealer.seal(self.names.session(), &plain)?;
        // Sealed values are base64 (ASCII), so byte offsets below are char boundaries.
        if sealed.len() > TOTAL_MAX || sealed.len().div_ceil(PART_MAX) > MAX_PARTS {
            return Err(StoreError::TooLarge(sealed.len()));
        }
        let max_age = i64::try_from(session.cookie_max_age(now)).unwrap_or(i64::MAX);
        let count = sealed.len().div_ceil(PART_MAX).max(1);
        let mut written = Vec::with_capacity(count);
        if count == 1 {
            written.push(Part::Whole);
        } else {
            written.extend((1..=count).map(|index| Part::Of { index, count }));
        }
        for (i, part) in written.iter().enumerate() {
            let value = if count == 1 {
                sealed.as_str()
            } else {
                &sealed[i * PART_MAX..((i + 1) * PART_MAX).min(sealed.len())]
            };
            out.extend(
                self.names
                    .set(&self.names.part_name(*part), value, "/", max_age),
            );
        }
        // Remove stale parts of an earlier, differently split session.
        for stale in Found::scan(&self.names, Fields::Map(request))
            .present()
            .filter(|p| !written.contains(p))
        {
            out.extend(self.names.remove(&self.names.part_name(stale), "/"));
        }
        Ok(())
    }

    fn revoke(&self, what: Revocation, until: u64, now: u64) {
        self.revoked.revoke(what, until, now);
    }

    fn is_revoked(&self, session: &Session) -> bool {
        self.revoked.is_revoked(session)
    }

    fn clear(&self, request: &HeaderMap, out: &mut Vec<HeaderValue>) {
        let found = Found::scan(&self.names, Fields::Map(request));
        let mut any = false;
        for part in found.present() {
            any = true;
            out.extend(self.names.remove(&self.names.part_name(part), "/"));
        }
        if !any {
            out.extend(self.names.remove(self.names.session(), "/"));
        }
    }
}

#[cfg(test)]
mod tests;
