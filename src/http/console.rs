//! The console (docs/src/contributing/design.md#transports): a single-page
//! application whose files are embedded in the binary and served on the HTTP
//! port under `/console/`. It is a client of the public HTTP API only: these
//! routes serve files, never data, and need no token (the files hold no
//! secret; every call the console makes carries the token its user signed in
//! with).
//!
//! Every file goes out under a strict Content-Security-Policy: scripts,
//! styles, images and requests of this origin only (and requests to the
//! origins of the issuers people sign in with, for their discovery document
//! and token endpoint), no inline script or style, no frames, and Trusted
//! Types required with no policy allowed, so no code path can turn a string
//! into markup: the console renders every body, note and reason as text.

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use prost::bytes::Bytes;
use sha2::{Digest, Sha256};

/// Where the console is served.
pub const PREFIX: &str = "/console/";

/// Every file of `console/`, by path relative to it.
const FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/console_files.rs"));

/// The Content-Security-Policy of the console's files, whose `connect-src`
/// adds the origin of each issuer in `sign_in_issuers` to the console's own.
pub fn content_security_policy<'a>(
    sign_in_issuers: impl IntoIterator<Item = &'a str>,
) -> HeaderValue {
    let mut connect = String::from("'self'");
    for origin in sign_in_issuers.into_iter().filter_map(origin) {
        if !connect.split(' ').any(|known| known == origin) {
            connect.push(' ');
            connect.push_str(&origin);
        }
    }
    HeaderValue::from_str(&format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
    ))
    .expect("origins are valid header text")
}

/// `scheme://host[:port]` of an `http(s)` URL.
fn origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri
        .scheme_str()
        .filter(|scheme| matches!(*scheme, "http" | "https"))?;
    Some(format!("{scheme}://{}", uri.authority()?))
}

/// A file with the validator that `If-None-Match` is compared with.
struct File {
    path: &'static str,
    bytes: &'static [u8],
    etag: HeaderValue,
}

static INDEX: LazyLock<Vec<File>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(path, bytes)| File {
            path,
            bytes,
            etag: HeaderValue::from_str(&format!("\"{:x}\"", Sha256::digest(bytes)))
                .expect("a hex digest is a valid header value"),
        })
        .collect()
});

/// The answer to a `GET` of `path` when it is the console's: a file, 304
/// when `If-None-Match` names its current content, or a redirect from `/`
/// and `/console` to the console. The files go out under `policy`
/// ([`content_security_policy`]).
pub fn response(
    path: &str,
    headers: &HeaderMap,
    policy: &HeaderValue,
) -> Option<Response<Full<Bytes>>> {
    if path == "/" || path == PREFIX.trim_end_matches('/') {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::FOUND;
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static(PREFIX));
        return Some(response);
    }
    let relative = match path.strip_prefix(PREFIX)? {
        "" => "index.html",
        relative => relative,
    };
    let file = INDEX.iter().find(|file| file.path == relative)?;
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|wanted| wanted == file.etag);
    let mut response = if not_modified {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Full::new(Bytes::from_static(file.bytes)))
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type(file.path));
    headers.insert(header::ETAG, file.etag.clone());
    // Revalidated on every load, so a new binary's console is used at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, policy.clone());
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Some(response)
}

fn content_type(path: &str) -> HeaderValue {
    HeaderValue::from_static(
        match path.rsplit_once('.').map(|(_, extension)| extension) {
            Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            Some("png") => "image/png",
            _ => "application/octet-stream",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_known_type_and_the_index_exists() {
        assert!(INDEX.iter().any(|file| file.path == "index.html"));
        for file in INDEX.iter() {
            assert_ne!(
                content_type(file.path),
                "application/octet-stream",
                "{}",
                file.path
            );
        }
    }

    #[test]
    fn the_sign_in_issuers_origins_may_be_connected_to() {
        let policy = content_security_policy([
            "https://login.example.com/realms/people",
            "https://login.example.com",
            "http://127.0.0.1:5556",
            "not a url",
        ]);
        assert!(
            policy
                .to_str()
                .unwrap()
                .contains("connect-src 'self' https://login.example.com http://127.0.0.1:5556; "),
            "{policy:?}"
        );
        assert!(
            content_security_policy([])
                .to_str()
                .unwrap()
                .contains("connect-src 'self'; ")
        );
    }
}
