//! The OpenAPI document as a contract for generated clients: its links
//! lead from each answer to operations and parameters that exist, every
//! operation that needs an identifier is reached by one, and the request
//! rules it declares are the ones the server enforces.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::Backend;
use crate::http::{Reply, app, curl, release_over_http_in};

fn document() -> Value {
    serde_json::from_str(policyhub::http::OPENAPI).unwrap()
}

/// Every operation by its id: its path, its parameters as `(in, name)`,
/// and the operation itself.
type Operations = BTreeMap<String, (String, Vec<(String, String)>, Value)>;

fn operations(document: &Value) -> Operations {
    let mut found = BTreeMap::new();
    for (path, verbs) in document["paths"].as_object().unwrap() {
        for operation in verbs.as_object().unwrap().values() {
            let parameters = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|parameter| {
                    (
                        parameter["in"].as_str().unwrap().to_owned(),
                        parameter["name"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            found.insert(
                operation["operationId"].as_str().unwrap().to_owned(),
                (path.clone(), parameters, operation.clone()),
            );
        }
    }
    found
}

/// A version read leads on to its policy, the policy's status and schema,
/// the diff from it and its namespace's policies, each with the values of
/// the version answered: the chain from a draft reaches GetVersion far more
/// often than Publish, whose links lead there too.
#[test]
fn a_read_version_links_to_its_policy_status_schema_diff_and_listing() {
    let document = document();
    let operations = operations(&document);
    let links = &operations["PolicyService_GetVersion"].2["responses"]["200"]["links"];
    let policy = json!({
        "namespace": "$response.body#/namespace",
        "name": "$response.body#/name",
    });
    for (name, target, parameters) in [
        ("policy", "PolicyService_GetPolicy", policy.clone()),
        ("status", "PolicyService_GetPolicyStatus", policy.clone()),
        ("schema", "PolicyService_SetSchema", policy),
        (
            "diff",
            "PolicyService_DiffVersions",
            json!({
                "namespace": "$response.body#/namespace",
                "name": "$response.body#/name",
                "fromVersion": "$response.body#/version",
                "toVersion": "$response.body#/version",
            }),
        ),
        (
            "policies",
            "PolicyService_ListPolicies_2",
            json!({"namespace": "$response.body#/namespace"}),
        ),
    ] {
        assert_eq!(links[name]["operationId"], target, "GetVersion -> {name}");
        assert_eq!(
            links[name]["parameters"], parameters,
            "GetVersion -> {name}"
        );
    }
}

/// The schema `pointer` names inside `schema`, following `$ref`s and
/// arrays' items (a numeric step).
fn schema_at<'a>(document: &'a Value, schema: &'a Value, pointer: &str) -> Option<&'a Value> {
    let resolve = |mut schema: &'a Value| {
        while let Some(reference) = schema["$ref"].as_str() {
            schema = document.pointer(reference.trim_start_matches('#'))?;
        }
        Some(schema)
    };
    let mut current = resolve(schema)?;
    for step in pointer.split('/').filter(|step| !step.is_empty()) {
        current = if step.parse::<usize>().is_ok() {
            resolve(current.get("items")?)?
        } else {
            // A member of a map is any name its values' schema takes.
            let member = current["properties"].get(step).or_else(|| {
                current
                    .get("additionalProperties")
                    .filter(|values| values.is_object())
            });
            resolve(member?)?
        };
    }
    Some(current)
}

/// Each link names an existing operation; each of its parameters is one
/// the target takes, and each expression reads a parameter the source
/// takes or a member its answer has; each body member is one the target's
/// body has. And every operation whose path names something beneath a
/// namespace is the target of a link, so a client that follows links
/// reaches all of them.
#[test]
fn every_link_leads_to_an_operation_and_parameters_on_both_ends() {
    let document = document();
    let operations = operations(&document);
    let mut linked = std::collections::BTreeSet::new();
    let mut checked = 0;
    for (source_id, (_, source_parameters, source)) in &operations {
        for (status, response) in source["responses"].as_object().unwrap() {
            let Some(links) = response.get("links") else {
                continue;
            };
            for (name, link) in links.as_object().unwrap() {
                let what = format!("{source_id} {status} -> {name}");
                let target_id = link["operationId"].as_str().unwrap();
                let (_, target_parameters, target) = operations
                    .get(target_id)
                    .unwrap_or_else(|| panic!("{what}: no operation {target_id}"));
                linked.insert(target_id.to_owned());
                let parameters = link
                    .get("parameters")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                for (parameter, expression) in &parameters {
                    // A name may lead with its place: `header.If-Match`
                    // (`runtime.id` is a query parameter's whole name).
                    let (place, name) = match parameter.split_once('.') {
                        Some((place, name))
                            if ["path", "query", "header", "cookie"].contains(&place) =>
                        {
                            (Some(place), name)
                        }
                        _ => (None, parameter.as_str()),
                    };
                    assert!(
                        target_parameters.iter().any(|(at, named)| {
                            named == name && place.is_none_or(|place| place == at)
                        }),
                        "{what}: {target_id} takes no parameter {parameter}"
                    );
                    match expression.as_str() {
                        // A constant: one the parameter's schema takes.
                        Some(constant) if !constant.starts_with('$') => {
                            let schema = target["parameters"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .find(|declared| declared["name"] == name)
                                .map(|declared| &declared["schema"])
                                .unwrap();
                            assert!(
                                jsonschema::validator_for(schema)
                                    .unwrap()
                                    .is_valid(expression),
                                "{what}: {parameter} refuses the constant {constant}"
                            );
                        }
                        _ => check_expression(
                            &document,
                            &what,
                            expression,
                            source_parameters,
                            response,
                        ),
                    }
                }
                if let Some(body) = link.get("requestBody") {
                    let schema = &target["requestBody"]["content"]["application/json"]["schema"];
                    assert!(!schema.is_null(), "{what}: {target_id} takes no body");
                    check_body(&document, &what, body, schema, source_parameters, response);
                    // A generated body merged under it would bring the
                    // members the server refuses beside the ones given.
                    assert_eq!(
                        link["x-schemathesis"],
                        json!({"merge_body": false}),
                        "{what}: the body is the whole request"
                    );
                    for required in required_members(&document, schema) {
                        assert!(
                            body.get(&required).is_some(),
                            "{what}: the body leaves out {required}, which {target_id} requires"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "the document declares links");
    // A namespace is any valid one; a name, id, version or label beneath
    // it is one an earlier answer gave. But an OPA's status report and
    // decision log upload: the runtime they name is the one its bundle
    // request named in a query parameter, which no link expression reads
    // (the fuzzing's hooks give them all the same runtime instead).
    for (id, (path, parameters, _)) in &operations {
        if !matches!(
            id.as_str(),
            "BundleService_ReportOpaStatus" | "BundleService_UploadOpaDecisions"
        ) && parameters
            .iter()
            .any(|(place, name)| place == "path" && name != "namespace")
        {
            assert!(linked.contains(id), "no link leads to {id} ({path})");
        }
    }
}

fn check_expression(
    document: &Value,
    what: &str,
    expression: &Value,
    source_parameters: &[(String, String)],
    response: &Value,
) {
    let answer = &response["content"]["application/json"]["schema"];
    let expression = expression.as_str().unwrap();
    if let Some(header) = expression.strip_prefix("$response.header.") {
        assert!(
            response["headers"].get(header).is_some(),
            "{what}: the answer declares no header {header}"
        );
    } else if let Some(pointer) = expression.strip_prefix("$response.body#")
        && response["content"].get("text/event-stream").is_some()
    {
        // An event stream reads as its events in order, each with the
        // fields of Server-Sent Events.
        let mut steps = pointer.split('/').skip(1);
        let (index, field) = (steps.next(), steps.next());
        assert!(
            index.is_some_and(|index| index.parse::<usize>().is_ok())
                && matches!(field, Some("id" | "event" | "data"))
                && steps.next().is_none(),
            "{what}: {pointer} is no event's field"
        );
    } else if let Some(pointer) = expression.strip_prefix("$response.body#") {
        assert!(
            schema_at(document, answer, pointer).is_some(),
            "{what}: the answer has no {pointer}"
        );
    } else if let Some(parameter) = expression.strip_prefix("$request.path.") {
        assert!(
            source_parameters
                .iter()
                .any(|(place, name)| place == "path" && name == parameter),
            "{what}: the source has no path parameter {parameter}"
        );
    } else {
        panic!("{what}: an expression this test does not read: {expression}");
    }
}

fn check_body(
    document: &Value,
    what: &str,
    body: &Value,
    schema: &Value,
    source_parameters: &[(String, String)],
    response: &Value,
) {
    match body {
        Value::Object(members) => {
            for (member, value) in members {
                let inner = schema_at(document, schema, member)
                    .unwrap_or_else(|| panic!("{what}: the body has no member {member}"));
                check_body(document, what, value, inner, source_parameters, response);
            }
        }
        Value::Array(items) => {
            for item in items {
                let inner = schema_at(document, schema, "0").unwrap();
                check_body(document, what, item, inner, source_parameters, response);
            }
        }
        Value::String(text) if text.starts_with('$') => {
            check_expression(document, what, body, source_parameters, response)
        }
        // A template: each expression in braces names what the answer has,
        // and the text with a number in their place is one the schema takes.
        Value::String(text) if text.contains("{$") => {
            for expression in embedded(text) {
                check_expression(
                    document,
                    what,
                    &json!(expression),
                    source_parameters,
                    response,
                );
            }
            let sample = fill(text, |_| "1".to_owned());
            let validator = jsonschema::validator_for(schema).unwrap();
            assert!(
                validator.is_valid(&json!(sample)),
                "{what}: the document refuses {text} as {sample}"
            );
        }
        // A constant: one the document's own schema takes.
        constant => {
            let validator = jsonschema::validator_for(schema).unwrap();
            assert!(
                validator.is_valid(constant),
                "{what}: the document refuses the constant {constant}"
            );
        }
    }
}

/// The runtime expressions a template embeds in braces, as in
/// `1.0.{$response.body#/version/version}`.
fn embedded(text: &str) -> impl Iterator<Item = &str> {
    text.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
        .map(|(expression, _)| expression)
        .filter(|expression| expression.starts_with('$'))
}

/// `text` with each expression it embeds in braces replaced by `value` of it.
fn fill(text: &str, value: impl Fn(&str) -> String) -> String {
    embedded(text).fold(text.to_owned(), |filled, expression| {
        filled.replace(&format!("{{{expression}}}"), &value(expression))
    })
}

/// The members `schema` (a `$ref`) requires.
fn required_members(document: &Value, schema: &Value) -> Vec<String> {
    schema_at(document, schema, "")
        .and_then(|schema| schema["required"].as_array())
        .map(|required| {
            required
                .iter()
                .map(|member| member.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One declared rule, tried against the server: a request that follows
/// it, one that breaks it only there, and the field the refusal names.
struct Rule {
    /// `METHOD path`, the path with the parameter filled in as `{}`.
    operation: &'static str,
    /// Where the document declares it: a parameter's name, or a JSON
    /// pointer into the body's schema.
    declared: &'static str,
    /// The field the server's refusal names.
    field: &'static str,
    good: Value,
    bad: Value,
    /// The request's body around the value (`{}` marks it) or, for a
    /// parameter, nothing.
    body: Option<Value>,
}

fn rules() -> Vec<Rule> {
    let publish = || json!({"label": "2.0.0"});
    vec![
        Rule {
            operation: "POST /v1/namespaces/{}/policies/limits/drafts",
            declared: "namespace",
            field: "namespace",
            good: json!("shop-2"),
            bad: json!("-shop"),
            body: None,
        },
        Rule {
            operation: "POST /v1/namespaces/shop/policies/{}/drafts",
            declared: "name",
            field: "name",
            good: json!("limits_v2.a"),
            bad: json!("Limits"),
            body: None,
        },
        Rule {
            operation: "GET /v1/namespaces/shop/policies/limits/labels/{}",
            declared: "label",
            // The version selector, by number or by label, is one field.
            field: "version",
            good: json!("1.0.0"),
            bad: json!("1.0"),
            body: None,
        },
        Rule {
            operation: "GET /v1/namespaces/shop/policies/limits/labels/{}",
            declared: "label",
            field: "version",
            good: json!(format!("1.0.0-{}", "a".repeat(122))),
            bad: json!(format!("1.0.0-{}", "a".repeat(123))),
            body: None,
        },
        Rule {
            operation: "GET /v1/namespaces/shop/policies/limits/labels/{}",
            declared: "label",
            field: "version",
            good: json!("1.9999999999999999999.0"),
            bad: json!("1.99999999999999999999999.0"),
            body: None,
        },
        Rule {
            operation: "GET /v1/namespaces/shop/policies/limits/versions/{}",
            declared: "version",
            field: "version",
            good: json!(1),
            bad: json!(0),
            body: None,
        },
        Rule {
            operation: "GET /v1/namespaces/shop/policies/limits/active?asOfRevision={}",
            declared: "asOfRevision",
            field: "as_of_revision",
            good: json!("1"),
            bad: json!("1e3"),
            body: None,
        },
        Rule {
            operation: "GET /v1/namespaces/shop/events?kinds={}",
            declared: "kinds",
            field: "kinds",
            good: json!("EVENT_KIND_PUBLISHED"),
            bad: json!("EVENT_KIND_UNSPECIFIED"),
            body: None,
        },
        Rule {
            operation: "GET /v1/access?method={}&namespace=shop",
            declared: "method",
            field: "method",
            good: json!("Publish"),
            bad: json!("Publish2"),
            body: None,
        },
        Rule {
            operation: "POST /v1/namespaces/shop/policies/limits:publish",
            declared: "If-Match",
            field: "If-Match",
            good: json!("\"1-1-ab\""),
            bad: json!("\"1-ab\""),
            body: Some(publish()),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/policies/limits:rollback",
            declared: "/reason",
            field: "reason",
            good: json!("bad limits"),
            bad: json!("  "),
            body: Some(json!({"reason": "{}"})),
        },
        Rule {
            operation: "POST /v1/policies:activate",
            declared: "/targets/0/version",
            field: "targets[0].version",
            good: json!(1),
            bad: json!(0),
            body: Some(
                json!({"targets": [{"namespace": "shop", "name": "limits", "version": "{}"}]}),
            ),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/runtimes/pod-1:reportStatus",
            declared: "/revision",
            field: "revision",
            good: json!("1"),
            bad: json!("0"),
            body: Some(json!({"revision": "{}"})),
        },
        Rule {
            operation: "PUT /v1/namespaces/shop/schedules/nightly",
            declared: "/entries/0/timeZone",
            field: "entries[0].time_zone",
            good: json!("Europe/Berlin"),
            bad: json!("Mars/Olympus"),
            body: Some(json!({"entries": [{
                "name": "nightly",
                "cron": "0 3 * * *",
                "timeZone": "{}",
                "targets": [{"name": "limits", "version": 1}],
            }]})),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/rollouts",
            declared: "/failureRule/maxRejectedFraction",
            field: "failure_rule.max_rejected_fraction",
            good: json!(0.5),
            bad: json!(1.5),
            body: Some(json!({
                "targets": [{"name": "limits", "version": 1}],
                "steps": [{"percentage": 100}],
                "failureRule": {"maxRejectedFraction": "{}"},
            })),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/rollouts",
            declared: "/steps/0/bake",
            field: "steps[0].bake",
            good: json!("3600s"),
            bad: json!("-1s"),
            body: Some(json!({
                "targets": [{"name": "limits", "version": 1}],
                "steps": [{"percentage": 100, "bake": "{}"}],
            })),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/rollouts",
            declared: "/steps/0/bake",
            field: "steps[0].bake",
            good: json!("604800s"),
            bad: json!("604801s"),
            body: Some(json!({
                "targets": [{"name": "limits", "version": 1}],
                "steps": [{"percentage": 100, "bake": "{}"}],
            })),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/policies/limits:publish",
            declared: "/label",
            field: "label",
            good: json!("2.0.0"),
            bad: json!("v2.0.0"),
            body: Some(json!({"label": "{}"})),
        },
        // The expected active version and revision are the compare-and-swap
        // of the activation a publication may do, and nothing without it.
        Rule {
            operation: "POST /v1/namespaces/shop/policies/limits:publish",
            declared: "/",
            field: "expected_active_version",
            good: json!({"activate": true, "expectedActiveVersion": 1}),
            bad: json!({"expectedActiveVersion": 1}),
            body: Some(json!("{}")),
        },
        Rule {
            operation: "GET /v1/access?method=Publish&namespace={}",
            declared: "namespace",
            field: "namespace",
            good: json!("shop"),
            bad: json!("-shop"),
            body: None,
        },
        Rule {
            operation: "POST /v1/namespaces/shop/rollouts",
            declared: "/failureRule/applyDeadline",
            field: "failure_rule.apply_deadline",
            good: json!("60s"),
            bad: json!("-1s"),
            body: Some(json!({
                "targets": [{"name": "limits", "version": 1}],
                "steps": [{"percentage": 100}],
                "failureRule": {"applyDeadline": "{}"},
            })),
        },
        // A step without a percentage is one of 0.
        Rule {
            operation: "POST /v1/namespaces/shop/rollouts",
            declared: "/steps/0",
            field: "steps[0].percentage",
            good: json!({"percentage": 100, "bake": "60s"}),
            bad: json!({"bake": "60s"}),
            body: Some(json!({
                "targets": [{"name": "limits", "version": 1}],
                "steps": ["{}"],
            })),
        },
        Rule {
            operation: "PATCH /v1/namespaces/shop/subscriptions/audit",
            declared: "/url",
            field: "url",
            good: json!("https://hooks.example.com/a"),
            bad: json!("xhttps://hooks.example.com/a"),
            body: Some(json!({"url": "{}"})),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/subscriptions",
            declared: "/url",
            field: "url",
            good: json!("https://hooks.example.com/policyhub"),
            bad: json!("ftp://hooks.example.com/policyhub"),
            body: Some(
                json!({"name": "audit", "url": "{}", "eventKinds": ["EVENT_KIND_PUBLISHED"]}),
            ),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/subscriptions",
            declared: "/secret",
            field: "secret",
            good: json!(format!("whsec_{}", "A".repeat(32))),
            bad: json!(format!("whsec_{}", "A".repeat(28))),
            body: Some(
                json!({"name": "audit-2", "url": "https://hooks.example.com/a",
                              "eventKinds": ["EVENT_KIND_PUBLISHED"], "secret": "{}"}),
            ),
        },
        Rule {
            operation: "POST /v1/namespaces/shop/subscriptions",
            declared: "/eventKinds",
            field: "event_kinds",
            good: json!(["EVENT_KIND_PUBLISHED", "EVENT_KIND_ACTIVATED"]),
            bad: json!(["EVENT_KIND_PUBLISHED", "EVENT_KIND_PUBLISHED"]),
            body: Some(
                json!({"name": "audit-3", "url": "https://hooks.example.com/b",
                              "eventKinds": "{}"}),
            ),
        },
    ]
}

/// The schema the document declares for `declared` of the operation at
/// `verb path`: a parameter's, or the member of its body's schema.
fn declared_schema(document: &Value, verb: &str, path: &str, declared: &str) -> Value {
    let template = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(template, verbs)| {
            verbs.get(verb).is_some() && matches_template(template, path.split('?').next().unwrap())
        })
        .unwrap_or_else(|| panic!("no operation for {verb} {path}"))
        .1[verb]
        .clone();
    let mut schema = if declared.starts_with('/') {
        let body = &template["requestBody"]["content"]["application/json"]["schema"];
        schema_at(document, body, declared).unwrap().clone()
    } else {
        template["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == declared)
            .unwrap_or_else(|| panic!("{verb} {path} declares no {declared}"))["schema"]
            .clone()
    };
    if let Some(items) = schema.get("items").filter(|_| !declared.starts_with('/')) {
        // A repeated query parameter: one value of it.
        schema = items.clone();
    }
    schema
}

fn matches_template(template: &str, path: &str) -> bool {
    let (template, path): (Vec<&str>, Vec<&str>) =
        (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template.iter().zip(&path).all(|(template, path)| {
            match template.split_once('{').zip(template.split_once('}')) {
                Some(((prefix, _), (_, suffix))) => {
                    path.len() > prefix.len() + suffix.len()
                        && path.starts_with(prefix)
                        && path.ends_with(suffix)
                        && !path[prefix.len()..path.len() - suffix.len()].contains(':')
                }
                None => template == path,
            }
        })
}

/// Each rule the document declares is the server's: a value the declared
/// schema takes is not refused for that field, and one it does not take
/// is refused with 400 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_declared_request_rules_are_the_servers() {
    let app = app(Backend::Sqlite, true).await;
    release_over_http_in(app.http_address.unwrap(), "shop", "limits", 1);
    let document = document();
    for rule in rules() {
        let (verb, path) = rule.operation.split_once(' ').unwrap();
        let mut schema = declared_schema(&document, &verb.to_lowercase(), path, rule.declared);
        // What a message's schema refers to, at the pointer it names.
        schema["components"] = document["components"].clone();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let what = format!("{} ({})", rule.operation, rule.declared);
        assert!(
            validator.is_valid(&rule.good),
            "{what}: the document refuses {}",
            rule.good
        );
        assert!(
            !validator.is_valid(&rule.bad),
            "{what}: the document takes {}",
            rule.bad
        );
        for (value, follows) in [(&rule.good, true), (&rule.bad, false)] {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let mut headers = vec!["Content-Type: application/json"];
            let header;
            let (target, body) = if rule.declared == "If-Match" {
                header = format!("If-Match: {text}");
                headers.push(header.as_str());
                (path.to_owned(), rule.body.as_ref().map(Value::to_string))
            } else if let Some(around) = &rule.body {
                let body = around.to_string().replace("\"{}\"", &value.to_string());
                (path.to_owned(), Some(body))
            } else {
                (path.replace("{}", &text), None)
            };
            let reply = curl(&app, verb, &target, body.as_deref(), &headers);
            let message = reply.json["message"].as_str().unwrap_or_default();
            let names_field = reply.status == 400
                && (message.contains(&format!("{}:", rule.field))
                    || message.contains(&format!("{}[", rule.field)));
            if follows {
                assert!(!names_field, "{what}: {value} refused: {reply:?}");
            } else {
                assert!(
                    names_field,
                    "{what}: {value} not refused by its field: {reply:?}"
                );
            }
        }
    }
}

/// Every member a schema requires is one of its properties, by its JSON
/// name: a schema that closes its properties and requires a member by
/// another name (`event_kinds` beside `eventKinds`) takes no body at all.
#[test]
fn every_required_member_is_a_property() {
    let document = document();
    for (name, schema) in document["components"]["schemas"].as_object().unwrap() {
        for required in schema["required"].as_array().into_iter().flatten() {
            assert!(
                schema["properties"]
                    .get(required.as_str().unwrap())
                    .is_some(),
                "{name} requires {required}, which is none of its properties"
            );
        }
    }
}

/// The operation `id`: its verb, path template and definition.
fn operation_by_id(document: &Value, id: &str) -> (String, String, Value) {
    document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, verbs)| {
            verbs
                .as_object()
                .unwrap()
                .iter()
                .map(move |(verb, operation)| (verb, path, operation))
        })
        .find(|(_, _, operation)| operation["operationId"] == id)
        .map(|(verb, path, operation)| (verb.to_uppercase(), path.clone(), operation.clone()))
        .unwrap_or_else(|| panic!("no operation {id}"))
}

/// `value` with each `$response.body#` and `$response.header.` expression
/// in it, whole or embedded in braces, replaced by what it names in
/// `answer`.
fn evaluate(value: &Value, answer: &Reply) -> Value {
    match value {
        Value::String(text) if text.contains("{$") => Value::String(fill(text, |expression| {
            match evaluate(&json!(expression), answer) {
                Value::String(text) => text,
                other => other.to_string(),
            }
        })),
        Value::String(text) if text.starts_with('$') => {
            if let Some(header) = text.strip_prefix("$response.header.") {
                let value = answer
                    .header(header)
                    .unwrap_or_else(|| panic!("the answer has no header {header}: {answer:?}"));
                return Value::String(value.to_owned());
            }
            let pointer = text
                .strip_prefix("$response.body#")
                .unwrap_or_else(|| panic!("an expression this test does not follow: {text}"));
            answer
                .json
                .pointer(pointer)
                .unwrap_or_else(|| panic!("the answer has no {pointer}: {answer:?}"))
                .clone()
        }
        Value::Object(members) => members
            .iter()
            .map(|(name, value)| (name.clone(), evaluate(value, answer)))
            .collect(),
        Value::Array(items) => items.iter().map(|item| evaluate(item, answer)).collect(),
        constant => constant.clone(),
    }
}

/// Follows the link `name` of `source`'s answer `answer` as a client of the
/// document does, and expects a success (see [`request_by_link`]).
fn follow(
    app: &crate::helpers::TestApp,
    document: &Value,
    source: &str,
    name: &str,
    answer: &Reply,
    others: &[(&str, &str)],
) -> Reply {
    let reply = request_by_link(app, document, source, name, answer, others);
    assert!(
        (200..300).contains(&reply.status),
        "{source} -> {name}: {reply:?}"
    );
    reply
}

/// The request the link `name` of `source`'s answer `answer` makes, as a
/// client of the document makes it: the target's path, query and headers
/// from the link's parameters (a path parameter the link leaves out from
/// `others`), and the link's body, or `{}` where the target takes one and
/// the link gives none.
fn request_by_link(
    app: &crate::helpers::TestApp,
    document: &Value,
    source: &str,
    name: &str,
    answer: &Reply,
    others: &[(&str, &str)],
) -> Reply {
    let (_, _, operation) = operation_by_id(document, source);
    let link = operation["responses"]
        .as_object()
        .unwrap()
        .values()
        .find_map(|response| response["links"].get(name))
        .unwrap_or_else(|| panic!("{source} has no link {name}"));
    let target = link["operationId"].as_str().unwrap();
    let (verb, mut path, definition) = operation_by_id(document, target);
    let (mut query, mut headers) = (
        Vec::new(),
        vec!["Content-Type: application/json".to_owned()],
    );
    for parameter in definition["parameters"].as_array().unwrap() {
        let parameter_name = parameter["name"].as_str().unwrap();
        let place = parameter["in"].as_str().unwrap();
        let expression = link["parameters"]
            .get(parameter_name)
            .or_else(|| link["parameters"].get(format!("{place}.{parameter_name}")));
        let value = match expression {
            Some(expression) => match evaluate(expression, answer) {
                Value::String(text) => text,
                other => other.to_string(),
            },
            None => match others.iter().find(|(other, _)| *other == parameter_name) {
                Some((_, value)) => (*value).to_owned(),
                None => continue,
            },
        };
        match place {
            "path" => path = path.replace(&format!("{{{parameter_name}}}"), &value),
            "query" => query.push(format!("{parameter_name}={value}")),
            "header" => headers.push(format!("{parameter_name}: {value}")),
            _ => {}
        }
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let body = match link.get("requestBody") {
        Some(body) => Some(evaluate(body, answer).to_string()),
        None => definition.get("requestBody").map(|_| "{}".to_owned()),
    };
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    curl(app, &verb, &path, body.as_deref(), &headers)
}

/// A client that follows the document's links, making up nothing but a
/// policy's body and the names a link leaves to it, gets a success at
/// each step from a draft to a rollout and its controls, a schedule and
/// its controls, and from the listings of policies and checkpoints: the
/// bodies the links give are whole requests the server takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_the_links_from_a_draft_reaches_a_rollout_and_a_schedule() {
    let app = app(Backend::Sqlite, true).await;
    let document = document();
    let draft = |name: &str, max: u64| {
        let reply = curl(
            &app,
            "POST",
            &format!("/v1/namespaces/shop/policies/{name}/drafts"),
            Some(&json!({"body": {"max": max}}).to_string()),
            &["Content-Type: application/json"],
        );
        assert_eq!(reply.status, 201, "{reply:?}");
        reply
    };
    // The stable version: published and active at once.
    let stable = draft("limits", 1);
    follow(
        &app,
        &document,
        "PolicyService_Draft",
        "release",
        &stable,
        &[],
    );
    // The next one, published beside it; a rollout replaces the stable one.
    let next = draft("limits", 2);
    let published = follow(
        &app,
        &document,
        "PolicyService_Draft",
        "publish",
        &next,
        &[],
    );
    follow(
        &app,
        &document,
        "PolicyService_Publish",
        "label",
        &published,
        &[],
    );
    let roll_out = |published: &Reply| {
        follow(
            &app,
            &document,
            "PolicyService_Publish",
            "rollout",
            published,
            &[],
        )
    };
    let rollout = roll_out(&published);
    for control in ["rollout", "rollouts"] {
        follow(
            &app,
            &document,
            "PolicyService_StartRollout",
            control,
            &rollout,
            &[],
        );
    }
    // Each control from the answer of the one before: paused, resumed,
    // paused by an alert, resumed, promoted (which completes it).
    let paused = follow(
        &app,
        &document,
        "PolicyService_StartRollout",
        "pause",
        &rollout,
        &[],
    );
    let running = follow(
        &app,
        &document,
        "PolicyService_PauseRollout",
        "resume",
        &paused,
        &[],
    );
    let alerted = follow(
        &app,
        &document,
        "PolicyService_StartRollout",
        "alert",
        &running,
        &[],
    );
    assert_eq!(
        alerted.json["alerts"][0]["rollouts"][0]["state"], "ROLLOUT_STATE_PAUSED",
        "{alerted:?}"
    );
    let mut answer = running;
    for (source, control) in [
        ("PolicyService_PauseRollout", "resume"),
        ("PolicyService_ResumeRollout", "promote"),
        ("PolicyService_PromoteRollout", "rollout"),
    ] {
        answer = follow(&app, &document, source, control, &answer, &[]);
    }
    assert_eq!(
        answer.json["state"], "ROLLOUT_STATE_COMPLETED",
        "{answer:?}"
    );
    // A rollout ends from each state a control leaves it in, each of the
    // next publications (labelled by its version) rolled out in turn.
    for (max, chain, ended) in [
        (3, &[("PolicyService_StartRollout", "abort")][..], "ABORTED"),
        (4, &[("PolicyService_StartRollout", "promote")], "COMPLETED"),
        (
            5,
            &[
                ("PolicyService_StartRollout", "pause"),
                ("PolicyService_PauseRollout", "abort"),
            ],
            "ABORTED",
        ),
        (
            6,
            &[
                ("PolicyService_StartRollout", "pause"),
                ("PolicyService_PauseRollout", "promote"),
            ],
            "COMPLETED",
        ),
        (
            7,
            &[
                ("PolicyService_StartRollout", "pause"),
                ("PolicyService_PauseRollout", "resume"),
                ("PolicyService_ResumeRollout", "abort"),
                ("PolicyService_AbortRollout", "rollout"),
            ],
            "ABORTED",
        ),
    ] {
        let drafted = draft("limits", max);
        let published = follow(
            &app,
            &document,
            "PolicyService_Draft",
            "publish",
            &drafted,
            &[],
        );
        assert_eq!(
            published.json["version"]["label"],
            format!("1.0.{}", published.json["version"]["version"]),
            "{published:?}"
        );
        let mut answer = roll_out(&published);
        for &(source, control) in chain {
            answer = follow(&app, &document, source, control, &answer, &[]);
        }
        assert_eq!(
            answer.json["state"],
            format!("ROLLOUT_STATE_{ended}"),
            "{chain:?}: {answer:?}"
        );
    }
    let schedule = follow(
        &app,
        &document,
        "PolicyService_Publish",
        "schedule",
        &published,
        &[("name", "nightly")],
    );
    for control in ["schedule", "schedules"] {
        follow(
            &app,
            &document,
            "PolicyService_SetSchedule",
            control,
            &schedule,
            &[],
        );
    }
    let paused = follow(
        &app,
        &document,
        "PolicyService_SetSchedule",
        "pause",
        &schedule,
        &[],
    );
    for control in ["resume", "delete"] {
        follow(
            &app,
            &document,
            "PolicyService_PauseSchedule",
            control,
            &paused,
            &[],
        );
    }
    let policies = curl(&app, "GET", "/v1/policies", None, &[]);
    follow(
        &app,
        &document,
        "PolicyService_ListPolicies",
        "policy",
        &policies,
        &[],
    );
    let checkpoints = curl(&app, "GET", "/v1/checkpoints", None, &[]);
    follow(
        &app,
        &document,
        "PolicyService_ListCheckpoints",
        "consistency",
        &checkpoints,
        &[],
    );
    // The version in force read, then activated again and rolled back
    // from, each under the If-Match its ETag gives.
    for max in [1, 2] {
        let drafted = draft("quota", max);
        follow(
            &app,
            &document,
            "PolicyService_Draft",
            "release",
            &drafted,
            &[],
        );
    }
    let read_active = || {
        curl(
            &app,
            "GET",
            "/v1/namespaces/shop/policies/quota/active",
            None,
            &[],
        )
    };
    // Activating the version in force again moves nothing, so the one
    // read still names the bundle in force when the rollback follows it.
    let read = read_active();
    assert_eq!(read.json["version"], 2, "{read:?}");
    for (control, version) in [("activate", 2), ("rollback", 1)] {
        follow(
            &app,
            &document,
            "BundleService_GetActive",
            control,
            &read,
            &[],
        );
        let now = read_active();
        assert_eq!(now.json["version"], version, "after {control}: {now:?}");
    }
    // The read the rollback followed is stale now: the If-Match its link
    // gives is refused, and nothing moves.
    let refused = request_by_link(
        &app,
        &document,
        "BundleService_GetActive",
        "activate",
        &read,
        &[],
    );
    assert_eq!(refused.status, 412, "{refused:?}");
    assert_eq!(read_active().json["version"], 1);
}

/// Each request body the document gives as an example is one its schema
/// takes and the server answers with a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_example_is_valid_and_the_server_takes_it() {
    let app = app(Backend::Sqlite, true).await;
    let document = document();
    let mut tried = 0;
    for (path, verbs) in document["paths"].as_object().unwrap() {
        for (verb, operation) in verbs.as_object().unwrap() {
            let content = &operation["requestBody"]["content"]["application/json"];
            let Some(example) = content.get("example") else {
                continue;
            };
            let id = operation["operationId"].as_str().unwrap();
            let schema = json!({
                "$ref": content["schema"]["$ref"],
                "components": document["components"],
            });
            assert!(
                jsonschema::validator_for(&schema)
                    .unwrap()
                    .is_valid(example),
                "{id}: the schema refuses its example {example}"
            );
            let path = path.replace("{namespace}", "shop");
            let reply = curl(
                &app,
                &verb.to_uppercase(),
                &path,
                Some(&example.to_string()),
                &["Content-Type: application/json"],
            );
            assert_eq!(reply.status, 200, "{id}: {reply:?}");
            tried += 1;
        }
    }
    assert!(tried > 0, "the document gives examples");
}
