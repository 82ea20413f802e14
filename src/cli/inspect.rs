//! The reading commands: `get-active`, `get-version`, `list-versions`,
//! `list-policies`, `get-signing-keys`, `whoami`, `auth can-i`.

use std::{future::Future, process::ExitCode};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::ClientCommand;
use super::args::{parse_label, parse_namespace, parse_policy};
use super::connection::AuthChannel;
use super::failure::{Reply, Unusable, Usage, What};
use super::json::{self, state_name};
use super::output::{
    Output, Table, or_dash, print_message, requirement_pairs, requirements_text, short_digest,
    time_text, version_or_dash,
};
use crate::domain::{Label, Namespace, PolicyRef};
use crate::grpc::{
    convert::{json_to_struct, jwks, timestamp},
    proto::{
        self, bundle_service_client::BundleServiceClient, get_active_request::AsOf,
        get_version_request::Selector, policy_service_client::PolicyServiceClient,
    },
};
use policyhub_runtime::bundle::{Envelope, verify_envelope};

/// Arguments of `policyhub get-active`.
#[derive(Debug, clap::Args)]
pub struct GetActiveArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The bundle that was active once this revision was applied.
    #[arg(long, conflicts_with = "as_of_time")]
    as_of_revision: Option<u64>,
    /// The bundle that was active at this instant (RFC 3339).
    #[arg(long)]
    as_of_time: Option<DateTime<Utc>>,
    /// When nothing is active, show the open draft (unsigned: never enforce
    /// it) instead of failing.
    #[arg(long, conflicts_with_all = ["as_of_revision", "as_of_time"])]
    allow_draft_fallback: bool,
}

/// Arguments of `policyhub get-policy`.
#[derive(Debug, clap::Args)]
pub struct GetPolicyArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
}

/// Arguments of `policyhub get-version`.
///
/// The selector is a group of its own: a `#[group]` on the struct would
/// name the struct's group, which `policy` alone satisfies.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("selector").required(true).multiple(false)))]
pub struct GetVersionArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The version number.
    #[arg(long, group = "selector")]
    version: Option<u32>,
    /// The version released under this label.
    #[arg(long, value_parser = parse_label, group = "selector")]
    label: Option<Label>,
}

/// How many items a listing shows.
#[derive(Debug, clap::Args)]
pub struct Limit {
    /// Show at most this many, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// Arguments of `policyhub list-versions`.
#[derive(Debug, clap::Args)]
pub struct ListVersionsArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    #[command(flatten)]
    limit: Limit,
}

/// Arguments of `policyhub list-policies`.
#[derive(Debug, clap::Args)]
pub struct ListPoliciesArgs {
    /// Only this namespace; by default every namespace you may read.
    #[arg(value_parser = parse_namespace)]
    namespace: Option<Namespace>,
    #[command(flatten)]
    limit: Limit,
}

/// Fetches pages until `limit` items or the last page, and warns on
/// standard error when there were more. `fetch` takes a page size and token
/// and returns the items and the next token.
pub async fn collect<T, F, Fut>(limit: u32, mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(u32, String) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let wanted = limit.saturating_sub(items.len() as u32).min(500);
        let (page, next_page_token) = fetch(wanted, page_token).await?;
        items.extend(page);
        if next_page_token.is_empty() {
            return Ok(items);
        }
        if items.len() >= limit as usize {
            eprintln!("showing the first {limit}; pass --limit to see more");
            return Ok(items);
        }
        page_token = next_page_token;
    }
}

impl ClientCommand for GetVersionArgs {
    /// `policyhub get-version`: one version.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        // clap's group refuses neither and both; the match stays total without
        // a panic all the same.
        let selector = match (self.version, &self.label) {
            (Some(number), _) => Selector::Version(number),
            (None, Some(label)) => Selector::Label(label.to_string()),
            (None, None) => {
                return Err(
                    Usage::new("give --version or --label", "name the version to show").into(),
                );
            }
        };
        let version = PolicyServiceClient::new(channel)
            .get_version(proto::GetVersionRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                selector: Some(selector),
            })
            .await
            .reply(format!("reading {}", self.policy))?;
        if output == Output::Json {
            print_message(&version);
            return Ok(ExitCode::SUCCESS);
        }
        outln!("{} version {}", self.policy, version.version);
        let mut facts = vec![
            ("state", state_line(&version)),
            ("label", or_dash(&version.label)),
            ("digest", version.digest.clone()),
            (
                "created",
                format!(
                    "{} by {}",
                    time_text(version.created_at),
                    version.created_by
                ),
            ),
        ];
        if !version.published_by.is_empty() {
            facts.push((
                "published",
                format!(
                    "{} by {}, signed by {}",
                    time_text(version.published_at),
                    version.published_by,
                    version.key_id
                ),
            ));
        }
        facts.push(("change notes", or_dash(&version.change_notes)));
        facts.push((
            "requires",
            or_dash(&requirements_text(requirement_pairs(&version.requirements))),
        ));
        print_facts(&facts);
        print_body(&json::body(version.body)?);
        Ok(ExitCode::SUCCESS)
    }
}

impl ClientCommand for GetPolicyArgs {
    /// `policyhub get-policy`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let policy = PolicyServiceClient::new(channel)
            .get_policy(proto::GetPolicyRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
            })
            .await
            .reply(format!("reading {}", self.policy))?;
        if output == Output::Json {
            print_message(&policy);
            return Ok(ExitCode::SUCCESS);
        }
        outln!("{}", self.policy);
        let active = match (policy.active_version, policy.active_label.as_str()) {
            (0, _) => "-".to_owned(),
            (version, "") => format!("{version} (revision {})", policy.active_revision),
            (version, label) => format!("{version} {label} (revision {})", policy.active_revision),
        };
        let fleet = policy.fleet.unwrap_or_default();
        print_facts(&[
            ("active", active),
            ("draft", version_or_dash(policy.draft_version)),
            ("latest", policy.latest_version.to_string()),
            (
                "runtimes",
                format!(
                    "{} applied, {} rejected, {} pending, {} stale of {}",
                    fleet.applied, fleet.rejected, fleet.pending, fleet.stale, fleet.runtimes
                ),
            ),
        ]);
        match policy.schema {
            Some(schema) => outln!(
                "schema:\n{}",
                serde_json::to_string_pretty(&json::body(Some(schema))?)
                    .expect("a JSON value always serializes")
            ),
            None => outln!("schema: none"),
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn state_line(version: &proto::Version) -> String {
    let state = state_name(version.state());
    if version.active {
        format!("{state}, active")
    } else {
        state.to_owned()
    }
}

/// Prints `name  value` lines, the values aligned.
fn print_facts(facts: &[(&str, String)]) {
    let width = facts.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, value) in facts {
        outln!("  {name:<width$}  {value}");
    }
}

fn print_body(body: &Value) {
    outln!(
        "body:\n{}",
        serde_json::to_string_pretty(body).expect("a JSON value always serializes")
    );
}

/// The active bundle, verified against the server's JWKS; an unsigned
/// draft (with --draft-fallback) carries its body in the clear.
impl ClientCommand for GetActiveArgs {
    /// `policyhub get-active`: the active bundle, verified.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let as_of = match (self.as_of_revision, self.as_of_time) {
            (Some(revision), _) => Some(AsOf::AsOfRevision(revision)),
            (None, Some(at)) => Some(AsOf::AsOfTime(timestamp(at))),
            (None, None) => None,
        };
        let bundle = BundleServiceClient::new(channel.clone())
            .get_active(proto::GetActiveRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                as_of,
                allow_draft_fallback: self.allow_draft_fallback,
                runtime: None,
                ..Default::default()
            })
            .await
            .reply(format!("reading the active bundle of {}", self.policy))?;
        let body = if bundle.draft {
            json::body(bundle.body.clone())?
        } else {
            let keys = BundleServiceClient::new(channel)
                .get_signing_keys(proto::GetSigningKeysRequest {})
                .await
                .reply("fetching the signing keys")?;
            let envelope = Envelope {
                namespace: &bundle.namespace,
                name: &bundle.name,
                version: bundle.version,
                digest: &bundle.digest,
            };
            verify_envelope(&bundle.jws, &envelope, &jwks(&keys))
                .map_err(|reason| {
                    Unusable::new(
                        What::ServedBundle,
                        format!(
                            "bundle of {} version {} does not verify: {reason}",
                            self.policy, bundle.version
                        ),
                    )
                })?
                .body
        };
        if output == Output::Json {
            // The reply, with the body its signature was verified for.
            print_message(&proto::Bundle {
                body: Some(json_to_struct(&body)),
                ..bundle
            });
            return Ok(ExitCode::SUCCESS);
        }
        let signature = if bundle.draft {
            outln!(
                "{} has nothing active; its open draft, version {}:",
                self.policy,
                bundle.version
            );
            "none: a draft, never enforce it".to_owned()
        } else {
            outln!(
                "{} version {} is active since revision {}",
                self.policy,
                bundle.version,
                bundle.revision
            );
            format!("verified, key {}", bundle.key_id)
        };
        print_facts(&[
            ("signature", signature),
            ("label", or_dash(&bundle.label)),
            ("digest", bundle.digest.clone()),
        ]);
        print_body(&body);
        Ok(ExitCode::SUCCESS)
    }
}

impl ClientCommand for ListVersionsArgs {
    /// `policyhub versions`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let client = PolicyServiceClient::new(channel);
        let versions = collect(self.limit.limit, |page_size, page_token| {
            let mut client = client.clone();
            let request = proto::ListVersionsRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                page_size,
                page_token,
            };
            let action = format!("listing the versions of {}", self.policy);
            async move {
                let page = client.list_versions(request).await.reply(action)?;
                Ok((page.versions, page.next_page_token))
            }
        })
        .await?;
        if output == Output::Json {
            print_message(&proto::ListVersionsResponse {
                versions,
                next_page_token: String::new(),
            });
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&[
            "VERSION",
            "STATE",
            "LABEL",
            "ACTIVE",
            "DIGEST",
            "CREATED",
            "BY",
            "CHANGE NOTES",
        ]);
        for version in &versions {
            table.row(vec![
                version.version.to_string(),
                state_name(version.state()).to_owned(),
                or_dash(&version.label),
                if version.active { "*" } else { "" }.to_owned(),
                short_digest(&version.digest),
                time_text(version.created_at),
                version.created_by.clone(),
                version
                    .change_notes
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}

impl ClientCommand for ListPoliciesArgs {
    /// `policyhub policies`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let client = PolicyServiceClient::new(channel);
        let namespace = self.namespace.map(String::from).unwrap_or_default();
        let policies = collect(self.limit.limit, |page_size, page_token| {
            let mut client = client.clone();
            let request = proto::ListPoliciesRequest {
                namespace: namespace.clone(),
                page_size,
                page_token,
            };
            async move {
                let page = client
                    .list_policies(request)
                    .await
                    .reply("listing policies")?;
                Ok((page.policies, page.next_page_token))
            }
        })
        .await?;
        if output == Output::Json {
            print_message(&proto::ListPoliciesResponse {
                policies,
                next_page_token: String::new(),
            });
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&["POLICY", "ACTIVE", "REVISION", "DRAFT", "LATEST", "SCHEMA"]);
        for policy in &policies {
            table.row(vec![
                format!("{}/{}", policy.namespace, policy.name),
                version_or_dash(policy.active_version),
                match policy.active_revision {
                    0 => "-".to_owned(),
                    revision => revision.to_string(),
                },
                version_or_dash(policy.draft_version),
                policy.latest_version.to_string(),
                if policy.schema.is_some() { "yes" } else { "no" }.to_owned(),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}

/// `policyhub get-signing-keys`: the JWKS.
/// Arguments of `policyhub get-signing-keys`: none.
#[derive(Debug, clap::Args)]
pub struct GetSigningKeysArgs {}

impl ClientCommand for GetSigningKeysArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let keys = BundleServiceClient::new(channel)
            .get_signing_keys(proto::GetSigningKeysRequest {})
            .await
            .reply("fetching the signing keys")?;
        if output == Output::Json {
            print_message(&keys);
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&["KEY ID", "ALGORITHM", "CURVE", "SIGNS NEW VERSIONS"]);
        for key in &keys.keys {
            table.row(vec![
                key.kid.clone(),
                key.alg.clone(),
                key.crv.clone(),
                if key.kid == keys.signing_key_id {
                    "yes"
                } else {
                    ""
                }
                .to_owned(),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `policyhub whoami`.
#[derive(Debug, clap::Args)]
pub struct WhoamiArgs {
    /// List the methods the token may call in this namespace.
    namespace: Option<String>,
}

impl ClientCommand for WhoamiArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let namespace = self.namespace.unwrap_or_default();
        let me = PolicyServiceClient::new(channel)
            .who_am_i(proto::WhoAmIRequest {
                namespace: namespace.clone(),
            })
            .await
            .reply("asking who the token speaks for")?;
        if output == Output::Json {
            print_message(&me);
            return Ok(ExitCode::SUCCESS);
        }
        outln!("subject: {}", me.subject);
        outln!("issuer:  {}", me.issuer);
        outln!("grants:  {}", me.grants.join(", "));
        for held in &me.held_grants {
            outln!("  {} from {}", held.grant, held.granted_by);
        }
        if !namespace.is_empty() {
            let allowed = if me.allowed_methods.is_empty() {
                "nothing".to_owned()
            } else {
                me.allowed_methods.join(", ")
            };
            outln!("may call in {namespace}: {allowed}");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `policyhub auth can-i`.
#[derive(Debug, clap::Args)]
pub struct CanIArgs {
    /// The method.
    method: String,
    /// The namespace.
    namespace: Option<String>,
}

impl ClientCommand for CanIArgs {
    /// Yes (exit 0) or no (exit 1), and why.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let answer = PolicyServiceClient::new(channel)
            .check_access(proto::CheckAccessRequest {
                method: self.method,
                namespace: self.namespace.unwrap_or_default(),
            })
            .await
            .reply("asking what the token may do")?;
        if output == Output::Json {
            print_message(&answer);
        } else {
            outln!("{}", if answer.allowed { "yes" } else { "no" });
            outln!("{}", answer.reason);
        }
        Ok(if answer.allowed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collecting_stops_at_the_limit_or_the_last_page() {
        let pages = |page_size: u32, token: String| async move {
            // Seven items, served at most three a page.
            let start: u32 = token.parse().unwrap_or(0);
            let end = (start + page_size.min(3)).min(7);
            let next = if end < 7 {
                end.to_string()
            } else {
                String::new()
            };
            Ok(((start..end).collect::<Vec<u32>>(), next))
        };
        assert_eq!(collect(100, pages).await.unwrap(), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(collect(4, pages).await.unwrap().len(), 4);
    }
}
