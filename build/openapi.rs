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
                let operation = operation(&method, &id, &path, body.as_deref(), &mut schemas);
                paths
                    .entry(path)
                    .or_default()
                    .insert(verb.into(), operation);
            }
        }
    }
    add_links(&mut paths);
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

/// One link: from a success of `from`, named `name`, to the operation
/// `to`, with its parameters (each the target's parameter name and a
/// runtime expression over the source's request or response) and, for a
/// target that takes a body, the whole body the link sends: runtime
/// expressions where the answer gives a value, constants the server takes
/// where it gives none (a rollout's steps, a schedule's entry).
struct Link {
    from: &'static str,
    name: &'static str,
    to: &'static str,
    parameters: &'static [(&'static str, &'static str)],
    body: Option<fn() -> Value>,
}

/// Where a link's source keeps the policy it answered about.
const DRAFTED: &[(&str, &str)] = &[
    ("namespace", "$response.body#/version/namespace"),
    ("name", "$response.body#/version/name"),
];
const DRAFTED_VERSION: &[(&str, &str)] = &[
    ("namespace", "$response.body#/version/namespace"),
    ("name", "$response.body#/version/name"),
    ("version", "$response.body#/version/version"),
];
const DRAFTED_NAMESPACE: &[(&str, &str)] = &[("namespace", "$response.body#/version/namespace")];
const VERSION: &[(&str, &str)] = &[
    ("namespace", "$response.body#/namespace"),
    ("name", "$response.body#/name"),
];
const REQUESTED: &[(&str, &str)] = &[
    ("namespace", "$request.path.namespace"),
    ("name", "$request.path.name"),
];
const ROLLOUT: &[(&str, &str)] = &[
    ("namespace", "$response.body#/namespace"),
    ("id", "$response.body#/id"),
];
const SCHEDULE: &[(&str, &str)] = &[
    ("namespace", "$response.body#/namespace"),
    ("name", "$response.body#/name"),
];
const SUBSCRIPTION: &[(&str, &str)] = &[
    ("namespace", "$response.body#/subscription/namespace"),
    ("name", "$response.body#/subscription/name"),
];
const LISTED_POLICY: &[(&str, &str)] = &[
    ("namespace", "$response.body#/policies/0/namespace"),
    ("name", "$response.body#/policies/0/name"),
];
const SUBSCRIPTION_NAME: &[(&str, &str)] = &[("name", "$response.body#/subscription/name")];

/// The Alertmanager notification (version 4) of a firing alert that pauses
/// the rollout of the answer.
fn alert() -> Value {
    json!({
        "version": "4",
        "status": "firing",
        "receiver": "policyhub",
        "alerts": [{
            "status": "firing",
            "labels": {
                "alertname": "PolicyErrors",
                "namespace": "$response.body#/namespace",
                "rollout": "$response.body#/id",
                "policyhub_action": "pause",
            },
        }],
    })
}

/// The runtime the links watch and report as: a runtime names itself (its
/// pod or host name), so no answer gives one.
const RUNTIME: &str = "runtime-1";

macro_rules! links {
    ($($from:literal -> $name:literal: $to:literal $parameters:expr $(, body $body:expr)?;)*) => {
        &[$(Link {
            from: $from,
            name: $name,
            to: $to,
            parameters: $parameters,
            body: links!(@body $($body)?),
        }),*]
    };
    (@body) => { None };
    (@body $body:expr) => { Some($body) };
}

/// How an operation's answer leads to the next: a draft to its version,
/// publication and policy; a release to its activation, rollout and
/// rollback; a rollout, a schedule and a subscription to their reads and
/// controls; the log's records to their proofs. The one table of the
/// document's links; a test checks that each names operations and
/// parameters that exist.
const LINKS: &[Link] = links![
    "PolicyService_Draft" -> "version": "PolicyService_GetVersion" DRAFTED_VERSION;
    "PolicyService_Draft" -> "impact": "PolicyService_AnalyzeImpact" DRAFTED_VERSION;
    // Labelled by the draft's version number, so that each publication of
    // the policy takes a label none before it took.
    "PolicyService_Draft" -> "publish": "PolicyService_Publish" DRAFTED, body || json!({
        "label": "1.0.{$response.body#/version/version}",
    });
    // Published and made active at once: the stable version a later
    // publication's rollout replaces.
    "PolicyService_Draft" -> "release": "PolicyService_Publish" DRAFTED, body || json!({"activate": true});
    "PolicyService_Draft" -> "discard": "PolicyService_DiscardDraft" DRAFTED;
    "PolicyService_Draft" -> "policy": "PolicyService_GetPolicy" DRAFTED;
    "PolicyService_Draft" -> "versions": "PolicyService_ListVersions" DRAFTED;
    "PolicyService_Draft" -> "status": "PolicyService_GetPolicyStatus" DRAFTED;
    "PolicyService_Draft" -> "schema": "PolicyService_SetSchema" DRAFTED;
    "PolicyService_Draft" -> "nextDraft": "PolicyService_Draft" DRAFTED;
    "PolicyService_Draft" -> "policies": "PolicyService_ListPolicies_2" DRAFTED_NAMESPACE;
    "PolicyService_Draft" -> "events": "PolicyService_ListEvents_2" DRAFTED_NAMESPACE;
    "PolicyService_Draft" -> "runtimes": "PolicyService_ListRuntimes" DRAFTED_NAMESPACE;
    "PolicyService_Draft" -> "watch": "BundleService_WatchActive" &[
        ("namespace", "$response.body#/version/namespace"),
        ("runtime.id", RUNTIME),
    ];
    "PolicyService_Draft" -> "rollouts": "PolicyService_ListRollouts" DRAFTED_NAMESPACE;
    "PolicyService_Publish" -> "version": "PolicyService_GetVersion" DRAFTED_VERSION;
    "PolicyService_Publish" -> "label": "PolicyService_GetVersion_2" &[
        ("namespace", "$response.body#/version/namespace"),
        ("name", "$response.body#/version/name"),
        ("label", "$response.body#/version/label"),
    ];
    "PolicyService_Publish" -> "activate": "PolicyService_Activate" &[], body || json!({
        "targets": [{
            "namespace": "$response.body#/version/namespace",
            "name": "$response.body#/version/name",
            "version": "$response.body#/version/version",
        }],
    });
    "PolicyService_Publish" -> "rollout": "PolicyService_StartRollout" DRAFTED_NAMESPACE, body || json!({
        "targets": [{
            "name": "$response.body#/version/name",
            "version": "$response.body#/version/version",
        }],
        // Two steps, the first baked for an hour, so that the rollout
        // is still running when its controls follow.
        "steps": [{"percentage": 50, "bake": "3600s"}, {"percentage": 100}],
    });
    "PolicyService_Publish" -> "rollouts": "PolicyService_ListRollouts" DRAFTED_NAMESPACE;
    "PolicyService_Publish" -> "report": "BundleService_ReportStatus" &[
        ("namespace", "$response.body#/version/namespace"),
        ("runtime_id", RUNTIME),
    ], body || json!({
        "revision": "$response.body#/revision",
    });
    "PolicyService_Publish" -> "active": "BundleService_GetActive" DRAFTED;
    "PolicyService_Publish" -> "rollback": "PolicyService_Rollback" DRAFTED;
    "PolicyService_Publish" -> "diff": "PolicyService_DiffVersions" &[
        ("namespace", "$response.body#/version/namespace"),
        ("name", "$response.body#/version/name"),
        ("fromVersion", "$response.body#/version/version"),
        ("toVersion", "$response.body#/version/version"),
    ];
    "PolicyService_Publish" -> "proof": "BundleService_GetBundleProof" &[
        ("namespace", "$response.body#/version/namespace"),
        ("name", "$response.body#/version/name"),
        ("version", "$response.body#/version/version"),
        ("revision", "$response.body#/revision"),
    ];
    "PolicyService_Publish" -> "nextDraft": "PolicyService_Draft" DRAFTED;
    "PolicyService_Publish" -> "schedule": "PolicyService_SetSchedule" DRAFTED_NAMESPACE, body || json!({
        "entries": [{
            "name": "nightly",
            "cron": "0 3 * * *",
            "timeZone": "UTC",
            "targets": [{
                "name": "$response.body#/version/name",
                "version": "$response.body#/version/version",
            }],
        }],
    });
    "PolicyService_Activate" -> "active": "BundleService_GetActive" &[
        ("namespace", "$response.body#/activations/0/namespace"),
        ("name", "$response.body#/activations/0/name"),
    ];
    "PolicyService_Activate" -> "rollback": "PolicyService_Rollback" &[
        ("namespace", "$response.body#/activations/0/namespace"),
        ("name", "$response.body#/activations/0/name"),
    ];
    "PolicyService_Activate" -> "report": "BundleService_ReportStatus" &[
        ("namespace", "$response.body#/activations/0/namespace"),
        ("runtime_id", RUNTIME),
    ], body || json!({"revision": "$response.body#/revision"});
    "PolicyService_Rollback" -> "active": "BundleService_GetActive" REQUESTED;
    "PolicyService_Rollback" -> "policy": "PolicyService_GetPolicy" REQUESTED;
    // The ETag read is the compare-and-swap's If-Match: the version in
    // force activated again, and a rollback from it, each taken only
    // while it is still the one in force.
    "BundleService_GetActive" -> "activate": "PolicyService_Activate" &[
        ("header.If-Match", "$response.header.ETag"),
    ], body || json!({
        "targets": [{
            "namespace": "$response.body#/namespace",
            "name": "$response.body#/name",
            "version": "$response.body#/version",
        }],
    });
    "BundleService_GetActive" -> "rollback": "PolicyService_Rollback" &[
        ("namespace", "$response.body#/namespace"),
        ("name", "$response.body#/name"),
        ("header.If-Match", "$response.header.ETag"),
    ], body || json!({"reason": "the version in force misbehaves"});
    "BundleService_GetActive" -> "report": "BundleService_ReportStatus" &[
        ("namespace", "$response.body#/namespace"),
        ("runtime_id", RUNTIME),
    ], body || json!({"revision": "$response.body#/revision"});
    "BundleService_GetActive" -> "proof": "BundleService_GetBundleProof" &[
        ("namespace", "$response.body#/namespace"),
        ("name", "$response.body#/name"),
        ("version", "$response.body#/version"),
        ("revision", "$response.body#/revision"),
    ];
    // A runtime's watch, then its report on the revision of the first
    // event (an event's id is its revision).
    "BundleService_WatchActive" -> "report": "BundleService_ReportStatus" &[
        ("namespace", "$request.path.namespace"),
        ("runtime_id", RUNTIME),
    ], body || json!({"revision": "$response.body#/0/id"});
    "PolicyService_GetVersion" -> "diff": "PolicyService_DiffVersions" &[
        ("namespace", "$response.body#/namespace"),
        ("name", "$response.body#/name"),
        ("fromVersion", "$response.body#/version"),
        ("toVersion", "$response.body#/version"),
    ];
    "PolicyService_GetVersion" -> "status": "PolicyService_GetPolicyStatus" VERSION;
    "PolicyService_GetVersion" -> "schema": "PolicyService_SetSchema" VERSION;
    "PolicyService_GetVersion" -> "policy": "PolicyService_GetPolicy" VERSION;
    "PolicyService_GetVersion" -> "policies": "PolicyService_ListPolicies_2" &[
        ("namespace", "$response.body#/namespace"),
    ];
    "PolicyService_ListPolicies" -> "policy": "PolicyService_GetPolicy" LISTED_POLICY;
    "PolicyService_ListPolicies_2" -> "policy": "PolicyService_GetPolicy" LISTED_POLICY;
    "PolicyService_GetPolicy" -> "latest": "PolicyService_GetVersion" &[
        ("namespace", "$response.body#/namespace"),
        ("name", "$response.body#/name"),
        ("version", "$response.body#/latestVersion"),
    ];
    // A rollout's controls, each from the states the one before leaves
    // it in (RolloutState): one that waits for approval is approved or
    // aborted; a running one is paused, promoted (which completes it) or
    // aborted; a paused one resumed, promoted or aborted.
    "PolicyService_StartRollout" -> "rollout": "PolicyService_GetRollout" ROLLOUT;
    "PolicyService_StartRollout" -> "approve": "PolicyService_ApproveRollout" ROLLOUT;
    "PolicyService_StartRollout" -> "pause": "PolicyService_PauseRollout" ROLLOUT;
    "PolicyService_StartRollout" -> "promote": "PolicyService_PromoteRollout" ROLLOUT;
    "PolicyService_StartRollout" -> "abort": "PolicyService_AbortRollout" ROLLOUT;
    "PolicyService_StartRollout" -> "rollouts": "PolicyService_ListRollouts" &[
        ("namespace", "$response.body#/namespace"),
    ];
    // What Alertmanager posts when a rule on the rollout's metrics fires.
    "PolicyService_StartRollout" -> "alert": "PolicyService_ReceiveAlerts" &[], body alert;
    "PolicyService_ApproveRollout" -> "rollout": "PolicyService_GetRollout" ROLLOUT;
    "PolicyService_ApproveRollout" -> "pause": "PolicyService_PauseRollout" ROLLOUT;
    "PolicyService_ApproveRollout" -> "promote": "PolicyService_PromoteRollout" ROLLOUT;
    "PolicyService_ApproveRollout" -> "abort": "PolicyService_AbortRollout" ROLLOUT;
    "PolicyService_ApproveRollout" -> "alert": "PolicyService_ReceiveAlerts" &[], body alert;
    "PolicyService_PauseRollout" -> "resume": "PolicyService_ResumeRollout" ROLLOUT;
    "PolicyService_PauseRollout" -> "promote": "PolicyService_PromoteRollout" ROLLOUT;
    "PolicyService_PauseRollout" -> "abort": "PolicyService_AbortRollout" ROLLOUT;
    "PolicyService_ResumeRollout" -> "pause": "PolicyService_PauseRollout" ROLLOUT;
    "PolicyService_ResumeRollout" -> "promote": "PolicyService_PromoteRollout" ROLLOUT;
    "PolicyService_ResumeRollout" -> "abort": "PolicyService_AbortRollout" ROLLOUT;
    "PolicyService_PromoteRollout" -> "rollout": "PolicyService_GetRollout" ROLLOUT;
    "PolicyService_AbortRollout" -> "rollout": "PolicyService_GetRollout" ROLLOUT;
    "PolicyService_SetSchedule" -> "schedule": "PolicyService_GetSchedule" SCHEDULE;
    "PolicyService_SetSchedule" -> "pause": "PolicyService_PauseSchedule" SCHEDULE;
    "PolicyService_SetSchedule" -> "schedules": "PolicyService_ListSchedules" &[
        ("namespace", "$response.body#/namespace"),
    ];
    // Deleting follows a pause, so that a client walking the links at
    // random (the schedules' fuzz pass) meets the pause and resume first.
    "PolicyService_PauseSchedule" -> "resume": "PolicyService_ResumeSchedule" SCHEDULE;
    "PolicyService_PauseSchedule" -> "delete": "PolicyService_DeleteSchedule" SCHEDULE;
    "SubscriptionService_CreateSubscription" -> "subscription": "SubscriptionService_GetSubscription" SUBSCRIPTION;
    "SubscriptionService_CreateSubscription" -> "update": "SubscriptionService_UpdateSubscription" SUBSCRIPTION;
    "SubscriptionService_CreateSubscription" -> "test": "SubscriptionService_TestSubscription" SUBSCRIPTION;
    "SubscriptionService_CreateSubscription" -> "deliveries": "SubscriptionService_ListDeliveries" SUBSCRIPTION;
    "SubscriptionService_CreateSubscription" -> "delete": "SubscriptionService_DeleteSubscription" SUBSCRIPTION;
    "SubscriptionService_CreateSubscription" -> "subscriptions": "SubscriptionService_ListSubscriptions" &[
        ("namespace", "$response.body#/subscription/namespace"),
    ];
    "SubscriptionService_CreateSubscription_2" -> "subscription": "SubscriptionService_GetSubscription_2" SUBSCRIPTION_NAME;
    "SubscriptionService_CreateSubscription_2" -> "update": "SubscriptionService_UpdateSubscription_2" SUBSCRIPTION_NAME;
    "SubscriptionService_CreateSubscription_2" -> "test": "SubscriptionService_TestSubscription_2" SUBSCRIPTION_NAME;
    "SubscriptionService_CreateSubscription_2" -> "deliveries": "SubscriptionService_ListDeliveries_2" SUBSCRIPTION_NAME;
    "SubscriptionService_CreateSubscription_2" -> "delete": "SubscriptionService_DeleteSubscription_2" SUBSCRIPTION_NAME;
    "SubscriptionService_CreateSubscription_2" -> "subscriptions": "SubscriptionService_ListSubscriptions_2" &[];
    "PolicyService_RecordRestore" -> "inclusion": "PolicyService_GetInclusionProof" &[
        ("event_id", "$response.body#/event/id"),
    ];
    "PolicyService_RecordRestore" -> "restore": "BundleService_GetRestoreProof" &[
        ("treeSize", "$response.body#/checkpoint/lastEventId"),
    ];
    "PolicyService_RecordRestore" -> "consistency": "BundleService_GetConsistencyProof" &[
        ("oldSize", "$response.body#/checkpoint/lastEventId"),
        ("newSize", "$response.body#/checkpoint/lastEventId"),
    ];
    "PolicyService_RecordRestore" -> "checkpoints": "PolicyService_ListCheckpoints" &[];
    "PolicyService_ListCheckpoints" -> "restore": "BundleService_GetRestoreProof" &[
        ("treeSize", "$response.body#/checkpoints/0/lastEventId"),
    ];
    "PolicyService_ListCheckpoints" -> "consistency": "BundleService_GetConsistencyProof" &[
        ("oldSize", "$response.body#/checkpoints/0/lastEventId"),
        ("newSize", "$response.body#/checkpoints/0/lastEventId"),
    ];
    "PolicyService_RotateSigningKey" -> "keys": "BundleService_GetSigningKeys" &[];
    "PolicyService_RotateSigningKey" -> "events": "PolicyService_ListEvents" &[];
    "PolicyService_RotateSigningKey" -> "revokePrevious": "PolicyService_RevokeSigningKey" &[
        ("key_id", "$response.body#/previousKeyId"),
    ];
    "PolicyService_RevokeSigningKey" -> "keys": "BundleService_GetSigningKeys" &[];
    "PolicyService_ListEvents" -> "inclusion": "PolicyService_GetInclusionProof" &[
        ("event_id", "$response.body#/events/0/id"),
    ];
    "PolicyService_WhoAmI" -> "access": "PolicyService_CheckAccess" &[
        ("method", "$response.body#/allowedMethods/0"),
    ];
    "SignInService_ListIdentityProviders" -> "whoami": "PolicyService_WhoAmI" &[];
];

/// The links of [`LINKS`] on the successes of the operations of `paths`.
fn add_links(paths: &mut BTreeMap<String, Map<String, Value>>) {
    for link in LINKS {
        let source = paths
            .values_mut()
            .flat_map(|operations| operations.values_mut())
            .find(|operation| operation["operationId"] == link.from)
            .unwrap_or_else(|| panic!("a link from {}, which is no operation", link.from));
        let success = if link.from == "PolicyService_Draft" {
            "201"
        } else {
            "200"
        };
        let mut definition = json!({"operationId": link.to});
        if !link.parameters.is_empty() {
            definition["parameters"] = link
                .parameters
                .iter()
                .map(|(name, expression)| ((*name).to_owned(), json!(expression)))
                .collect::<Map<String, Value>>()
                .into();
        }
        if let Some(body) = link.body {
            definition["requestBody"] = body();
            // The body is the whole request, not members to merge into
            // one a client made up (schemathesis's extension; by default
            // it merges).
            definition["x-schemathesis"] = json!({"merge_body": false});
        }
        source["responses"][success]["links"][link.name] = definition;
    }
}

/// The verb, path and body (`*`, a field, or none) of one rule.
fn binding(rule: &DynamicMessage) -> Option<(&'static str, String, Option<String>)> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|value| value.as_str().map(str::to_owned))
            .filter(|text| !text.is_empty())
    };
    let (verb, path) = ["get", "put", "post", "delete", "patch"]
        .into_iter()
        .find_map(|verb| text(verb).map(|path| (verb, path)))?;
    Some((verb, path, text("body")))
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
    body: Option<&str>,
    schemas: &mut BTreeMap<String, Value>,
) -> Value {
    let input = method.input();
    let bound = path_fields(path);
    let mut parameters: Vec<Value> = bound
        .iter()
        .map(|name| {
            let mut schema = input
                .get_field_by_name(name)
                .map_or(json!({"type": "string"}), |field| {
                    request_scalar(&input, &field)
                });
            if let Some(constraint) = name_constraint(name) {
                merge(&mut schema, constraint);
            }
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect();
    if body.is_none() {
        query_parameters(&input, "", &bound, &mut parameters);
    }
    parameters.extend(header_parameters(method, &input));
    let reply = if method.is_server_streaming() {
        json!({
            "description": "Server-Sent Events: one event per whole revision, its id the \
                            revision; resume with Last-Event-ID.",
            // Each event's data: the revision's message in the JSON
            // mapping, or a last google.rpc.Status.
            "content": {"text/event-stream": {"schema": {"type": "object"}}},
        })
    } else if matches!(method.name(), "GetOpaBundle" | "GetOpaDiscovery") {
        json!({
            "description": "The bundle as OPA downloads it: a gzipped tarball, in the content \
                            type OPA's bundle plugin reads as long polling.",
            "content": {"application/vnd.openpolicyagent.bundles": {
                "schema": {"type": "string", "format": "binary"},
            }},
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
    let mut reply = reply;
    if let Some(headers) = success_headers(method) {
        reply["headers"] = headers;
    }
    let mut responses = Map::new();
    responses.insert(success.into(), reply);
    for (code, description) in refusals(method, body.is_some()) {
        let mut response = refusal(description);
        if code == "429" || code == "503" {
            response["headers"] = json!({"Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 1},
            }});
        }
        if code == "401" {
            response["headers"] = json!({"WWW-Authenticate": {
                "description": "The scheme the token is given in (RFC 6750).",
                "schema": {"type": "string"},
            }});
        }
        if code == "304" {
            response = json!({"description": description, "headers": {"ETag": etag_header()}});
        }
        responses.insert(code.into(), response);
    }
    responses.insert(
        "default".into(),
        refusal("Another refusal, under the gRPC → HTTP table."),
    );
    let mut operation = json!({
        "operationId": id,
        "summary": method.name(),
        "description": method_comment(method),
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(body) = body {
        let schema = match input.get_field_by_name(body) {
            // A repeated message field: the body is a JSON array of them,
            // which may come gzipped (Content-Encoding: gzip).
            Some(field) => {
                let Kind::Message(item) = field.kind() else {
                    panic!("the body field {body} of {} is a message", input.name())
                };
                json!({"type": "array", "items": reference(&item, schemas)})
            }
            None => reference(&input, schemas),
        };
        let mut content = json!({"schema": schema});
        if let Some(example) = request_example(method) {
            content["example"] = example;
        }
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": content},
        });
    }
    if public(method) {
        operation["security"] = json!([]);
    }
    operation
}

/// A request body the server takes from any caller with the role, for the
/// methods that start something other requests then lead on from and whose
/// rules (a webhook's public host) no schema states whole: a client
/// generating requests from the document starts from it.
fn request_example(method: &MethodDescriptor) -> Option<Value> {
    Some(match method.name() {
        "CreateSubscription" => json!({
            "name": "audit",
            "url": "https://hooks.example.com/policyhub",
            "eventKinds": ["EVENT_KIND_PUBLISHED", "EVENT_KIND_ACTIVATED"],
        }),
        _ => return None,
    })
}

/// Whether a method answers without a token.
fn public(method: &MethodDescriptor) -> bool {
    method.parent_service().name() == "SignInService"
}

/// A refusal's response: a `google.rpc.Status`.
fn refusal(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}},
    })
}

/// The refusals every operation of this kind may answer with, beyond the
/// default: the ones HTTP's own headers and limits give.
fn refusals(method: &MethodDescriptor, body: bool) -> Vec<(&'static str, &'static str)> {
    if public(method) {
        return Vec::new();
    }
    let mut refusals = vec![
        (
            "400",
            "The request is not valid: google.rpc.BadRequest names each field.",
        ),
        ("401", "No valid bearer token."),
        ("403", "The token's roles do not allow this."),
        ("429", "Over a quota: retry after Retry-After seconds."),
    ];
    if body {
        refusals.extend([
            (
                "413",
                "The body is over the size limit (ErrorInfo reason TOO_LARGE).",
            ),
            ("415", "The body is not application/json."),
        ]);
    }
    if compare_and_swap(&method.input()) {
        refusals.push(("412", "If-Match names a bundle that is no longer active."));
    }
    if matches!(
        method.name(),
        "GetActive" | "GetVersion" | "GetOpaBundle" | "GetOpaDiscovery"
    ) {
        refusals.push(("304", "If-None-Match names the current representation."));
    }
    refusals
}

/// Whether a request takes `If-Match`: it has a compare-and-swap on the
/// active pointer (of one policy, or of its one target).
fn compare_and_swap(input: &MessageDescriptor) -> bool {
    let has = |message: &MessageDescriptor| {
        message
            .get_field_by_name("expected_active_revision")
            .is_some()
    };
    has(input)
        || input
            .get_field_by_name("targets")
            .is_some_and(|targets| matches!(targets.kind(), Kind::Message(target) if has(&target)))
}

fn etag_header() -> Value {
    json!({
        "description": "The validator of what was read: `\"<version>-<revision>-<digest>\"` \
                        for an active bundle, `\"<version>-<digest>\"` (and `-active`) for \
                        a published version, a digest of its files for an OPA bundle.",
        "schema": {"type": "string"},
    })
}

/// The headers a success carries.
fn success_headers(method: &MethodDescriptor) -> Option<Value> {
    Some(match method.name() {
        "GetActive" | "GetVersion" | "GetOpaBundle" | "GetOpaDiscovery" => {
            json!({"ETag": etag_header()})
        }
        "Draft" => json!({"Location": {
            "description": "The new draft's path.",
            "schema": {"type": "string"},
        }}),
        _ => return None,
    })
}

/// The request headers an operation reads
/// (docs/src/contributing/design.md#transports).
fn header_parameters(method: &MethodDescriptor, input: &MessageDescriptor) -> Vec<Value> {
    let header = |name: &str, description: &str| {
        json!({"name": name, "in": "header", "required": false,
               "description": description, "schema": {"type": "string"}})
    };
    let mut headers = Vec::new();
    if matches!(
        method.name(),
        "GetActive" | "GetVersion" | "GetOpaBundle" | "GetOpaDiscovery"
    ) {
        headers.push(header(
            "If-None-Match",
            "An ETag read before: 304 while it is still current.",
        ));
    }
    if matches!(
        method.name(),
        "GetActive" | "GetOpaBundle" | "GetOpaDiscovery"
    ) {
        headers.push(json!({"name": "Prefer", "in": "header", "required": false,
            "description": "wait=N (whole seconds, at most 60; also among OPA's \
                            `modes=snapshot,delta;wait=N`): with If-None-Match, hold the read \
                            until the bundle changes (long polling).",
            "schema": {"type": "string",
                "pattern": "^(modes=[a-z,]+;)?wait=([0-9]|[1-5][0-9]|60)$"}}));
    }
    if compare_and_swap(input) {
        // `src/http/semantics.rs` parses it; a weak tag is taken and never
        // matches.
        headers.push(
            json!({"name": "If-Match", "in": "header", "required": false,
            "description": "The ETag of the active bundle: 412 unless it is still the active one.",
            "schema": {"type": "string",
                       "pattern": "^(W/)?\"[0-9]{1,9}-[0-9]{1,19}-[0-9A-Fa-f]+\"$"}}),
        );
    }
    if input.get_field_by_name("idempotency_key").is_some() {
        headers.push(header(
            "Idempotency-Key",
            "The request's idempotency_key: a retry gets the first answer.",
        ));
    }
    if method.is_server_streaming() {
        headers.push(
            json!({"name": "Last-Event-ID", "in": "header", "required": false,
            "description": "The revision of the last event received: resume after it.",
            "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"}}),
        );
    }
    headers
}

/// What the server requires of a name, by the field that carries it: the
/// patterns of `src/domain/names.rs` and the runtime id's, and a label's
/// semantic version.
fn name_constraint(field: &str) -> Option<Value> {
    Some(match field {
        "namespace" => json!({"pattern": NAMESPACE}),
        "name" => json!({"pattern": POLICY_NAME}),
        "runtime_id" => json!({"pattern": "^[a-z0-9]([a-z0-9.-]{0,126}[a-z0-9])?$"}),
        "label" => json!({"pattern": SEMVER, "maxLength": MAX_LABEL_CHARS}),
        "id" => json!({"format": "uuid"}),
        _ => return None,
    })
}

/// A Duration of 0 or more in the JSON mapping.
const NON_NEGATIVE_DURATION: &str = "^(0|[1-9][0-9]{0,10})(\\.[0-9]{1,9})?s$";

/// `domain::Namespace`'s rule.
const NAMESPACE: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// `domain::PolicyName`'s rule, which schedules' and subscriptions' names
/// share.
const POLICY_NAME: &str = "^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$";

/// semver.org's pattern of a semantic version, without build metadata,
/// which a label may not carry (two labels differing only in it would
/// compare equal), and with numbers of at most 19 digits: the server reads
/// each into 64 bits and refuses one beyond (the pattern also leaves out
/// the 20-digit ones that fit).
const SEMVER: &str = "^(0|[1-9]\\d{0,18})\\.(0|[1-9]\\d{0,18})\\.(0|[1-9]\\d{0,18})\
                      (?:-((?:0|[1-9]\\d{0,18}|\\d*[a-zA-Z-][0-9a-zA-Z-]*)\
                      (?:\\.(?:0|[1-9]\\d{0,18}|\\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?$";

/// `domain::version::MAX_LABEL_CHARS`.
const MAX_LABEL_CHARS: usize = 128;

/// A runtime's labels, as Kubernetes writes them: at most 16, keys of at
/// most 63 characters with an optional DNS prefix, values of at most 63.
fn runtime_labels() -> Value {
    json!({
        "type": "object",
        "maxProperties": 16,
        "propertyNames": {
            "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
        },
        "additionalProperties": {
            "type": "string",
            "pattern": "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
        },
    })
}

/// Whether clients write `message`, so that the server's rules on it are
/// declared (a reply's fields, such as a version's empty label, follow
/// none of them; a requirement in a reply was checked when it was
/// written).
fn is_request(message: &MessageDescriptor) -> bool {
    message.name().ends_with("Request")
        || matches!(
            message.name(),
            "ActivationTarget"
                | "RuntimeIdentity"
                | "RolloutStep"
                | "RolloutAnalysis"
                | "FailureRule"
                | "Requirement"
        )
}

/// A number the server refuses below 1: the minimum binds it as a number,
/// the pattern as a 64-bit integer's string.
fn at_least_one() -> Value {
    json!({"minimum": 1, "pattern": "^[1-9][0-9]{0,18}$"})
}

/// What the server requires of a request's field beyond its type: the one
/// table of the request rules this document states, each row the rule of
/// a converter of `src/grpc` or of the domain type it parses into (the
/// API tests check every pattern and range against the server).
fn request_constraint(message: &str, field: &str) -> Option<Value> {
    Some(match (message, field) {
        ("ScheduleEntryRequest", "name") => name_constraint("namespace")?,
        ("CheckAccessRequest", "namespace") => json!({"pattern": or_empty(NAMESPACE)}),
        // A requirement names a policy of the draft's own namespace: by
        // its name, as stated, or with that namespace before it
        // (`team/limits`), which the server takes too but no schema can
        // tie to the path's namespace (another one is refused).
        ("Requirement", "name") => name_constraint("name")?,
        ("DraftRequest", "requirements") => json!({"maxItems": 32}),
        (_, "namespace" | "name") => name_constraint(field)?,
        ("RuntimeIdentity", "id") => name_constraint("runtime_id")?,
        ("WatchActiveRequest", "names") => name_constraint("name")?,
        ("Requirement", "range") | ("RecordRestoreRequest" | "RollbackRequest", "reason") => {
            json!({"minLength": 1, "pattern": "\\S"})
        }
        // Version numbers and revisions start at 1.
        (_, "version" | "to_version" | "from_version")
        | ("ReportStatusRequest", "revision")
        | ("GetBundleProofRequest", "revision")
        | ("GetConsistencyProofRequest", "old_size") => at_least_one(),
        // Optional at publish: empty is no label.
        ("PublishRequest", "label") => json!({
            "pattern": or_empty(SEMVER),
            "maxLength": MAX_LABEL_CHARS,
        }),
        (_, "label") => name_constraint("label")?,
        ("ActivateRequest" | "StartRolloutRequest", "targets")
        | ("SetScheduleRequest", "entries")
        | ("ScheduleEntryRequest", "targets") => json!({"minItems": 1}),
        // `domain::schedule`'s timing: a pattern of at most 256 bytes
        // (what it may say is croner's cron, left free-form here), and an
        // IANA zone, by the names chrono-tz parses.
        ("ScheduleEntryRequest", "cron") => json!({"minLength": 1, "maxLength": 256}),
        ("ScheduleEntryRequest", "time_zone") => json!({"enum": chrono_tz::TZ_VARIANTS
            .iter()
            .map(|zone| zone.name())
            .collect::<Vec<_>>()}),
        ("StartRolloutRequest", "steps") => json!({"minItems": 1, "maxItems": 20}),
        ("RolloutStep", "percentage") => json!({"minimum": 1, "maximum": 100}),
        // `grpc::opa`'s longest hold of an OPA bundle or discovery request.
        ("GetOpaBundleRequest" | "GetOpaDiscoveryRequest", "wait_seconds") => {
            json!({"maximum": 60})
        }
        // `domain::rollout::plan`: a bake of 0 to 7 days (604,800 s),
        // as the JSON mapping writes a Duration (the schema is a reply's
        // too, so it states the whole range).
        ("RolloutStep", "bake") => json!({"pattern": "^((0|[1-9][0-9]{0,4}|[1-5][0-9]{5}\
                                           |60[0-3][0-9]{3}|604[0-7][0-9]{2})\
                                           (\\.[0-9]{1,9})?|604800(\\.0{1,9})?)s$"}),
        ("FailureRule", "max_rejected_fraction") => json!({"minimum": 0, "maximum": 1}),
        // `grpc::rollouts`' durations: 0 or more.
        ("RolloutAnalysis", "interval") | ("FailureRule", "apply_deadline") => {
            json!({"pattern": NON_NEGATIVE_DURATION})
        }
        ("CreateSubscriptionRequest", "event_kinds") => {
            json!({"minItems": 1, "maxItems": 32, "uniqueItems": true})
        }
        ("UpdateSubscriptionRequest", "event_kinds") => {
            json!({"maxItems": 32, "uniqueItems": true})
        }
        ("CreateSubscriptionRequest", "url") => webhook_url(),
        ("UpdateSubscriptionRequest", "url") => {
            json!({"pattern": or_empty(webhook_url()["pattern"].as_str()?)})
        }
        // Standard Webhooks' form: `whsec_` and 24 to 64 bytes in base64
        // (the pattern states the unpadded lengths); empty: the server
        // makes one.
        ("CreateSubscriptionRequest", "secret") => {
            json!({"pattern": "^(whsec_([A-Za-z0-9+/]{4}){8,21})?$"})
        }
        _ => return None,
    })
}

/// `pattern` (anchored at both ends) or the empty string: a pattern
/// matches anywhere in a value unless anchored, so the alternative is
/// anchored as a whole (`^$|a$` would take `xa`).
fn or_empty(pattern: &str) -> String {
    let inner = pattern
        .strip_prefix('^')
        .and_then(|inner| inner.strip_suffix('$'))
        .expect("an anchored pattern");
    format!("^(?:{inner})?$")
}

/// A webhook's endpoint: https and a DNS name (the server also takes a
/// public address, and refuses a private one and a name under
/// `localhost`, which the pattern leaves to the reader).
fn webhook_url() -> Value {
    json!({
        "maxLength": 2048,
        "pattern": "^https://[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,20}[a-z0-9])?){1,3}(/[A-Za-z0-9._~-]{0,40}){0,4}$",
    })
}

/// The fields a request message must give.
fn required_fields(message: &str) -> &'static [&'static str] {
    match message {
        "ActivationTarget" => &["namespace", "name"],
        "ActivateRequest" => &["targets"],
        "DraftRequest" => &["body"],
        "RollbackRequest" | "RecordRestoreRequest" => &["reason"],
        "StartRolloutRequest" => &["targets", "steps"],
        // A step without its percentage is one of 0, which is refused.
        "RolloutStep" => &["percentage"],
        "RolloutTargetRequest" | "ScheduleTargetRequest" => &["name"],
        "Requirement" => &["name", "range"],
        "SetScheduleRequest" => &["entries"],
        "ScheduleEntryRequest" => &["name", "cron", "time_zone", "targets"],
        "DiffVersionsRequest" => &["from_version", "to_version"],
        "CheckAccessRequest" => &["method"],
        "CreateSubscriptionRequest" => &["name", "url", "event_kinds"],
        "ReportStatusRequest" => &["revision"],
        "GetConsistencyProofRequest" => &["old_size"],
        "GetBundleProofRequest" => &["revision"],
        _ => &[],
    }
}

/// What a request's member requires of the others when it is given: a
/// publication's expected active version and revision (the
/// compare-and-swap of its activation) only together with `activate`
/// (`grpc::policy_requests::publish_command`).
fn dependent_schemas(message: &MessageDescriptor) -> Option<Value> {
    let (fields, requirement): (&[&str], Value) = match message.name() {
        "PublishRequest" => (
            &["expected_active_version", "expected_active_revision"],
            json!({"properties": {"activate": {"const": true}}, "required": ["activate"]}),
        ),
        _ => return None,
    };
    Some(
        fields
            .iter()
            .map(|field| {
                let field = message
                    .get_field_by_name(field)
                    .unwrap_or_else(|| panic!("{} has no field {field}", message.name()));
                (field.json_name().to_owned(), requirement.clone())
            })
            .collect::<Map<String, Value>>()
            .into(),
    )
}

/// The oneofs of which a request must set a member: a target's version,
/// by number or by label.
fn required_oneof(message: &str) -> Option<&'static str> {
    matches!(
        message,
        "ActivationTarget" | "RolloutTargetRequest" | "ScheduleTargetRequest"
    )
    .then_some("selector")
}

/// The JSON mapping's rule on each oneof of a request (at most one member
/// given), and, where the table requires it, at least one.
fn one_of_rules(message: &MessageDescriptor) -> Vec<Value> {
    let mut rules = Vec::new();
    for oneof in message.oneofs().filter(|oneof| !oneof.is_synthetic()) {
        let members: Vec<String> = oneof
            .fields()
            .map(|member| member.json_name().to_owned())
            .collect();
        for (index, first) in members.iter().enumerate() {
            for second in &members[index + 1..] {
                rules.push(json!({"not": {"required": [first, second]}}));
            }
        }
        if required_oneof(message.name()) == Some(oneof.name()) {
            let any: Vec<Value> = members
                .iter()
                .map(|member| json!({"required": [member]}))
                .collect();
            rules.push(json!({"anyOf": any}));
        }
    }
    rules
}

/// A request's scalar or enum field: its type, the table's rule, and no
/// `*_UNSPECIFIED` in a list of enums (a filter or a subscription names
/// kinds or states; the zero value is none of them).
fn request_scalar(message: &MessageDescriptor, field: &FieldDescriptor) -> Value {
    let mut schema = scalar(field);
    if field.is_list()
        && let Some(Value::Array(names)) = schema.get_mut("enum")
    {
        names.retain(|name| {
            !name
                .as_str()
                .is_some_and(|name| name.ends_with("_UNSPECIFIED"))
        });
    }
    if (message.name(), field.name()) == ("CheckAccessRequest", "method") {
        schema["enum"] = json!(methods_with_roles(message.parent_pool()));
    }
    if let Some(constraint) = request_constraint(message.name(), field.name()) {
        if field.is_list() {
            // A list's own bounds go on the array, a name's on each item.
            if constraint.get("pattern").is_some() {
                merge(&mut schema, constraint);
            }
        } else {
            merge(&mut schema, constraint);
        }
    }
    schema
}

/// The bounds of a list field of `message`, from the table.
fn list_constraint(message: &str, field: &str) -> Option<Value> {
    request_constraint(message, field).filter(|constraint| constraint.get("pattern").is_none())
}

/// The methods `CheckAccess` and `WhoAmI` name: every one of the served
/// services but those whose comment says they need no role.
fn methods_with_roles(pool: &DescriptorPool) -> Vec<String> {
    pool.services()
        .filter(|service| service.package_name() == "policyhub.v1")
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .filter(|method| !method_comment(method).contains("Role: none"))
        .map(|method| method.name().to_owned())
        .collect()
}

/// `extra`'s members added to `schema`.
fn merge(schema: &mut Value, extra: Value) {
    if let (Value::Object(schema), Value::Object(extra)) = (schema, extra) {
        schema.extend(extra);
    }
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
        // A path that binds one member of a oneof (a version's label)
        // leaves no room for another in the query.
        if prefix.is_empty()
            && field.containing_oneof().is_some_and(|oneof| {
                !oneof.is_synthetic()
                    && oneof
                        .fields()
                        .any(|member| bound.contains(&member.name().to_owned()))
            })
        {
            continue;
        }
        let name = format!("{prefix}{}", field.json_name());
        let required = required_fields(message.name()).contains(&field.name());
        let mut parameter = json!({
            "name": name,
            "in": "query",
            "required": required,
            "description": comment(&field),
        });
        parameter["schema"] = match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                parameter["style"] = json!("deepObject");
                parameter["explode"] = json!(true);
                if message.name() == "RuntimeIdentity" {
                    runtime_labels()
                } else {
                    json!({"type": "object",
                           "additionalProperties": scalar(&entry.map_entry_value_field())})
                }
            }
            Kind::Message(kind) => match well_known(&kind) {
                Some(schema) => schema,
                None => {
                    query_parameters(&kind, &format!("{name}."), bound, parameters);
                    continue;
                }
            },
            _ => {
                let schema = request_scalar(message, &field);
                if field.is_list() {
                    let mut list = json!({"type": "array", "items": schema});
                    if let Some(bounds) = list_constraint(message.name(), field.name()) {
                        merge(&mut list, bounds);
                    }
                    list
                } else {
                    schema
                }
            }
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
            let schema = if field.is_map() && message.name() == "RuntimeIdentity" {
                runtime_labels()
            } else if field.is_map() {
                let Kind::Message(entry) = field.kind() else {
                    unreachable!("a map field is a message of entries")
                };
                let value = entry.map_entry_value_field();
                json!({"type": "object", "additionalProperties": field_schema(&value, schemas)})
            } else if field.is_list() {
                let items = if is_request(message) && !matches!(field.kind(), Kind::Message(_)) {
                    request_scalar(message, &field)
                } else {
                    field_schema(&field, schemas)
                };
                let mut list = json!({"type": "array", "items": items});
                if is_request(message)
                    && let Some(bounds) = list_constraint(message.name(), field.name())
                {
                    merge(&mut list, bounds);
                }
                list
            } else if is_request(message) && !matches!(field.kind(), Kind::Message(_)) {
                request_scalar(message, &field)
            } else {
                let mut schema = field_schema(&field, schemas);
                // A well-known type's schema is inline: the table's rule
                // on it (a bake's bounds) goes beside its own.
                if is_request(message)
                    && schema.get("$ref").is_none()
                    && let Some(constraint) = request_constraint(message.name(), field.name())
                {
                    merge(&mut schema, constraint);
                }
                schema
            };
            let mut schema = schema;
            let description = comment(&field);
            if !description.is_empty() && schema.get("$ref").is_none() {
                schema["description"] = Value::String(description);
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema =
            json!({"type": "object", "properties": properties, "additionalProperties": false});
        // By the members' JSON names, as the properties are.
        let required: Vec<String> = required_fields(message.name())
            .iter()
            .map(|name| {
                message
                    .get_field_by_name(name)
                    .unwrap_or_else(|| panic!("{} has no field {name}", message.name()))
                    .json_name()
                    .to_owned()
            })
            .collect();
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        if is_request(message) {
            let oneofs = one_of_rules(message);
            if !oneofs.is_empty() {
                schema["allOf"] = json!(oneofs);
            }
            if let Some(dependent) = dependent_schemas(message) {
                schema["dependentSchemas"] = dependent;
            }
        }
        schemas.insert(name.clone(), schema);
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
        // Seconds within the mapping's ±315,576,000,000 (the pattern
        // stops at 11 digits) and at most nanoseconds: prost-reflect,
        // which reads the body, refuses more.
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": format!("^-?{}", &NON_NEGATIVE_DURATION[1..])})
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
        // A string must hold the number in decimal digits (the pattern
        // binds only strings, the range only numbers).
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
            "type": ["string", "integer"],
            "format": "int64",
            "pattern": "^-?[0-9]{1,19}$",
            "minimum": i64::MIN,
            "maximum": i64::MAX,
        }),
        Kind::Uint64 | Kind::Fixed64 => json!({
            "type": ["string", "integer"],
            "format": "uint64",
            "pattern": "^[0-9]{1,20}$",
            "minimum": 0,
            "maximum": u64::MAX,
        }),
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
