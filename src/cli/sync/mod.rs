//! `policyhub sync DIR`: publishes the releases of a checkout laid out as
//! `policies/<name>/v<semver>/{metadata.json,policy-definition.yaml}`.
//!
//! The server is the source of truth, so there is no local state: each
//! release is looked up by label. Not in the hub: it is drafted and
//! published under its label. In the hub with the same digest: skipped, it
//! was delivered before. In the hub with another digest: an error, since
//! released versions are immutable. Everything is validated before anything
//! is published, and a re-run after a failure publishes exactly what is
//! missing. Idempotency keys make a retry after a lost reply safe.

mod checkout;
mod report;

use std::{future::Future, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::{Code, Response, Status};

use self::checkout::Release;
use self::report::{Report, print_outcome};
use super::connection::{AuthChannel, Connection};
use super::failure::{Refused, Reply, Unusable, What};
use super::lifecycle::no_version;
use super::output::{Output, print_json};
use crate::domain::Digest;
use crate::grpc::{
    convert::{self, json_to_struct},
    proto::{self, policy_service_client::PolicyServiceClient},
};

/// Arguments of `policyhub sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The checkout: a directory holding policies/<name>/v<semver>/.
    dir: PathBuf,
    /// Then make the newest release of every policy in the checkout active,
    /// all in one atomic activation.
    #[arg(long)]
    activate: bool,
    /// Show what would be published and activated; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Recorded in the event log; by default names the commit.
    #[arg(long)]
    reason: Option<String>,
}

/// What became of one release.
#[derive(Debug)]
enum Outcome {
    /// Not in the hub yet; a dry run stops here.
    Planned,
    /// Published by this run as this version.
    Delivered(u32),
    /// Already in the hub as this version, with the same digest.
    Skipped(u32),
    /// Refused, or the server went away.
    Failed(anyhow::Error),
    /// Not tried because an earlier release failed.
    NotAttempted,
}

/// A release and what became of it.
#[derive(Debug)]
struct Entry {
    release: Release,
    outcome: Outcome,
}

/// The server keeps idempotency keys of at most this many bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// `policyhub sync`.
pub async fn run(
    connection: &Connection,
    output: Output,
    args: SyncArgs,
) -> anyhow::Result<ExitCode> {
    // The checkout is checked before the server is involved.
    let releases = checkout::read(&args.dir).map_err(invalid)?;
    let commit = clean_commit(&args.dir);
    let reason = args.reason.clone().unwrap_or_else(|| match &commit {
        Some(commit) => format!("policyhub sync of commit {commit}"),
        None => "policyhub sync".to_owned(),
    });
    let mut client = PolicyServiceClient::new(connection.connect().await?);
    let mut entries = plan(&mut client, releases).await?;
    let activation = if args.dry_run {
        None
    } else {
        deliver_all(
            &mut client,
            &mut entries,
            commit.as_deref(),
            &reason,
            output,
        )
        .await;
        let delivered_all = !entries
            .iter()
            .any(|entry| matches!(entry.outcome, Outcome::Failed(_)));
        if args.activate && delivered_all && !entries.is_empty() {
            Some(activate_newest(&mut client, &entries, &reason).await)
        } else {
            None
        }
    };
    let report = Report {
        args: &args,
        commit: commit.as_deref(),
        entries: &entries,
        activation: activation.as_ref(),
    };
    match output {
        Output::Json => print_json(&report.json()),
        Output::Table => report.print(),
    }
    Ok(report.exit_code())
}

/// The error listing every problem, each naming its file.
fn invalid(problems: Vec<String>) -> anyhow::Error {
    Unusable::new(
        What::Checkout,
        format!(
            "nothing was published, because the checkout is not valid:\n  {}",
            problems.join("\n  ")
        ),
    )
    .into()
}

/// The commit `dir` is checked out at, when git reports no uncommitted
/// change under it: only then does the commit name what is published.
fn clean_commit(dir: &std::path::Path) -> Option<String> {
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    git(&["status", "--porcelain", "--", "."])?
        .is_empty()
        .then_some(commit)
}

/// The version released under a release's label, if any.
async fn released_version(
    client: &mut PolicyServiceClient<AuthChannel>,
    release: &Release,
) -> anyhow::Result<Option<proto::Version>> {
    let request = proto::GetVersionRequest {
        namespace: release.policy.namespace.to_string(),
        name: release.policy.name.to_string(),
        selector: Some(proto::get_version_request::Selector::Label(
            release.label.to_string(),
        )),
    };
    match client.get_version(request).await {
        Ok(version) => Ok(Some(version.into_inner())),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(Refused::new(
            format!("looking up {} {}", release.policy, release.label),
            status,
        )
        .into()),
    }
}

/// Compares every release with the hub; a released label whose digest
/// differs fails the whole sync before anything is published.
async fn plan(
    client: &mut PolicyServiceClient<AuthChannel>,
    releases: Vec<Release>,
) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut conflicts = Vec::new();
    for release in releases {
        let outcome = match released_version(client, &release).await? {
            None => Outcome::Planned,
            Some(version) if version.digest == release.body.digest().as_str() => {
                Outcome::Skipped(version.version)
            }
            Some(version) => {
                conflicts.push(format!(
                    "{}: released versions are immutable; bump the version: {} {} is version {} \
                     in the hub with digest {}, the file's digest is {}",
                    release.body_file().display(),
                    release.policy,
                    release.label,
                    version.version,
                    version.digest,
                    release.body.digest()
                ));
                continue;
            }
        };
        entries.push(Entry { release, outcome });
    }
    if !conflicts.is_empty() {
        return Err(invalid(conflicts));
    }
    Ok(entries)
}

/// Delivers the planned releases in order, stopping at the first failure:
/// a re-run picks up from there.
async fn deliver_all(
    client: &mut PolicyServiceClient<AuthChannel>,
    entries: &mut [Entry],
    commit: Option<&str>,
    reason: &str,
    output: Output,
) {
    let planned = entries
        .iter()
        .filter(|entry| matches!(entry.outcome, Outcome::Planned))
        .count();
    let bar = match output {
        Output::Table => ProgressBar::new(planned as u64),
        Output::Json => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("the progress template is valid"),
    );
    let mut failed = false;
    for entry in entries
        .iter_mut()
        .filter(|entry| matches!(entry.outcome, Outcome::Planned))
    {
        if failed {
            entry.outcome = Outcome::NotAttempted;
            continue;
        }
        let release = &entry.release;
        bar.set_message(format!("{} {}", release.policy, release.label));
        entry.outcome = match deliver(client, release, commit, reason).await {
            Ok(published) if published.already_published => Outcome::Skipped(published.version),
            Ok(published) => Outcome::Delivered(published.version),
            Err(error) => Outcome::Failed(error),
        };
        failed = matches!(entry.outcome, Outcome::Failed(_));
        if output == Output::Table {
            bar.suspend(|| print_outcome(entry));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
}

/// The number and state of a published version.
struct Published {
    version: u32,
    already_published: bool,
}

/// Drafts and publishes one release, under one idempotency key.
async fn deliver(
    client: &mut PolicyServiceClient<AuthChannel>,
    release: &Release,
    commit: Option<&str>,
    reason: &str,
) -> anyhow::Result<Published> {
    let key = idempotency_key(release, commit);
    let draft = proto::DraftRequest {
        namespace: release.policy.namespace.to_string(),
        name: release.policy.name.to_string(),
        body: Some(json_to_struct(release.body.value())),
        change_notes: change_notes(release, commit),
        idempotency_key: key.clone(),
        requirements: convert::requirements(&release.requirements),
    };
    let drafted = patiently(|| {
        let (mut client, draft) = (client.clone(), draft.clone());
        async move { client.draft(draft).await }
    })
    .await
    .reply(format!("drafting {} {}", release.policy, release.label))?;
    let publish = proto::PublishRequest {
        namespace: release.policy.namespace.to_string(),
        name: release.policy.name.to_string(),
        version: Some(drafted.version.context(no_version())?.version),
        label: release.label.to_string(),
        activate: false,
        expected_active_version: None,
        expected_active_revision: None,
        reason: reason.to_owned(),
        idempotency_key: key,
    };
    let published = patiently(|| {
        let (mut client, publish) = (client.clone(), publish.clone());
        async move { client.publish(publish).await }
    })
    .await
    .reply_to_publish_only(format!("publishing {} {}", release.policy, release.label))?;
    Ok(Published {
        version: published.version.context(no_version())?.version,
        already_published: published.already_published,
    })
}

/// One key per release and content: from the commit and the release, or,
/// outside a clean git checkout, from the body's digest and the release.
/// Keys are scoped per method, so the draft and the publish share it.
fn idempotency_key(release: &Release, commit: Option<&str>) -> String {
    let source = commit.unwrap_or(release.body.digest().as_str());
    let key = format!("sync:{source}:{}@{}", release.policy, release.label);
    if key.len() <= MAX_IDEMPOTENCY_KEY_BYTES {
        key
    } else {
        // Only names near their 253-character limit get here.
        format!("sync:{}", Digest::of_canonical(key.as_bytes()))
    }
}

/// The metadata's description, and where the release came from.
fn change_notes(release: &Release, commit: Option<&str>) -> String {
    let provenance = match commit {
        Some(commit) => format!("synced from commit {commit}"),
        None => "synced by policyhub sync".to_owned(),
    };
    if release.description.is_empty() {
        provenance
    } else {
        format!("{}\n\n{provenance}", release.description)
    }
}

/// How long the server's mutation quota asks to wait: the
/// `google.rpc.RetryInfo` of its RESOURCE_EXHAUSTED refusal.
fn quota_wait(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let delay = tonic_types::StatusExt::get_details_retry_info(status)?.retry_delay?;
    Some(delay.clamp(Duration::from_millis(50), Duration::from_secs(60)))
}

/// Makes a call, waiting and retrying while the server's mutation quota
/// refuses it: a large first sync outruns any per-second budget, and a
/// refused call changed nothing.
async fn patiently<T, F, Fut>(mut call: F) -> Result<Response<T>, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Response<T>, Status>>,
{
    loop {
        let status = match call().await {
            Ok(reply) => return Ok(reply),
            Err(status) => status,
        };
        let Some(wait) = quota_wait(&status) else {
            return Err(status);
        };
        tokio::time::sleep(wait).await;
    }
}

/// Activates the newest release of every policy in one call, so that they
/// all move under one revision or none does.
async fn activate_newest(
    client: &mut PolicyServiceClient<AuthChannel>,
    entries: &[Entry],
    reason: &str,
) -> anyhow::Result<proto::ActivateResponse> {
    let targets = newest(entries)
        .map(|release| proto::ActivationTarget {
            namespace: release.policy.namespace.to_string(),
            name: release.policy.name.to_string(),
            selector: Some(proto::activation_target::Selector::Label(
                release.label.to_string(),
            )),
            expected_active_version: None,
            expected_active_revision: None,
        })
        .collect();
    let request = proto::ActivateRequest {
        targets,
        reason: reason.to_owned(),
        idempotency_key: String::new(),
    };
    Ok(patiently(|| {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.activate(request).await }
    })
    .await
    .reply("activating the newest releases")?)
}

/// The newest release of each policy; entries are ordered by policy and
/// then by label precedence.
fn newest(entries: &[Entry]) -> impl Iterator<Item = &Release> {
    entries
        .iter()
        .enumerate()
        .filter(|(index, entry)| {
            entries
                .get(index + 1)
                .is_none_or(|next| next.release.policy != entry.release.policy)
        })
        .map(|(_, entry)| &entry.release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_refusal_says_how_long_to_wait() {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(400)));
        let refusal =
            Status::with_error_details(Code::ResourceExhausted, "over the quota", details.clone());
        assert_eq!(quota_wait(&refusal), Some(Duration::from_millis(400)));
        let too_large = Status::resource_exhausted("body is 2000000 bytes, over the limit");
        assert_eq!(quota_wait(&too_large), None);
        assert_eq!(
            quota_wait(&Status::with_error_details(Code::Aborted, "x", details)),
            None
        );
    }
}
