//! What the server-rendered pages (the patients' earnings page and the consoles) share: HTML
//! escaping, reading a cookie, and CSRF tokens bound to a sign-in.

use axum::http::{HeaderMap, header};
use ring::hmac;

/// The pages' one style sheet (inline: no asset route, no build step).
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fff;line-height:1.45}\
header{background:#123c69;color:#fff;padding:.6rem 1rem;display:flex;gap:1.2rem;align-items:center;flex-wrap:wrap}\
header a{color:#fff}header .brand{font-weight:700;font-size:1.1rem;text-decoration:none}\
nav ul{list-style:none;display:flex;gap:1rem;margin:0;padding:0;flex-wrap:wrap}\
main{max-width:1060px;margin:1.2rem auto;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:1.6rem}\
table{border-collapse:collapse;width:100%;margin:.4rem 0}td,th{border-bottom:1px solid #d8d8d8;padding:.3rem .4rem;text-align:left;vertical-align:top}\
th{background:#f2f4f7}code,pre{font-family:ui-monospace,monospace;font-size:.9rem}pre{background:#f2f4f7;padding:.6rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}\
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #c9ced6;border-radius:8px;padding:.8rem 1rem;min-width:10rem;flex:1 1 10rem}\
.card b{display:block;font-size:1.3rem;overflow-wrap:anywhere}.ok{color:#1a6b2c;font-weight:600}.bad{color:#a4161a;font-weight:600}\
.note{background:#eef5ff;border:1px solid #9cc1f0;padding:.6rem;border-radius:6px}.warn{background:#fff6e0;border:1px solid #c9a13b;padding:.6rem;border-radius:6px}\
form.inline{display:inline}button{font:inherit;padding:.25rem .7rem;border:1px solid #123c69;background:#123c69;color:#fff;border-radius:4px;cursor:pointer}\
button.secondary{background:#fff;color:#123c69}label{display:block;margin:.4rem 0}input,select,textarea{font:inherit;padding:.2rem}\
.muted{color:#555}.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;color:#000;padding:.4rem}";

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
