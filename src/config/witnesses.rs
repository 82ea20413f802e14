//! The witnesses the server submits its checkpoints to (C2SP
//! tlog-witness), and how long a revision waits for their cosignatures
//! before watch streams receive it.

use serde::{Deserialize, Serialize};

/// A witness: where it listens and the key its cosignatures verify with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSettings {
    /// What logs and metrics call it (the `witness` label); its key's name
    /// when unset.
    #[serde(default)]
    pub name: Option<String>,
    /// Required: its base URL (`http://` or `https://`); checkpoints are
    /// posted to `<url>/add-checkpoint`.
    pub url: String,
    /// Required: its C2SP verifier key, `<name>+<key id>+<base64>`, as
    /// `policyhub witness` prints it: a cosignature it answers is stored only when it
    /// verifies with this key.
    pub key: String,
}

impl WitnessSettings {
    /// The name of its key: the name its cosignature lines carry.
    pub fn key_name(&self) -> &str {
        self.key.split('+').next().unwrap_or_default()
    }

    /// What logs and metrics call it.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or_else(|| self.key_name())
    }

    /// The URL its checkpoints are posted to.
    pub fn add_checkpoint_url(&self) -> String {
        format!("{}/add-checkpoint", self.url.trim_end_matches('/'))
    }
}

/// Checks every witness's URL and key, and that no two share a key name
/// (a note's cosignature lines are told apart by it); the error names the
/// entry.
pub fn check(witnesses: &[WitnessSettings]) -> anyhow::Result<()> {
    for (index, witness) in witnesses.iter().enumerate() {
        let entry = || {
            format!(
                "audit.witnesses[{index}] ({})",
                witness.name.as_deref().unwrap_or(&witness.url)
            )
        };
        let url = url::Url::parse(&witness.url)
            .map_err(|error| anyhow::anyhow!("{}: url {:?}: {error}", entry(), witness.url))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https")
                && url.host().is_some()
                && url.query().is_none()
                && url.fragment().is_none(),
            "{}: url {:?} is not an http:// or https:// base URL",
            entry(),
            witness.url
        );
        policyhub_runtime::cosignature::CosignatureVerifier::new(&witness.key)
            .map_err(|error| anyhow::anyhow!("{}: key: {error}", entry()))?;
        if let Some(name) = &witness.name {
            anyhow::ensure!(!name.trim().is_empty(), "{}: an empty name", entry());
        }
        let twin = witnesses[..index]
            .iter()
            .any(|earlier| earlier.key_name() == witness.key_name());
        anyhow::ensure!(
            !twin,
            "{}: another witness has a key named {:?}",
            entry(),
            witness.key_name()
        );
    }
    Ok(())
}
