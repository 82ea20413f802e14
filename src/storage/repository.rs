//! The lifecycle transactions of DESIGN §2 on SeaORM.
//!
//! Every mutation is one database transaction that locks what it changes in
//! a fixed order — the policy rows (sorted by namespace and name), then the
//! revision counter — so concurrent requests on several replicas serialize
//! without deadlocks. SQLite has no row locks; there a process-wide write
//! lock plays their part (SQLite allows one writer anyway).

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    AccessMode,
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, FromQueryResult, IsolationLevel, Order, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait,
    sea_query::Expr,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::entities::{events, idempotency_records, policies, signing_keys, versions};
use crate::domain::{
    ActivateCommand, Activation, ActivationOutcome, ActiveBundle, Digest, DiscardCommand,
    DraftCommand, DraftOutcome, Error, EventFilter, EventKind, EventRecord, Label, NamespaceScope,
    Page, PolicyBody, PolicyRef, PolicySchema, PolicySummary, Publication, PublishCommand,
    PublishOutcome, RequestContext, Result, RollbackCommand, SetSchemaCommand, VersionRecord,
    VersionSelector, VersionState, lifecycle,
};
use crate::signing::{self, Jwk, SigningKey};

/// A mutation's idempotency key and the fingerprint of its request.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// The RPC, so one key may serve different methods.
    pub method: &'static str,
    /// The client's key.
    pub key: String,
    /// Digest of the canonical request.
    pub fingerprint: Digest,
}

/// When `GetActive` should look.
#[derive(Debug, Clone, Copy)]
pub enum AsOf {
    /// Once this revision was applied.
    Revision(u64),
    /// At this instant.
    Time(DateTime<Utc>),
}

/// The policy store.
#[derive(Clone)]
pub struct Repository {
    pub(super) db: DatabaseConnection,
    /// Serializes write transactions on SQLite, which has a single writer and
    /// would otherwise fail concurrent upgrades from read to write locks with
    /// SQLITE_BUSY. `None` on PostgreSQL, where row locks do this job.
    sqlite_writer: Option<Arc<Mutex<()>>>,
    /// The `iss` claim of signed bundles.
    issuer: String,
}

/// An open write transaction and, on SQLite, the writer lock it holds.
pub(super) struct Write {
    pub(super) txn: DatabaseTransaction,
    _writer: Option<OwnedMutexGuard<()>>,
}

enum Begun<T> {
    /// The idempotency key was seen with this request: its original outcome.
    Replay(T),
    Fresh(Write),
}

impl From<DbErr> for Error {
    fn from(error: DbErr) -> Self {
        match database_code(&error).as_deref() {
            // SQLite's SQLITE_FULL (13, with its extended codes), PostgreSQL's
            // disk_full: the write is refused until space returns, and then
            // writes succeed again by themselves.
            Some(code) if sqlite_primary(code) == Some(13) || code == "53100" => {
                return Error::ResourceExhausted(
                    "the database's disk is full: nothing was written; free space and retry".into(),
                );
            }
            // SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_READONLY: the files cannot
            // be written now.
            Some(code) if matches!(sqlite_primary(code), Some(8 | 10 | 14)) => {
                return Error::Unavailable(format!(
                    "the database cannot write to its files: {error}"
                ));
            }
            _ => {}
        }
        if is_connection_error(&error) {
            return Error::Unavailable(format!("the database is unavailable: {error}"));
        }
        Error::Internal(format!("database error: {error}"))
    }
}

/// The database's own error code, when it refused a statement.
fn database_code(error: &DbErr) -> Option<String> {
    use sea_orm::{RuntimeErr, sqlx::Error as Sqlx};
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => {
            match sqlx.as_ref() {
                Sqlx::Database(database) => database.code().map(|code| code.into_owned()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The primary result code of a SQLite extended result code ("778" is
/// SQLITE_IOERR_WRITE, primary 10); `None` for PostgreSQL's SQLSTATEs.
fn sqlite_primary(code: &str) -> Option<u32> {
    code.parse::<u32>().ok().map(|extended| extended & 0xff)
}

/// Whether the database could not be reached, as opposed to refusing a
/// statement: the caller may retry these, on this replica or another.
fn is_connection_error(error: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::Error as Sqlx};
    let sqlx = match error {
        // Whatever failed while connecting: the database refused or could
        // not be reached, not the statement.
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => {
            sqlx
        }
        _ => return false,
    };
    match sqlx.as_ref() {
        Sqlx::Io(_)
        | Sqlx::PoolTimedOut
        | Sqlx::PoolClosed
        | Sqlx::WorkerCrashed
        | Sqlx::Tls(_) => true,
        // PostgreSQL's class 08 (connection exception) and 57P01..57P03
        // (the server is shutting down or cannot accept connections yet).
        Sqlx::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Timestamps are kept to the microsecond, which is what PostgreSQL stores,
/// so a value read back equals the value written.
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn to_u32(value: i32) -> u32 {
    u32::try_from(value).expect("version numbers are positive")
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).expect("revisions are positive")
}

fn policy_ref(model: &policies::Model) -> Result<PolicyRef> {
    PolicyRef::parse(&model.namespace, &model.name)
        .map_err(|error| Error::Internal(format!("stored policy name is invalid: {error}")))
}

fn version_record(
    policy: &PolicyRef,
    active: Option<i32>,
    model: versions::Model,
) -> Result<VersionRecord> {
    let publication = match (
        model.published_by,
        model.published_at,
        model.jws,
        model.key_id,
    ) {
        (Some(published_by), Some(published_at), Some(jws), Some(key_id)) => Some(Publication {
            published_by,
            published_at,
            jws,
            key_id,
        }),
        _ => None,
    };
    Ok(VersionRecord {
        policy: policy.clone(),
        version: to_u32(model.version),
        state: model.state.parse()?,
        body: PolicyBody::from_canonical(model.body)?,
        label: model
            .label
            .map(|label| Label::parse("label", &label))
            .transpose()?,
        change_notes: model.change_notes,
        created_by: model.created_by,
        created_at: model.created_at,
        publication,
        active: active == Some(model.version),
    })
}

fn active_bundle(
    policy: PolicyRef,
    revision: u64,
    model: &versions::Model,
) -> Result<ActiveBundle> {
    let (Some(jws), Some(key_id)) = (&model.jws, &model.key_id) else {
        return Err(Error::Internal(format!(
            "active version {} of {policy} has no signature",
            model.version
        )));
    };
    Ok(ActiveBundle {
        version: to_u32(model.version),
        label: model
            .label
            .as_deref()
            .map(|label| Label::parse("label", label))
            .transpose()?,
        digest: Digest::from_stored(model.digest.clone()),
        jws: Arc::from(jws.as_str()),
        key_id: key_id.clone(),
        revision,
        policy,
    })
}

/// The listing and filter a page token belongs to: its name and a short
/// fingerprint of the filter, so a token of another listing (or of the same
/// listing with another filter) is refused instead of silently paging from
/// the wrong place.
fn token_scope(listing: &str, filter: &impl std::fmt::Debug) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(format!("{filter:?}").as_bytes());
    let short: String = hash[..4].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{listing}:{short}:")
}

fn parse_page_token<T: std::str::FromStr>(
    listing: &str,
    filter: &impl std::fmt::Debug,
    token: &str,
) -> Result<Option<T>> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix(&token_scope(listing, filter))
        .and_then(|position| position.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(
                "page_token",
                format!(
                    "{} is not a page token of this listing and filter: pass the \
                     next_page_token of the previous page of the same request",
                    crate::domain::quoted(token)
                ),
            )
        })
}

/// What an event says, beyond who, when and which request.
struct NewEvent<'a> {
    kind: EventKind,
    policy: Option<&'a policies::Model>,
    previous_version: Option<u32>,
    new_version: Option<u32>,
    revision: Option<u64>,
    key_id: Option<String>,
    reason: &'a str,
}

impl<'a> NewEvent<'a> {
    fn about(kind: EventKind, policy: &'a policies::Model, reason: &'a str) -> Self {
        NewEvent {
            kind,
            policy: Some(policy),
            previous_version: None,
            new_version: None,
            revision: None,
            key_id: None,
            reason,
        }
    }
}

async fn record_event(
    txn: &DatabaseTransaction,
    context: &RequestContext,
    at: DateTime<Utc>,
    event: NewEvent<'_>,
) -> Result<()> {
    let row = events::ActiveModel {
        id: NotSet,
        kind: Set(event.kind.as_str().to_owned()),
        policy_id: Set(event.policy.map(|policy| policy.id)),
        namespace: Set(event.policy.map(|policy| policy.namespace.clone())),
        name: Set(event.policy.map(|policy| policy.name.clone())),
        actor: Set(context.actor.clone()),
        at: Set(at),
        reason: Set(event.reason.to_owned()),
        request_id: Set(context.request_id.clone()),
        previous_version: Set(event.previous_version.map(|v| v as i32)),
        new_version: Set(event.new_version.map(|v| v as i32)),
        revision: Set(event.revision.map(|r| r as i64)),
        key_id: Set(event.key_id),
    };
    events::Entity::insert(row)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

async fn find_policy<C: ConnectionTrait>(db: &C, policy: &PolicyRef) -> Result<policies::Model> {
    policies::Entity::find()
        .filter(policies::Column::Namespace.eq(policy.namespace.as_str()))
        .filter(policies::Column::Name.eq(policy.name.as_str()))
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("policy {policy} does not exist")))
}

/// Locks the policy row for the rest of the transaction (`FOR UPDATE`; a
/// no-op on SQLite, where the writer lock is held instead).
async fn lock_policy(txn: &DatabaseTransaction, policy: &PolicyRef) -> Result<policies::Model> {
    policies::Entity::find()
        .filter(policies::Column::Namespace.eq(policy.namespace.as_str()))
        .filter(policies::Column::Name.eq(policy.name.as_str()))
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("policy {policy} does not exist")))
}

async fn lock_or_create_policy(
    txn: &DatabaseTransaction,
    policy: &PolicyRef,
    at: DateTime<Utc>,
) -> Result<policies::Model> {
    let row = policies::ActiveModel {
        id: NotSet,
        namespace: Set(policy.namespace.to_string()),
        name: Set(policy.name.to_string()),
        schema: Set(None),
        active_version: Set(None),
        active_revision: Set(None),
        created_at: Set(at),
    };
    policies::Entity::insert(row)
        .on_conflict_do_nothing_on([policies::Column::Namespace, policies::Column::Name])
        .exec_without_returning(txn)
        .await?;
    lock_policy(txn, policy).await
}

async fn find_version<C: ConnectionTrait>(
    db: &C,
    policy: &PolicyRef,
    policy_id: i64,
    selector: &VersionSelector,
) -> Result<versions::Model> {
    let query = versions::Entity::find().filter(versions::Column::PolicyId.eq(policy_id));
    let query = match selector {
        VersionSelector::Number(number) => {
            query.filter(versions::Column::Version.eq(*number as i32))
        }
        VersionSelector::Label(label) => {
            query.filter(versions::Column::Label.eq(label.to_string()))
        }
    };
    query
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{policy} has no {selector}")))
}

async fn open_draft<C: ConnectionTrait>(db: &C, policy_id: i64) -> Result<Option<versions::Model>> {
    Ok(versions::Entity::find()
        .filter(versions::Column::PolicyId.eq(policy_id))
        .filter(versions::Column::State.eq(VersionState::Draft.as_str()))
        .one(db)
        .await?)
}

/// The draft a request names, or the open draft.
async fn target_draft(
    txn: &DatabaseTransaction,
    policy: &PolicyRef,
    policy_id: i64,
    version: Option<u32>,
    operation: &str,
) -> Result<versions::Model> {
    match version {
        Some(number) => {
            find_version(txn, policy, policy_id, &VersionSelector::Number(number)).await
        }
        None => open_draft(txn, policy_id).await?.ok_or_else(|| {
            Error::precondition(format!("{policy} has no open draft to {operation}"))
        }),
    }
}

/// Moves a DRAFT row to `state`; the trigger refuses anything else, and so
/// does the `state = 'DRAFT'` filter.
async fn finish_draft(
    txn: &DatabaseTransaction,
    row_id: i64,
    state: VersionState,
    publication: Option<(&Publication, Option<&Label>)>,
) -> Result<()> {
    let mut update = versions::Entity::update_many()
        .col_expr(versions::Column::State, Expr::value(state.as_str()))
        .filter(versions::Column::Id.eq(row_id))
        .filter(versions::Column::State.eq(VersionState::Draft.as_str()));
    if let Some((publication, label)) = publication {
        update = update
            .col_expr(
                versions::Column::Label,
                Expr::value(label.map(ToString::to_string)),
            )
            .col_expr(
                versions::Column::PublishedBy,
                Expr::value(publication.published_by.clone()),
            )
            .col_expr(
                versions::Column::PublishedAt,
                Expr::value(publication.published_at),
            )
            .col_expr(versions::Column::Jws, Expr::value(publication.jws.clone()))
            .col_expr(
                versions::Column::KeyId,
                Expr::value(publication.key_id.clone()),
            );
    }
    let result = update.exec(txn).await?;
    debug_assert_eq!(
        result.rows_affected, 1,
        "the draft row was locked with its policy"
    );
    Ok(())
}

/// Takes the next deployment-wide revision. The row lock this takes is what
/// serializes activations across replicas (DESIGN §5): revision N+1 cannot
/// commit before revision N.
async fn next_revision(txn: &DatabaseTransaction) -> Result<u64> {
    let row = txn
        .query_one_raw(Statement::from_string(
            txn.get_database_backend(),
            "UPDATE revision_counter SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        ))
        .await?
        .ok_or_else(|| Error::Internal("the revision counter row is missing".into()))?;
    Ok(to_u64(row.try_get_by_index::<i64>(0)?))
}

async fn current_revision<C: ConnectionTrait>(db: &C) -> Result<u64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT revision FROM revision_counter WHERE id = 1",
        ))
        .await?
        .ok_or_else(|| Error::Internal("the revision counter row is missing".into()))?;
    Ok(to_u64(row.try_get_by_index::<i64>(0)?))
}

/// The PostgreSQL notification channel that carries each committed
/// activation revision.
pub const REVISION_CHANNEL: &str = "policyhub_revisions";

/// One policy pointer to move, already locked and resolved.
struct PointerMove {
    policy: policies::Model,
    policy_ref: PolicyRef,
    target: versions::Model,
    expected_active_version: Option<u32>,
}

/// Checks and moves the pointers of one activation transaction under one new
/// revision; returns one activation per move, in the given order. When no
/// pointer actually moves nothing is written.
async fn move_pointers(
    txn: &DatabaseTransaction,
    context: &RequestContext,
    at: DateTime<Utc>,
    kind: EventKind,
    moves: Vec<PointerMove>,
    reason: &str,
) -> Result<ActivationOutcome> {
    for step in &moves {
        let target = version_record(&step.policy_ref, None, step.target.clone())?;
        lifecycle::ensure_published(&target)?;
        lifecycle::ensure_expected_active(
            &step.policy_ref,
            step.expected_active_version,
            step.policy.active_version.map(to_u32),
        )?;
        if let Some(schema) = &step.policy.schema {
            PolicySchema::from_stored(schema)?.check(
                &format!("version {} of {}", target.version, step.policy_ref),
                &target.body,
            )?;
        }
    }
    let moving = |step: &PointerMove| step.policy.active_version != Some(step.target.version);
    let activations = moves
        .iter()
        .map(|step| Activation {
            policy: step.policy_ref.clone(),
            version: to_u32(step.target.version),
            previous_version: step.policy.active_version.map(to_u32),
        })
        .collect();
    if !moves.iter().any(moving) {
        let revision = moves
            .iter()
            .filter_map(|step| step.policy.active_revision)
            .max()
            .map_or(0, to_u64);
        return Ok(ActivationOutcome {
            revision,
            activations,
            changed: Vec::new(),
        });
    }
    let revision = next_revision(txn).await?;
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        // Delivered at commit to every replica's listener (see `replication`).
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [REVISION_CHANNEL.into(), revision.to_string().into()],
        ))
        .await?;
    }
    let mut changed = Vec::new();
    for step in moves.iter().filter(|step| moving(step)) {
        policies::Entity::update_many()
            .col_expr(
                policies::Column::ActiveVersion,
                Expr::value(step.target.version),
            )
            .col_expr(
                policies::Column::ActiveRevision,
                Expr::value(revision as i64),
            )
            .filter(policies::Column::Id.eq(step.policy.id))
            .exec(txn)
            .await?;
        record_event(
            txn,
            context,
            at,
            NewEvent {
                previous_version: step.policy.active_version.map(to_u32),
                new_version: Some(to_u32(step.target.version)),
                revision: Some(revision),
                ..NewEvent::about(kind, &step.policy, reason)
            },
        )
        .await?;
        changed.push(active_bundle(
            step.policy_ref.clone(),
            revision,
            &step.target,
        )?);
    }
    Ok(ActivationOutcome {
        revision,
        activations,
        changed,
    })
}

fn is_unique_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[derive(FromQueryResult)]
struct MovedRow {
    revision: i64,
    namespace: String,
    name: String,
    version: i32,
    label: Option<String>,
    digest: String,
    jws: Option<String>,
    key_id: Option<String>,
}

#[derive(FromQueryResult)]
struct VersionCounts {
    policy_id: i64,
    latest: Option<i32>,
    draft: Option<i32>,
}

impl Repository {
    /// A repository over a migrated database.
    pub fn new(db: DatabaseConnection, issuer: String) -> Self {
        let sqlite_writer = (db.get_database_backend() == DatabaseBackend::Sqlite)
            .then(|| Arc::new(Mutex::new(())));
        Repository {
            db,
            sqlite_writer,
            issuer,
        }
    }

    /// Whether the database answers, for health checks.
    pub async fn ping(&self) -> Result<()> {
        Ok(self.db.ping().await?)
    }

    pub(super) async fn begin_write(&self) -> Result<Write> {
        let writer = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        Ok(Write {
            txn: self.db.begin().await?,
            _writer: writer,
        })
    }

    async fn replay<T: DeserializeOwned, C: ConnectionTrait>(
        &self,
        db: &C,
        claim: &IdempotencyClaim,
    ) -> Result<Option<T>> {
        let Some(record) =
            idempotency_records::Entity::find_by_id((claim.method.to_owned(), claim.key.clone()))
                .one(db)
                .await?
        else {
            return Ok(None);
        };
        if record.fingerprint != claim.fingerprint.as_str() {
            return Err(Error::AlreadyExists(format!(
                "idempotency key {:?} was already used for a different {} request",
                claim.key, claim.method
            )));
        }
        serde_json::from_str(&record.response)
            .map(Some)
            .map_err(|error| {
                Error::Internal(format!("stored idempotent response is unreadable: {error}"))
            })
    }

    /// Starts a write, or returns the recorded outcome of an earlier request
    /// with the same idempotency key.
    async fn begin<T: DeserializeOwned>(
        &self,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<Begun<T>> {
        let write = self.begin_write().await?;
        if let Some(claim) = claim
            && let Some(outcome) = self.replay(&write.txn, claim).await?
        {
            return Ok(Begun::Replay(outcome));
        }
        Ok(Begun::Fresh(write))
    }

    /// Records the outcome under the idempotency key and commits. When a
    /// concurrent request with the same key committed first, this one is
    /// rolled back whole and the first one's outcome returned.
    async fn commit<T: Serialize + DeserializeOwned>(
        &self,
        write: Write,
        claim: Option<&IdempotencyClaim>,
        context: &RequestContext,
        outcome: T,
    ) -> Result<T> {
        if let Some(claim) = claim {
            let response = serde_json::to_string(&outcome)
                .map_err(|error| Error::Internal(format!("cannot record the response: {error}")))?;
            let inserted = idempotency_records::Entity::insert(idempotency_records::ActiveModel {
                method: Set(claim.method.to_owned()),
                key: Set(claim.key.clone()),
                fingerprint: Set(claim.fingerprint.to_string()),
                actor: Set(context.actor.clone()),
                response: Set(response),
                created_at: Set(now()),
            })
            .exec_without_returning(&write.txn)
            .await;
            match inserted {
                Err(error) if is_unique_violation(&error) => {
                    write.txn.rollback().await?;
                    return self
                        .replay(&self.db, claim)
                        .await?
                        .ok_or_else(|| Error::Internal("an idempotency record vanished".into()));
                }
                other => {
                    other?;
                }
            }
        }
        write.txn.commit().await?;
        Ok(outcome)
    }

    /// Creates the next draft; supersedes the open one.
    #[tracing::instrument(name = "storage.draft", skip_all)]
    pub async fn draft(
        &self,
        command: DraftCommand,
        context: &RequestContext,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<DraftOutcome> {
        let write = match self.begin(claim).await? {
            Begun::Replay(outcome) => return Ok(outcome),
            Begun::Fresh(write) => write,
        };
        let txn = &write.txn;
        let at = now();
        let policy = lock_or_create_policy(txn, &command.policy, at).await?;
        let latest: Option<i32> = versions::Entity::find()
            .select_only()
            .column_as(versions::Column::Version.max(), "latest")
            .filter(versions::Column::PolicyId.eq(policy.id))
            .into_tuple::<Option<i32>>()
            .one(txn)
            .await?
            .flatten();
        let next = latest.unwrap_or(0) + 1;
        let superseded = open_draft(txn, policy.id).await?;
        if let Some(open) = &superseded {
            finish_draft(txn, open.id, VersionState::Superseded, None).await?;
            record_event(
                txn,
                context,
                at,
                NewEvent {
                    previous_version: Some(to_u32(open.version)),
                    new_version: Some(to_u32(next)),
                    ..NewEvent::about(
                        EventKind::DraftSuperseded,
                        &policy,
                        "superseded by a newer draft",
                    )
                },
            )
            .await?;
        }
        let row = versions::ActiveModel {
            id: NotSet,
            policy_id: Set(policy.id),
            version: Set(next),
            state: Set(VersionState::Draft.as_str().to_owned()),
            body: Set(command.body.canonical().to_owned()),
            digest: Set(command.body.digest().to_string()),
            label: Set(None),
            change_notes: Set(command.change_notes.clone()),
            created_by: Set(context.actor.clone()),
            created_at: Set(at),
            published_by: Set(None),
            published_at: Set(None),
            jws: Set(None),
            key_id: Set(None),
        };
        versions::Entity::insert(row)
            .exec_without_returning(txn)
            .await?;
        record_event(
            txn,
            context,
            at,
            NewEvent {
                previous_version: superseded.as_ref().map(|open| to_u32(open.version)),
                new_version: Some(to_u32(next)),
                ..NewEvent::about(EventKind::DraftCreated, &policy, &command.change_notes)
            },
        )
        .await?;
        let outcome = DraftOutcome {
            version: VersionRecord {
                policy: command.policy,
                version: to_u32(next),
                state: VersionState::Draft,
                body: command.body,
                label: None,
                change_notes: command.change_notes,
                created_by: context.actor.clone(),
                created_at: at,
                publication: None,
                active: false,
            },
            superseded_version: superseded.map(|open| to_u32(open.version)),
        };
        self.commit(write, claim, context, outcome).await
    }

    /// Discards a draft.
    #[tracing::instrument(name = "storage.discard_draft", skip_all)]
    pub async fn discard_draft(
        &self,
        command: DiscardCommand,
        context: &RequestContext,
    ) -> Result<VersionRecord> {
        let write = self.begin_write().await?;
        let txn = &write.txn;
        let policy = lock_policy(txn, &command.policy).await?;
        let draft =
            target_draft(txn, &command.policy, policy.id, command.version, "discard").await?;
        let mut record = version_record(&command.policy, policy.active_version, draft.clone())?;
        lifecycle::ensure_draft(&record, "discard")?;
        finish_draft(txn, draft.id, VersionState::Discarded, None).await?;
        record_event(
            txn,
            context,
            now(),
            NewEvent {
                new_version: Some(record.version),
                ..NewEvent::about(EventKind::DraftDiscarded, &policy, &command.reason)
            },
        )
        .await?;
        record.state = VersionState::Discarded;
        self.commit(write, None, context, record).await
    }

    /// Validates, signs and publishes a draft; activates it when asked.
    #[tracing::instrument(name = "storage.publish", skip_all)]
    pub async fn publish(
        &self,
        command: PublishCommand,
        context: &RequestContext,
        claim: Option<&IdempotencyClaim>,
        signer: &SigningKey,
    ) -> Result<PublishOutcome> {
        let write = match self.begin(claim).await? {
            Begun::Replay(outcome) => return Ok(outcome),
            Begun::Fresh(write) => write,
        };
        let txn = &write.txn;
        let at = now();
        let policy = lock_policy(txn, &command.policy).await?;
        let draft =
            target_draft(txn, &command.policy, policy.id, command.version, "publish").await?;
        let record = version_record(&command.policy, policy.active_version, draft.clone())?;
        lifecycle::ensure_draft(&record, "publish")?;

        if let Some(label) = &command.label {
            let released = find_version(
                txn,
                &command.policy,
                policy.id,
                &VersionSelector::Label(label.clone()),
            )
            .await;
            match released {
                Ok(released) if released.digest == draft.digest => {
                    // The same content was already released under this label:
                    // success, and the draft is left as it is.
                    let activation = self
                        .activate_after_publish(
                            txn,
                            context,
                            at,
                            &command,
                            &policy,
                            released.clone(),
                        )
                        .await?;
                    let version = version_record(&command.policy, policy.active_version, released)?;
                    let outcome = PublishOutcome {
                        version: mark_active(version, activation.as_ref()),
                        already_published: true,
                        activation,
                    };
                    return self.commit(write, claim, context, outcome).await;
                }
                Ok(released) => {
                    return Err(Error::AlreadyExists(format!(
                        "label {label} of {} was already released as version {} with digest {}, \
                         and this draft's digest is {}: released versions are immutable, bump the version",
                        command.policy, released.version, released.digest, draft.digest
                    )));
                }
                Err(Error::NotFound(_)) => {}
                Err(other) => return Err(other),
            }
        }
        if let Some(schema) = &policy.schema {
            PolicySchema::from_stored(schema)?.check(
                &format!("version {} of {}", record.version, command.policy),
                &record.body,
            )?;
        }
        let claims = signing::claims_for(
            &self.issuer,
            &command.policy.to_string(),
            record.version,
            command.label.as_ref().map(ToString::to_string),
            &record.body,
            at,
        );
        let jws = signer
            .sign(&claims)
            .map_err(|error| Error::Internal(format!("signing failed: {error:#}")))?;
        let publication = Publication {
            published_by: context.actor.clone(),
            published_at: at,
            jws,
            key_id: signer.kid().to_owned(),
        };
        finish_draft(
            txn,
            draft.id,
            VersionState::Published,
            Some((&publication, command.label.as_ref())),
        )
        .await?;
        record_event(
            txn,
            context,
            at,
            NewEvent {
                new_version: Some(record.version),
                key_id: Some(signer.kid().to_owned()),
                ..NewEvent::about(EventKind::Published, &policy, &command.reason)
            },
        )
        .await?;
        let published = versions::Model {
            state: VersionState::Published.as_str().to_owned(),
            label: command.label.as_ref().map(ToString::to_string),
            published_by: Some(publication.published_by.clone()),
            published_at: Some(at),
            jws: Some(publication.jws.clone()),
            key_id: Some(publication.key_id.clone()),
            ..draft
        };
        let activation = self
            .activate_after_publish(txn, context, at, &command, &policy, published)
            .await?;
        let version = VersionRecord {
            state: VersionState::Published,
            label: command.label.clone(),
            publication: Some(publication),
            ..record
        };
        let outcome = PublishOutcome {
            version: mark_active(version, activation.as_ref()),
            already_published: false,
            activation,
        };
        self.commit(write, claim, context, outcome).await
    }

    async fn activate_after_publish(
        &self,
        txn: &DatabaseTransaction,
        context: &RequestContext,
        at: DateTime<Utc>,
        command: &PublishCommand,
        policy: &policies::Model,
        published: versions::Model,
    ) -> Result<Option<ActivationOutcome>> {
        if !command.activate {
            return Ok(None);
        }
        let step = PointerMove {
            policy: policy.clone(),
            policy_ref: command.policy.clone(),
            target: published,
            expected_active_version: command.expected_active_version,
        };
        move_pointers(
            txn,
            context,
            at,
            EventKind::Activated,
            vec![step],
            &command.reason,
        )
        .await
        .map(Some)
    }

    /// Moves the pointers of several policies under one revision, or none.
    #[tracing::instrument(name = "storage.activate", skip_all)]
    pub async fn activate(
        &self,
        command: ActivateCommand,
        context: &RequestContext,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<ActivationOutcome> {
        let write = match self.begin(claim).await? {
            Begun::Replay(outcome) => return Ok(outcome),
            Begun::Fresh(write) => write,
        };
        let txn = &write.txn;
        // Lock in a global order, so two multi-policy activations never wait
        // on each other in a cycle.
        let mut lock_order: Vec<usize> = (0..command.targets.len()).collect();
        lock_order.sort_by(|&a, &b| command.targets[a].policy.cmp(&command.targets[b].policy));
        let mut locked = vec![None; command.targets.len()];
        for index in lock_order {
            locked[index] = Some(lock_policy(txn, &command.targets[index].policy).await?);
        }
        let mut moves = Vec::with_capacity(command.targets.len());
        for (target, policy) in command.targets.iter().zip(locked) {
            let policy = policy.expect("every target was locked");
            let version = find_version(txn, &target.policy, policy.id, &target.version).await?;
            moves.push(PointerMove {
                policy,
                policy_ref: target.policy.clone(),
                target: version,
                expected_active_version: target.expected_active_version,
            });
        }
        let outcome = move_pointers(
            txn,
            context,
            now(),
            EventKind::Activated,
            moves,
            &command.reason,
        )
        .await?;
        self.commit(write, claim, context, outcome).await
    }

    /// Returns the pointer to an older published version.
    #[tracing::instrument(name = "storage.rollback", skip_all)]
    pub async fn rollback(
        &self,
        command: RollbackCommand,
        context: &RequestContext,
    ) -> Result<ActivationOutcome> {
        let write = self.begin_write().await?;
        let txn = &write.txn;
        let policy = lock_policy(txn, &command.policy).await?;
        let last_move = events::Entity::find()
            .filter(events::Column::PolicyId.eq(policy.id))
            .filter(events::Column::Kind.is_in([
                EventKind::Activated.as_str(),
                EventKind::RolledBack.as_str(),
            ]))
            .order_by(events::Column::Id, Order::Desc)
            .one(txn)
            .await?;
        let target = lifecycle::rollback_target(
            &command.policy,
            policy.active_version.map(to_u32),
            last_move
                .and_then(|event| event.previous_version)
                .map(to_u32),
            command.to_version,
        )?;
        let version = find_version(
            txn,
            &command.policy,
            policy.id,
            &VersionSelector::Number(target),
        )
        .await?;
        let step = PointerMove {
            policy,
            policy_ref: command.policy.clone(),
            target: version,
            expected_active_version: command.expected_active_version,
        };
        let outcome = move_pointers(
            txn,
            context,
            now(),
            EventKind::RolledBack,
            vec![step],
            &command.reason,
        )
        .await?;
        self.commit(write, None, context, outcome).await
    }

    /// Sets or removes a schema; reports how the active version fares.
    #[tracing::instrument(name = "storage.set_schema", skip_all)]
    pub async fn set_schema(
        &self,
        command: SetSchemaCommand,
        context: &RequestContext,
    ) -> Result<(PolicySummary, Vec<crate::domain::SchemaViolation>)> {
        let write = self.begin_write().await?;
        let txn = &write.txn;
        let at = now();
        let policy = lock_or_create_policy(txn, &command.policy, at).await?;
        let stored = command.schema.as_ref().map(PolicySchema::canonical);
        policies::Entity::update_many()
            .col_expr(policies::Column::Schema, Expr::value(stored.clone()))
            .filter(policies::Column::Id.eq(policy.id))
            .exec(txn)
            .await?;
        record_event(
            txn,
            context,
            at,
            NewEvent::about(EventKind::SchemaSet, &policy, &command.reason),
        )
        .await?;
        let violations = match (&command.schema, policy.active_version) {
            (Some(schema), Some(active)) => {
                let version = find_version(
                    txn,
                    &command.policy,
                    policy.id,
                    &VersionSelector::Number(to_u32(active)),
                )
                .await?;
                schema.violations(&PolicyBody::from_canonical(version.body)?)
            }
            _ => Vec::new(),
        };
        let summary = self
            .summaries(
                txn,
                vec![policies::Model {
                    schema: stored,
                    ..policy
                }],
            )
            .await?
            .pop()
            .expect("one policy in, one summary out");
        write.txn.commit().await?;
        Ok((summary, violations))
    }

    /// One version.
    #[tracing::instrument(name = "storage.get_version", skip_all)]
    pub async fn get_version(
        &self,
        policy: &PolicyRef,
        selector: &VersionSelector,
    ) -> Result<VersionRecord> {
        let row = find_policy(&self.db, policy).await?;
        let version = find_version(&self.db, policy, row.id, selector).await?;
        version_record(policy, row.active_version, version)
    }

    /// Versions of a policy, newest first; the page token is the last
    /// version number returned.
    #[tracing::instrument(name = "storage.list_versions", skip_all)]
    pub async fn list_versions(
        &self,
        policy: &PolicyRef,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<VersionRecord>> {
        let below: Option<i32> = parse_page_token("versions", policy, page_token)?;
        let row = find_policy(&self.db, policy).await?;
        let mut query = versions::Entity::find().filter(versions::Column::PolicyId.eq(row.id));
        if let Some(below) = below {
            query = query.filter(versions::Column::Version.lt(below));
        }
        let mut rows = query
            .order_by(versions::Column::Version, Order::Desc)
            .limit(u64::from(page_size) + 1)
            .all(&self.db)
            .await?;
        let token_prefix = token_scope("versions", policy);
        let next_page_token = next_token(&mut rows, page_size, |last| {
            format!("{token_prefix}{}", last.version)
        });
        let items = rows
            .into_iter()
            .map(|model| version_record(policy, row.active_version, model))
            .collect::<Result<_>>()?;
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Policies ordered by namespace and name; the page token is the last
    /// `namespace/name` returned.
    #[tracing::instrument(name = "storage.list_policies", skip_all)]
    pub async fn list_policies(
        &self,
        scope: &NamespaceScope,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<PolicySummary>> {
        let after: Option<String> = parse_page_token("policies", scope, page_token)?;
        let mut query =
            policies::Entity::find().filter(in_scope(policies::Column::Namespace, scope));
        if let Some(after) = after {
            let Some((after_namespace, after_name)) = after.split_once('/') else {
                return Err(Error::invalid(
                    "page_token",
                    format!("{after:?} is not a page token this server issued"),
                ));
            };
            query = query.filter(
                Condition::any()
                    .add(policies::Column::Namespace.gt(after_namespace))
                    .add(
                        Condition::all()
                            .add(policies::Column::Namespace.eq(after_namespace))
                            .add(policies::Column::Name.gt(after_name)),
                    ),
            );
        }
        let mut rows = query
            .order_by(policies::Column::Namespace, Order::Asc)
            .order_by(policies::Column::Name, Order::Asc)
            .limit(u64::from(page_size) + 1)
            .all(&self.db)
            .await?;
        let token_prefix = token_scope("policies", scope);
        let next_page_token = next_token(&mut rows, page_size, |last| {
            format!("{token_prefix}{}/{}", last.namespace, last.name)
        });
        let items = self.summaries(&self.db, rows).await?;
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Summaries of some policies with one query for all their versions.
    async fn summaries<C: ConnectionTrait>(
        &self,
        db: &C,
        rows: Vec<policies::Model>,
    ) -> Result<Vec<PolicySummary>> {
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let counts = versions::Entity::find()
            .select_only()
            .column(versions::Column::PolicyId)
            .column_as(versions::Column::Version.max(), "latest")
            .column_as(
                Expr::cust("MAX(CASE WHEN state = 'DRAFT' THEN version END)"),
                "draft",
            )
            .filter(versions::Column::PolicyId.is_in(ids))
            .group_by(versions::Column::PolicyId)
            .into_model::<VersionCounts>()
            .all(db)
            .await?;
        rows.into_iter()
            .map(|row| {
                let count = counts.iter().find(|count| count.policy_id == row.id);
                Ok(PolicySummary {
                    policy: policy_ref(&row)?,
                    active: row
                        .active_version
                        .zip(row.active_revision)
                        .map(|(v, r)| (to_u32(v), to_u64(r))),
                    draft_version: count.and_then(|count| count.draft).map(to_u32),
                    latest_version: count.and_then(|count| count.latest).map_or(0, to_u32),
                    schema: row
                        .schema
                        .as_deref()
                        .map(serde_json::from_str)
                        .transpose()
                        .map_err(|error| {
                            Error::Internal(format!("stored schema is not json: {error}"))
                        })?,
                })
            })
            .collect()
    }

    /// The audit log, newest first; the page token is the last event id.
    #[tracing::instrument(name = "storage.list_events", skip_all)]
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<EventRecord>> {
        let below: Option<i64> = parse_page_token("events", filter, page_token)?;
        let mut query = events::Entity::find();
        query = query.filter(in_scope(events::Column::Namespace, &filter.scope));
        if let Some(name) = &filter.name {
            query = query.filter(events::Column::Name.eq(name.as_str()));
        }
        if !filter.kinds.is_empty() {
            query = query
                .filter(events::Column::Kind.is_in(filter.kinds.iter().map(|kind| kind.as_str())));
        }
        if let Some(below) = below {
            query = query.filter(events::Column::Id.lt(below));
        }
        let mut rows = query
            .order_by(events::Column::Id, Order::Desc)
            .limit(u64::from(page_size) + 1)
            .all(&self.db)
            .await?;
        let token_prefix = token_scope("events", filter);
        let next_page_token = next_token(&mut rows, page_size, |last| {
            format!("{token_prefix}{}", last.id)
        });
        let items = rows
            .into_iter()
            .map(|row| {
                Ok(EventRecord {
                    id: to_u64(row.id),
                    kind: row.kind.parse()?,
                    policy: row.namespace.zip(row.name),
                    actor: row.actor,
                    at: row.at,
                    reason: row.reason,
                    request_id: row.request_id,
                    previous_version: row.previous_version.map(to_u32),
                    new_version: row.new_version.map(to_u32),
                    revision: row.revision.map(to_u64),
                    key_id: row.key_id,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The bundle that was active at a past revision or instant, read from
    /// the event log.
    #[tracing::instrument(name = "storage.active_as_of", skip_all)]
    pub async fn active_as_of(
        &self,
        policy: &PolicyRef,
        as_of: AsOf,
    ) -> Result<Option<ActiveBundle>> {
        let row = find_policy(&self.db, policy).await?;
        let mut query = events::Entity::find()
            .filter(events::Column::PolicyId.eq(row.id))
            .filter(events::Column::Kind.is_in([
                EventKind::Activated.as_str(),
                EventKind::RolledBack.as_str(),
            ]));
        query = match as_of {
            AsOf::Revision(revision) => query.filter(events::Column::Revision.lte(revision as i64)),
            AsOf::Time(at) => query.filter(events::Column::At.lte(at)),
        };
        let Some(event) = query
            .order_by(events::Column::Revision, Order::Desc)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let (Some(version), Some(revision)) = (event.new_version, event.revision) else {
            return Err(Error::Internal(format!(
                "activation event {} lacks its version",
                event.id
            )));
        };
        let version = find_version(
            &self.db,
            policy,
            row.id,
            &VersionSelector::Number(to_u32(version)),
        )
        .await?;
        active_bundle(policy.clone(), to_u64(revision), &version).map(Some)
    }

    /// The open draft of a policy, if any.
    #[tracing::instrument(name = "storage.open_draft", skip_all)]
    pub async fn open_draft(&self, policy: &PolicyRef) -> Result<Option<VersionRecord>> {
        let row = find_policy(&self.db, policy).await?;
        open_draft(&self.db, row.id)
            .await?
            .map(|model| version_record(policy, row.active_version, model))
            .transpose()
    }

    /// The current revision.
    #[tracing::instrument(name = "storage.current_revision", skip_all)]
    pub async fn current_revision(&self) -> Result<u64> {
        current_revision(&self.db).await
    }

    /// Every active bundle and the revision they are current at, in one
    /// query, to fill the in-memory index.
    #[tracing::instrument(name = "storage.load_active", skip_all)]
    pub async fn load_active(&self) -> Result<(u64, Vec<ActiveBundle>)> {
        // One snapshot for both reads, so the bundles are exactly those of
        // the revision (PostgreSQL's default isolation would let a commit in
        // between show through; SQLite transactions are snapshots already).
        let txn = match self.db.get_database_backend() {
            DatabaseBackend::Postgres => {
                self.db
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await?
            }
            _ => self.db.begin().await?,
        };
        let revision = current_revision(&txn).await?;
        let rows = MovedRow::find_by_statement(Statement::from_string(
            txn.get_database_backend(),
            ACTIVE_BUNDLES,
        ))
        .all(&txn)
        .await?;
        txn.commit().await?;
        let bundles = rows
            .into_iter()
            .map(MovedRow::into_bundle)
            .collect::<Result<_>>()?;
        Ok((revision, bundles))
    }

    /// The pointer moves of every revision after `revision`, grouped by
    /// revision, oldest first: what a replica applies to catch up.
    #[tracing::instrument(name = "storage.activations_since", skip_all)]
    pub async fn activations_since(&self, revision: u64) -> Result<Vec<(u64, Vec<ActiveBundle>)>> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DatabaseBackend::Postgres => MOVES_SINCE.replace('?', "$1"),
            _ => MOVES_SINCE.to_owned(),
        };
        let rows = MovedRow::find_by_statement(Statement::from_sql_and_values(
            backend,
            sql,
            [(revision as i64).into()],
        ))
        .all(&self.db)
        .await?;
        let mut revisions: Vec<(u64, Vec<ActiveBundle>)> = Vec::new();
        for row in rows {
            let bundle = row.into_bundle()?;
            let revision = bundle.revision;
            match revisions.last_mut() {
                Some((last, bundles)) if *last == revision => bundles.push(bundle),
                _ => revisions.push((revision, vec![bundle])),
            }
        }
        Ok(revisions)
    }

    /// Stores the public keys not stored yet, and records a key rotation when
    /// the signing key differs from the last one recorded.
    #[tracing::instrument(name = "storage.register_keys", skip_all)]
    pub async fn register_keys(
        &self,
        keys: &[Jwk],
        signing_kid: &str,
        context: &RequestContext,
        reason: &str,
    ) -> Result<()> {
        let write = self.begin_write().await?;
        let txn = &write.txn;
        let at = now();
        // Only keys not stored yet are inserted: a stored key is history,
        // and the database refuses an insert that collides with it.
        let stored: std::collections::HashSet<String> = signing_keys::Entity::find()
            .select_only()
            .column(signing_keys::Column::Kid)
            .into_tuple::<String>()
            .all(txn)
            .await?
            .into_iter()
            .collect();
        for key in keys.iter().filter(|key| !stored.contains(&key.kid)) {
            signing_keys::Entity::insert(signing_keys::ActiveModel {
                kid: Set(key.kid.clone()),
                public_key: Set(key.x.clone()),
                created_at: Set(at),
            })
            .exec_without_returning(txn)
            .await?;
        }
        // MAX(id) by kind is one seek in the index on events(kind, id),
        // whatever the planner makes of ORDER BY … LIMIT 1.
        let last_rotation_id: Option<i64> = events::Entity::find()
            .select_only()
            .column_as(events::Column::Id.max(), "id")
            .filter(events::Column::Kind.eq(EventKind::KeyRotated.as_str()))
            .into_tuple::<Option<i64>>()
            .one(txn)
            .await?
            .flatten();
        let last_rotation = match last_rotation_id {
            Some(id) => events::Entity::find_by_id(id).one(txn).await?,
            None => None,
        };
        if last_rotation.and_then(|event| event.key_id).as_deref() != Some(signing_kid) {
            record_event(
                txn,
                context,
                at,
                NewEvent {
                    kind: EventKind::KeyRotated,
                    policy: None,
                    previous_version: None,
                    new_version: None,
                    revision: None,
                    key_id: Some(signing_kid.to_owned()),
                    reason,
                },
            )
            .await?;
        }
        self.commit(write, None, context, ()).await
    }

    /// Every public key that ever signed, oldest first.
    #[tracing::instrument(name = "storage.signing_keys", skip_all)]
    pub async fn signing_keys(&self) -> Result<Vec<Jwk>> {
        let rows = signing_keys::Entity::find()
            .order_by(signing_keys::Column::CreatedAt, Order::Asc)
            .order_by(signing_keys::Column::Kid, Order::Asc)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: row.public_key,
                kid: row.kid,
                alg: "EdDSA".into(),
                use_: "sig".into(),
            })
            .collect())
    }
}

/// Every pointer move after a revision, with the bundle it moved to.
/// The active bundle of every policy. Driven from `policies`, one index
/// lookup per active pointer: a LEFT JOIN keeps SQLite from scanning every
/// version row (JWS included) to find the active ones. An active pointer
/// always names an existing version (a foreign key of the data).
pub(super) const ACTIVE_BUNDLES: &str = "SELECT p.active_revision AS revision, p.namespace, p.name, \
     v.version, v.label, v.digest, v.jws, v.key_id \
     FROM policies p LEFT JOIN versions v ON v.policy_id = p.id AND v.version = p.active_version \
     WHERE p.active_version IS NOT NULL";

const MOVES_SINCE: &str = "SELECT e.revision, p.namespace, p.name, v.version, v.label, v.digest, v.jws, v.key_id \
     FROM events e \
     JOIN policies p ON p.id = e.policy_id \
     JOIN versions v ON v.policy_id = e.policy_id AND v.version = e.new_version \
     WHERE e.revision > ? AND e.kind IN ('ACTIVATED', 'ROLLED_BACK') \
     ORDER BY e.revision, e.id";

impl MovedRow {
    fn into_bundle(self) -> Result<ActiveBundle> {
        let policy = PolicyRef::parse(&self.namespace, &self.name)?;
        let (Some(jws), Some(key_id)) = (self.jws, self.key_id) else {
            return Err(Error::Internal(format!(
                "active version {} of {policy} has no signature",
                self.version
            )));
        };
        Ok(ActiveBundle {
            version: to_u32(self.version),
            label: self
                .label
                .map(|label| Label::parse("label", &label))
                .transpose()?,
            digest: Digest::from_stored(self.digest),
            jws: Arc::from(jws),
            key_id,
            revision: to_u64(self.revision),
            policy,
        })
    }
}

/// The condition that a namespace column lies in a listing's scope.
fn in_scope(column: impl ColumnTrait, scope: &NamespaceScope) -> Condition {
    match scope {
        NamespaceScope::All => Condition::all(),
        NamespaceScope::One(namespace) => Condition::all().add(column.eq(namespace.as_str())),
        NamespaceScope::Among(namespaces) => Condition::all()
            .add(column.is_in(namespaces.iter().map(|namespace| namespace.as_str()))),
    }
}

/// Marks a published version active when the activation in the same
/// transaction pointed at it.
fn mark_active(version: VersionRecord, activation: Option<&ActivationOutcome>) -> VersionRecord {
    let active = version.active
        || activation.is_some_and(|outcome| {
            outcome
                .activations
                .iter()
                .any(|a| a.version == version.version)
        });
    VersionRecord { active, ..version }
}

/// Trims the extra row fetched to learn whether another page follows.
fn next_token<T>(
    rows: &mut Vec<T>,
    page_size: u32,
    token_of: impl Fn(&T) -> String,
) -> Option<String> {
    if rows.len() <= page_size as usize {
        return None;
    }
    rows.truncate(page_size as usize);
    rows.last().map(token_of)
}
