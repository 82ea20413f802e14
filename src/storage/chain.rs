//! The hash chain's storage: one chain per deployment, so the writers of
//! events take turns at its head. On PostgreSQL a transaction takes a
//! transaction-scoped advisory lock before it reads the head, as the last
//! lock of the order in `transaction` (it touches nothing it does not hold
//! after it), and keeps it until it commits; on SQLite the writer lock does.
//! Events written before the chain existed are sealed at start.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, Order,
    QueryFilter, QueryOrder, Statement,
};

use super::entities::events;
use super::events::record;
use super::transaction::{Repository, Transaction};
use crate::domain::{Result, chain};

/// The advisory lock key of the chain's head.
const CHAIN_LOCK: i64 = 7_240_533;

/// The hash of the last event, if it has one.
pub(super) async fn head<C: ConnectionTrait>(db: &C, below: Option<i64>) -> Result<String> {
    let mut query = events::Entity::find();
    if let Some(below) = below {
        query = query.filter(events::Column::Id.lt(below));
    }
    let last = query
        .order_by(events::Column::Id, Order::Desc)
        .one(db)
        .await?;
    Ok(last
        .and_then(|event| event.hash)
        .unwrap_or_else(|| chain::GENESIS.to_owned()))
}

impl Transaction {
    /// The head of the chain, held for the rest of the transaction.
    pub(super) async fn chain_head(&self) -> Result<String> {
        if self.backend() == DatabaseBackend::Postgres {
            self.txn
                .execute_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Postgres,
                    "SELECT pg_advisory_xact_lock($1)",
                    [CHAIN_LOCK.into()],
                ))
                .await?;
        }
        head(&self.txn, None).await
    }
}

impl Repository {
    /// Seals the events written before the chain existed, in id order;
    /// returns how many.
    pub async fn seal_events(&self) -> Result<usize> {
        self.write("seal_events", async |tx| {
            // The head first: replicas starting together seal once, and the
            // second finds nothing left to seal.
            tx.chain_head().await?;
            let unsealed = events::Entity::find()
                .filter(events::Column::Hash.is_null())
                .order_by(events::Column::Id, Order::Asc)
                .all(&tx.txn)
                .await?;
            if unsealed.is_empty() {
                return Ok(0);
            }
            for row in &unsealed {
                let previous = head(&tx.txn, Some(row.id)).await?;
                let hash = chain::link(&previous, &record(row.clone())?);
                events::Entity::update(events::ActiveModel {
                    id: Set(row.id),
                    hash: Set(Some(hash)),
                    ..Default::default()
                })
                .exec(&tx.txn)
                .await?;
            }
            Ok(unsealed.len())
        })
        .await
    }
}
