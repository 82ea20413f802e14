//! HTTP's own rules on the HTTP/JSON port, as a client that knows RFC 9110
//! expects them: body limits answered with 413 before the body is read,
//! `Allow` on 405, `WWW-Authenticate` on 401, HEAD on every GET route,
//! media types compared without case, and validators on immutable reads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::helpers::Backend;
use crate::http::{JSON, app, curl, release_over_http_in};

/// One request written on `stream` as `raw`, and the response's head.
fn exchange(stream: &mut TcpStream, raw: &[u8]) -> String {
    stream.write_all(raw).unwrap();
    read_head(stream)
}

/// The head of one response, and the body that `Content-Length` declares.
fn read_head(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    head
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A body over `limits.max_body_bytes` but under the message limit is 413
/// (a size never passes: no 429, no `Retry-After`), like one over the
/// port's own limit; a declared `Content-Length` over the limit is refused
/// before the body is read (no `100 Continue`), with `Connection: close`
/// since the body was left unread; and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_without_retry_after_before_they_are_read() {
    let app = app(Backend::Sqlite, true).await;
    let address = app.http_address.unwrap();
    let path = "/v1/namespaces/payments/policies/limits/drafts";
    let before = app.db_state().await;
    for megabytes in [2, 3] {
        let body = format!(
            r#"{{"body": {{"padding": "{}"}}}}"#,
            "x".repeat(megabytes << 20)
        );
        let refused = curl(&app, "POST", path, Some(&body), &[JSON]);
        assert_eq!(refused.status, 413, "{megabytes} MiB: {refused:?}");
        assert_eq!(refused.header("retry-after"), None, "{megabytes} MiB");
        assert_eq!(refused.json["code"], 8, "RESOURCE_EXHAUSTED in the JSON");
    }

    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = exchange(
        &mut stream,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            3 << 20
        )
        .as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 413"), "refused at once: {head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "then closed: {rest:?}");

    // Within the limits the connection carries the next request.
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..2 {
        let head = exchange(
            &mut stream,
            b"GET /v1/namespaces/payments/policies HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    assert_eq!(app.db_state().await, before, "nothing was written");
}

/// 405 names what the path takes (`Allow`), 401 names the scheme
/// (`WWW-Authenticate: Bearer`), HEAD answers every GET route without a
/// body, `Application/JSON` is JSON, and a published version, which never
/// changes but for being active, has an `ETag` that `If-None-Match` meets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_details_follow_rfc_9110() {
    let app = app(Backend::Sqlite, true).await;
    let address = app.http_address.unwrap();
    let base = "/v1/namespaces/payments/policies/limits";
    release_over_http_in(address, "payments", "limits", 1);

    let refused = curl(&app, "DELETE", &format!("{base}/active"), None, &[]);
    assert_eq!(refused.status, 405, "{refused:?}");
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
    let refused = curl(&app, "GET", &format!("{base}:publish"), None, &[]);
    assert_eq!(
        (refused.status, refused.header("allow")),
        (405, Some("POST"))
    );

    // curl -I: HEAD, reading no body whatever Content-Length says.
    let output = std::process::Command::new("curl")
        .args(["-sS", "-I", &format!("http://{address}{base}/active")])
        .output()
        .unwrap();
    let head = String::from_utf8(output.stdout).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(header(&head, "etag").is_some(), "{head}");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            format!("HEAD {base}/active HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.ends_with("\r\n\r\n"), "no body after the head: {raw}");

    let drafted = curl(
        &app,
        "POST",
        &format!("{base}/drafts"),
        Some(r#"{"body": {"max": 2}}"#),
        &["Content-Type: Application/JSON; charset=UTF-8"],
    );
    assert_eq!(drafted.status, 201, "{drafted:?}");
    let draft = curl(&app, "GET", &format!("{base}/versions/2"), None, &[]);
    assert_eq!(draft.status, 200);
    assert_eq!(draft.header("etag"), None, "a draft changes: no validator");

    let published = curl(&app, "GET", &format!("{base}/versions/1"), None, &[]);
    let etag = published.header("etag").expect("an ETag").to_owned();
    assert!(
        etag.starts_with("\"1-") && etag.ends_with("-active\""),
        "{etag}"
    );
    let again = curl(
        &app,
        "GET",
        &format!("{base}/versions/1"),
        None,
        &[&format!("If-None-Match: {etag}")],
    );
    assert_eq!(
        (again.status, again.header("etag")),
        (304, Some(etag.as_str()))
    );

    let secured = app_with_auth().await;
    let address = secured.http_address.unwrap();
    let output = std::process::Command::new("curl")
        .args(["-sS", "-i", &format!("http://{address}{base}/active")])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(
        header(&text, "www-authenticate"),
        Some("Bearer realm=\"policyhub\"")
    );
}

async fn app_with_auth() -> crate::helpers::TestApp {
    app(Backend::Sqlite, false).await
}
