//! What `policyhub sync` reports: one line per release as it goes, then a
//! summary (or its JSON), and the exit code.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::super::{failure, json};
use super::{Entry, Outcome, SyncArgs, newest};
use crate::grpc::proto;

pub(super) fn print_outcome(entry: &Entry) {
    let release = &entry.release;
    match &entry.outcome {
        Outcome::Planned => outln!(
            "would publish {} {} from {}",
            release.policy,
            release.label,
            release.body_file().display()
        ),
        Outcome::Delivered(version) => outln!(
            "delivered {} {} as version {version}",
            release.policy,
            release.label
        ),
        Outcome::Skipped(version) => outln!(
            "skipped {} {}: already version {version} in the hub",
            release.policy,
            release.label
        ),
        Outcome::Failed(error) => eprint!(
            "failed {} {} from {}\n{}",
            release.policy,
            release.label,
            release.body_file().display(),
            failure::report(error)
        ),
        Outcome::NotAttempted => {}
    }
}

/// What a sync did, for people or scripts, and its exit code.
pub(super) struct Report<'a> {
    pub(super) args: &'a SyncArgs,
    pub(super) commit: Option<&'a str>,
    pub(super) entries: &'a [Entry],
    pub(super) activation: Option<&'a anyhow::Result<proto::ActivateResponse>>,
}

impl Report<'_> {
    fn count(&self, matches: fn(&Outcome) -> bool) -> usize {
        self.entries
            .iter()
            .filter(|entry| matches(&entry.outcome))
            .count()
    }

    /// The first failure: a release's, else the activation's.
    fn failure(&self) -> Option<&anyhow::Error> {
        self.entries
            .iter()
            .find_map(|entry| match &entry.outcome {
                Outcome::Failed(error) => Some(error),
                _ => None,
            })
            .or_else(|| {
                self.activation
                    .and_then(|activation| activation.as_ref().err())
            })
    }

    pub(super) fn exit_code(&self) -> ExitCode {
        self.failure().map_or(ExitCode::SUCCESS, failure::exit_code)
    }

    pub(super) fn print(&self) {
        for entry in self.entries {
            // Deliveries were printed as they happened.
            if self.args.dry_run || matches!(entry.outcome, Outcome::Skipped(_)) {
                print_outcome(entry);
            }
        }
        if self.args.dry_run && self.args.activate {
            let targets: Vec<String> = newest(self.entries)
                .map(|release| format!("{}@{}", release.policy, release.label))
                .collect();
            outln!("would activate {}", targets.join(", "));
        }
        match self.activation {
            Some(Ok(activated)) => print_activation(activated),
            Some(Err(error)) => eprint!("{}", failure::report(error)),
            None => {}
        }
        let source = match self.commit {
            Some(commit) => format!("commit {commit}"),
            None => format!(
                "{} (not a clean git checkout: idempotency keys come from the digests)",
                self.args.dir.display()
            ),
        };
        let skipped = self.count(|outcome| matches!(outcome, Outcome::Skipped(_)));
        if self.args.dry_run {
            let planned = self.count(|outcome| matches!(outcome, Outcome::Planned));
            outln!("dry run of {source}: {planned} to publish, {skipped} skipped");
            return;
        }
        let not_attempted = match self.count(|outcome| matches!(outcome, Outcome::NotAttempted)) {
            0 => String::new(),
            pending => format!(", {pending} not attempted: re-run to publish them"),
        };
        outln!(
            "sync of {source}: {} delivered, {skipped} skipped, {} failed{not_attempted}",
            self.count(|outcome| matches!(outcome, Outcome::Delivered(_))),
            self.count(|outcome| matches!(outcome, Outcome::Failed(_))),
        );
    }

    pub(super) fn json(&self) -> Value {
        let releases: Vec<Value> = self.entries.iter().map(entry_json).collect();
        let activation = match self.activation {
            Some(Ok(activated)) => json!({
                "revision": activated.revision,
                "activations": activated.activations.iter().map(json::activation).collect::<Vec<_>>(),
            }),
            Some(Err(error)) => json!({ "error": format!("{error:#}") }),
            // The plan of a dry run, as its text output shows it.
            None if self.args.dry_run && self.args.activate => json!({
                "planned": newest(self.entries)
                    .map(|release| json!({
                        "namespace": release.policy.namespace.to_string(),
                        "name": release.policy.name.to_string(),
                        "label": release.label.to_string(),
                    }))
                    .collect::<Vec<_>>(),
            }),
            None => Value::Null,
        };
        json!({
            "commit": self.commit,
            "dry_run": self.args.dry_run,
            "releases": releases,
            "activation": activation,
            "planned": self.count(|outcome| matches!(outcome, Outcome::Planned)),
            "delivered": self.count(|outcome| matches!(outcome, Outcome::Delivered(_))),
            "skipped": self.count(|outcome| matches!(outcome, Outcome::Skipped(_))),
            "failed": self.count(|outcome| matches!(outcome, Outcome::Failed(_))),
            "not_attempted": self.count(|outcome| matches!(outcome, Outcome::NotAttempted)),
        })
    }
}

fn print_activation(activated: &proto::ActivateResponse) {
    let moved: Vec<String> = activated
        .activations
        .iter()
        .filter(|activation| activation.version != activation.previous_version)
        .map(|activation| {
            format!(
                "{}/{} version {}",
                activation.namespace, activation.name, activation.version
            )
        })
        .collect();
    if moved.is_empty() {
        outln!(
            "the newest releases were already active (revision {})",
            activated.revision
        );
    } else {
        outln!(
            "activated at revision {}: {}",
            activated.revision,
            moved.join(", ")
        );
    }
}

fn entry_json(entry: &Entry) -> Value {
    let release = &entry.release;
    let (outcome, version, error) = match &entry.outcome {
        Outcome::Planned => ("planned", None, None),
        Outcome::Delivered(version) => ("delivered", Some(*version), None),
        Outcome::Skipped(version) => ("skipped", Some(*version), None),
        Outcome::Failed(error) => ("failed", None, Some(format!("{error:#}"))),
        Outcome::NotAttempted => ("not_attempted", None, None),
    };
    json!({
        "namespace": release.policy.namespace.to_string(),
        "name": release.policy.name.to_string(),
        "label": release.label.to_string(),
        "digest": release.body.digest().to_string(),
        "file": release.body_file().display().to_string(),
        "outcome": outcome,
        "version": version,
        "error": error,
    })
}
