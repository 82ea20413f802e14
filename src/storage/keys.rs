//! The public keys that ever signed: stored once, never removed.

use std::collections::HashSet;

use sea_orm::{ActiveValue::Set, EntityTrait, Order, QueryOrder, QuerySelect};

use super::entities::signing_keys;
use super::transaction::{Repository, Transaction};
use crate::domain::Result;
use crate::signing::Jwk;

impl Transaction {
    /// Stores the public keys not stored yet: a stored key is history, and
    /// the database refuses an insert that collides with it.
    pub async fn store_public_keys(&self, keys: &[Jwk]) -> Result<()> {
        let stored: HashSet<String> = signing_keys::Entity::find()
            .select_only()
            .column(signing_keys::Column::KeyId)
            .into_tuple::<String>()
            .all(&self.txn)
            .await?
            .into_iter()
            .collect();
        for key in keys.iter().filter(|key| !stored.contains(&key.kid)) {
            signing_keys::Entity::insert(signing_keys::ActiveModel {
                key_id: Set(key.kid.clone()),
                public_key: Set(key.x.clone()),
                created_at: Set(self.at()),
            })
            .exec_without_returning(&self.txn)
            .await?;
        }
        Ok(())
    }
}

impl Repository {
    /// Every public key that ever signed, oldest first.
    #[tracing::instrument(name = "storage.signing_keys", skip_all)]
    pub async fn signing_keys(&self) -> Result<Vec<Jwk>> {
        let rows = signing_keys::Entity::find()
            .order_by(signing_keys::Column::CreatedAt, Order::Asc)
            .order_by(signing_keys::Column::KeyId, Order::Asc)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Jwk::from_x(row.public_key))
            .collect())
    }
}
