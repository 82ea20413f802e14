//! The HTTP routes, read from the `google.api.http` options the protos
//! declare on each method, and how a request fills the method's input
//! message: path variables, then the JSON body (`body: "*"`) or the query
//! string.

use super::body::Body;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    MethodDescriptor, ReflectMessage, Value,
};

/// One piece of a path template.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// Matches itself.
    Literal(String),
    /// Matches one segment, which sets the named field.
    Field(String),
}

/// One HTTP binding of an RPC.
#[derive(Debug, Clone)]
pub struct Route {
    verb: http::Method,
    segments: Vec<Segment>,
    /// The custom method after `:` in the last segment, such as `publish`.
    custom: Option<String>,
    /// The literal segments before the first variable, joined as a path
    /// has them after its leading `/`: a path without it cannot match.
    prefix: String,
    /// What the JSON body fills.
    pub body: Body,
    /// The RPC.
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
}

/// What a route matched in a path: the variables, by field name, each as the
/// path has it (still percent-encoded).
pub type Bindings = Vec<(String, String)>;

/// Parses "/v1/namespaces/{namespace}/policies/{name}:publish".
fn template(path: &str) -> (Vec<Segment>, Option<String>) {
    let (path, custom) = match path.rsplit_once(':') {
        Some((path, custom)) if !custom.contains('/') && !custom.contains('}') => {
            (path, Some(custom.to_owned()))
        }
        _ => (path, None),
    };
    let segments = path
        .trim_start_matches('/')
        .split('/')
        .map(|segment| match segment.strip_prefix('{') {
            Some(field) => Segment::Field(field.trim_end_matches('}').to_owned()),
            None => Segment::Literal(segment.to_owned()),
        })
        .collect();
    (segments, custom)
}

/// Every binding the services in `pool` declare.
pub fn routes(pool: &DescriptorPool) -> Vec<Route> {
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&http).into_owned() else {
                continue;
            };
            let grpc_path = format!("/{}/{}", service.full_name(), method.name());
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(more)) = rule
                .get_field_by_name("additional_bindings")
                .map(|value| value.into_owned())
            {
                rules.extend(more.into_iter().filter_map(|value| match value {
                    Value::Message(more) => Some(more),
                    _ => None,
                }));
            }
            for rule in rules {
                if let Some(route) = route(&rule, &method, &grpc_path) {
                    routes.push(route);
                }
            }
        }
    }
    routes
}

fn route(rule: &DynamicMessage, method: &MethodDescriptor, grpc_path: &str) -> Option<Route> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|value| value.as_str().map(str::to_owned))
            .filter(|text| !text.is_empty())
    };
    let (verb, path) = [
        (http::Method::GET, "get"),
        (http::Method::PUT, "put"),
        (http::Method::POST, "post"),
        (http::Method::DELETE, "delete"),
        (http::Method::PATCH, "patch"),
    ]
    .into_iter()
    .find_map(|(verb, name)| text(name).map(|path| (verb, path)))?;
    let (segments, custom) = template(&path);
    let mut prefix = String::new();
    for segment in &segments {
        match segment {
            Segment::Literal(literal) => {
                prefix.push_str(literal);
                prefix.push('/');
            }
            Segment::Field(_) => break,
        }
    }
    // A template of literals alone ends without the `/`.
    if !segments
        .iter()
        .any(|segment| matches!(segment, Segment::Field(_)))
    {
        prefix.pop();
    }
    Some(Route {
        verb,
        segments,
        custom,
        prefix,
        body: Body::of(text("body").as_deref(), &method.input())?,
        method: method.clone(),
        grpc_path: grpc_path.to_owned(),
    })
}

impl Route {
    /// The variables of `path` when this route matches `verb` and `path`.
    pub fn matches(&self, verb: &http::Method, path: &str) -> Option<Bindings> {
        if verb != self.verb || !path.trim_start_matches('/').starts_with(&self.prefix) {
            return None;
        }
        let (path, custom) = match path.rsplit_once(':') {
            Some((path, custom)) if !custom.contains('/') => (path, Some(custom)),
            _ => (path, None),
        };
        if custom != self.custom.as_deref() {
            return None;
        }
        // Every request is matched against the routes in turn: nothing is
        // allocated until one matches.
        let parts = || path.trim_start_matches('/').split('/');
        let mut unmatched = parts();
        let matched = self
            .segments
            .iter()
            .all(|segment| match (segment, unmatched.next()) {
                (Segment::Literal(literal), Some(part)) => literal == part,
                (Segment::Field(_), Some(_)) => true,
                (_, None) => false,
            });
        if !matched || unmatched.next().is_some() {
            return None;
        }
        // Decoded with the request's input, where a broken escape is the
        // caller's error, not an unknown path.
        let bindings = self
            .segments
            .iter()
            .zip(parts())
            .filter_map(|(segment, part)| match segment {
                Segment::Field(field) => Some((field.clone(), part.to_owned())),
                Segment::Literal(_) => None,
            })
            .collect();
        Some(bindings)
    }

    /// The request's input message.
    pub fn input(&self) -> MessageDescriptor {
        self.method.input()
    }
}

/// A path segment's text, its `%XX` escapes decoded as RFC 3986 says: a
/// `+` is a plus, as grpc-gateway reads a path (Go's `url.PathUnescape`).
/// A `%` not followed by two hex digits, or escapes that do not make UTF-8,
/// are refused in words for the caller.
pub fn decode_path_segment(segment: &str) -> Result<String, String> {
    ensure_escapes(segment).map_err(|escape| {
        format!("the path segment {segment:?}: {escape:?} is not a percent escape (% and two hex digits)")
    })?;
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| format!("the path segment {segment:?}: its escapes do not make UTF-8"))
}

/// A query's `name=value` pairs, form-decoded (`+` is a space, `%2B` a
/// plus), as grpc-gateway reads a query (Go's `url.ParseQuery`). A `%` not
/// followed by two hex digits, or escapes that do not make UTF-8, are
/// refused in words for the caller.
pub fn decode_query(query: &str) -> Result<Vec<(String, String)>, String> {
    ensure_escapes(query).map_err(|escape| {
        format!("the query: {escape:?} is not a percent escape (% and two hex digits)")
    })?;
    // `form_urlencoded` replaces what is not UTF-8; checked on the whole
    // query first, so nothing is replaced: every name and value is a run of
    // it cut at an ASCII `&` or `=`.
    percent_encoding::percent_decode_str(&query.replace('+', " "))
        .decode_utf8()
        .map_err(|_| "the query: its escapes do not make UTF-8".to_owned())?;
    Ok(form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect())
}

/// Every `%` of `text` starts an escape of two hex digits; else the first
/// that does not, with what follows it. The crates decode such a `%` as
/// itself, where grpc-gateway refuses it.
fn ensure_escapes(text: &str) -> Result<(), &str> {
    for (at, _) in text.match_indices('%') {
        let digits = text.as_bytes().get(at + 1..at + 3);
        if !digits.is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit)) {
            let end = text[at..]
                .char_indices()
                .nth(3)
                .map_or(text.len(), |(offset, _)| at + offset);
            return Err(&text[at..end]);
        }
    }
    Ok(())
}

/// Sets `field` (its proto or JSON name) of `message` from text: what a
/// path variable or a query parameter carries, as grpc-gateway reads them.
/// Repeated fields collect every occurrence; `a.b` is field `b` of message
/// field `a`; `labels[key]` is one entry of a map; a well-known type takes
/// its JSON form (`asOfTime=2026-01-02T03:04:05Z`, `bake=90s`).
pub fn set_from_text(message: &mut DynamicMessage, field: &str, text: &str) -> Result<(), String> {
    set_at(message, field, text, field)
}

/// [`set_from_text`] of `field` inside the message that `given`, the whole
/// name as the request spelled it, names: errors speak of `given`.
fn set_at(
    message: &mut DynamicMessage,
    field: &str,
    text: &str,
    given: &str,
) -> Result<(), String> {
    if let Some((map, key)) = field
        .strip_suffix(']')
        .and_then(|field| field.split_once('['))
        .filter(|(map, _)| !map.contains('.'))
    {
        return set_map_entry(message, map, key, text);
    }
    if let Some((outer, inner)) = field.split_once('.') {
        // A field of a message field, such as `runtime.id`.
        let descriptor = message.descriptor();
        let outer = descriptor
            .get_field_by_name(outer)
            .or_else(|| descriptor.get_field_by_json_name(outer))
            .filter(|outer| matches!(outer.kind(), Kind::Message(_)) && !outer.is_list())
            .ok_or_else(|| format!("{given}: no such field in {}", descriptor.name()))?;
        let Value::Message(nested) = message.get_field_mut(&outer) else {
            return Err(format!("{given}: no such field in {}", descriptor.name()));
        };
        return set_at(nested, inner, text, given);
    }
    let descriptor = message.descriptor();
    let Some(field_descriptor) = descriptor
        .get_field_by_name(field)
        .or_else(|| descriptor.get_field_by_json_name(field))
    else {
        return Err(format!("{given}: no such field in {}", descriptor.name()));
    };
    if field_descriptor.is_map() {
        return Err(format!(
            "{given}: a map, given one entry at a time as {given}[KEY]=VALUE"
        ));
    }
    let value = match field_descriptor.kind() {
        Kind::Message(kind) => well_known(given, &kind, text)?,
        _ => scalar(&field_descriptor, text)?,
    };
    if field_descriptor.is_list() {
        let mut list = match message.get_field(&field_descriptor).into_owned() {
            Value::List(list) => list,
            _ => Vec::new(),
        };
        list.push(value);
        message.set_field(&field_descriptor, Value::List(list));
    } else {
        message.set_field(&field_descriptor, value);
    }
    Ok(())
}

/// One entry, `map[key]=text`, of a map field.
fn set_map_entry(
    message: &mut DynamicMessage,
    map: &str,
    key: &str,
    text: &str,
) -> Result<(), String> {
    let descriptor = message.descriptor();
    let field = descriptor
        .get_field_by_name(map)
        .or_else(|| descriptor.get_field_by_json_name(map))
        .filter(FieldDescriptor::is_map)
        .ok_or_else(|| format!("{map}: no map field of that name in {}", descriptor.name()))?;
    let Kind::Message(entry) = field.kind() else {
        return Err(format!("{map}: not a map"));
    };
    let key_field = entry.map_entry_key_field();
    let key = match scalar(&key_field, key)? {
        Value::String(key) => MapKey::String(key),
        Value::Bool(key) => MapKey::Bool(key),
        Value::I32(key) => MapKey::I32(key),
        Value::I64(key) => MapKey::I64(key),
        Value::U32(key) => MapKey::U32(key),
        Value::U64(key) => MapKey::U64(key),
        _ => {
            return Err(format!(
                "{map}: keys of this kind cannot be given in a query"
            ));
        }
    };
    let value = scalar(&entry.map_entry_value_field(), text)?;
    let Value::Map(entries) = message.get_field_mut(&field) else {
        return Err(format!("{map}: not a map"));
    };
    entries.insert(key, value);
    Ok(())
}

/// A well-known type from the text of its JSON form, such as a Timestamp's
/// RFC 3339 or a Duration's `90s`.
fn well_known(given: &str, kind: &MessageDescriptor, text: &str) -> Result<Value, String> {
    if !kind.full_name().starts_with("google.protobuf.") {
        return Err(format!(
            "{given}: a message, given one field at a time as {given}.FIELD=VALUE"
        ));
    }
    // A string's JSON form first (Timestamp, Duration, FieldMask, the
    // string wrappers), then the text as JSON itself (numbers, booleans).
    DynamicMessage::deserialize(kind.clone(), serde_json::Value::String(text.to_owned()))
        .or_else(|_| {
            let json: serde_json::Value = serde_json::from_str(text).map_err(|_| ())?;
            DynamicMessage::deserialize(kind.clone(), json).map_err(|_| ())
        })
        .map(Value::Message)
        .map_err(|()| format!("{given}: {text:?} is not a valid {}", kind.name()))
}

fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let invalid = |what: &str| format!("{}: {text:?} is not {what}", field.name());
    Ok(match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => Value::Bool(text.parse().map_err(|_| invalid("true or false"))?),
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32(text.parse().map_err(|_| invalid("a whole number"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64(text.parse().map_err(|_| invalid("a whole number"))?)
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| invalid("a whole number"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| invalid("a whole number"))?)
        }
        Kind::Enum(kind) => {
            let value = kind
                .get_value_by_name(text)
                .or_else(|| text.parse().ok().and_then(|n| kind.get_value(n)))
                .ok_or_else(|| invalid(&format!("a value of {}", kind.name())))?;
            Value::EnumNumber(value.number())
        }
        _ => {
            return Err(format!(
                "{}: cannot be given in a path or query",
                field.name()
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(crate::grpc::proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn every_unary_rpc_has_a_route_and_paths_bind_their_fields() {
        let routes = routes(&pool());
        let unary: Vec<String> = pool()
            .services()
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .filter(|method| !method.is_server_streaming() && !method.is_client_streaming())
            .map(|method| method.name().to_owned())
            .collect();
        for name in &unary {
            assert!(
                routes.iter().any(|route| route.method.name() == name),
                "{name} has no HTTP route"
            );
        }
        let publish = routes
            .iter()
            .find(|route| route.method.name() == "Publish")
            .unwrap();
        assert_eq!(
            publish.matches(
                &http::Method::POST,
                "/v1/namespaces/payments/policies/card-limits:publish"
            ),
            Some(vec![
                ("namespace".into(), "payments".into()),
                ("name".into(), "card-limits".into())
            ])
        );
        assert_eq!(
            publish.matches(
                &http::Method::GET,
                "/v1/namespaces/payments/policies/x:publish"
            ),
            None
        );
        assert_eq!(
            publish.matches(
                &http::Method::POST,
                "/v1/namespaces/payments/policies/x:rollback"
            ),
            None
        );
    }

    #[test]
    fn a_path_matches_only_the_routes_its_literal_segments_begin() {
        let routes = routes(&pool());
        let named = |name: &str| {
            routes
                .iter()
                .find(|route| route.method.name() == name)
                .unwrap()
        };
        let bundle = named("GetOpaBundle");
        for (path, matched) in [
            ("/v1/opa/bundles/payments", true),
            ("//v1/opa/bundles/payments", true),
            ("/v1/opa/bundle/payments", false),
            ("/v1/opa/bundles", false),
            ("/v1/opa/bundlesX/payments", false),
        ] {
            let found = bundle.matches(&http::Method::GET, path);
            assert_eq!(found.is_some(), matched, "{path}");
        }
        let list = named("ListPolicies");
        assert!(list.matches(&http::Method::GET, "/v1/policies").is_some());
        assert!(list.matches(&http::Method::GET, "/v1/policiesX").is_none());
        assert!(list.matches(&http::Method::GET, "/v1/polic").is_none());
    }

    #[test]
    fn a_path_segment_is_percent_decoded_and_a_plus_is_a_plus() {
        assert_eq!(decode_path_segment("a%2Fb").as_deref(), Ok("a/b"));
        assert_eq!(decode_path_segment("plain").as_deref(), Ok("plain"));
        assert_eq!(decode_path_segment("a+b%2Bc").as_deref(), Ok("a+b+c"));
        assert_eq!(decode_path_segment("caf%C3%A9").as_deref(), Ok("café"));
        for broken in ["bad%2", "%", "%+1", "%-1", "%G1", "x%1"] {
            let error = decode_path_segment(broken).unwrap_err();
            assert!(
                error.contains("is not a percent escape"),
                "{broken}: {error}"
            );
        }
        assert!(decode_path_segment("%FF").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn a_query_is_form_decoded_and_broken_escapes_are_refused() {
        assert_eq!(
            decode_query("reason=too+high&name=a%2Bb&&labels%5Bregion%5D=eu&flag"),
            Ok(vec![
                ("reason".into(), "too high".into()),
                ("name".into(), "a+b".into()),
                ("labels[region]".into(), "eu".into()),
                ("flag".into(), String::new()),
            ])
        );
        let error = decode_query("reason=%+1").unwrap_err();
        assert!(error.contains("\"%+1\" is not a percent escape"), "{error}");
        assert!(decode_query("reason=%FF").unwrap_err().contains("UTF-8"));
    }
}
