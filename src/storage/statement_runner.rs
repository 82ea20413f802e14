//! The connections a statement runs on: SeaORM's, through sqlx, for
//! every read and every write on PostgreSQL; and on SQLite, for the
//! writes an activation makes, the direct SQLite connection (see
//! `sqlite_direct`), a statement at a time in the caller's thread.
//!
//! The storage an activation runs is written once, against
//! [`StatementRunner`]: SeaORM builds each statement and
//! [`StatementRunner`] runs it on whichever connection the transaction is
//! on. Storage off that path keeps SeaORM's own calls; a transaction on the
//! direct SQLite connection refuses them (see [`Txn`]), so a function that
//! should be on the path and is not fails its tests.

use sea_orm::sea_query::{InsertStatement, IntoColumnRef};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    ExecResult, QueryResult, QuerySelect, QueryTrait, Select, Statement, StatementBuilder,
    TryGetableMany, TryIntoModel,
};

use super::sqlite_direct::{self, Open};

/// What a runner answers: SeaORM's errors, whichever connection ran it (see
/// `errors`).
type Result<T> = std::result::Result<T, DbErr>;

/// Where a statement runs, and how its rows are read.
pub(super) trait StatementRunner: Sync {
    fn backend(&self) -> DatabaseBackend;

    /// The models `select` reads.
    fn all<E>(&self, select: Select<E>) -> impl Future<Output = Result<Vec<E::Model>>> + Send
    where
        E: EntityTrait,
        E::ActiveModel: TryIntoModel<E::Model>;

    /// The values `statement` reads, a row each.
    fn values<T: RowValues>(
        &self,
        statement: Statement,
    ) -> impl Future<Output = Result<Vec<T>>> + Send;

    /// Runs `statement`; the rows it changed.
    fn run(&self, statement: Statement) -> impl Future<Output = Result<u64>> + Send;

    /// The first model `select` reads.
    fn one<E>(&self, select: Select<E>) -> impl Future<Output = Result<Option<E::Model>>> + Send
    where
        E: EntityTrait,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        let first = self.all(select.limit(1));
        async move { Ok(first.await?.into_iter().next()) }
    }

    /// The first value `statement` reads.
    fn value<T: RowValues>(
        &self,
        statement: Statement,
    ) -> impl Future<Output = Result<Option<T>>> + Send {
        let values = self.values(statement);
        async move { Ok(values.await?.into_iter().next()) }
    }

    /// Runs `insert`; the id of the row it inserted, its `id` column.
    fn insert_id<I: IntoColumnRef>(
        &self,
        mut insert: InsertStatement,
        id: I,
    ) -> impl Future<Output = Result<i64>> + Send {
        insert.returning_col(id);
        let inserted = self.value(self.build(&insert));
        async move { inserted.await?.ok_or_else(|| DbErr::RecordNotInserted) }
    }

    /// Builds `statement` for this runner's database.
    fn build<S: StatementBuilder>(&self, statement: &S) -> Statement {
        self.backend().build(statement)
    }
}

/// What a row of values is read as: a value, or a tuple of them, on
/// either connection.
pub(super) trait RowValues: TryGetableMany + Send + Sized + 'static {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

/// The values both connections read: SeaORM's `TryGetable`, rusqlite's `FromSql`.
macro_rules! row_values {
    ($($value:ty),*) => {$(
        impl RowValues for $value {
            fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                row.get(0)
            }
        }
    )*};
}

row_values!(i64);

impl<A, B> RowValues for (A, B)
where
    A: sea_orm::TryGetable + rusqlite::types::FromSql + Send + 'static,
    B: sea_orm::TryGetable + rusqlite::types::FromSql + Send + 'static,
{
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?, row.get(1)?))
    }
}

impl<A, B, C, D> RowValues for (A, B, C, D)
where
    A: sea_orm::TryGetable + rusqlite::types::FromSql + Send + 'static,
    B: sea_orm::TryGetable + rusqlite::types::FromSql + Send + 'static,
    C: sea_orm::TryGetable + rusqlite::types::FromSql + Send + 'static,
    D: sea_orm::TryGetable + rusqlite::types::FromSql + Send + 'static,
{
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    }
}

/// SeaORM's runner, for a connection or transaction of its own.
macro_rules! sea_orm_runner {
    ($($connection:ty),*) => {$(
        impl StatementRunner for $connection {
            fn backend(&self) -> DatabaseBackend {
                self.get_database_backend()
            }

            async fn all<E>(&self, select: Select<E>) -> Result<Vec<E::Model>>
            where
                E: EntityTrait,
                E::ActiveModel: TryIntoModel<E::Model>,
            {
                select.all(self).await
            }

            async fn values<T: RowValues>(&self, statement: Statement) -> Result<Vec<T>> {
                self.query_all_raw(statement)
                    .await?
                    .iter()
                    .map(|row| Ok(T::try_get_many_by_index(row)?))
                    .collect()
            }

            async fn run(&self, statement: Statement) -> Result<u64> {
                Ok(self.execute_raw(statement).await?.rows_affected())
            }
        }
    )*};
}

sea_orm_runner!(DatabaseConnection, DatabaseTransaction);

/// A write transaction: SeaORM's, or on the direct SQLite connection.
pub(super) enum Txn {
    SeaOrm(DatabaseTransaction),
    Direct(Open),
}

impl Txn {
    pub(super) async fn commit(self) -> Result<()> {
        match self {
            Txn::SeaOrm(txn) => txn.commit().await,
            Txn::Direct(txn) => txn.commit().await,
        }
    }

    pub(super) async fn rollback(self) -> Result<()> {
        match self {
            Txn::SeaOrm(txn) => txn.rollback().await,
            Txn::Direct(txn) => txn.rollback(),
        }
    }

    /// A savepoint inside this transaction.
    pub(super) async fn nested(&self) -> Result<Txn> {
        Ok(match self {
            Txn::SeaOrm(txn) => Txn::SeaOrm(sea_orm::TransactionTrait::begin(txn).await?),
            Txn::Direct(txn) => Txn::Direct(txn.nested()?),
        })
    }

    pub(super) fn is_direct(&self) -> bool {
        matches!(self, Txn::Direct(_))
    }

    /// SeaORM's transaction, which storage off the direct SQLite connection
    /// needs.
    fn sea_orm(&self) -> Result<&DatabaseTransaction> {
        match self {
            Txn::SeaOrm(txn) => Ok(txn),
            Txn::Direct(_) => Err(DbErr::Custom(
                "a statement off the direct SQLite connection in a transaction on it".into(),
            )),
        }
    }
}

impl StatementRunner for Txn {
    fn backend(&self) -> DatabaseBackend {
        match self {
            Txn::SeaOrm(txn) => txn.get_database_backend(),
            Txn::Direct(_) => DatabaseBackend::Sqlite,
        }
    }

    async fn all<E>(&self, select: Select<E>) -> Result<Vec<E::Model>>
    where
        E: EntityTrait,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        match self {
            Txn::SeaOrm(txn) => txn.all(select).await,
            Txn::Direct(open) => open.direct().rows(
                &select.build(DatabaseBackend::Sqlite),
                sqlite_direct::model::<E>,
            ),
        }
    }

    async fn values<T: RowValues>(&self, statement: Statement) -> Result<Vec<T>> {
        match self {
            Txn::SeaOrm(txn) => txn.values(statement).await,
            Txn::Direct(open) => open.direct().rows(&statement, T::read),
        }
    }

    async fn run(&self, statement: Statement) -> Result<u64> {
        match self {
            Txn::SeaOrm(txn) => txn.run(statement).await,
            Txn::Direct(open) => open.direct().run(&statement),
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Txn {
    fn get_database_backend(&self) -> DatabaseBackend {
        StatementRunner::backend(self)
    }

    async fn execute_raw(&self, statement: Statement) -> Result<ExecResult> {
        self.sea_orm()?.execute_raw(statement).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult> {
        self.sea_orm()?.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>> {
        self.sea_orm()?.query_one_raw(statement).await
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>> {
        self.sea_orm()?.query_all_raw(statement).await
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{Error, PolicyRef};
    use crate::storage::sqlite_repository;

    /// A transaction on the direct SQLite connection runs what is on it
    /// and refuses a statement from storage left off it, rolling back what
    /// it wrote.
    #[tokio::test]
    async fn the_direct_sqlite_connection_refuses_what_is_off_it() {
        let dir = tempfile::tempdir().unwrap();
        let repository = sqlite_repository(&dir.path().join("runner.db")).await;
        let policy = PolicyRef::parse("team", "limits").unwrap();
        let refused = repository
            .direct()
            .write("test", async |tx| {
                tx.take_revision().await?;
                tx.lock_namespaces([&policy.namespace]).await?;
                tx.policy_exists(&policy).await
            })
            .await;
        match refused {
            Err(Error::Internal(message)) => {
                assert!(message.contains("off the direct SQLite connection"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(repository.current_revision().await.unwrap(), 0);
    }
}
