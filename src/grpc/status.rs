//! The one place where domain errors become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

use crate::domain::Error;

/// The gRPC code of each domain error.
fn code_of(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::FailedPrecondition { .. } => Code::FailedPrecondition,
        Error::Aborted(_) => Code::Aborted,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::TooLarge(_) | Error::ResourceExhausted { .. } => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
        Error::DataLoss(_) => Code::DataLoss,
    }
}

/// The `google.rpc.ErrorInfo` reason of [`Error::TooLarge`].
pub const TOO_LARGE: &str = "TOO_LARGE";
/// The `google.rpc.ErrorInfo` domain of this service's reasons.
pub const DOMAIN: &str = "policyhub";

/// A size limit's refusal, made outside the domain (the HTTP port's own
/// body limit).
pub fn too_large(message: impl Into<String>) -> Status {
    Status::from(Error::TooLarge(message.into()))
}

/// Most characters of a status message; stock gRPC clients refuse
/// response metadata above 16 KiB, and a status is read by people.
const MAX_MESSAGE_CHARS: usize = 1024;
/// Most characters of one violation's text.
const MAX_DETAIL_CHARS: usize = 256;
/// Most violations attached to one status.
const MAX_VIOLATIONS: usize = 20;

/// `text`, cut to `max` characters with a note of what was cut.
fn bounded(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}… ({} bytes in all)", text.len())
}

/// Converts a domain error, attaching `google.rpc.BadRequest` field
/// violations to INVALID_ARGUMENT, `google.rpc.PreconditionFailure` schema
/// violations (type `SCHEMA`, subject = JSON Pointer into the body) to
/// FAILED_PRECONDITION and `google.rpc.RetryInfo` to a RESOURCE_EXHAUSTED
/// that knows when to retry. The message and the details are bounded, so a
/// whole status stays within a few KiB whatever the request held.
impl From<Error> for Status {
    fn from(error: Error) -> Self {
        to_status(error)
    }
}

fn to_status(error: Error) -> Status {
    let code = code_of(&error);
    let message = bounded(error.to_string(), MAX_MESSAGE_CHARS);
    match error {
        Error::InvalidArgument(violations) => {
            let violations: Vec<FieldViolation> = violations
                .into_iter()
                .take(MAX_VIOLATIONS)
                .map(|violation| {
                    FieldViolation::new(
                        bounded(violation.field, MAX_DETAIL_CHARS),
                        bounded(violation.description, MAX_DETAIL_CHARS),
                    )
                })
                .collect();
            Status::with_error_details(code, message, ErrorDetails::with_bad_request(violations))
        }
        // Every refusal names its rule as the violations' type, so a client
        // can tell a schema violation from an unmet requirement or a
        // rollout in the way without reading the message.
        Error::FailedPrecondition {
            kind, violations, ..
        } => {
            let mut violations: Vec<PreconditionViolation> = violations
                .into_iter()
                .take(MAX_VIOLATIONS)
                .map(|violation| {
                    PreconditionViolation::new(
                        kind.as_str(),
                        bounded(violation.instance_path, MAX_DETAIL_CHARS),
                        bounded(violation.message, MAX_DETAIL_CHARS),
                    )
                })
                .collect();
            if violations.is_empty() {
                violations.push(PreconditionViolation::new(
                    kind.as_str(),
                    "",
                    bounded(message.clone(), MAX_DETAIL_CHARS),
                ));
            }
            Status::with_error_details(
                code,
                message,
                ErrorDetails::with_precondition_failure(violations),
            )
        }
        Error::ResourceExhausted {
            retry_after: Some(delay),
            ..
        } => Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(delay))),
        // The reason tells a size limit from a quota, which HTTP answers
        // with 413 and 429.
        Error::TooLarge(_) => Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(TOO_LARGE, DOMAIN, std::collections::HashMap::new()),
        ),
        Error::Internal(_) => {
            tracing::error!(error = %message, "internal error");
            Status::internal("internal error; the server log has the details")
        }
        // An operator must hear of a rewritten history even when only a
        // reader ran into it.
        Error::DataLoss(_) => {
            tracing::error!(error = %message, "stored history contradicts its signatures");
            Status::new(code, message)
        }
        _ => Status::new(code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the service sends, from the one table.
    #[test]
    fn each_error_has_its_code() {
        let retry = std::time::Duration::from_millis(1500);
        let cases = [
            (Error::invalid("name", "is empty"), Code::InvalidArgument),
            (Error::NotFound("no policy".into()), Code::NotFound),
            (Error::precondition("not a draft"), Code::FailedPrecondition),
            (Error::Aborted("expected 2".into()), Code::Aborted),
            (Error::AlreadyExists("label".into()), Code::AlreadyExists),
            (
                Error::Unauthenticated("no token".into()),
                Code::Unauthenticated,
            ),
            (
                Error::PermissionDenied("reader".into()),
                Code::PermissionDenied,
            ),
            (Error::exhausted("disk full"), Code::ResourceExhausted),
            (Error::TooLarge("too large".into()), Code::ResourceExhausted),
            (
                Error::ResourceExhausted {
                    message: "rate".into(),
                    retry_after: Some(retry),
                },
                Code::ResourceExhausted,
            ),
            (Error::Unavailable("database".into()), Code::Unavailable),
            (Error::Internal("bug".into()), Code::Internal),
            (Error::DataLoss("rewritten".into()), Code::DataLoss),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{text}");
            if code == Code::Internal {
                assert!(
                    !status.message().contains("bug"),
                    "internals stay in the log"
                );
            } else {
                assert_eq!(status.message(), text);
            }
        }
        let limited = Status::from(Error::ResourceExhausted {
            message: "rate".into(),
            retry_after: Some(retry),
        });
        assert_eq!(
            limited
                .get_details_retry_info()
                .and_then(|info| info.retry_delay),
            Some(retry)
        );
        let large = Status::from(Error::TooLarge("too large".into()));
        assert_eq!(
            large.get_details_error_info().map(|info| info.reason),
            Some(TOO_LARGE.to_owned())
        );
        let field = Status::from(Error::invalid("name", "is empty"));
        assert_eq!(
            field.get_details_bad_request().unwrap().field_violations[0].field,
            "name"
        );
    }

    #[test]
    fn a_status_stays_small_whatever_the_request_held() {
        let huge = "x".repeat(100_000);
        let violations = (0..1000)
            .map(|n| crate::domain::FieldViolation {
                field: format!("targets[{n}].{huge}"),
                description: huge.clone(),
            })
            .collect();
        let status = to_status(Error::InvalidArgument(violations));
        assert!(
            status.message().len() < 2 * MAX_MESSAGE_CHARS,
            "{}",
            status.message().len()
        );
        assert!(
            status.details().len() < 16 * 1024,
            "{}",
            status.details().len()
        );
        let schema = to_status(Error::FailedPrecondition {
            message: huge.clone(),
            kind: crate::domain::Precondition::Schema,
            violations: vec![
                crate::domain::SchemaViolation {
                    instance_path: "/a".into(),
                    message: huge.clone(),
                };
                100
            ],
        });
        assert!(schema.message().len() + schema.details().len() < 16 * 1024);
    }
    use crate::domain::SchemaViolation;

    #[test]
    fn every_error_maps_to_its_code() {
        let table = [
            (Error::invalid("name", "bad"), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::precondition("x"), Code::FailedPrecondition),
            (Error::Aborted("x".into()), Code::Aborted),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (Error::PermissionDenied("x".into()), Code::PermissionDenied),
            (Error::exhausted("x"), Code::ResourceExhausted),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::Internal("x".into()), Code::Internal),
            (Error::DataLoss("x".into()), Code::DataLoss),
        ];
        for (error, code) in table {
            assert_eq!(to_status(error.clone()).code(), code, "{error:?}");
        }
    }

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status = to_status(Error::invalid("namespace", "must not be empty"));
        let bad_request = status
            .get_details_bad_request()
            .expect("bad request details");
        assert_eq!(bad_request.field_violations[0].field, "namespace");
        assert_eq!(status.message(), "namespace: must not be empty");
    }

    #[test]
    fn schema_violations_carry_their_path() {
        let status = to_status(Error::FailedPrecondition {
            message: "version 1 does not satisfy the schema".into(),
            kind: crate::domain::Precondition::Schema,
            violations: vec![SchemaViolation {
                instance_path: "/limits/daily".into(),
                message: "500 is greater than the maximum of 100".into(),
            }],
        });
        let failure = status.get_details_precondition_failure().expect("details");
        assert_eq!(failure.violations[0].subject, "/limits/daily");
        assert_eq!(failure.violations[0].r#type, "SCHEMA");
    }

    #[test]
    fn every_refusal_names_its_rule() {
        use crate::domain::Precondition;
        for (error, kind) in [
            (Error::precondition("not a draft"), "STATE"),
            (
                Error::refused_by(Precondition::Requirements, "a requires b ^2"),
                "REQUIREMENTS",
            ),
            (
                Error::refused_by(Precondition::Rollout, "rollout r moves it"),
                "ROLLOUT",
            ),
            (
                Error::refused_by(Precondition::Impact, "it changes 3 of 20"),
                "IMPACT",
            ),
        ] {
            let status = to_status(error);
            let failure = status.get_details_precondition_failure().expect("details");
            assert_eq!(failure.violations[0].r#type, kind);
            assert_eq!(failure.violations[0].description, status.message());
        }
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let status = to_status(Error::Internal("password=hunter2".into()));
        assert!(!status.message().contains("hunter2"));
    }
}
