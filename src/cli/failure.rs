//! How a command fails: an exit code scripts can rely on, and a message that
//! says what to do.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed or the server refused it |
//! | 2 | usage error: the command line is wrong (clap's own code) |
//! | 3 | the server cannot be reached or is unavailable: retrying later may succeed |

use std::process::ExitCode;

use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

/// Exit code: the operation failed or was refused.
const FAILED: u8 = 1;
/// Exit code: the command line is wrong; the same code clap uses.
const USAGE: u8 = 2;
/// Exit code: the server cannot be reached or is unavailable.
const UNREACHABLE: u8 = 3;

/// A call the server refused or could not answer.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {}", describe(.status))]
pub struct Refused {
    /// What was attempted, such as "publishing payments/card-limits".
    action: String,
    /// The server's answer.
    status: Status,
}

impl Refused {
    /// The refusal of `action`.
    pub fn new(action: impl Into<String>, status: Status) -> Self {
        Refused {
            action: action.into(),
            status,
        }
    }
}

/// No connection to the server could be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the server at {server}")]
pub struct Unreachable {
    /// The URL that was tried.
    pub server: String,
    /// Why the connection failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A command line that clap accepts but that makes no sense as a whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The reply of a call, or a [`Refused`] naming what was attempted.
pub trait Reply<T> {
    /// The reply, or the refusal of `action`.
    fn reply(self, action: impl Into<String>) -> Result<T, Refused>;
}

impl<T> Reply<T> for Result<Response<T>, Status> {
    fn reply(self, action: impl Into<String>) -> Result<T, Refused> {
        self.map(Response::into_inner)
            .map_err(|status| Refused::new(action, status))
    }
}

/// Whether the call ran out of its request timeout (tonic ends it with
/// CANCELLED "Timeout expired").
fn timed_out(status: &Status) -> bool {
    matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
        && status.message() == "Timeout expired"
}

/// The server's message, with one line per schema violation.
fn describe(status: &Status) -> String {
    if timed_out(status) {
        return "no answer within the request timeout (--request-timeout)".to_owned();
    }
    let mut text = status.message().to_owned();
    if let Some(failure) = status.get_details_precondition_failure() {
        for violation in failure.violations {
            text.push_str(&format!(
                "\n  {}: {}",
                violation.subject, violation.description
            ));
        }
    }
    text
}

/// What to do when the TLS handshake fails over certificates.
const TLS_HINT: &str = "the TLS handshake failed: a server that requires client certificates \
                        (mTLS) needs --cert-file and --key-file signed by the CA it trusts; \
                        --ca-file names the CA of the server's own certificate";

/// The rule a FAILED_PRECONDITION names: the `type` of its first
/// `google.rpc.PreconditionFailure` violation.
fn precondition_type(status: &Status) -> Option<String> {
    let failure = status.get_details_precondition_failure()?;
    failure
        .violations
        .into_iter()
        .next()
        .map(|violation| violation.r#type)
}

/// What to do about a refusal.
fn hint(status: &Status) -> Option<&'static str> {
    if timed_out(status) {
        return Some(
            "the server took the call but did not answer in time: it may be overloaded, or not \
             a policyhub server; retry, or raise --request-timeout (POLICYHUB_REQUEST_TIMEOUT)",
        );
    }
    // A TLS handshake the server ends for want of a client certificate
    // surfaces as a transport error, not as a refusal.
    if status.message().to_lowercase().contains("certificate") {
        return Some(TLS_HINT);
    }
    Some(match status.code() {
        Code::Unauthenticated => {
            "pass a token with --token-file or POLICYHUB_TOKEN \
             (`policyhub token` mints one for a local server)"
        }
        Code::PermissionDenied => {
            "use a token whose roles claim grants the role named above in that namespace"
        }
        Code::Aborted => {
            "someone else changed the active version; re-read it with `policyhub get-active` and retry"
        }
        Code::NotFound => {
            "list what exists with `policyhub policies` and `policyhub versions NAMESPACE/NAME`"
        }
        Code::AlreadyExists => {
            "released versions are immutable: publish under a new label; \
             an idempotency key may only be reused for the same request"
        }
        Code::FailedPrecondition => match precondition_type(status).as_deref() {
            Some("SCHEMA") => {
                "the body breaks the policy's schema: write a new draft that satisfies it"
            }
            Some("REQUIREMENTS") => {
                "move the policies together in one `policyhub activate`, or the dependant \
                 first; `policyhub get-version` shows what a version requires"
            }
            Some("ROLLOUT") => {
                "see the rollout with `policyhub rollout list NAMESPACE`; promote or abort it first"
            }
            _ => "check the versions' states with `policyhub versions NAMESPACE/NAME`",
        },
        Code::ResourceExhausted => "stay under the limit named above, or wait and retry",
        Code::Unavailable => "the server or its database is unavailable; retry later",
        Code::Cancelled => {
            "the connection to the server was lost during the call, which may have completed: \
             re-read the state, or retry with an idempotency key"
        }
        Code::DeadlineExceeded => {
            "the call may have completed: re-read the state, or retry with an idempotency key"
        }
        Code::Unimplemented => "the server is older than this client; upgrade it",
        Code::Internal | Code::Unknown | Code::DataLoss => {
            "a fault of the server, not of the request; the server's log has the details"
        }
        _ => return None,
    })
}

/// The error and what to do about it, as printed on standard error.
pub fn report(error: &anyhow::Error) -> String {
    let hint = error.chain().find_map(|cause| {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return hint(&refused.status).map(str::to_owned);
        }
        cause.downcast_ref::<Unreachable>().map(|unreachable| {
            if format!("{error:#}").to_lowercase().contains("certificate") {
                return TLS_HINT.to_owned();
            }
            format!(
                "is the server running at {}? Point --server or POLICYHUB_SERVER at it",
                unreachable.server
            )
        })
    });
    match hint {
        Some(hint) => format!("error: {error:#}\nhint: {hint}\n"),
        None => format!("error: {error:#}\n"),
    }
}

/// Whether the error means the server could not be reached.
fn is_unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<Unreachable>()
            || cause.downcast_ref::<Refused>().is_some_and(|refused| {
                // This client never cancels its own calls: CANCELLED is a
                // connection lost mid-call, or the request timeout.
                matches!(refused.status.code(), Code::Unavailable | Code::Cancelled)
            })
    })
}

/// The exit code of a failed command.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if is_unreachable(error) {
        ExitCode::from(UNREACHABLE)
    } else if error.chain().any(|cause| cause.is::<Usage>()) {
        ExitCode::from(USAGE)
    } else {
        ExitCode::from(FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: Code, message: &str) -> anyhow::Error {
        let result: Result<Response<()>, Status> = Err(Status::new(code, message));
        result
            .reply("publishing payments/limits")
            .unwrap_err()
            .into()
    }

    #[test]
    fn refusals_name_the_action_and_say_what_to_do() {
        let error = refused(Code::Unauthenticated, "no credentials");
        let text = report(&error);
        assert!(
            text.starts_with("error: publishing payments/limits: no credentials\n"),
            "{text}"
        );
        assert!(
            text.contains("hint: pass a token with --token-file"),
            "{text}"
        );
        let aborted = report(&refused(Code::Aborted, "version 2 is active, not 1"));
        assert!(aborted.contains("re-read it"), "{aborted}");
    }

    #[test]
    fn a_certificate_problem_is_not_called_a_fault_of_the_server() {
        let text = report(&refused(
            Code::Unknown,
            "transport error: received fatal alert: CertificateRequired",
        ));
        assert!(text.contains("hint: the TLS handshake failed"), "{text}");
        assert!(!text.contains("a fault of the server"), "{text}");
    }

    #[test]
    fn exit_codes_tell_refusals_from_an_unreachable_server() {
        assert_eq!(exit_code(&refused(Code::NotFound, "x")), ExitCode::from(1));
        assert_eq!(
            exit_code(&refused(Code::Unavailable, "x")),
            ExitCode::from(3)
        );
        assert_eq!(
            exit_code(&refused(Code::Cancelled, "connection closed")),
            ExitCode::from(3)
        );
        assert_eq!(
            exit_code(&anyhow::Error::new(Usage("x".into()))),
            ExitCode::from(2)
        );
        assert_eq!(exit_code(&anyhow::anyhow!("x")), ExitCode::from(1));
    }
}
