//! Export and import of archives.

use crate::domain::archive::Archive;
use crate::domain::{NamespaceScope, RequestContext, Result};
use crate::storage::Imported;

use super::PolicyHub;

impl PolicyHub {
    /// The namespaces of `scope` as one archive, read in one snapshot.
    #[tracing::instrument(name = "hub.export", skip_all)]
    pub async fn export(&self, scope: &NamespaceScope) -> Result<Archive> {
        self.repository.export(scope).await
    }

    /// Checks `archive` and loads it into empty namespaces, recording
    /// `source` (what the archive is) in the IMPORTED event; the loaded
    /// policies are served once this returns.
    #[tracing::instrument(name = "hub.import", skip_all)]
    pub async fn import(
        &self,
        context: &RequestContext,
        archive: &Archive,
        source: &str,
    ) -> Result<Imported> {
        let archive = archive.check()?;
        let imported = self.repository.import(context, archive, source).await?;
        if let Err(error) = self.catch_up().await {
            // The import stands; the next catch-up serves it.
            tracing::warn!(%error, "cannot catch up the active index after an import");
        }
        Ok(imported)
    }
}
