//! The page of status and exit codes, generated from the code: each kind of
//! domain error (and its doc comment) through the one mapping to a gRPC
//! status (`src/grpc/status.rs`), its details and the HTTP status the
//! HTTP port answers with (`src/http/status.rs`); the rules a
//! FAILED_PRECONDITION names; and the exit codes of the command line
//! (`src/cli/failure`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use policyhub::domain::{Error, Precondition, SchemaViolation};
use tonic::Status;
use tonic_types::StatusExt;

use super::{doc_comment, one_line};

/// One error of each kind, as the service makes them, with what tells it
/// apart from another error of the same kind.
fn examples() -> Vec<(&'static str, &'static str, Error)> {
    vec![
        ("InvalidArgument", "", Error::invalid("name", "is empty")),
        ("NotFound", "", Error::NotFound("no policy".into())),
        (
            "FailedPrecondition",
            "",
            Error::refused_by(Precondition::State, "not a draft"),
        ),
        ("Aborted", "", Error::Aborted("expected 2".into())),
        ("AlreadyExists", "", Error::AlreadyExists("label".into())),
        (
            "Unauthenticated",
            "",
            Error::Unauthenticated("no token".into()),
        ),
        (
            "PermissionDenied",
            "",
            Error::PermissionDenied("no role".into()),
        ),
        ("TooLarge", "", Error::TooLarge("too large".into())),
        (
            "ResourceExhausted",
            "a rate: when to retry",
            Error::ResourceExhausted {
                message: "quota".into(),
                retry_after: Some(Duration::from_secs(1)),
            },
        ),
        (
            "ResourceExhausted",
            "a capacity",
            Error::exhausted("disk full"),
        ),
        ("Unavailable", "", Error::Unavailable("database".into())),
        ("Internal", "", Error::Internal("bug".into())),
        ("DataLoss", "", Error::DataLoss("rewritten".into())),
    ]
}

/// One precondition rule of each kind.
fn rules() -> Vec<(&'static str, Error)> {
    let schema = Error::FailedPrecondition {
        message: "schema".into(),
        kind: Precondition::Schema,
        violations: vec![SchemaViolation {
            instance_path: "/limits/daily".into(),
            message: "is not a number".into(),
        }],
    };
    vec![
        ("State", Error::refused_by(Precondition::State, "state")),
        ("Schema", schema),
        (
            "Requirements",
            Error::refused_by(Precondition::Requirements, "requirements"),
        ),
        (
            "Rollout",
            Error::refused_by(Precondition::Rollout, "rollout"),
        ),
        ("Impact", Error::refused_by(Precondition::Impact, "impact")),
    ]
}

/// The variants of the enum `name` of `source`, each with its doc comment.
fn variants(source: &str, name: &str) -> Vec<(String, String)> {
    let file = syn::parse_file(source).unwrap();
    file.items
        .iter()
        .find_map(|item| match item {
            syn::Item::Enum(item) if item.ident == name => Some(
                item.variants
                    .iter()
                    .map(|variant| (variant.ident.to_string(), doc_comment(&variant.attrs)))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no enum {name}"))
}

/// The details a client reads, as the status carries them.
fn details(status: &Status) -> String {
    let details = status.get_error_details();
    let mut listed = Vec::new();
    if details.bad_request().is_some() {
        listed.push("`google.rpc.BadRequest`: a field violation per bad field".to_owned());
    }
    if let Some(failure) = details.precondition_failure() {
        let rule = &failure.violations[0].r#type;
        listed.push(format!(
            "`google.rpc.PreconditionFailure`: the violations' type is the rule (`{rule}`)"
        ));
    }
    if let Some(info) = details.error_info() {
        listed.push(format!(
            "`google.rpc.ErrorInfo`: reason `{}`, domain `{}`",
            info.reason, info.domain
        ));
    }
    if details.retry_info().is_some() {
        listed.push("`google.rpc.RetryInfo`: when to retry".to_owned());
    }
    listed.join("; ")
}

/// The gRPC code's name as the protos spell it (`FAILED_PRECONDITION`).
fn code_name(status: &Status) -> String {
    format!("{:?}", status.code())
        .chars()
        .enumerate()
        .flat_map(|(index, c)| {
            let separator = (index > 0 && c.is_uppercase()).then_some('_');
            separator.into_iter().chain(c.to_uppercase())
        })
        .collect()
}

/// The `const NAME: u8 = N;` exit codes of `source`, with their doc comments.
fn exit_codes(source: &str) -> Vec<(u8, String)> {
    let file = syn::parse_file(source).unwrap();
    let mut codes: Vec<(u8, String)> = file
        .items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Const(item) if quote_type(&item.ty) == "u8" => match &*item.expr {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(value),
                    ..
                }) => Some((value.base10_parse().unwrap(), doc_comment(&item.attrs))),
                _ => None,
            },
            _ => None,
        })
        .collect();
    codes.sort();
    codes
}

/// A type's last path segment.
fn quote_type(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(path) => path.path.segments.last().unwrap().ident.to_string(),
        _ => String::new(),
    }
}

pub(super) fn status_codes_page() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    let errors = variants(&read("src/domain/error.rs"), "Error");
    let preconditions = variants(&read("src/domain/error.rs"), "Precondition");
    let examples = examples();
    for (variant, _) in &errors {
        assert!(
            examples.iter().any(|(name, _, _)| name == variant),
            "Error::{variant} has no example in the status codes page"
        );
    }
    let mut page = String::from(
        "# Status and exit codes\n\n<!-- Generated from src/domain/error.rs, \
         src/grpc/status.rs, src/http/status.rs and src/cli/failure by the test \
         `docs::the_generated_references_are_fresh`: do not edit. -->\n\n\
         Every way a request can fail, as the service maps it: the gRPC code, the \
         details a client reads, and the HTTP port's status. Every error text is \
         lowercase and names the value that was wrong. What to do about each is in \
         [When a call is refused](../guides/refusals.md).\n\n\
         | error | gRPC code | details | HTTP | meaning |\n|---|---|---|---|---|\n",
    );
    for (variant, case, error) in examples {
        let meaning = &errors
            .iter()
            .find(|(name, _)| name == variant)
            .unwrap_or_else(|| panic!("the example {variant} is no variant of Error"))
            .1;
        let status = Status::from(error);
        let http = policyhub::http::refusal_status(&status);
        let case = if case.is_empty() {
            String::new()
        } else {
            format!(" ({case})")
        };
        let _ = writeln!(
            page,
            "| `{variant}`{case} | `{}` | {} | {} | {} |",
            code_name(&status),
            details(&status),
            http.as_u16(),
            one_line(meaning)
        );
    }
    page.push_str(
        "\nA 429 and a 503 carry `Retry-After`; a 401 carries `WWW-Authenticate: \
         Bearer`. The HTTP port has statuses of its own besides: 304 (`If-None-Match` \
         still current), 405 with `Allow`, 412 (`If-Match` stale), 413 (a body or a \
         declared `Content-Length` over the limit) and 415 (a body that is not \
         `application/json`).\n\n\
         ## The rules of `FAILED_PRECONDITION`\n\n\
         | rule (violation type) | meaning |\n|---|---|\n",
    );
    for (variant, error) in rules() {
        let meaning = &preconditions
            .iter()
            .find(|(name, _)| name == variant)
            .unwrap_or_else(|| panic!("{variant} is no variant of Precondition"))
            .1;
        let status = Status::from(error);
        let rule = status
            .get_error_details()
            .precondition_failure()
            .unwrap()
            .violations[0]
            .r#type
            .clone();
        let _ = writeln!(page, "| `{rule}` | {} |", one_line(meaning));
    }
    assert_eq!(
        rules().len(),
        preconditions.len(),
        "every Precondition has a rule in the status codes page"
    );
    page.push_str(
        "\n## Exit codes of the command line\n\n\
         | exit code | meaning |\n|---|---|\n| 0 | success |\n",
    );
    for (code, meaning) in exit_codes(&read("src/cli/failure/mod.rs")) {
        let _ = writeln!(page, "| {code} | {} |", one_line(&meaning));
    }
    page.push_str(
        "| 141 | the reader of its output went away (`policyhub list-events \\| head`): \
         ended quietly by SIGPIPE, as `cat` is |\n",
    );
    page
}
