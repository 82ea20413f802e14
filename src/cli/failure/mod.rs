//! How a command fails: an exit code scripts can rely on, and a message that
//! says what to do.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed or the server refused it |
//! | 2 | usage error: the command line is wrong (clap's own code) |
//! | 3 | the server cannot be reached or is unavailable: retrying later may succeed |
//!
//! Every failure prints `error: <what went wrong>` and then
//! `hint: <what to do>` on standard error. What can go wrong is one of the
//! types below, and each has its advice in [`hints`], in one place: a refusal
//! by its gRPC code (a FAILED_PRECONDITION also by the rule it names), an
//! unreachable server, a command line that makes no sense ([`Usage`], and
//! clap's own errors through [`report_usage`]), something the command could
//! not use ([`Unusable`]: a local file, a setting, a reply), and an I/O error
//! by its kind. Errors name the flags a user types: the server names request
//! fields, and the table in [`flags`] turns them back into flags.
//!
//! Layout: this file holds the types, the error line and the exit code;
//! `hints.rs` the advice; `flags.rs` the request fields as flags.

mod flags;
mod hints;

use std::{fmt, io::IsTerminal, process::ExitCode};

use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

use self::flags::{flag_of, with_flags};
use self::hints::hint;

/// The operation failed or the server refused it (the message says which
/// rule), or a file it needs is missing or invalid.
const FAILED: u8 = 1;
/// The command line (or a `POLICYHUB_*` variable or context it reads) is
/// wrong; the same code clap uses.
const USAGE: u8 = 2;
/// The server cannot be reached or is unavailable: retrying later may
/// succeed.
const UNREACHABLE: u8 = 3;

/// A call the server refused or could not answer.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {}", describe(.status))]
pub struct Refused {
    /// What was attempted, such as "publishing payments/card-limits".
    action: String,
    /// The server's answer.
    status: Status,
    /// Whether the call only published, moving no pointer: a requirement
    /// refused then asks for a release, not for activations in an order.
    publish_only: bool,
}

impl Refused {
    /// The refusal of `action`.
    pub fn new(action: impl Into<String>, status: Status) -> Self {
        Refused {
            action: action.into(),
            status,
            publish_only: false,
        }
    }

    /// The refusal of `action`, a Publish that activates nothing.
    pub fn of_publish_only(action: impl Into<String>, status: Status) -> Self {
        Refused {
            publish_only: true,
            ..Refused::new(action, status)
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
#[error("{message}")]
pub struct Usage {
    /// What is wrong with it.
    message: String,
    /// How to write it instead: only the place that refuses a command line
    /// knows what it meant to get.
    hint: &'static str,
}

impl Usage {
    /// A usage error, and how to write the command line instead.
    pub fn new(message: impl Into<String>, hint: &'static str) -> Self {
        Usage {
            message: message.into(),
            hint,
        }
    }
}

/// What a command could not use; each has its own advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A body or schema file that is neither JSON nor YAML.
    Document,
    /// A document that parses but is not a policy body.
    Body,
    /// The `--jwks` file of `verify`.
    Jwks,
    /// The bundle file of `verify`.
    Bundle,
    /// A bundle that does not verify against the JWKS given to `verify`.
    Signature,
    /// A bundle the server sent that does not verify against its own keys.
    ServedBundle,
    /// A bearer token (or a token file) that cannot be sent.
    Token,
    /// The secret `policyhub token` signs with.
    TokenSecret,
    /// The client config file.
    ClientConfig,
    /// The server URL or TLS files, as the connection was set up.
    Connection,
    /// A checkout `policyhub sync` would publish.
    Checkout,
    /// A reply that breaks the protocol.
    Reply,
    /// An event log whose hash chain is broken.
    Log,
    /// An OpenID provider `policyhub login` cannot use.
    Issuer,
    /// A sign-in that failed, or a session that cannot be renewed.
    SignIn,
}

/// Something the command could not use, and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Unusable {
    /// What it is, which decides the advice.
    what: What,
    /// What is wrong with it, naming it (a file, a setting).
    message: String,
}

impl Unusable {
    /// `what` could not be used, for the reason `message` gives.
    pub fn new(what: What, message: impl Into<String>) -> Self {
        Unusable {
            what,
            message: message.into(),
        }
    }
}

/// The reply of a call, or a [`Refused`] naming what was attempted.
pub trait Reply<T> {
    /// The reply, or the refusal of `action`.
    fn reply(self, action: impl Into<String>) -> Result<T, Refused>;

    /// The reply, or the refusal of `action`, a Publish that activates
    /// nothing.
    fn reply_to_publish_only(self, action: impl Into<String>) -> Result<T, Refused>;
}

impl<T> Reply<T> for Result<Response<T>, Status> {
    fn reply(self, action: impl Into<String>) -> Result<T, Refused> {
        self.map(Response::into_inner)
            .map_err(|status| Refused::new(action, status))
    }

    fn reply_to_publish_only(self, action: impl Into<String>) -> Result<T, Refused> {
        self.map(Response::into_inner)
            .map_err(|status| Refused::of_publish_only(action, status))
    }
}

/// Whether the call ran out of its request timeout (tonic ends it with
/// CANCELLED "Timeout expired").
fn timed_out(status: &Status) -> bool {
    matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
        && status.message() == "Timeout expired"
}

/// The server's message, its fields named as flags, with one line per
/// violation of a precondition that says more than the message.
fn describe(status: &Status) -> String {
    if timed_out(status) {
        return "no answer within the request timeout (--request-timeout)".to_owned();
    }
    if let Some(bad_request) = status.get_details_bad_request()
        && !bad_request.field_violations.is_empty()
    {
        return bad_request
            .field_violations
            .iter()
            .map(|violation| {
                format!(
                    "{}: {}",
                    flag_of(&violation.field),
                    with_flags(&violation.description)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let mut text = with_flags(status.message());
    if let Some(failure) = status.get_details_precondition_failure() {
        // A refusal without violations of its own repeats its message as
        // the one violation, to carry its rule.
        for violation in failure
            .violations
            .iter()
            .filter(|violation| violation.description != status.message())
        {
            let subject = match violation.subject.as_str() {
                "" => "/",
                subject => subject,
            };
            text.push_str(&format!(
                "\n  {subject}: {}",
                with_flags(&violation.description)
            ));
        }
    }
    text
}

/// The first cause of type `T`: anywhere in the chain, whether it was
/// attached as an error or as context.
fn find<T>(error: &anyhow::Error) -> Option<&T>
where
    T: fmt::Display + fmt::Debug + Send + Sync + 'static,
    T: std::error::Error,
{
    error
        .downcast_ref::<T>()
        .or_else(|| error.chain().find_map(|cause| cause.downcast_ref::<T>()))
}

/// One cause as the message shows it: an operating system's error in
/// lowercase, without its number ("no such file or directory").
fn cause_text(cause: &(dyn std::error::Error + 'static)) -> String {
    let text = cause.to_string();
    if cause.downcast_ref::<std::io::Error>().is_none() {
        return text;
    }
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    };
    let mut chars = text.chars();
    match (chars.next(), chars.clone().next()) {
        (Some(first), Some(second)) if second.is_lowercase() => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text,
    }
}

/// The error and its causes, each once, as `{error:#}` joins them.
pub(super) fn message(error: &anyhow::Error) -> String {
    let mut causes: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause_text(cause);
        // Transport errors repeat their source ("tcp connect error: tcp
        // connect error: …").
        if causes.last() != Some(&text) {
            causes.push(text);
        }
    }
    causes.join(": ")
}

/// The error and what to do about it, as printed on standard error.
pub fn report(error: &anyhow::Error) -> String {
    let message = message(error);
    match hint(error) {
        Some(hint) => format!("error: {message}\nhint: {hint}\n"),
        None => format!("error: {message}\n"),
    }
}

/// The subcommand a command line names, such as `policyhub rollout start`,
/// as far as it names one.
fn command_path(args: &[String]) -> String {
    let mut command = <super::Cli as clap::CommandFactory>::command();
    let mut path = vec![command.get_name().to_owned()];
    for arg in args.iter().skip(1).filter(|arg| !arg.starts_with('-')) {
        let Some(sub) = command.find_subcommand(arg).cloned() else {
            break;
        };
        path.push(sub.get_name().to_owned());
        command = sub;
    }
    path.join(" ")
}

/// A command line (`args`, the program first) clap refused, as clap prints
/// it (with its usage line and tips), its closing "For more information,
/// try '--help'." turned into the hint line every failure ends with.
pub fn report_usage(error: &clap::Error, args: &[String]) -> String {
    let rendered = error.render();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let mut text = if std::io::stderr().is_terminal() && !no_color {
        rendered.ansi().to_string()
    } else {
        rendered.to_string()
    };
    if let Some(at) = text.rfind("\n\nFor more information, try ") {
        text.truncate(at);
    }
    format!(
        "{}\nhint: `{} --help` describes every argument\n",
        text.trim_end(),
        command_path(args)
    )
}

/// The exit code of a command line clap refused.
pub fn usage_exit_code() -> ExitCode {
    ExitCode::from(USAGE)
}

/// Whether the error means the server could not be reached.
fn is_unreachable(error: &anyhow::Error) -> bool {
    find::<Unreachable>(error).is_some()
        || find::<Refused>(error).is_some_and(|refused| {
            // This client never cancels its own calls: CANCELLED is a
            // connection lost mid-call, or the request timeout.
            matches!(refused.status.code(), Code::Unavailable | Code::Cancelled)
        })
}

/// The exit code of a failed command.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if is_unreachable(error) {
        ExitCode::from(UNREACHABLE)
    } else if find::<Usage>(error).is_some() {
        ExitCode::from(USAGE)
    } else {
        ExitCode::from(FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation};

    pub(super) fn refused_with(status: Status) -> anyhow::Error {
        let result: Result<Response<()>, Status> = Err(status);
        result
            .reply("publishing payments/limits")
            .unwrap_err()
            .into()
    }

    pub(super) fn refused(code: Code, message: &str) -> anyhow::Error {
        refused_with(Status::new(code, message))
    }

    /// A FAILED_PRECONDITION naming `rule`, as the server sends it.
    pub(super) fn precondition(rule: &str, message: &str) -> Status {
        Status::with_error_details(
            Code::FailedPrecondition,
            message,
            ErrorDetails::with_precondition_failure(vec![PreconditionViolation::new(
                rule, "", message,
            )]),
        )
    }

    /// The hint line of a report, failing the test when there is none.
    #[track_caller]
    pub(super) fn hint_line(error: &anyhow::Error) -> String {
        let text = report(error);
        assert!(text.starts_with("error: "), "{text}");
        text.lines()
            .find_map(|line| line.strip_prefix("hint: "))
            .unwrap_or_else(|| panic!("no hint line in {text:?}"))
            .to_owned()
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
            text.contains("hint: pass a valid token with --token-file"),
            "{text}"
        );
        let aborted = report(&refused(Code::Aborted, "version 2 is active, not 1"));
        assert!(aborted.contains("re-read it"), "{aborted}");
    }

    #[test]
    fn invalid_arguments_name_the_flags_a_user_types() {
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "to_version: version numbers start at 1; steps[1].bake: is 9d",
            ErrorDetails::with_bad_request(vec![
                FieldViolation::new("to_version", "version numbers start at 1"),
                FieldViolation::new("steps[1].bake", "is 9d, at most 7d is allowed"),
                FieldViolation::new("page_token", "is not a page token"),
            ]),
        );
        let text = report(&refused_with(status));
        assert!(
            text.starts_with(
                "error: publishing payments/limits: --to-version: version numbers start at 1; \
                 the 2nd --step: is 9d, at most 7d is allowed; page_token: is not a page token\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("hint: correct the value named above"),
            "{text}"
        );
    }

    #[test]
    fn a_precondition_message_is_not_repeated_as_its_violation() {
        let text = report(&refused_with(precondition(
            "STATE",
            "a/b has no open draft to discard",
        )));
        assert_eq!(text.matches("no open draft").count(), 1, "{text}");
        let schema = Status::with_error_details(
            Code::FailedPrecondition,
            "version 2 does not satisfy the schema",
            ErrorDetails::with_precondition_failure(vec![
                PreconditionViolation::new("SCHEMA", "/max", "11 is greater than 10"),
                PreconditionViolation::new("SCHEMA", "", "\"min\" is a required property"),
            ]),
        );
        let text = report(&refused_with(schema));
        assert!(
            text.contains("\n  /max: 11 is greater than 10\n  /: \"min\" is a required"),
            "{text}"
        );
    }

    #[test]
    fn command_lines_clap_refuses_end_with_a_hint() {
        for (args, command) in [
            (&["policyhub", "draft"][..], "policyhub draft"),
            (&["policyhub", "publishh"], "policyhub"),
            (
                &["policyhub", "rollout", "start", "a/b@0", "--step", "10"],
                "policyhub rollout start",
            ),
            (
                &["policyhub", "versions", "nope"],
                "policyhub list-versions",
            ),
        ] {
            let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
            let error = crate::cli::Cli::try_parse_from(&args).unwrap_err();
            let text = report_usage(&error, &args);
            assert!(text.starts_with("error: "), "{text}");
            assert!(!text.contains("For more information"), "{text}");
            assert!(
                text.ends_with(&format!(
                    "\nhint: `{command} --help` describes every argument\n"
                )),
                "{text}"
            );
            assert_eq!(usage_exit_code(), ExitCode::from(error.exit_code() as u8));
        }
    }
}
