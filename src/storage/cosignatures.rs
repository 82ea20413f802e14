//! Witnesses' cosignatures of checkpoints. The checkpoint rows never
//! change: a cosignature is a row of its own, added once verified, and a
//! checkpoint's note is served with the lines of its cosignatures after its
//! own signature (a signed note allows more signature lines than its
//! verifier knows), ordered by witness.

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder,
    sea_query::OnConflict,
};

use super::entities::{checkpoint_cosignatures, checkpoints};
use super::rows::{db_revision, now};
use super::transaction::Repository;
use crate::domain::Result;
use crate::domain::chain::Checkpoint;

/// A checkpoint to submit to witnesses.
#[derive(Debug, Clone)]
pub struct ToWitness {
    /// Its id.
    pub id: u64,
    /// Its tree's size.
    pub size: u64,
    /// Its note as the log signed it, without cosignatures.
    pub note: String,
    /// The witnesses that cosigned it already, by key name.
    pub cosigned_by: Vec<String>,
}

/// A witness's verified cosignature of a checkpoint.
#[derive(Debug, Clone)]
pub struct Cosignature {
    /// The witness's key name.
    pub witness: String,
    /// Its signature line, `— <name> <base64>` and a newline.
    pub line: String,
}

/// `checkpoints` with the lines of their cosignatures appended to their
/// notes.
pub(super) async fn with_cosignatures<C: ConnectionTrait>(
    db: &C,
    mut checkpoints: Vec<Checkpoint>,
) -> Result<Vec<Checkpoint>> {
    let ids = checkpoints
        .iter()
        .filter(|checkpoint| checkpoint.note.is_some())
        .map(|checkpoint| db_revision(checkpoint.id));
    let rows = checkpoint_cosignatures::Entity::find()
        .filter(checkpoint_cosignatures::Column::CheckpointId.is_in(ids))
        .order_by(checkpoint_cosignatures::Column::Witness, Order::Asc)
        .all(db)
        .await?;
    if rows.is_empty() {
        return Ok(checkpoints);
    }
    let mut lines: HashMap<i64, String> = HashMap::new();
    for row in rows {
        lines
            .entry(row.checkpoint_id)
            .or_default()
            .push_str(&row.line);
    }
    for checkpoint in &mut checkpoints {
        if let (Some(note), Some(lines)) =
            (&mut checkpoint.note, lines.get(&db_revision(checkpoint.id)))
        {
            note.push_str(lines);
        }
    }
    Ok(checkpoints)
}

impl Repository {
    /// The newest checkpoint of the log's tree, to submit to witnesses.
    pub async fn checkpoint_to_witness(&self) -> Result<Option<ToWitness>> {
        let Some(row) = checkpoints::Entity::find()
            .order_by(checkpoints::Column::Id, Order::Desc)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let (Some(note), Some(size)) = (row.note.clone(), row.tree_size) else {
            return Ok(None);
        };
        let cosigned_by = checkpoint_cosignatures::Entity::find()
            .filter(checkpoint_cosignatures::Column::CheckpointId.eq(row.id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|cosignature| cosignature.witness)
            .collect();
        Ok(Some(ToWitness {
            id: super::rows::revision(row.id),
            size: super::rows::revision(size),
            note,
            cosigned_by,
        }))
    }

    /// Stores the verified `cosignatures` of checkpoint `id`, all at once
    /// (a checkpoint that shows some is deliverable, see
    /// `witnessed_checkpoint`); the newest checkpoint held is served with
    /// them from then on.
    pub async fn store_cosignatures(&self, id: u64, cosignatures: &[Cosignature]) -> Result<()> {
        let at = now();
        let rows = cosignatures
            .iter()
            .map(|cosignature| checkpoint_cosignatures::ActiveModel {
                checkpoint_id: sea_orm::Set(db_revision(id)),
                witness: sea_orm::Set(cosignature.witness.clone()),
                line: sea_orm::Set(cosignature.line.clone()),
                at: sea_orm::Set(at),
            });
        self.write("store_cosignatures", async |tx| {
            checkpoint_cosignatures::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::columns([
                        checkpoint_cosignatures::Column::CheckpointId,
                        checkpoint_cosignatures::Column::Witness,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(&tx.txn)
                .await?;
            Ok(())
        })
        .await?;
        self.read_newest_checkpoint().await?;
        Ok(())
    }
}
