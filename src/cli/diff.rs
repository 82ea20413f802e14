//! `policyhub diff`: what changed between two versions, as removed and
//! added values (red and green on a terminal), or as the RFC 6902 JSON
//! Patch the server computed.

use std::{collections::BTreeMap, process::ExitCode};

use anyhow::Context;
use json_patch::PatchOperation;
use prost_types::Struct;
use serde_json::{Value, json};

use super::ClientCommand;
use super::args::{parse_policy, parse_selector};
use super::connection::AuthChannel;
use super::failure::{Reply, Unusable, What};
use super::json;
use super::output::{
    Output, Painter, or_dash, print_message, requirement_pairs, requirements_text,
};
use crate::domain::{PolicyRef, VersionSelector};
use crate::grpc::{
    convert::struct_to_json,
    proto::{self, get_version_request::Selector, policy_service_client::PolicyServiceClient},
};

/// Arguments of `policyhub diff-versions`.
#[derive(Debug, clap::Args)]
pub struct DiffVersionsArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The version to diff from: a number or a label.
    #[arg(value_parser = parse_selector)]
    from: VersionSelector,
    /// The version to diff to: a number or a label.
    #[arg(value_parser = parse_selector)]
    to: VersionSelector,
}

async fn get_version(
    client: &mut PolicyServiceClient<AuthChannel>,
    policy: &PolicyRef,
    selector: &VersionSelector,
) -> anyhow::Result<proto::Version> {
    let selector = match selector {
        VersionSelector::Number(number) => Selector::Version(*number),
        VersionSelector::Label(label) => Selector::Label(label.to_string()),
    };
    Ok(client
        .get_version(proto::GetVersionRequest {
            namespace: policy.namespace.to_string(),
            name: policy.name.to_string(),
            selector: Some(selector),
        })
        .await
        .reply(format!("reading {policy}"))?)
}

/// The RFC 6902 form of one operation.
fn operation_json(operation: proto::PatchOperation) -> anyhow::Result<Value> {
    let mut object = json!({ "op": operation.op, "path": operation.path });
    if !operation.from.is_empty() {
        object["from"] = Value::String(operation.from);
    }
    if let Some(value) = operation.value {
        // `convert` reads protobuf values inside a Struct, so the value
        // travels as the one member of one.
        let wrapper = Struct {
            fields: BTreeMap::from([("value".to_owned(), value)]),
        };
        object["value"] = struct_to_json("value", wrapper)?["value"].take();
    }
    Ok(object)
}

impl ClientCommand for DiffVersionsArgs {
    /// `policyhub diff`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let mut client = PolicyServiceClient::new(channel);
        // The patch names where values changed, not what they were: the old
        // values come from the from-version's body.
        let from = get_version(&mut client, &self.policy, &self.from).await?;
        let to_version = match self.to {
            VersionSelector::Number(number) => number,
            label => {
                get_version(&mut client, &self.policy, &label)
                    .await?
                    .version
            }
        };
        let diff = client
            .diff_versions(proto::DiffVersionsRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                from_version: from.version,
                to_version,
            })
            .await
            .reply(format!("diffing {}", self.policy))?;
        if output == Output::Json {
            print_message(&diff);
            return Ok(ExitCode::SUCCESS);
        }
        let operations = diff
            .operations
            .into_iter()
            .map(operation_json)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let painter = Painter::for_stdout();
        outln!(
            "{}",
            painter.heading(&format!(
                "--- {} version {} {}",
                self.policy, from.version, diff.from_digest
            ))
        );
        outln!(
            "{}",
            painter.heading(&format!(
                "+++ {} version {to_version} {}",
                self.policy, diff.to_digest
            ))
        );
        let requirements_differ = diff.from_requirements != diff.to_requirements;
        if requirements_differ {
            let requires =
                |requirements| or_dash(&requirements_text(requirement_pairs(requirements)));
            let from = requires(&diff.from_requirements);
            let to = requires(&diff.to_requirements);
            outln!("{}", painter.removed(&format!("- requires: {from}")));
            outln!("{}", painter.added(&format!("+ requires: {to}")));
        }
        if operations.is_empty() {
            if !requirements_differ {
                outln!("no differences");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let operations: Vec<PatchOperation> = serde_json::from_value(Value::Array(operations))
            .context(Unusable::new(
                What::Reply,
                "the server sent an operation that is not RFC 6902",
            ))?;
        let mut document = json::body(from.body)?;
        for operation in &operations {
            for line in change_lines(&document, operation) {
                outln!("{}", paint_line(painter, &line));
            }
            json_patch::patch(&mut document, std::slice::from_ref(operation)).with_context(
                || {
                    Unusable::new(
                        What::Reply,
                        format!(
                            "the server's patch does not apply to version {}",
                            from.version
                        ),
                    )
                },
            )?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// A line of the readable diff: a value removed or added at a path.
#[derive(Debug, PartialEq)]
enum Line {
    Removed(String, Value),
    Added(String, Value),
}

fn paint_line(painter: Painter, line: &Line) -> String {
    let text = |sign: char, path: &str, value: &Value| {
        let path = if path.is_empty() { "/" } else { path };
        format!("{sign} {path}: {value}")
    };
    match line {
        Line::Removed(path, value) => painter.removed(&text('-', path, value)),
        Line::Added(path, value) => painter.added(&text('+', path, value)),
    }
}

/// What one operation changes in `document`, the body before it applies.
fn change_lines(document: &Value, operation: &PatchOperation) -> Vec<Line> {
    let at = |path: &str| document.pointer(path).cloned().unwrap_or(Value::Null);
    match operation {
        PatchOperation::Add(add) => vec![Line::Added(add.path.to_string(), add.value.clone())],
        PatchOperation::Remove(remove) => {
            vec![Line::Removed(
                remove.path.to_string(),
                at(remove.path.as_str()),
            )]
        }
        PatchOperation::Replace(replace) => vec![
            Line::Removed(replace.path.to_string(), at(replace.path.as_str())),
            Line::Added(replace.path.to_string(), replace.value.clone()),
        ],
        PatchOperation::Move(moved) => vec![
            Line::Removed(moved.from.to_string(), at(moved.from.as_str())),
            Line::Added(moved.path.to_string(), at(moved.from.as_str())),
        ],
        PatchOperation::Copy(copy) => {
            vec![Line::Added(copy.path.to_string(), at(copy.from.as_str()))]
        }
        PatchOperation::Test(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_shows_the_old_and_the_new_value() {
        let document = json!({"maxAmount": 500, "currencies": ["EUR", "USD"]});
        let operation: PatchOperation =
            serde_json::from_value(json!({"op": "replace", "path": "/maxAmount", "value": 50}))
                .unwrap();
        assert_eq!(
            change_lines(&document, &operation),
            [
                Line::Removed("/maxAmount".into(), json!(500)),
                Line::Added("/maxAmount".into(), json!(50)),
            ]
        );
        let removal: PatchOperation =
            serde_json::from_value(json!({"op": "remove", "path": "/currencies/1"})).unwrap();
        assert_eq!(
            change_lines(&document, &removal),
            [Line::Removed("/currencies/1".into(), json!("USD"))]
        );
    }
}
