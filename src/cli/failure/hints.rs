//! What to do about a failure: the advice of the `hint:` line, by the kind
//! of error, in one place.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{Refused, Unreachable, Unusable, Usage, What, find, message, timed_out};

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

/// What to do about a FAILED_PRECONDITION, by the rule it names and, for
/// requirements, whether the call only published.
fn precondition_hint(rule: Option<&str>, publish_only: bool) -> &'static str {
    match rule {
        Some("SCHEMA") => {
            "the body breaks the policy's schema: write a new draft that satisfies it"
        }
        Some("REQUIREMENTS") if publish_only => {
            "nothing published meets a requirement: publish a release of the required policy \
             inside the range first (for `policyhub sync`, add it to the checkout), or widen \
             the range"
        }
        Some("REQUIREMENTS") => {
            "move the policies together in one `policyhub activate`, or the dependant \
             first; `policyhub get-version` shows what a version requires"
        }
        Some("ROLLOUT") => {
            "see the rollout with `policyhub rollout list NAMESPACE`; promote or abort it first"
        }
        Some("IMPACT") => {
            "see what the version would change with `policyhub analyze-impact NAMESPACE/NAME \
             --version N`; change it, or the namespace's impact gate"
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
             (`policyhub token` mints one for a local server), or sign in with `policyhub login`"
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
        Code::FailedPrecondition => precondition_hint(None, false),
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
fn status_hint(status: &Status, publish_only: bool) -> String {
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
            precondition_hint(precondition_type(status).as_deref(), publish_only).to_owned()
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
        What::Log => {
            "the log was rewritten in the database after it was written: compare it with a \
             backup, and find who could write to the database"
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
             cert_file, key_file, connect_timeout, request_timeout, and issuer, client_id and \
             scopes for `policyhub login`"
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
        What::Issuer => {
            "check --issuer: the provider's issuer URL, whose \
             /.well-known/openid-configuration describes it (https, or http on this machine)"
        }
        What::SignIn => {
            "sign in again with `policyhub login`; when the provider refuses the client, \
             check --client-id against the client registered there"
        }
    }
}

/// What to do about a failed local file or socket operation, by its kind.
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
        ErrorKind::AddrInUse => {
            "the port is in use: stop the process that listens on it, or choose another port"
        }
        ErrorKind::AddrNotAvailable => {
            "that address is not one of this machine's: listen on one it has, such as 127.0.0.1"
        }
        _ => "check the file named above, and that the disk is readable",
    }
}

/// What to do about `error`; `None` only for a failure this module does not
/// know, such as those of `serve`.
pub(super) fn hint(error: &anyhow::Error) -> Option<String> {
    if let Some(refused) = find::<Refused>(error) {
        return Some(status_hint(&refused.status, refused.publish_only));
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

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    use anyhow::Context;
    use tonic_types::ErrorDetails;

    use super::*;
    use crate::cli::failure::tests::{hint_line, precondition, refused, refused_with};
    use crate::cli::failure::{exit_code, report};

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
            ("IMPACT", "policyhub analyze-impact"),
        ] {
            let hint = hint_line(&refused_with(precondition(rule, "refused")));
            assert!(hint.contains(expected), "{rule}: {hint}");
            hints.insert(hint);
        }
        // A requirement refused at publish time asks for a release, not
        // for activations in another order.
        let publish_only: anyhow::Error =
            Refused::of_publish_only("publishing", precondition("REQUIREMENTS", "refused")).into();
        let hint = hint_line(&publish_only);
        assert!(
            hint.contains("publish a release of the required policy"),
            "{hint}"
        );
        hints.insert(hint);
        assert_eq!(hints.len(), 6);
        // A rule this client does not know yet gets the general advice.
        let newer = hint_line(&refused_with(precondition("QUORUM", "refused")));
        assert!(newer.contains("current state"), "{newer}");
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
            What::Log,
            What::Issuer,
            What::SignIn,
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
}
