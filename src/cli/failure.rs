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
//! types below, and each has its advice here, in one place: a refusal by its
//! gRPC code (a FAILED_PRECONDITION also by the rule it names), an
//! unreachable server, a command line that makes no sense ([`Usage`], and
//! clap's own errors through [`report_usage`]), something the command could
//! not use ([`Unusable`]: a local file, a setting, a reply), and an I/O error
//! by its kind. Errors name the flags a user types: the server names request
//! fields, and [`FLAGS`] turns them back into flags.

use std::{fmt, io::IsTerminal, process::ExitCode, time::Duration};

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
}

impl<T> Reply<T> for Result<Response<T>, Status> {
    fn reply(self, action: impl Into<String>) -> Result<T, Refused> {
        self.map(Response::into_inner)
            .map_err(|status| Refused::new(action, status))
    }
}

/// Request fields the server may name, with the flag (or argument) of the
/// command line that sets each. Paths are written without their indices:
/// `steps[1].bake` is looked up as `steps.bake`. Only these are translated;
/// anything else is not set from the command line and keeps its name.
const FLAGS: &[(&str, &str)] = &[
    ("allow_draft_fallback", "--allow-draft-fallback"),
    ("as_of_revision", "--as-of-revision"),
    ("as_of_time", "--as-of-time"),
    ("body", "<FILE>"),
    ("change_notes", "--change-notes"),
    ("expected_active_version", "--expected-active-version"),
    ("failure_rule.apply_deadline", "--apply-deadline"),
    ("failure_rule.max_rejected", "--max-rejected"),
    (
        "failure_rule.max_rejected_fraction",
        "--max-rejected-fraction",
    ),
    ("id", "<ID>"),
    ("idempotency_key", "--idempotency-key"),
    ("kinds", "--kind"),
    ("label", "--label"),
    ("label_selector", "--label-selector"),
    // ListRuntimes; elsewhere the name comes from NAMESPACE/NAME, which the
    // command line checks before any call.
    ("name", "--name"),
    ("names", "--name"),
    // WatchActive; elsewhere the namespace is checked before any call.
    ("namespace", "--namespace"),
    ("page_size", "--limit"),
    ("reason", "--reason"),
    ("requirements", "--require"),
    ("requirements.name", "--require"),
    ("requirements.range", "--require"),
    ("runtime.id", "--runtime-id"),
    ("runtime.labels", "--label"),
    ("schema", "<FILE>"),
    ("start_at", "--start-at"),
    ("states", "--state"),
    ("steps", "--step"),
    ("steps.bake", "--step"),
    ("steps.label_selector", "--step"),
    ("steps.percentage", "--step"),
    ("targets", "<TARGETS>"),
    (
        "targets.expected_active_version",
        "--expected-active-version",
    ),
    ("targets.name", "<TARGETS>"),
    ("targets.version", "<TARGETS>"),
    ("to_version", "--to-version"),
    ("version", "--version"),
];

/// The flag that sets a request field, such as `--to-version` for
/// `to_version` and "the 2nd --step" for `steps[1].bake`; an unknown field
/// keeps its name.
fn flag_of(field: &str) -> String {
    let mut path = String::with_capacity(field.len());
    let mut index = None;
    let mut rest = field;
    while let Some(open) = rest.find('[') {
        path.push_str(&rest[..open]);
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        index = index.or(rest[open + 1..open + close].parse::<usize>().ok());
        rest = &rest[open + close + 1..];
    }
    path.push_str(rest);
    let Some((_, flag)) = FLAGS.iter().find(|(name, _)| *name == path) else {
        return field.to_owned();
    };
    match index {
        Some(index) => format!("the {} {flag}", ordinal(index + 1)),
        None => (*flag).to_owned(),
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, … `11th`, `21st`.
fn ordinal(number: usize) -> String {
    let suffix = match (number % 10, number % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{number}{suffix}")
}

/// Server text with every request field of [`FLAGS`] that has an
/// underscore (so cannot be an ordinary word) replaced by its flag:
/// "pass to_version" reads "pass --to-version".
fn with_flags(text: &str) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        // A full stop ends a sentence, not a field path.
        let field = word.trim_end_matches('.');
        let known = field.contains('_') && FLAGS.iter().any(|(name, _)| *name == field);
        if known {
            out.push_str(&flag_of(field));
            out.push_str(&word[field.len()..]);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
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

/// What to do about a FAILED_PRECONDITION, by the rule it names.
fn precondition_hint(rule: Option<&str>) -> &'static str {
    match rule {
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
        // STATE, and the rules of a newer server.
        _ => {
            "the request does not fit the current state: see it with `policyhub versions \
             NAMESPACE/NAME` (a rollout's with `policyhub rollout status NAMESPACE ID`)"
        }
    }
}

/// What to do about a refusal with `code`. Every code has its advice: the
/// match has no catch-all, so a new code does not compile without one.
fn code_hint(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument | Code::OutOfRange => {
            "correct the value named above; `--help` after the command describes each flag"
        }
        Code::Unauthenticated => {
            "pass a valid token with --token-file or POLICYHUB_TOKEN \
             (`policyhub token` mints one for a local server)"
        }
        Code::PermissionDenied => {
            "use a token whose roles claim grants the role named above in that namespace"
        }
        Code::Aborted => {
            "someone else changed the active version; re-read it with `policyhub get-active` and retry"
        }
        Code::NotFound => {
            "list what exists with `policyhub policies`, `policyhub versions NAMESPACE/NAME` \
             and `policyhub rollout list NAMESPACE`"
        }
        Code::AlreadyExists => {
            "released versions are immutable: publish under a new label; \
             an idempotency key may only be reused for the same request"
        }
        Code::FailedPrecondition => precondition_hint(None),
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
        Code::Ok | Code::Internal | Code::Unknown | Code::DataLoss => {
            "a fault of the server, not of the request; the server's log has the details"
        }
    }
}

/// What to do about a refusal.
fn status_hint(status: &Status) -> String {
    if timed_out(status) {
        return "the server took the call but did not answer in time: it may be overloaded, or \
                not a policyhub server; retry, or raise --request-timeout \
                (POLICYHUB_REQUEST_TIMEOUT)"
            .to_owned();
    }
    // A TLS handshake the server ends for want of a client certificate
    // surfaces as a transport error, not as a refusal.
    if status.message().to_lowercase().contains("certificate") {
        return TLS_HINT.to_owned();
    }
    match status.code() {
        Code::FailedPrecondition => {
            precondition_hint(precondition_type(status).as_deref()).to_owned()
        }
        Code::ResourceExhausted => match status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
        {
            Some(delay) => format!(
                "the server's quota is spent for now: retry in {}",
                humantime::format_duration(Duration::from_millis(
                    delay.as_millis().max(1).try_into().unwrap_or(u64::MAX)
                ))
            ),
            None => code_hint(Code::ResourceExhausted).to_owned(),
        },
        code => code_hint(code).to_owned(),
    }
}

/// What to do about something the command could not use.
fn unusable_hint(what: What) -> &'static str {
    match what {
        What::Document => {
            "fix the file at the line and column named above: a .json file is read as JSON, \
             any other name (and `-`, standard input) as YAML"
        }
        What::Body => "a policy body is one JSON object (a YAML mapping) at the top level",
        What::Jwks => {
            "pass the JWKS the server publishes: `policyhub get-signing-keys -o json > jwks.json`"
        }
        What::Bundle => {
            "pass what `policyhub get-active NAMESPACE/NAME -o json` prints, or the JWS alone; \
             a draft is unsigned and cannot be verified"
        }
        What::Signature => {
            "it was changed after signing, or signed by a key the JWKS does not hold \
             (fetch it again with `policyhub get-signing-keys -o json`)"
        }
        What::ServedBundle => {
            "do not enforce it: the bundle or the keys were altered on the way, or the server \
             signs with a key it does not publish; tell the server's operators"
        }
        What::Token => {
            "a token file holds one token and nothing else (`policyhub token` mints one for a \
             local server)"
        }
        What::TokenSecret => {
            "`policyhub token` signs with the secret the server generated in its data \
             directory: pass that directory with --data-dir, or the file with --secret-file"
        }
        What::ClientConfig => {
            "fix the client config file, or point POLICYHUB_CLIENT_CONFIG at another; it holds \
             current_context and [contexts.NAME] tables of server, token_file, ca_file, \
             cert_file, key_file, connect_timeout and request_timeout"
        }
        What::Connection => {
            "check --server (http://HOST:PORT, or https://HOST:PORT for TLS) and the PEM files \
             of --ca-file, --cert-file and --key-file"
        }
        What::Checkout => {
            "fix every file listed, then run `policyhub sync` again; `--dry-run` checks a \
             checkout without publishing anything"
        }
        What::Reply => {
            "a fault of the server: its reply breaks the protocol; upgrade the server or this \
             client so that they match"
        }
    }
}

/// What to do about a failed local file operation, by its kind.
fn io_hint(error: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::NotFound => {
            "check the path named above: a relative path starts from the current directory"
        }
        ErrorKind::PermissionDenied => {
            "you may not use that file: check its permissions, or use another"
        }
        ErrorKind::AlreadyExists => {
            "an existing file is never overwritten: choose another path, or remove that file"
        }
        ErrorKind::IsADirectory => "name a file, not a directory",
        ErrorKind::InvalidData => "the file must be UTF-8 text",
        _ => "check the file named above, and that the disk is readable",
    }
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

/// What to do about `error`; `None` only for a failure this module does not
/// know, such as those of `serve`.
fn hint(error: &anyhow::Error) -> Option<String> {
    if let Some(refused) = find::<Refused>(error) {
        return Some(status_hint(&refused.status));
    }
    if let Some(unreachable) = find::<Unreachable>(error) {
        if message(error).to_lowercase().contains("certificate") {
            return Some(TLS_HINT.to_owned());
        }
        return Some(format!(
            "is the server running at {}? Point --server or POLICYHUB_SERVER at it",
            unreachable.server
        ));
    }
    if let Some(usage) = find::<Usage>(error) {
        return Some(usage.hint.to_owned());
    }
    if let Some(unusable) = find::<Unusable>(error) {
        return Some(unusable_hint(unusable.what).to_owned());
    }
    find::<std::io::Error>(error).map(|io| io_hint(io).to_owned())
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
fn message(error: &anyhow::Error) -> String {
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
    use anyhow::Context;
    use clap::Parser;
    use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation};

    fn refused_with(status: Status) -> anyhow::Error {
        let result: Result<Response<()>, Status> = Err(status);
        result
            .reply("publishing payments/limits")
            .unwrap_err()
            .into()
    }

    fn refused(code: Code, message: &str) -> anyhow::Error {
        refused_with(Status::new(code, message))
    }

    /// A FAILED_PRECONDITION naming `rule`, as the server sends it.
    fn precondition(rule: &str, message: &str) -> Status {
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
    fn hint_line(error: &anyhow::Error) -> String {
        let text = report(error);
        assert!(text.starts_with("error: "), "{text}");
        text.lines()
            .find_map(|line| line.strip_prefix("hint: "))
            .unwrap_or_else(|| panic!("no hint line in {text:?}"))
            .to_owned()
    }

    const EVERY_CODE: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    #[test]
    fn every_status_code_has_a_hint_and_its_exit_code() {
        for code in EVERY_CODE {
            let error = refused(code, "refused");
            let hint = hint_line(&error);
            assert!(!hint.is_empty(), "{code:?}");
            let expected = match code {
                Code::Unavailable | Code::Cancelled => 3,
                _ => 1,
            };
            assert_eq!(exit_code(&error), ExitCode::from(expected), "{code:?}");
        }
        // Each code a user can act on has advice of its own; the server's
        // faults share one, as do the two kinds of bad value.
        let actionable: Vec<Code> = EVERY_CODE
            .into_iter()
            .filter(|code| !matches!(code, Code::Ok | Code::Unknown | Code::DataLoss))
            .filter(|code| *code != Code::OutOfRange)
            .collect();
        let distinct: std::collections::BTreeSet<&str> =
            actionable.iter().map(|code| code_hint(*code)).collect();
        assert_eq!(distinct.len(), actionable.len(), "{distinct:#?}");
    }

    #[test]
    fn every_precondition_rule_has_its_own_hint() {
        let mut hints = std::collections::BTreeSet::new();
        for (rule, expected) in [
            ("STATE", "does not fit the current state"),
            ("SCHEMA", "breaks the policy's schema"),
            ("REQUIREMENTS", "move the policies together"),
            ("ROLLOUT", "promote or abort it first"),
        ] {
            let hint = hint_line(&refused_with(precondition(rule, "refused")));
            assert!(hint.contains(expected), "{rule}: {hint}");
            hints.insert(hint);
        }
        assert_eq!(hints.len(), 4);
        // A rule this client does not know yet gets the general advice.
        let newer = hint_line(&refused_with(precondition("QUORUM", "refused")));
        assert!(newer.contains("current state"), "{newer}");
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
    fn fields_in_server_text_read_as_flags() {
        assert_eq!(
            with_flags("version 1 is the first version ever active; pass to_version"),
            "version 1 is the first version ever active; pass --to-version"
        );
        assert_eq!(
            with_flags("set allow_draft_fallback to get its open draft"),
            "set --allow-draft-fallback to get its open draft"
        );
        assert_eq!(with_flags("pass to_version."), "pass --to-version.");
        // Ordinary words, unknown fields and values are left alone.
        assert_eq!(
            with_flags("version \"my_label\" of name x"),
            "version \"my_label\" of name x"
        );
        assert_eq!(flag_of("requirements[0].range"), "the 1st --require");
        assert_eq!(flag_of("targets[11].version"), "the 12th <TARGETS>");
        assert_eq!(flag_of("targets[21]"), "the 22nd <TARGETS>");
        assert_eq!(flag_of("request"), "request");
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
    fn a_spent_quota_says_how_long_to_wait() {
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "mutation quota exceeded",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
        );
        assert_eq!(
            hint_line(&refused_with(status)),
            "the server's quota is spent for now: retry in 1s 500ms"
        );
        let too_large = hint_line(&refused(Code::ResourceExhausted, "body too large"));
        assert!(too_large.contains("stay under the limit"), "{too_large}");
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
    fn local_failures_have_their_own_hints_and_exit_codes() {
        let missing = std::fs::read("/nonexistent/body.json")
            .context("reading /nonexistent/body.json")
            .unwrap_err();
        assert_eq!(
            report(&missing),
            "error: reading /nonexistent/body.json: no such file or directory\n\
             hint: check the path named above: a relative path starts from the current directory\n"
        );
        let not_json: anyhow::Error = serde_json::from_str::<serde_json::Value>("{")
            .context(Unusable::new(What::Document, "body.json is not JSON"))
            .unwrap_err();
        assert!(
            hint_line(&not_json).starts_with("fix the file at the line and column"),
            "{}",
            report(&not_json)
        );
        // The kind of what could not be used wins over the I/O error below it.
        let secret = std::fs::read("/nonexistent/token-secret")
            .context(Unusable::new(What::TokenSecret, "reading the token secret"))
            .unwrap_err();
        assert!(hint_line(&secret).contains("--data-dir"));
        let usage = anyhow::Error::new(Usage::new("x", "write y"));
        assert_eq!(hint_line(&usage), "write y");
        for (error, code) in [
            (missing, 1),
            (not_json, 1),
            (secret, 1),
            (usage, 2),
            (refused(Code::NotFound, "x"), 1),
        ] {
            assert_eq!(exit_code(&error), ExitCode::from(code), "{error:#}");
        }
        for what in [
            What::Document,
            What::Body,
            What::Jwks,
            What::Bundle,
            What::Signature,
            What::ServedBundle,
            What::Token,
            What::TokenSecret,
            What::ClientConfig,
            What::Connection,
            What::Checkout,
            What::Reply,
        ] {
            assert!(!unusable_hint(what).is_empty(), "{what:?}");
        }
    }

    #[test]
    fn an_unreachable_server_exits_3_with_advice() {
        let error = anyhow::Error::new(Unreachable {
            server: "http://127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        });
        assert_eq!(exit_code(&error), ExitCode::from(3));
        assert_eq!(
            hint_line(&error),
            "is the server running at http://127.0.0.1:1? Point --server or POLICYHUB_SERVER at it"
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
