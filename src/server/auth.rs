//! Authentication: the [`Tenant`] extractor reads `Authorization: Bearer <key>` or
//! `?access_token=<key>` and maps the key to its tenant; a request without a valid key is
//! answered 401 before any handler (or WebSocket upgrade) runs.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::server::error::ApiError;
use crate::server::AppState;

/// The tenant used when auth is off (loopback embedded defaults).
pub const OPEN_TENANT: &str = "default";

/// The authenticated tenant of a request.
#[derive(Clone, Debug)]
pub struct Tenant(pub Arc<str>);

fn bearer(parts: &Parts) -> Option<&str> {
    let h = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let s = h.to_str().ok()?;
    let (scheme, key) = s.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

fn query_token(parts: &Parts) -> Option<String> {
    let q = parts.uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "access_token").then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` of a query value.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn request_key(parts: &Parts) -> Option<String> {
    match bearer(parts) {
        Some(k) => Some(k.to_owned()),
        None => query_token(parts),
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let core = &state.core;
        if !core.auth_enabled() {
            return Ok(Tenant(Arc::from(OPEN_TENANT)));
        }
        match request_key(parts)
            .as_deref()
            .and_then(|k| core.tenant_of(k))
        {
            Some(t) => Ok(Tenant(Arc::from(t))),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// An operator: a request with an admin key (`admin = true` in `[[auth.keys]]`), or any
/// request when auth is off (loopback only). Operator endpoints (`/metrics`) show every
/// tenant's counts, so a tenant's key is refused with 403.
#[derive(Clone, Copy, Debug)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let core = &state.core;
        if !core.auth_enabled() {
            return Ok(Admin);
        }
        match request_key(parts).as_deref().and_then(|k| core.grant_of(k)) {
            Some(g) if g.admin => Ok(Admin),
            Some(_) => Err(ApiError::Forbidden(
                "this endpoint shows every tenant's counts: it needs a key with admin = true in [[auth.keys]]".into(),
            )),
            None => Err(ApiError::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
