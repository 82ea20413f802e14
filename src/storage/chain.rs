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
use super::rows::revision;
use super::statement_runner::{StatementRunner, Txn};
use super::transaction::{Repository, Transaction};
use crate::domain::{Result, chain};

/// The advisory lock key of the chain's head.
const CHAIN_LOCK: i64 = 7_240_533;

/// The id and hash of the last event (below `below`): 0 and the genesis
/// for an empty log.
pub(super) async fn tip<R: StatementRunner>(
    runner: &R,
    below: Option<i64>,
) -> Result<(u64, String)> {
    let mut query = events::Entity::find();
    if let Some(below) = below {
        query = query.filter(events::Column::Id.lt(below));
    }
    let last = runner
        .one(query.order_by(events::Column::Id, Order::Desc))
        .await?;
    Ok(last.map_or_else(
        || (0, chain::GENESIS.to_owned()),
        |event| (revision(event.id), event.hash.unwrap_or_default()),
    ))
}

/// The hash of the last event (below `below`).
pub(super) async fn head<R: StatementRunner>(runner: &R, below: Option<i64>) -> Result<String> {
    Ok(tip(runner, below).await?.1)
}

/// The last event and the head of the chain as `txn` leaves them, read
/// after taking the chain's lock on PostgreSQL (held until `txn` ends; on
/// SQLite the writer's turn excludes every other writer): no event lands
/// after it but `txn`'s own.
pub(super) async fn locked_tip(txn: &Txn) -> Result<(u64, String)> {
    if txn.backend() == DatabaseBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [CHAIN_LOCK.into()],
        ))
        .await?;
    }
    tip(txn, None).await
}

impl Transaction {
    /// The last event and the head of the chain as this transaction leaves
    /// them, held until it ends: read once, after taking the chain's lock
    /// on PostgreSQL, then kept as the transaction appends events.
    pub(super) async fn chain_tip(&self) -> Result<(u64, String)> {
        if let Some(tip) = self.chain.lock().expect("chain tip").clone() {
            return Ok(tip);
        }
        let read = locked_tip(&self.txn).await?;
        *self.chain.lock().expect("chain tip") = Some(read.clone());
        Ok(read)
    }

    /// Notes that event `id`, linked as `hash`, is the chain's new tip.
    pub(super) fn chain_appended(&self, id: u64, hash: String) {
        *self.chain.lock().expect("chain tip") = Some((id, hash));
    }
}

impl Repository {
    /// Seals the events written before the chain existed, in id order;
    /// returns how many.
    pub async fn seal_events(&self) -> Result<usize> {
        self.write("seal_events", async |tx| {
            // The head first: replicas starting together seal once, and the
            // second finds nothing left to seal.
            tx.chain_tip().await?;
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
