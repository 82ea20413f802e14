//! Reading a sync checkout, `policies/<name>/v<semver>/` with
//! `metadata.json` and `policy-definition.yaml` in each, validated whole so
//! that nothing is published while any file is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::lifecycle::parse_body;
use crate::domain::{Label, Namespace, PolicyBody, PolicyName, PolicyRef, Requirement};

/// The directory under the checkout that holds one directory per policy.
const POLICIES_DIR: &str = "policies";
/// Each release's metadata.
const METADATA_FILE: &str = "metadata.json";
/// Each release's body.
const BODY_FILE: &str = "policy-definition.yaml";

/// One `policies/<name>/v<semver>/` directory.
#[derive(Debug)]
pub struct Release {
    /// `namespace` from the metadata, `name` from the policy's directory.
    pub policy: PolicyRef,
    /// The directory's semantic version.
    pub label: Label,
    /// The label's precedence: the highest is the newest release.
    pub precedence: semver::Version,
    /// The policy document.
    pub body: PolicyBody,
    /// The metadata's description, kept in the draft's change notes.
    pub description: String,
    /// The metadata's requirements.
    pub requirements: Vec<Requirement>,
    /// The release's directory, to name its files in messages.
    pub dir: PathBuf,
}

impl Release {
    /// The file holding the body.
    pub fn body_file(&self) -> PathBuf {
        self.dir.join(BODY_FILE)
    }

    fn metadata_file(&self) -> PathBuf {
        self.dir.join(METADATA_FILE)
    }
}

/// `metadata.json`. Other members (owners, tags, …) are the checkout's own
/// business and are ignored.
#[derive(Debug, Deserialize)]
struct Metadata {
    /// The policy's namespace; the same in every release of a policy.
    namespace: String,
    /// What the release is; becomes the draft's change notes.
    #[serde(default)]
    description: String,
    /// When present, must repeat the policy's directory name.
    name: Option<String>,
    /// When present, must repeat the release's directory name, with or
    /// without its `v`.
    version: Option<String>,
    /// Policies of the namespace the release needs active beside it: name
    /// to semver range, such as `{"discovery": ">=1.5.0, <2"}`.
    #[serde(default)]
    requirements: BTreeMap<String, String>,
}

/// Every release under `dir/policies`, ordered by policy and then by label
/// precedence; or every problem found, each naming its file.
pub fn read(dir: &Path) -> Result<Vec<Release>, Vec<String>> {
    let root = dir.join(POLICIES_DIR);
    let policy_dirs = subdirectories(&root).map_err(|error| {
        vec![format!(
            "{}: {error}; a sync checkout holds {POLICIES_DIR}/<name>/v<semver>/",
            root.display()
        )]
    })?;
    let mut problems = Vec::new();
    let mut releases = Vec::new();
    for policy_dir in policy_dirs {
        releases.extend(read_policy(&policy_dir, &mut problems));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    releases.sort_by(|a, b| (&a.policy, &a.precedence).cmp(&(&b.policy, &b.precedence)));
    Ok(required_first(releases))
}

/// Moves the releases of each policy after those of the policies it
/// requires (Publish wants a release in each range to exist already),
/// keeping the policy-then-precedence order otherwise. A cycle is left for
/// the server to refuse, naming it.
fn required_first(releases: Vec<Release>) -> Vec<Release> {
    let mut requires: BTreeMap<&PolicyRef, BTreeSet<PolicyRef>> = BTreeMap::new();
    for release in &releases {
        let required = release.requirements.iter().map(|requirement| PolicyRef {
            namespace: release.policy.namespace.clone(),
            name: requirement.name.clone(),
        });
        requires
            .entry(&release.policy)
            .or_default()
            .extend(required);
    }
    fn visit(
        policy: &PolicyRef,
        requires: &BTreeMap<&PolicyRef, BTreeSet<PolicyRef>>,
        visiting: &mut BTreeSet<PolicyRef>,
        order: &mut Vec<PolicyRef>,
    ) {
        if order.contains(policy) || !visiting.insert(policy.clone()) {
            return;
        }
        for required in requires.get(policy).into_iter().flatten() {
            visit(required, requires, visiting, order);
        }
        order.push(policy.clone());
    }
    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    for policy in requires.keys() {
        visit(policy, &requires, &mut visiting, &mut order);
    }
    let rank = |policy: &PolicyRef| order.iter().position(|ordered| ordered == policy);
    let mut releases = releases;
    releases.sort_by_key(|release| rank(&release.policy));
    releases
}

/// The directories inside `dir`, by name; hidden ones (`.git`) are skipped.
fn subdirectories(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The releases of one policy directory, which must share a namespace.
fn read_policy(policy_dir: &Path, problems: &mut Vec<String>) -> Vec<Release> {
    let name = match PolicyName::parse("name", &file_name(policy_dir)) {
        Ok(name) => name,
        Err(error) => {
            problems.push(format!("{}: {error}", policy_dir.display()));
            return Vec::new();
        }
    };
    let version_dirs = match subdirectories(policy_dir) {
        Ok(dirs) if dirs.is_empty() => {
            problems.push(format!(
                "{}: holds no release directory such as v1.0.0/",
                policy_dir.display()
            ));
            return Vec::new();
        }
        Ok(dirs) => dirs,
        Err(error) => {
            problems.push(format!("{}: {error}", policy_dir.display()));
            return Vec::new();
        }
    };
    let releases: Vec<Release> = version_dirs
        .iter()
        .filter_map(|version_dir| read_release(&name, version_dir, problems))
        .collect();
    if let Some(first) = releases.first() {
        for release in releases.iter().filter(|r| r.policy != first.policy) {
            problems.push(format!(
                "{}: namespace {:?} differs from {:?} in {}; every release of a policy has one namespace",
                release.metadata_file().display(),
                release.policy.namespace.as_str(),
                first.policy.namespace.as_str(),
                first.metadata_file().display(),
            ));
        }
    }
    releases
}

/// The label of a release directory, `v<semver>`.
fn release_label(version_dir: &Path) -> Result<(Label, semver::Version), String> {
    let dir_name = file_name(version_dir);
    let text = dir_name.strip_prefix('v').ok_or_else(|| {
        format!(
            "{}: a release directory is named v<semver>, such as v1.0.0",
            version_dir.display()
        )
    })?;
    let problem = |error: String| format!("{}: {error}", version_dir.display());
    let precedence = semver::Version::parse(text).map_err(|error| {
        problem(format!(
            "{text:?} is not a semantic version such as 1.0.0: {error}"
        ))
    })?;
    let label = Label::parse("label", text).map_err(|error| problem(error.to_string()))?;
    Ok((label, precedence))
}

/// One release, or `None` with its problems recorded.
fn read_release(
    name: &PolicyName,
    version_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<Release> {
    // A directory that is not a release is reported alone, not for its files.
    let (label, precedence) = release_label(version_dir)
        .map_err(|problem| problems.push(problem))
        .ok()?;
    let metadata_file = version_dir.join(METADATA_FILE);
    let namespace = read_metadata(&metadata_file)
        .and_then(|metadata| check_metadata(metadata, name, &file_name(version_dir)))
        .map_err(|problem| problems.push(format!("{}: {problem}", metadata_file.display())));
    let body_file = version_dir.join(BODY_FILE);
    let body = read_file(&body_file)
        .map_err(|problem| anyhow::anyhow!("{}: {problem}", body_file.display()))
        .and_then(|text| parse_body(&body_file, &text))
        .map_err(|error| problems.push(format!("{error:#}")));
    let ((namespace, description, requirements), body) = (namespace.ok()?, body.ok()?);
    Some(Release {
        policy: PolicyRef {
            namespace,
            name: name.clone(),
        },
        label,
        precedence,
        body,
        description,
        requirements,
        dir: version_dir.to_owned(),
    })
}

/// A release's file, or what is wrong with it.
fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => {
            format!("is missing: every release directory holds {METADATA_FILE} and {BODY_FILE}")
        }
        _ => error.to_string(),
    })
}

fn read_metadata(path: &Path) -> Result<Metadata, String> {
    serde_json::from_str(&read_file(path)?).map_err(|error| format!("not valid metadata: {error}"))
}

/// The namespace and description of valid metadata.
fn check_metadata(
    metadata: Metadata,
    name: &PolicyName,
    dir_name: &str,
) -> Result<(Namespace, String, Vec<Requirement>), String> {
    let namespace =
        Namespace::parse("namespace", &metadata.namespace).map_err(|error| error.to_string())?;
    if let Some(declared) = metadata.name.filter(|declared| declared != name.as_str()) {
        return Err(format!(
            "name {declared:?} differs from the policy's directory name {name:?}",
            name = name.as_str()
        ));
    }
    let version = metadata.version.unwrap_or_default();
    if !version.is_empty() && dir_name.trim_start_matches('v') != version.trim_start_matches('v') {
        return Err(format!(
            "version {version:?} differs from the release's directory name {dir_name:?}"
        ));
    }
    let requirements = Requirement::parse_all(&namespace, metadata.requirements)
        .map_err(|error| error.to_string())?;
    Ok((namespace, metadata.description, requirements))
}
