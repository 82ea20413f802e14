//! The errors of the domain, one variant per way a request can fail.
//!
//! Each variant maps to exactly one gRPC status code in `grpc::status`
//! (`From<Error> for Status`); the text is lowercase and names the value that
//! was wrong.

use std::fmt;

/// Everything that can go wrong while serving a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed (a name, label or page token; a
    /// missing body or selector; a target given twice; an empty reason):
    /// each violation names the field, such as `targets[1].namespace`.
    #[error("{}", join_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named policy or version does not exist, or nothing is active
    /// (and no draft fallback was asked for).
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but the current state forbids it: the
    /// violations' type names the rule (below), and nothing changed.
    #[error("{message}")]
    FailedPrecondition {
        /// What was refused and why.
        message: String,
        /// Which rule refused it.
        kind: Precondition,
        /// The schema violations, when the refusal is a schema check.
        violations: Vec<SchemaViolation>,
    },
    /// A compare-and-swap expectation (`expected_active_version`,
    /// `expected_active_revision`, HTTP's `If-Match`) did not hold: someone
    /// else moved the pointer first, and nothing changed.
    #[error("{0}")]
    Aborted(String),
    /// A label is released with another body, or an idempotency key was
    /// used for another request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller proved no identity: no token, or one that is malformed,
    /// expired, not yet valid, for another issuer or audience, or signed by
    /// an unknown key or algorithm.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is authenticated but may not do this: its roles do not
    /// cover the call, or a runtime id is held by another subject.
    #[error("{0}")]
    PermissionDenied(String),
    /// A request, or a part of it, is over a size limit
    /// (`limits.max_body_bytes` of canonical JSON for a body or schema; a
    /// message over twice that plus 64 KiB): the same request will never
    /// pass.
    #[error("{0}")]
    TooLarge(String),
    /// A quota or capacity limit was exceeded: a subject over its stream or
    /// mutation quota (with when to retry), or the database's disk full.
    #[error("{message}")]
    ResourceExhausted {
        /// Which limit, and by how much.
        message: String,
        /// When a retry may succeed (a rate limit), if the server knows.
        retry_after: Option<std::time::Duration>,
    },
    /// The database cannot be reached: retry, here or on another replica.
    #[error("{0}")]
    Unavailable(String),
    /// A fault of the service itself, never of the caller: the server's log
    /// has the details, the reply does not.
    #[error("{0}")]
    Internal(String),
    /// What the database holds contradicts what was signed: history was
    /// rewritten behind the service, which refuses to present it as signed.
    #[error("{0}")]
    DataLoss(String),
}

/// The rule behind a `FailedPrecondition`: the `type` of its
/// `google.rpc.PreconditionFailure` violations on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The state of versions and pointers: publishing a version that is not
    /// a draft, activating a draft or a discarded version, rolling back with
    /// nothing to roll back to, a rollout in another state.
    State,
    /// The policy's JSON Schema: one violation per schema error, its subject
    /// the JSON Pointer into the body (`/limits/daily`).
    Schema,
    /// Requirements between policies: a cycle, a required policy with no
    /// release in range, or an active version's requirement the change would
    /// break.
    Requirements,
    /// A live rollout holds the policy; the message names it.
    Rollout,
    /// The namespace's impact gate: the change would decide more of a
    /// path's recorded decisions differently than the gate allows; the
    /// message names the paths and the report.
    Impact,
}

impl Precondition {
    /// The violation type on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Precondition::State => "STATE",
            Precondition::Schema => "SCHEMA",
            Precondition::Requirements => "REQUIREMENTS",
            Precondition::Rollout => "ROLLOUT",
            Precondition::Impact => "IMPACT",
        }
    }
}

/// A request field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field, such as `namespace` or `targets[1].name`.
    pub field: String,
    /// What is wrong with its value.
    pub description: String,
}

/// One place where a policy body breaks its JSON Schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// JSON Pointer into the body, such as `/limits/daily`; empty for the root.
    pub instance_path: String,
    /// What the schema expected there.
    pub message: String,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.instance_path.is_empty() {
            "/"
        } else {
            &self.instance_path
        };
        write!(f, "{path}: {}", self.message)
    }
}

fn join_violations(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// A capacity or quota limit was exceeded, with no known time to retry.
    pub fn exhausted(message: impl Into<String>) -> Self {
        Error::ResourceExhausted {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A refusal because of the current state of versions and pointers.
    pub fn precondition(message: impl Into<String>) -> Self {
        Error::refused_by(Precondition::State, message)
    }

    /// A refusal by the rule `kind`, without schema violations.
    pub fn refused_by(kind: Precondition, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            message: message.into(),
            kind,
            violations: Vec::new(),
        }
    }

    /// Prefixes every field of an `InvalidArgument` with `prefix`, so that an
    /// error about `name` inside the second target reads `targets[1].name`.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Error::InvalidArgument(violations) => Error::InvalidArgument(
                violations
                    .into_iter()
                    .map(|violation| FieldViolation {
                        field: format!("{prefix}.{}", violation.field),
                        description: violation.description,
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Most characters of a caller's value quoted in an error.
const QUOTED_CHARS: usize = 64;

/// A caller's value as error text quotes it: in full when short, else a
/// prefix and its length, so an error never repeats a huge input (gRPC
/// clients cap the metadata a status travels in at a few KiB).
pub fn quoted(value: &str) -> String {
    if value.chars().count() <= QUOTED_CHARS {
        return format!("{value:?}");
    }
    let prefix: String = value.chars().take(QUOTED_CHARS).collect();
    format!("{prefix:?}… ({} bytes)", value.len())
}

/// Result of every domain operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
