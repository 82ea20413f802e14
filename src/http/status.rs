//! What goes back: a reply as JSON in the protobuf JSON mapping, or a
//! refusal as a JSON `google.rpc.Status` with the HTTP status of the
//! standard gRPC → HTTP table (the one grpc-gateway and Google's APIs use).

use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use prost::bytes::Bytes;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::grpc::status::TOO_LARGE;

/// A refusal, and the HTTP status when the gRPC code's is not the right one
/// (a body too large, not JSON, a verb the path does not take).
#[derive(Debug)]
pub struct Failure {
    http: Option<StatusCode>,
    status: Status,
    /// The request's body was left unread, so the connection cannot carry
    /// another request: the response says `Connection: close` (RFC 9112
    /// §9.6) rather than the socket closing under the client.
    close: bool,
    /// The methods the path takes, for a 405's `Allow` (RFC 9110 §15.5.6).
    allow: Option<HeaderValue>,
}

impl Failure {
    /// A refusal with its own HTTP status.
    pub fn http(code: StatusCode, status: Status) -> Self {
        Failure {
            http: Some(code),
            status,
            close: false,
            allow: None,
        }
    }

    /// 405: the path takes only `allow`.
    pub fn method_not_allowed(status: Status, allow: HeaderValue) -> Self {
        Failure {
            allow: Some(allow),
            ..Failure::http(StatusCode::METHOD_NOT_ALLOWED, status)
        }
    }

    /// The same refusal, sent before the request's body was read.
    pub fn body_unread(self) -> Self {
        Failure {
            close: true,
            ..self
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure {
            http: None,
            status,
            close: false,
            allow: None,
        }
    }
}

/// The HTTP status of a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `body` as a JSON response.
fn json(code: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A reply, in the protobuf JSON mapping.
pub fn json_response(code: StatusCode, message: &DynamicMessage) -> Response<Full<Bytes>> {
    json(
        code,
        serde_json::to_vec(&message_json(message)).expect("a JSON value always serializes"),
    )
}

/// A message in the protobuf JSON mapping, with the integral numbers of its
/// `google.protobuf.Value`s printed as integers (`500`, not `500.0`), as
/// grpcurl and `-o json` print them.
pub fn message_json(message: &DynamicMessage) -> Value {
    let mut json = message
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .expect("a message serializes to JSON");
    crate::grpc::convert::integral_numbers(&mut json);
    json
}

/// A refusal as `google.rpc.Status` JSON, with its HTTP status, and when to
/// retry as `Retry-After`. A size limit (RESOURCE_EXHAUSTED whose
/// `ErrorInfo` reason is `TOO_LARGE`) is 413: the same request will never
/// pass, so nothing invites a retry.
pub fn error_response(failure: &Failure) -> Response<Full<Bytes>> {
    let status = &failure.status;
    let code = failure.http.unwrap_or_else(|| refusal_status(status));
    let mut response = json(code, status_json(status).to_string().into_bytes());
    if matches!(
        code,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        let seconds = retry_after(status).map_or(1, |seconds| seconds.ceil().max(1.0) as u64);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(allow) = &failure.allow {
        response.headers_mut().insert(header::ALLOW, allow.clone());
    }
    // RFC 6750 §3: a refusal for want of a valid token names the scheme.
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"policyhub\""),
        );
    }
    if failure.close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The HTTP status of a refusal: its gRPC code's, but 413 for a size limit.
pub fn refusal_status(status: &Status) -> StatusCode {
    if too_large(status) {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        http_status(status.code())
    }
}

/// Whether the status refuses a request over a size limit.
fn too_large(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted
        && status
            .get_error_details()
            .error_info()
            .is_some_and(|info| info.reason == TOO_LARGE)
}

/// How long the status asks to wait, in seconds.
fn retry_after(status: &Status) -> Option<f64> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .map(|delay| delay.as_secs_f64())
}

/// A status as `google.rpc.Status` JSON: the code, the message, and the
/// details a client acts on (field violations, precondition rules, when to
/// retry).
pub fn status_json(status: &Status) -> Value {
    let details = status.get_error_details();
    let mut listed = Vec::new();
    if let Some(bad_request) = details.bad_request() {
        let violations: Vec<Value> = bad_request
            .field_violations
            .iter()
            .map(
                |violation| json!({"field": violation.field, "description": violation.description}),
            )
            .collect();
        listed.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    if let Some(failure) = details.precondition_failure() {
        let violations: Vec<Value> = failure
            .violations
            .iter()
            .map(|violation| {
                json!({"type": violation.r#type, "subject": violation.subject,
                       "description": violation.description})
            })
            .collect();
        listed.push(json!({
            "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
            "violations": violations,
        }));
    }
    if let Some(info) = details.error_info() {
        listed.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }));
    }
    if let Some(seconds) = retry_after(status) {
        listed.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{seconds:.3}s"),
        }));
    }
    json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": listed,
    })
}
