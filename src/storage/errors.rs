//! What a database error means to a caller: disk full, unavailable, or a
//! fault of ours.

use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};

use crate::domain::Error;

impl From<DbErr> for Error {
    fn from(error: DbErr) -> Self {
        match database_code(&error).as_deref() {
            // SQLite's SQLITE_FULL (13, with its extended codes), PostgreSQL's
            // disk_full: the write is refused until space returns, and then
            // writes succeed again by themselves.
            Some(code) if sqlite_primary(code) == Some(13) || code == "53100" => {
                return Error::exhausted(
                    "the database's disk is full: nothing was written; free space and retry",
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

/// Whether a statement collided with a unique key, on either connection.
pub(super) fn is_unique_violation(error: &DbErr) -> bool {
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => {
            matches!(sqlx.as_ref(), Sqlx::Database(database) if database.is_unique_violation())
        }
        _ => false,
    }
}

/// The database's own error code, when it refused a statement.
fn database_code(error: &DbErr) -> Option<String> {
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
