//! What an OFREP flag key names in the state in force, and what OFREP
//! answers for it, without HTTP.
//!
//! A key is `namespace/policy`, the whole body (an object flag), or
//! `namespace/policy` followed by a JSON Pointer (RFC 6901) into the body:
//! `payments/card-limits/limits/daily` is `/limits/daily` of
//! `payments/card-limits`. The pointer is the rest of the key as it stands,
//! `/` included, so a key survives a URL that no one encoded (OFREP's
//! providers put the key in the path as it is); `payments/card-limits#/limits/daily`
//! names the same value for a client that encodes `#` (a raw `#` would end
//! the path). Neither a namespace nor a policy name holds `/` or `#`, so
//! the split is never ambiguous.
//!
//! The evaluation context changes no value: a version reaches the agent as
//! a whole (a rollout's cohort is decided per runtime, and the agent is the
//! runtime), so every caller of one agent reads the same value. The reason
//! says whether that value is the server's word now: `STATIC` while the
//! agent follows the server live, `STALE` while it serves what it holds
//! without following (see [`Freshness`]). The context is still checked: an
//! object, whose `targetingKey`, if any, is a string.

use policyhub_runtime::{Source, State, VerifiedBundle};
use serde_json::{Value, json};

/// Whether the agent's value of a namespace is authoritative: what an
/// evaluation's reason says. Where the value came from (the server or the
/// cache) is another matter, told by the metadata's `source`: a state read
/// back from the cache is live once a stream resumed from its revision
/// (whatever is newer comes first on that stream), and a state the server
/// sent is stale once the stream is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// A watch stream to the server is open and the server's newest signed
    /// checkpoint is current: every activation reaches the agent as it is
    /// made, so the value is the server's, no context changing it
    /// (`STATIC`).
    Live,
    /// No stream is open (not yet, lost, or the server refuses the agent's
    /// token or shows a history the agent refuses), or the server's newest
    /// checkpoint is stale (a replica cut off from its database or frozen):
    /// the value is the last verified one, possibly out of date (`STALE`,
    /// OpenFeature's word for it).
    Stale,
}

impl Freshness {
    /// The OpenFeature reason.
    pub fn reason(self) -> &'static str {
        match self {
            Freshness::Live => "STATIC",
            Freshness::Stale => "STALE",
        }
    }
}

/// OFREP's error codes the agent answers. `TYPE_MISMATCH` is the
/// provider's own: OFREP's request does not say the type the caller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is not JSON, or the key's pointer is not RFC 6901.
    ParseError,
    /// The context is not an object, or its `targetingKey` not a string.
    InvalidContext,
    /// No such namespace followed, policy active or value at the pointer;
    /// a null is no value.
    FlagNotFound,
    /// The namespace holds no verified state yet.
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::General => "GENERAL",
        }
    }
}

/// An evaluation OFREP answers with an error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    /// Said to the caller as `errorDetails`.
    pub details: String,
}

impl Failure {
    fn new(code: ErrorCode, details: impl Into<String>) -> Self {
        Failure {
            code,
            details: details.into(),
        }
    }

    /// The key's namespace is not one the agent follows.
    pub fn not_followed(namespace: &str) -> Self {
        Failure::new(
            ErrorCode::FlagNotFound,
            format!("this agent does not follow namespace {namespace}"),
        )
    }

    /// The error body: `key`, `errorCode` and `errorDetails` (each
    /// provider reads one of `key` and `errorDetails`).
    pub fn to_json(&self, key: Option<&str>) -> Value {
        let mut body = json!({"errorCode": self.code.as_str(), "errorDetails": self.details});
        if let Some(key) = key {
            body["key"] = json!(key);
        }
        body
    }
}

/// A parsed flag key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagKey<'a> {
    pub namespace: &'a str,
    pub policy: &'a str,
    /// A JSON Pointer into the body; empty for the whole body.
    pub pointer: &'a str,
}

impl<'a> FlagKey<'a> {
    /// Reads `namespace/policy`, then the pointer, if any: the rest of the
    /// key, after a `#` or from the `/` that follows the policy name.
    pub fn parse(key: &'a str) -> Result<Self, Failure> {
        let not_a_key = || {
            Failure::new(
                ErrorCode::FlagNotFound,
                format!(
                    "{key:?} is not a key of this agent: namespace/policy, then a JSON Pointer \
                     into the body if a single value is wanted (payments/card-limits/limits/daily)"
                ),
            )
        };
        let (namespace, rest) = key.split_once('/').ok_or_else(not_a_key)?;
        let end = rest.find(['/', '#']).unwrap_or(rest.len());
        let (policy, rest) = rest.split_at(end);
        if namespace.is_empty() || namespace.contains('#') || policy.is_empty() {
            return Err(not_a_key());
        }
        let pointer = rest.strip_prefix('#').unwrap_or(rest);
        check_pointer(pointer)?;
        Ok(FlagKey {
            namespace,
            policy,
            pointer,
        })
    }
}

/// Refuses what RFC 6901 does not allow: a pointer that neither is empty
/// nor starts with `/`, and a `~` not followed by `0` or `1`.
fn check_pointer(pointer: &str) -> Result<(), Failure> {
    let refused = |why: &str| {
        Err(Failure::new(
            ErrorCode::ParseError,
            format!("{pointer:?} is not a JSON Pointer (RFC 6901): {why}"),
        ))
    };
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return refused("it must be empty or start with /");
    }
    let mut characters = pointer.chars();
    while let Some(character) = characters.next() {
        if character == '~' && !matches!(characters.next(), Some('0' | '1')) {
            return refused("~ must be followed by 0 (for ~) or 1 (for /)");
        }
    }
    Ok(())
}

/// The evaluation of `flag` (spelt `key` by the caller) in `state`, the
/// state its namespace holds (`None` before the first), as `freshness`
/// says the agent holds it.
pub fn evaluate(
    key: &str,
    flag: &FlagKey<'_>,
    state: Option<&State>,
    freshness: Freshness,
) -> Result<Value, Failure> {
    let state = state.ok_or_else(|| {
        Failure::new(
            ErrorCode::General,
            format!(
                "no verified state of namespace {} yet: neither the server nor the cache gave one",
                flag.namespace
            ),
        )
    })?;
    let bundle = state.bundles.get(flag.policy).ok_or_else(|| {
        Failure::new(
            ErrorCode::FlagNotFound,
            format!(
                "{}/{} has no active version at revision {}",
                flag.namespace, flag.policy, state.revision
            ),
        )
    })?;
    let value = bundle.body.pointer(flag.pointer).ok_or_else(|| {
        Failure::new(
            ErrorCode::FlagNotFound,
            format!(
                "version {} of {}/{} has no value at {}",
                bundle.version, flag.namespace, flag.policy, flag.pointer
            ),
        )
    })?;
    if value.is_null() {
        return Err(Failure::new(
            ErrorCode::FlagNotFound,
            format!(
                "version {} of {}/{} holds null at {:?}: null is no value, so the caller's \
                 default applies",
                bundle.version, flag.namespace, flag.policy, flag.pointer
            ),
        ));
    }
    Ok(success(key, value, bundle, state.source, freshness))
}

/// The bulk answer over `states`, the state in force of every namespace
/// followed and how fresh it is: every policy as an object flag
/// `namespace/policy`.
pub fn bulk(states: &[(&State, Freshness)]) -> Vec<u8> {
    let mut answer = b"{\"flags\":[".to_vec();
    let mut first = true;
    for &(state, freshness) in states {
        for bundle in state.bundles.values() {
            if !first {
                answer.push(b',');
            }
            first = false;
            let key = format!("{}/{}", state.namespace, bundle.name);
            let flag = success(&key, &bundle.body, bundle, state.source, freshness);
            serde_json::to_writer(&mut answer, &flag).expect("a JSON value writes to memory");
        }
    }
    answer.extend_from_slice(b"]}");
    answer
}

/// The bulk answer's entity tag over `states`: each namespace's revision,
/// source and freshness, what every value, reason and metadata depend on
/// (the context changes none), so a provider polling with it learns when a
/// value turns stale or live again.
pub fn bulk_etag(states: &[(&State, Freshness)]) -> String {
    let mut tag = String::from("\"");
    for (index, (state, freshness)) in states.iter().enumerate() {
        if index > 0 {
            tag.push('.');
        }
        tag.push_str(&state.revision.to_string());
        tag.push(match state.source {
            Source::Server => 's',
            Source::Cache => 'c',
        });
        if *freshness == Freshness::Stale {
            tag.push_str("-stale");
        }
    }
    tag.push('"');
    tag
}

/// An evaluation: the value, its reason, its variant (the version's label,
/// else `v<version>`: a provider requires one) and flat metadata (no null,
/// nothing nested: the providers keep only strings, numbers and booleans).
fn success(
    key: &str,
    value: &Value,
    bundle: &VerifiedBundle,
    source: Source,
    freshness: Freshness,
) -> Value {
    let variant = bundle
        .label
        .clone()
        .unwrap_or_else(|| format!("v{}", bundle.version));
    json!({
        "key": key,
        "value": value,
        "reason": freshness.reason(),
        "variant": variant,
        "metadata": {
            "version": bundle.version,
            "revision": bundle.revision.to_string(),
            "digest": bundle.digest,
            "source": match source {
                Source::Server => "server",
                Source::Cache => "cache",
            },
        },
    })
}

/// Checks an evaluation request's body: nothing, or a JSON object whose
/// `context`, if any and not null, is an object with a string
/// `targetingKey` if it has one. Nothing of it changes a value.
pub fn check_request(body: &[u8]) -> Result<(), Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let request: Value = serde_json::from_slice(body).map_err(|error| {
        Failure::new(
            ErrorCode::ParseError,
            format!("the request is not JSON: {error}"),
        )
    })?;
    let Value::Object(request) = request else {
        return Err(Failure::new(
            ErrorCode::ParseError,
            "the request must be a JSON object, such as {\"context\": {}}",
        ));
    };
    let context = match request.get("context") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(context)) => context,
        Some(other) => {
            return Err(Failure::new(
                ErrorCode::InvalidContext,
                format!("context must be an object, not {other}"),
            ));
        }
    };
    match context.get("targetingKey") {
        None | Some(Value::String(_)) => Ok(()),
        Some(other) => Err(Failure::new(
            ErrorCode::InvalidContext,
            format!("context.targetingKey must be a string, not {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;

    fn state(body: Value, label: Option<&str>) -> State {
        let bundle = VerifiedBundle {
            name: "card-limits".into(),
            version: 3,
            label: label.map(str::to_owned),
            digest: "sha256:ab".into(),
            revision: 41,
            key_id: "k1".into(),
            body,
            jws: String::new(),
        };
        State {
            namespace: "payments".into(),
            revision: 42,
            bundles: BTreeMap::from([("card-limits".to_owned(), bundle)]),
            source: Source::Cache,
            verified_at: SystemTime::now(),
        }
    }

    fn read(key: &str, state: &State) -> Result<Value, Failure> {
        let flag = FlagKey::parse(key)?;
        evaluate(key, &flag, Some(state), Freshness::Live)
    }

    #[test]
    fn the_segments_after_the_policy_or_a_hash_are_the_pointer() {
        for (key, namespace, policy, pointer) in [
            ("payments/card-limits", "payments", "card-limits", ""),
            ("payments/card-limits/", "payments", "card-limits", "/"),
            (
                "payments/card-limits/limits/daily",
                "payments",
                "card-limits",
                "/limits/daily",
            ),
            (
                "payments/card-limits#/limits/daily",
                "payments",
                "card-limits",
                "/limits/daily",
            ),
            ("payments/card-limits#", "payments", "card-limits", ""),
            (
                "payments/card-limits/a~1b/c#d",
                "payments",
                "card-limits",
                "/a~1b/c#d",
            ),
        ] {
            assert_eq!(
                FlagKey::parse(key),
                Ok(FlagKey {
                    namespace,
                    policy,
                    pointer
                }),
                "{key}"
            );
        }
    }

    #[test]
    fn a_key_naming_nothing_is_not_found_and_a_bad_pointer_a_parse_error() {
        for key in [
            "card-limits",
            "/card-limits",
            "payments/",
            "payments/#/a",
            "pay#ments/x",
        ] {
            assert_eq!(
                FlagKey::parse(key).unwrap_err().code,
                ErrorCode::FlagNotFound,
                "{key}"
            );
        }
        for key in [
            "payments/card-limits#limits",
            "payments/card-limits/a~2",
            "payments/x/a~",
        ] {
            assert_eq!(
                FlagKey::parse(key).unwrap_err().code,
                ErrorCode::ParseError,
                "{key}"
            );
        }
    }

    #[test]
    fn a_value_carries_its_variant_reason_and_flat_metadata() {
        let body = json!({"limits": {"daily": 500, "list": [1, 2]}, "on": true, "": "empty"});
        let state = state(body.clone(), Some("1.2.0"));
        assert_eq!(
            read("payments/card-limits/limits/daily", &state).unwrap(),
            json!({"key": "payments/card-limits/limits/daily", "value": 500, "reason": "STATIC",
                   "variant": "1.2.0", "metadata": {"version": 3, "revision": "41",
                   "digest": "sha256:ab", "source": "cache"}})
        );
        // RFC 6901: the empty pointer is the whole document, "/" its
        // member named "".
        assert_eq!(read("payments/card-limits", &state).unwrap()["value"], body);
        assert_eq!(
            read("payments/card-limits#", &state).unwrap()["value"],
            body
        );
        assert_eq!(
            read("payments/card-limits/", &state).unwrap()["value"],
            "empty"
        );
        // An array is a structure the providers read as an object flag.
        assert_eq!(
            read("payments/card-limits/limits/list", &state).unwrap()["value"],
            json!([1, 2])
        );
        assert_eq!(
            read("payments/card-limits/limits/list/1", &state).unwrap()["value"],
            2
        );
        let unlabelled = self::state(body, None);
        assert_eq!(
            read("payments/card-limits/on", &unlabelled).unwrap()["variant"],
            "v3"
        );
    }

    #[test]
    fn a_value_held_without_following_the_server_is_stale_whatever_its_source() {
        let key = "payments/card-limits/on";
        let flag = FlagKey::parse(key).unwrap();
        for source in [Source::Server, Source::Cache] {
            let mut state = state(json!({"on": true}), None);
            state.source = source;
            let stale = evaluate(key, &flag, Some(&state), Freshness::Stale).unwrap();
            let live = evaluate(key, &flag, Some(&state), Freshness::Live).unwrap();
            assert_eq!(
                (&stale["reason"], &live["reason"]),
                (&json!("STALE"), &json!("STATIC"))
            );
            assert_eq!(stale["metadata"], live["metadata"], "{source:?}");
            assert_eq!(stale["value"], true);
        }
    }

    #[test]
    fn null_a_missing_member_and_an_inactive_policy_are_not_found() {
        let state = state(json!({"off": null, "list": [1]}), None);
        for key in [
            "payments/card-limits/off",
            "payments/card-limits/missing",
            "payments/card-limits/list/1",
            "payments/other",
        ] {
            assert_eq!(
                read(key, &state).unwrap_err().code,
                ErrorCode::FlagNotFound,
                "{key}"
            );
        }
        // A body that is itself an array reads like any structure.
        let array = self::state(json!([{"a": 1}]), None);
        assert_eq!(
            read("payments/card-limits/0/a", &array).unwrap()["value"],
            1
        );
        assert_eq!(
            read("payments/card-limits", &array).unwrap()["value"],
            json!([{"a": 1}])
        );
    }

    #[test]
    fn no_state_yet_is_general() {
        let flag = FlagKey::parse("payments/card-limits").unwrap();
        let failure = evaluate("payments/card-limits", &flag, None, Freshness::Stale).unwrap_err();
        assert_eq!(failure.code, ErrorCode::General);
        assert_eq!(
            failure.to_json(Some("payments/card-limits"))["errorCode"],
            "GENERAL"
        );
    }

    #[test]
    fn a_request_is_nothing_or_an_object_whose_context_is_an_object() {
        for body in [
            "",
            "  ",
            "{}",
            r#"{"context": null}"#,
            r#"{"context": {}}"#,
            r#"{"context": {"targetingKey": "user-1", "plan": 3}}"#,
        ] {
            assert_eq!(check_request(body.as_bytes()), Ok(()), "{body}");
        }
        for (body, code) in [
            ("{", ErrorCode::ParseError),
            ("[]", ErrorCode::ParseError),
            (r#"{"context": 5}"#, ErrorCode::InvalidContext),
            (r#"{"context": []}"#, ErrorCode::InvalidContext),
            (
                r#"{"context": {"targetingKey": 5}}"#,
                ErrorCode::InvalidContext,
            ),
        ] {
            assert_eq!(
                check_request(body.as_bytes()).unwrap_err().code,
                code,
                "{body}"
            );
        }
    }

    #[test]
    fn bulk_lists_every_policy_under_a_tag_of_each_revision_source_and_freshness() {
        let state = state(json!({"a": 1}), Some("1.0.0"));
        let answer: Value = serde_json::from_slice(&bulk(&[(&state, Freshness::Live)])).unwrap();
        assert_eq!(
            answer,
            json!({"flags": [{"key": "payments/card-limits", "value": {"a": 1}, "reason": "STATIC",
                    "variant": "1.0.0", "metadata": {"version": 3, "revision": "41",
                    "digest": "sha256:ab", "source": "cache"}}]})
        );
        let stale: Value = serde_json::from_slice(&bulk(&[(&state, Freshness::Stale)])).unwrap();
        assert_eq!(stale["flags"][0]["reason"], "STALE");
        let mut other = self::state(json!({}), None);
        other.namespace = "fraud".into();
        other.source = Source::Server;
        assert_eq!(
            bulk_etag(&[(&other, Freshness::Live), (&state, Freshness::Live)]),
            "\"42s.42c\""
        );
        // A value turning stale changes the tag, so a polling provider
        // does not keep reading it as live behind a 304.
        assert_eq!(
            bulk_etag(&[(&other, Freshness::Stale), (&state, Freshness::Live)]),
            "\"42s-stale.42c\""
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&bulk(&[])).unwrap(),
            json!({"flags": []})
        );
    }
}
