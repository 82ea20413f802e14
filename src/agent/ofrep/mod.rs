//! OFREP, the OpenFeature Remote Evaluation Protocol, over the states in
//! force: any OpenFeature SDK reads verified policy through its standard
//! OFREP provider. `flags` maps keys to values and failures; this module is
//! its HTTP side, behind the API's token like every other route.
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}`: one evaluation; the key is
//!   percent-decoded, and may hold `/`.
//! - `POST /ofrep/v1/evaluate/flags`: every policy of every namespace
//!   followed, as object flags, with an `ETag` naming the revisions (and
//!   sources, and whether each is stale) in force, so a matching
//!   `If-None-Match` is a 304 that costs neither the body nor its encoding;
//!   the body is encoded once per change of the states in force and shared
//!   by every answer until the next.
//!
//! Failures are OFREP's: 400 (`PARSE_ERROR`, `INVALID_CONTEXT`), 404
//! (`FLAG_NOT_FOUND`) and 500 (`GENERAL`: no verified state yet), each with
//! `key` (but in bulk), `errorCode` and `errorDetails`. So are the API's
//! refusals of these routes (`refused`): 401 for a missing or wrong token
//! and 405 for a method other than POST, both `GENERAL`, as the providers
//! report them, with the key of a single evaluation like any other failure
//! of its route.

mod flags;

use std::sync::Mutex;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use self::flags::{ErrorCode, Failure, FlagKey, Freshness};
use super::followed::{Followed, FollowedNamespaces};
use crate::http::semantics;

/// The path of bulk evaluation; a single evaluation's key follows it.
const BULK_PATH: &str = "/ofrep/v1/evaluate/flags";
/// Largest evaluation request accepted (a context).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// An OFREP route.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Bulk,
    /// One evaluation, of this key as the path spells it (still encoded).
    Single(&'a str),
}

/// The OFREP route `path` names, if it names one.
pub fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix(BULK_PATH)?;
    if rest.is_empty() {
        return Some(Route::Bulk);
    }
    rest.strip_prefix('/').map(Route::Single)
}

/// The API's refusal of `route` with `status` (a token missing or wrong,
/// a method other than POST), before anything is evaluated: OFREP's error
/// shape, `GENERAL`, with the key of a single evaluation.
pub fn refused(route: &Route<'_>, status: StatusCode, details: String) -> Response<Full<Bytes>> {
    let failure = Failure {
        code: ErrorCode::General,
        details,
    };
    let body = match route {
        Route::Bulk => failure.to_json(None),
        Route::Single(encoded) => {
            let key = percent_decode_str(encoded).decode_utf8_lossy();
            failure.to_json(Some(&key))
        }
    };
    json(status, Bytes::from(body.to_string()))
}

/// One evaluation of the key `encoded`.
pub async fn single(
    namespaces: &FollowedNamespaces,
    encoded: &str,
    body: Incoming,
) -> Response<Full<Bytes>> {
    let key = match percent_decode_str(encoded).decode_utf8() {
        Ok(key) => key,
        Err(_) => {
            let failure = Failure {
                code: ErrorCode::ParseError,
                details: format!("the key {encoded:?} is not UTF-8 once percent-decoded"),
            };
            return failed(&failure, Some(encoded));
        }
    };
    let evaluation = async {
        flags::check_request(&read(body).await?)?;
        let flag = FlagKey::parse(&key)?;
        let followed = namespaces
            .get(flag.namespace)
            .ok_or_else(|| Failure::not_followed(flag.namespace))?;
        let in_force = followed.current();
        flags::evaluate(
            &key,
            &flag,
            in_force.as_ref().map(|in_force| &in_force.state),
            freshness(followed),
        )
    };
    match evaluation.await {
        Ok(evaluation) => json(StatusCode::OK, Bytes::from(evaluation.to_string())),
        Err(failure) => failed(&failure, Some(&key)),
    }
}

/// The last bulk answer, by its ETag: encoded once per change of the
/// states in force, whoever asks.
#[derive(Default)]
pub struct BulkAnswers {
    last: Mutex<Option<(HeaderValue, Bytes)>>,
}

/// Every policy followed, or 304 when `If-None-Match` names the states in
/// force.
pub async fn bulk(
    namespaces: &FollowedNamespaces,
    answers: &BulkAnswers,
    headers: &HeaderMap,
    body: Incoming,
) -> Response<Full<Bytes>> {
    if let Err(failure) = read(body)
        .await
        .and_then(|body| flags::check_request(&body))
    {
        return failed(&failure, None);
    }
    let mut in_force = Vec::new();
    for followed in namespaces.all() {
        match followed.current() {
            Some(state) => in_force.push((state, freshness(followed))),
            None => {
                let failure = Failure {
                    code: ErrorCode::General,
                    details: format!(
                        "no verified state of namespace {} yet: neither the server nor the cache \
                         gave one",
                        followed.namespace
                    ),
                };
                return failed(&failure, None);
            }
        }
    }
    let states: Vec<_> = in_force
        .iter()
        .map(|(held, freshness)| (&held.state, *freshness))
        .collect();
    let etag = HeaderValue::from_str(&flags::bulk_etag(&states))
        .expect("digits, letters and dots are a header");
    if semantics::not_modified(headers, &etag) {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response.headers_mut().insert(header::ETAG, etag);
        return response;
    }
    let answer = {
        let mut last = answers
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*last {
            Some((tag, answer)) if *tag == etag => answer.clone(),
            _ => {
                let answer = Bytes::from(flags::bulk(&states));
                *last = Some((etag.clone(), answer.clone()));
                answer
            }
        }
    };
    let mut response = json(StatusCode::OK, answer);
    response.headers_mut().insert(header::ETAG, etag);
    response
}

/// How fresh `followed`'s state in force is, as an evaluation's reason says
/// it.
fn freshness(followed: &Followed) -> Freshness {
    if followed.live() {
        Freshness::Live
    } else {
        Freshness::Stale
    }
}

/// The request's body, at most `MAX_REQUEST_BYTES`.
async fn read(body: Incoming) -> Result<Bytes, Failure> {
    Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|_| Failure {
            code: ErrorCode::ParseError,
            details: format!("the request exceeds {MAX_REQUEST_BYTES} bytes or was cut off"),
        })
}

/// A failure as OFREP answers it.
fn failed(failure: &Failure, key: Option<&str>) -> Response<Full<Bytes>> {
    let status = match failure.code {
        ErrorCode::ParseError | ErrorCode::InvalidContext => StatusCode::BAD_REQUEST,
        ErrorCode::FlagNotFound => StatusCode::NOT_FOUND,
        ErrorCode::General => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body: Value = failure.to_json(key);
    json(status, Bytes::from(body.to_string()))
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bulk_path_and_a_key_after_it_are_routes_and_nothing_else() {
        assert_eq!(route("/ofrep/v1/evaluate/flags"), Some(Route::Bulk));
        assert_eq!(
            route("/ofrep/v1/evaluate/flags/payments/card-limits/a"),
            Some(Route::Single("payments/card-limits/a"))
        );
        assert_eq!(route("/ofrep/v1/evaluate/flags/"), Some(Route::Single("")));
        assert_eq!(route("/ofrep/v1/evaluate/flagsx"), None);
        assert_eq!(route("/ofrep/v1/configuration"), None);
    }

    #[tokio::test]
    async fn a_refusal_of_a_route_carries_the_key_it_was_asked_for() {
        let single = refused(
            &Route::Single("payments/card-limits%23/a"),
            StatusCode::UNAUTHORIZED,
            "no token".into(),
        );
        assert_eq!(single.status(), StatusCode::UNAUTHORIZED);
        let body = single.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            serde_json::json!({"key": "payments/card-limits#/a", "errorCode": "GENERAL",
                               "errorDetails": "no token"})
        );
        let bulk = refused(&Route::Bulk, StatusCode::METHOD_NOT_ALLOWED, "POST".into());
        let body = bulk.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            serde_json::json!({"errorCode": "GENERAL", "errorDetails": "POST"})
        );
    }

    #[test]
    fn each_error_code_has_its_status() {
        for (code, status) in [
            (ErrorCode::ParseError, 400),
            (ErrorCode::InvalidContext, 400),
            (ErrorCode::FlagNotFound, 404),
            (ErrorCode::General, 500),
        ] {
            let failure = Failure {
                code,
                details: "why".into(),
            };
            assert_eq!(failed(&failure, Some("k")).status().as_u16(), status);
        }
    }
}
