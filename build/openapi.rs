//! The OpenAPI 3.1 document of the HTTP/JSON port, generated from the
//! descriptors: a path per `google.api.http` binding, its parameters from
//! the path template and (for a read) the query, its body and reply as
//! schemas in the protobuf JSON mapping, and `google.rpc.Status` for every
//! refusal. The server serves it at `/openapi.json`.

use std::collections::BTreeMap;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value as Reflected,
};
use serde_json::{Map, Value, json};

/// The document for every bound method of `pool`.
pub fn document(pool: &DescriptorPool, version: &str) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut schemas: BTreeMap<String, Value> = BTreeMap::new();
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("the protos import google/api/annotations.proto");
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let Reflected::Message(rule) = options.get_extension(&http).into_owned() else {
                continue;
            };
            let mut rules = vec![rule.clone()];
            if let Some(Reflected::List(more)) = rule
                .get_field_by_name("additional_bindings")
                .map(|value| value.into_owned())
            {
                rules.extend(more.into_iter().filter_map(|value| match value {
                    Reflected::Message(more) => Some(more),
                    _ => None,
                }));
            }
            for (index, rule) in rules.iter().enumerate() {
                let Some((verb, path, body)) = binding(rule) else {
                    continue;
                };
                let mut id = format!("{}_{}", service.name(), method.name());
                if index > 0 {
                    id.push_str(&format!("_{}", index + 1));
                }
                let operation = operation(&method, &id, &path, body, &mut schemas);
                paths
                    .entry(path)
                    .or_default()
                    .insert(verb.into(), operation);
            }
        }
    }
    schemas.insert(
        "google.rpc.Status".into(),
        json!({
            "type": "object",
            "description": "A refusal: the gRPC code, what was wrong, and details such as \
                            google.rpc.BadRequest field violations.",
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["code", "message"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "policyhub",
            "version": version,
            "description": "The HTTP/JSON mapping of policyhub.v1, generated from the \
                            google.api.http options of its protos.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    })
}

/// The verb, path and whether the body is the request, of one rule.
fn binding(rule: &DynamicMessage) -> Option<(&'static str, String, bool)> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|value| value.as_str().map(str::to_owned))
            .filter(|text| !text.is_empty())
    };
    let (verb, path) = ["get", "put", "post", "delete", "patch"]
        .into_iter()
        .find_map(|verb| text(verb).map(|path| (verb, path)))?;
    Some((verb, path, text("body").as_deref() == Some("*")))
}

/// The fields a path template binds, in order.
fn path_fields(path: &str) -> Vec<String> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(field, _)| field.to_owned()))
        .collect()
}

fn operation(
    method: &MethodDescriptor,
    id: &str,
    path: &str,
    body: bool,
    schemas: &mut BTreeMap<String, Value>,
) -> Value {
    let input = method.input();
    let bound = path_fields(path);
    let mut parameters: Vec<Value> = bound
        .iter()
        .map(|name| {
            let schema = input
                .get_field_by_name(name)
                .map_or(json!({"type": "string"}), |field| scalar(&field));
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect();
    if !body {
        query_parameters(&input, "", &bound, &mut parameters);
    }
    let reply = if method.is_server_streaming() {
        json!({
            "description": "Server-Sent Events: one event per whole revision, its id the \
                            revision; resume with Last-Event-ID.",
            // Each event's data: the revision's message in the JSON
            // mapping, or a last google.rpc.Status.
            "content": {"text/event-stream": {"schema": {"type": "object"}}},
        })
    } else {
        json!({
            "description": "The reply.",
            "content": {"application/json": {"schema": reference(&method.output(), schemas)}},
        })
    };
    let success = if method.name() == "Draft" {
        "201"
    } else {
        "200"
    };
    let mut operation = json!({
        "operationId": id,
        "summary": method.name(),
        "description": method_comment(method),
        "parameters": parameters,
        "responses": {
            success: reply,
            "default": {
                "description": "A refusal, as google.rpc.Status.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}},
            },
        },
    });
    if body {
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": reference(&input, schemas)}},
        });
    }
    operation
}

/// The query parameters of `message`'s fields not bound in the path, as
/// grpc-gateway reads them: scalars and well-known types by their JSON
/// name, a message field's fields as `outer.inner`, a map as a deep object
/// (`runtime.labels[region]=eu`).
fn query_parameters(
    message: &MessageDescriptor,
    prefix: &str,
    bound: &[String],
    parameters: &mut Vec<Value>,
) {
    for field in message.fields() {
        if prefix.is_empty() && bound.contains(&field.name().to_owned()) {
            continue;
        }
        let name = format!("{prefix}{}", field.json_name());
        let mut parameter = json!({
            "name": name,
            "in": "query",
            "required": false,
            "description": comment(&field),
        });
        parameter["schema"] = match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                parameter["style"] = json!("deepObject");
                parameter["explode"] = json!(true);
                json!({"type": "object",
                       "additionalProperties": scalar(&entry.map_entry_value_field())})
            }
            Kind::Message(kind) => match well_known(&kind) {
                Some(schema) => schema,
                None => {
                    query_parameters(&kind, &format!("{name}."), bound, parameters);
                    continue;
                }
            },
            _ if field.is_list() => json!({"type": "array", "items": scalar(&field)}),
            _ => scalar(&field),
        };
        parameters.push(parameter);
    }
}

/// A `$ref` to `message`'s schema, added (with what it refers to) when new.
fn reference(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if let Some(special) = well_known(message) {
        return special;
    }
    let name = message.full_name().to_owned();
    if !schemas.contains_key(&name) {
        schemas.insert(name.clone(), Value::Null);
        let mut properties = Map::new();
        for field in message.fields() {
            let schema = if field.is_map() {
                let Kind::Message(entry) = field.kind() else {
                    unreachable!("a map field is a message of entries")
                };
                let value = entry.map_entry_value_field();
                json!({"type": "object", "additionalProperties": field_schema(&value, schemas)})
            } else if field.is_list() {
                json!({"type": "array", "items": field_schema(&field, schemas)})
            } else {
                field_schema(&field, schemas)
            };
            let mut schema = schema;
            let description = comment(&field);
            if !description.is_empty() && schema.get("$ref").is_none() {
                schema["description"] = Value::String(description);
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        schemas.insert(
            name.clone(),
            json!({"type": "object", "properties": properties, "additionalProperties": false}),
        );
    }
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    match field.kind() {
        Kind::Message(message) => reference(&message, schemas),
        _ => scalar(field),
    }
}

/// The JSON mapping of well-known types.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"})
        }
        _ => return None,
    })
}

/// A scalar or enum field in the protobuf JSON mapping (64-bit integers
/// as strings, enums by name).
fn scalar(field: &FieldDescriptor) -> Value {
    match field.kind() {
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int32", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": ["string", "integer"], "format": "int64"})
        }
        Kind::Uint64 | Kind::Fixed64 => json!({"type": ["string", "integer"], "format": "uint64"}),
        Kind::Float | Kind::Double => json!({"type": "number"}),
        Kind::Enum(kind) => {
            let names: Vec<String> = kind.values().map(|value| value.name().to_owned()).collect();
            json!({"type": "string", "enum": names})
        }
        Kind::Message(_) => json!({"type": "object"}),
    }
}

/// The leading comment of a method.
fn method_comment(method: &MethodDescriptor) -> String {
    leading_comment(&method.parent_file(), method.path())
}

/// The leading comment of a field.
fn comment(field: &FieldDescriptor) -> String {
    leading_comment(&field.parent_file(), field.path())
}

/// The comment before the element at `path` of `file`, on one line.
fn leading_comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|location| location.path == path))
        .map(|location| location.leading_comments().trim().replace('\n', " "))
        .unwrap_or_default()
}
