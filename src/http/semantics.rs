//! What HTTP's own headers mean here
//! (docs/src/contributing/design.md#transports): `ETag` is the version,
//! revision and digest of the bundle read, `If-None-Match` answers 304 when
//! it has not changed, `Prefer: wait=N` holds the read until it changes,
//! `If-Match` is the compare-and-swap of a rollback or a one-policy
//! activation, and `Idempotency-Key` is the request's idempotency key.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use tonic::Status;

/// The longest `Prefer: wait` honoured, as Kubernetes caps its watches.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The entity tag of a bundle: `"<version>-<revision>-<digest hex>"`.
pub fn etag(bundle: &DynamicMessage) -> Option<HeaderValue> {
    let field = |name: &str| {
        bundle
            .get_field_by_name(name)
            .map(|value| value.into_owned())
    };
    let version = field("version")?.as_u32()?;
    let revision = field("revision")?.as_u64()?;
    let digest = field("digest")?;
    let digest = digest.as_str()?.trim_start_matches("sha256:").to_owned();
    HeaderValue::from_str(&format!("\"{version}-{revision}-{digest}\"")).ok()
}

/// The entity tag of a published version: `"<version>-<digest hex>"`, and
/// `-active` after it while it is the active one (the one field of a
/// published version that changes). None for a draft, which changes.
pub fn version_etag(version: &DynamicMessage) -> Option<HeaderValue> {
    const PUBLISHED: i32 = 2;
    let field = |name: &str| {
        version
            .get_field_by_name(name)
            .map(|value| value.into_owned())
    };
    if field("state")?.as_enum_number()? != PUBLISHED {
        return None;
    }
    let number = field("version")?.as_u32()?;
    let digest = field("digest")?;
    let digest = digest.as_str()?.trim_start_matches("sha256:").to_owned();
    let active = if field("active")?.as_bool()? {
        "-active"
    } else {
        ""
    };
    HeaderValue::from_str(&format!("\"{number}-{digest}{active}\"")).ok()
}

/// Whether `If-None-Match` names `etag` (or `*`).
pub fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    names(listed(headers), etag)
}

/// The entity tags `If-None-Match` lists, read once: for a long poll,
/// whose request is long gone from the caches when it is answered.
pub struct NoneMatch(Vec<String>);

impl NoneMatch {
    pub fn of(headers: &HeaderMap) -> Self {
        NoneMatch(listed(headers).map(str::to_owned).collect())
    }

    /// Takes out the first tag listed, unquoted, when it is a tag and not
    /// `*`: the one a client holds (OPA sends back the `ETag` it was
    /// given), for the handler to compare.
    pub fn take_held(&mut self) -> Option<String> {
        let tag = self.0.first()?.strip_prefix('"')?.strip_suffix('"')?;
        if tag.is_empty() {
            return None;
        }
        let tag = tag.to_owned();
        self.0.remove(0);
        Some(tag)
    }

    /// Whether it names `etag` (or `*`).
    pub fn names(&self, etag: &HeaderValue) -> bool {
        names(self.0.iter().map(String::as_str), etag)
    }
}

/// The tags of `If-None-Match`, compared weakly (RFC 9110 §13.1.2): `W/`
/// left off.
fn listed(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
}

fn names<'a>(mut tags: impl Iterator<Item = &'a str>, etag: &HeaderValue) -> bool {
    let etag = etag.to_str().unwrap_or_default();
    tags.any(|tag| tag == "*" || tag == etag)
}

/// How long `Prefer: wait=N` asks to hold a read: whole seconds from 0 to
/// [`MAX_WAIT`], anything else refused. Preferences are split at `,` (RFC
/// 7240) and at `;`, as OPA's bundle plugin sends them
/// (`Prefer: modes=snapshot,delta;wait=10`).
pub fn wait(headers: &HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(seconds) = headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .find_map(|preference| preference.trim().strip_prefix("wait="))
    else {
        return Ok(None);
    };
    match seconds.trim().parse::<u64>() {
        Ok(seconds) if seconds <= MAX_WAIT.as_secs() => Ok(Some(Duration::from_secs(seconds))),
        _ => Err(Status::invalid_argument(format!(
            "Prefer: wait={seconds} is not a wait this server holds: whole seconds from 0 to {}",
            MAX_WAIT.as_secs()
        ))),
    }
}

/// An `If-Match` entity tag, parsed: `"<version>-<revision>-<digest hex>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfMatch {
    /// The tag as sent, compared whole with the current one (RFC 9110
    /// §13.1.1, strong comparison).
    pub tag: String,
    version: u32,
    revision: u64,
}

impl IfMatch {
    fn parse(value: &HeaderValue) -> Result<Self, Status> {
        let refused = || {
            Status::invalid_argument(
                "If-Match: not an ETag of this API (\"<version>-<revision>-<digest>\")",
            )
        };
        let tag = value.to_str().map_err(|_| refused())?.trim();
        // A weak tag is parsed but kept whole, so it never matches.
        let inner = tag
            .trim_start_matches("W/")
            .strip_prefix('"')
            .and_then(|tag| tag.strip_suffix('"'))
            .ok_or_else(refused)?;
        let mut parts = inner.splitn(3, '-');
        let (Some(version), Some(revision), Some(digest)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(refused());
        };
        if digest.is_empty() || !digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(refused());
        }
        Ok(IfMatch {
            tag: tag.to_owned(),
            version: version.parse().map_err(|_| refused())?,
            revision: revision.parse().map_err(|_| refused())?,
        })
    }
}

/// Fills the request fields that headers carry: `Idempotency-Key`, and
/// `If-Match` (an ETag of the active bundle) as the compare-and-swap on
/// the active pointer (`expected_active_version` and
/// `expected_active_revision`: a version can be active twice, a revision
/// names one activation). The `If-Match` given, so that the caller compares
/// the digest too and answers a mismatch with 412.
pub fn apply_headers(
    message: &mut DynamicMessage,
    headers: &HeaderMap,
) -> Result<Option<IfMatch>, Status> {
    let descriptor = message.descriptor();
    if let Some(key) = headers.get("idempotency-key")
        && let Some(field) = descriptor.get_field_by_name("idempotency_key")
    {
        let key = key
            .to_str()
            .map_err(|_| Status::invalid_argument("Idempotency-Key: not text"))?;
        message.set_field(&field, Value::String(key.to_owned()));
    }
    let Some(if_match) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let if_match = IfMatch::parse(if_match)?;
    if descriptor
        .get_field_by_name("expected_active_version")
        .is_some()
    {
        expect(message, &if_match)?;
        return Ok(Some(if_match));
    }
    // An activation: the compare-and-swap of its one target.
    let targets = descriptor.get_field_by_name("targets");
    let Some(Value::List(mut list)) = targets
        .as_ref()
        .map(|field| message.get_field(field).into_owned())
    else {
        return Err(Status::invalid_argument(
            "If-Match: this request takes none",
        ));
    };
    let [Value::Message(target)] = list.as_mut_slice() else {
        return Err(Status::invalid_argument(
            "If-Match: only an activation of one policy takes it; give each target its \
             expectedActiveVersion and expectedActiveRevision instead",
        ));
    };
    expect(target, &if_match)?;
    message.set_field(&targets.expect("checked above"), Value::List(list));
    Ok(Some(if_match))
}

/// Sets the compare-and-swap fields of `message` from `if_match`.
fn expect(message: &mut DynamicMessage, if_match: &IfMatch) -> Result<(), Status> {
    let descriptor = message.descriptor();
    let field = |name: &str| {
        descriptor
            .get_field_by_name(name)
            .ok_or_else(|| Status::internal(format!("{} has no {name}", descriptor.name())))
    };
    message.set_field(
        &field("expected_active_version")?,
        Value::U32(if_match.version),
    );
    message.set_field(
        &field("expected_active_revision")?,
        Value::U64(if_match.revision),
    );
    Ok(())
}

/// The policy a request with `If-Match` moves: its `namespace` and `name`,
/// or those of its one target.
pub fn moved_policy(message: &DynamicMessage) -> Option<(String, String)> {
    let names = |message: &DynamicMessage| {
        let text = |name: &str| {
            message
                .get_field_by_name(name)
                .and_then(|value| value.as_str().map(str::to_owned))
        };
        Some((text("namespace")?, text("name")?))
    };
    if let Some(found) = names(message) {
        return Some(found);
    }
    let targets = message.get_field_by_name("targets")?;
    let target = targets.as_list()?.first()?.as_message()?.clone();
    names(&target)
}
