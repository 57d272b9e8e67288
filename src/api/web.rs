//! What the server-rendered pages (the patients' earnings page and the consoles) share: HTML
//! escaping, reading a cookie, and CSRF tokens bound to a sign-in.

use axum::http::{HeaderMap, header};
use ring::hmac;

/// Text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The value of cookie `name`, if the request carries a non-empty one.
pub fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&prefix).map(str::to_string))
        .filter(|v| !v.is_empty())
}

/// A form's CSRF token: an HMAC under the server's pepper of the signed-in key's id, in its
/// own `scope` (a token of one set of pages is not one of another).
pub fn csrf_token(pepper: &[u8], scope: &str, key_id: &str) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, pepper);
    hex::encode(&hmac::sign(&k, format!("{scope}:{key_id}").as_bytes()).as_ref()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }

    #[test]
    fn reads_one_cookie_among_several() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; tessera_console=k; b=".parse().expect("header"),
        );
        assert_eq!(cookie(&h, "tessera_console").as_deref(), Some("k"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn csrf_tokens_differ_by_key_and_scope() {
        let t = csrf_token(b"pepper", "csrf", "key-1");
        assert_eq!(t.len(), 32);
        assert_ne!(t, csrf_token(b"pepper", "csrf", "key-2"));
        assert_ne!(t, csrf_token(b"pepper", "console-csrf", "key-1"));
    }
}
