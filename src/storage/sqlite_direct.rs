//! The direct SQLite connection: a write connection driven from the
//! thread that asks.
//!
//! sqlx runs each statement of a connection on a thread of that
//! connection's own: a statement is a round trip between the request's
//! task and that thread (a send, a park, two wake-ups), 40 to 150 µs on a
//! machine of two cores where SQLite's own work is a few µs, and an
//! activation of nineteen statements paid it nineteen times. Here the
//! writer's statements run on a connection opened by this module, on the
//! same SQLite library, in the caller's thread at once: SeaORM still
//! builds every statement (see `statement_runner`) and names every column
//! a row is read by; only the commit, which waits for the disk, leaves
//! the thread. One hop a transaction.
//!
//! A transaction on it is an [`Open`]: BEGIN, or a savepoint in the
//! transaction open on the connection (see `writer`), rolled back when
//! dropped uncommitted, so a caller that goes away leaves nothing behind.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::{Value as Sql, ValueRef};
use rusqlite::{Connection, OpenFlags, Row};
use sea_orm::sea_query::Value;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ColumnType, DbErr, EntityTrait, IdenStatic, Iterable,
    RuntimeErr, Statement, TryIntoModel,
};

use super::{SQLITE_BUSY_TIMEOUT, SQLITE_PRAGMAS};

/// Prepared statements kept: every statement an activation makes.
const STATEMENT_CACHE: usize = 64;

/// The direct SQLite connection.
pub(super) struct DirectSqlite {
    connection: Mutex<Connection>,
}

impl DirectSqlite {
    /// Opens the database file at `path` for writing, set up as the pool's
    /// connections are: WAL, `synchronous = FULL`, foreign keys on.
    pub(super) fn open(path: &Path) -> Result<Arc<Self>, DbErr> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|connection| {
            connection.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
            for (pragma, value) in SQLITE_PRAGMAS {
                connection.execute_batch(&format!("PRAGMA {pragma} = {value};"))?;
            }
            connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            Ok(connection)
        })
        .map_err(|error| DbErr::Conn(runtime_error(error)))?;
        Ok(Arc::new(DirectSqlite {
            connection: Mutex::new(connection),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-statement leaves SQLite consistent: the transaction
        // it was in rolls back with its `Open`.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn batch(&self, sql: &str) -> Result<(), DbErr> {
        self.lock()
            .execute_batch(sql)
            .map_err(|error| DbErr::Exec(runtime_error(error)))
    }

    /// Runs `statement`; the rows it changed.
    pub(super) fn run(&self, statement: &Statement) -> Result<u64, DbErr> {
        let connection = self.lock();
        let ran = || -> rusqlite::Result<u64> {
            let mut prepared = connection.prepare_cached(&statement.sql)?;
            let changed = prepared.execute(rusqlite::params_from_iter(bound(statement)?))?;
            Ok(changed as u64)
        };
        ran().map_err(|error| DbErr::Exec(runtime_error(error)))
    }

    /// The rows `statement` reads, each as `read` makes it.
    pub(super) fn rows<T>(
        &self,
        statement: &Statement,
        read: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, DbErr> {
        let connection = self.lock();
        let rows = || -> rusqlite::Result<Vec<T>> {
            let mut prepared = connection.prepare_cached(&statement.sql)?;
            prepared
                .query_map(rusqlite::params_from_iter(bound(statement)?), read)?
                .collect()
        };
        rows().map_err(|error| DbErr::Query(runtime_error(error)))
    }
}

/// A row as `E`'s model: each column by its name, read as the entity
/// declares it.
pub(super) fn model<E>(row: &Row<'_>) -> rusqlite::Result<E::Model>
where
    E: EntityTrait,
    E::ActiveModel: TryIntoModel<E::Model>,
{
    let mut model = <E::ActiveModel as ActiveModelTrait>::default();
    for column in E::Column::iter() {
        let stored = row.get_ref(column.as_str())?;
        let value = value(column.def().get_column_type(), stored)?;
        model.try_set(column, value).map_err(conversion)?;
    }
    model.try_into_model().map_err(conversion)
}

fn conversion(error: DbErr) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Null, error.into())
}

/// One stored value, as a column of `column_type` holds it.
fn value(column_type: &ColumnType, stored: ValueRef<'_>) -> rusqlite::Result<Value> {
    let wrong = || {
        rusqlite::Error::InvalidColumnType(
            0,
            format!("{:?} read as {column_type:?}", stored.data_type()),
            stored.data_type(),
        )
    };
    let integer = stored.as_i64_or_null().map_err(|_| wrong());
    let text = || stored.as_str_or_null().map_err(|_| wrong());
    Ok(match column_type {
        ColumnType::Integer => Value::Int(
            integer?
                .map(i32::try_from)
                .transpose()
                .map_err(|_| wrong())?,
        ),
        ColumnType::BigInteger => Value::BigInt(integer?),
        ColumnType::Boolean => Value::Bool(integer?.map(|value| value != 0)),
        ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_) => {
            Value::String(text()?.map(str::to_owned))
        }
        ColumnType::TimestampWithTimeZone => Value::ChronoDateTimeUtc(
            text()?
                .map(|text| time(text).ok_or_else(wrong))
                .transpose()?,
        ),
        ColumnType::Binary(_) | ColumnType::VarBinary(_) | ColumnType::Blob => Value::Bytes(
            stored
                .as_blob_or_null()
                .map_err(|_| wrong())?
                .map(<[u8]>::to_vec),
        ),
        _ => return Err(wrong()),
    })
}

/// A statement's values, bound as sqlx binds them (times as RFC 3339 text,
/// so stored times compare alike whichever connection wrote them).
fn bound(statement: &Statement) -> rusqlite::Result<Vec<Sql>> {
    statement
        .values
        .iter()
        .flat_map(|values| values.0.iter())
        .map(bind)
        .collect()
}

fn bind(value: &Value) -> rusqlite::Result<Sql> {
    let integer = |value: Option<i64>| value.map_or(Sql::Null, Sql::Integer);
    Ok(match value {
        Value::Bool(value) => integer(value.map(i64::from)),
        Value::TinyInt(value) => integer(value.map(i64::from)),
        Value::SmallInt(value) => integer(value.map(i64::from)),
        Value::Int(value) => integer(value.map(i64::from)),
        Value::BigInt(value) => integer(*value),
        Value::TinyUnsigned(value) => integer(value.map(i64::from)),
        Value::SmallUnsigned(value) => integer(value.map(i64::from)),
        Value::Unsigned(value) => integer(value.map(i64::from)),
        Value::BigUnsigned(value) => integer(
            value
                .map(i64::try_from)
                .transpose()
                .map_err(|error| rusqlite::Error::ToSqlConversionFailure(error.into()))?,
        ),
        Value::String(value) => value.clone().map_or(Sql::Null, Sql::Text),
        Value::Bytes(value) => value.clone().map_or(Sql::Null, Sql::Blob),
        Value::ChronoDateTimeUtc(value) => value.map_or(Sql::Null, |at| {
            Sql::Text(at.to_rfc3339_opts(SecondsFormat::AutoSi, false))
        }),
        other => {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                format!("the direct SQLite connection does not bind {other:?}").into(),
            ));
        }
    })
}

/// A stored time: RFC 3339 as written.
fn time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .ok()
}

/// SQLite's refusal as sqlx reports it, so that it means the same to a
/// caller (see `errors`): its extended result code and message.
#[derive(Debug)]
struct Refusal {
    code: String,
    message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

impl sea_orm::sqlx::error::DatabaseError for Refusal {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.as_str().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sea_orm::sqlx::error::ErrorKind {
        use sea_orm::sqlx::error::ErrorKind;
        // SQLite's extended result codes of a constraint refused.
        match self.code.as_str() {
            "2067" | "1555" => ErrorKind::UniqueViolation,
            "787" => ErrorKind::ForeignKeyViolation,
            "1299" => ErrorKind::NotNullViolation,
            "275" => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

fn runtime_error(error: rusqlite::Error) -> RuntimeErr {
    use sea_orm::sqlx::Error as Sqlx;
    let sqlx = match error {
        rusqlite::Error::SqliteFailure(failure, message) => Sqlx::Database(Box::new(Refusal {
            code: failure.extended_code.to_string(),
            message: message.unwrap_or_else(|| failure.to_string()),
        })),
        other => Sqlx::Protocol(other.to_string()),
    };
    RuntimeErr::SqlxError(Arc::new(sqlx))
}

/// A transaction open on [`DirectSqlite`]: the connection's own, or a savepoint
/// in it. Dropped uncommitted, it rolls back.
pub(super) struct Open {
    direct: Arc<DirectSqlite>,
    savepoint: bool,
    done: bool,
}

impl Open {
    /// Begins the connection's transaction.
    pub(super) fn begin(direct: &Arc<DirectSqlite>) -> Result<Self, DbErr> {
        direct.batch("BEGIN")?;
        Ok(Open {
            direct: direct.clone(),
            savepoint: false,
            done: false,
        })
    }

    /// A savepoint inside this transaction.
    pub(super) fn nested(&self) -> Result<Self, DbErr> {
        self.direct.batch("SAVEPOINT member")?;
        Ok(Open {
            direct: self.direct.clone(),
            savepoint: true,
            done: false,
        })
    }

    /// The connection the transaction's statements run on.
    pub(super) fn direct(&self) -> &DirectSqlite {
        &self.direct
    }

    /// Releases a savepoint, or commits the transaction: the commit waits
    /// for the disk on a blocking thread, not the caller's.
    pub(super) async fn commit(mut self) -> Result<(), DbErr> {
        self.done = true;
        if self.savepoint {
            return self.direct.batch("RELEASE member");
        }
        let direct = self.direct.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = direct.batch("COMMIT");
            if outcome.is_err() && !direct.lock().is_autocommit() {
                // A commit that failed may leave the transaction open.
                let _ = direct.batch("ROLLBACK");
            }
            outcome
        })
        .await
        .map_err(|error| DbErr::Custom(format!("a commit failed: {error}")))?
    }

    /// Rolls back what this transaction or savepoint wrote.
    pub(super) fn rollback(mut self) -> Result<(), DbErr> {
        self.done = true;
        self.undo()
    }

    fn undo(&self) -> Result<(), DbErr> {
        match self.savepoint {
            true => self.direct.batch("ROLLBACK TO member; RELEASE member"),
            false if self.direct.lock().is_autocommit() => Ok(()),
            false => self.direct.batch("ROLLBACK"),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if !self.done
            && let Err(error) = self.undo()
        {
            tracing::error!(%error, "rolling back a dropped write transaction");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time binds as the text sqlx writes, and reads back as written.
    #[test]
    fn times_round_trip_as_sqlx_writes_them() {
        let at = Utc::now();
        let Sql::Text(text) = bind(&Value::ChronoDateTimeUtc(Some(at))).unwrap() else {
            panic!("a time binds as text");
        };
        assert_eq!(text, at.to_rfc3339_opts(SecondsFormat::AutoSi, false));
        assert_eq!(time(&text), Some(at));
    }
}
