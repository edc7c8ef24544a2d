//! The store's error type, with the one distinction callers act on: is the database down?

use sea_orm::{DbErr, RuntimeErr};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database rejected or failed a query. Use [`StoreError::is_unavailable`] to tell an
    /// outage from a bad query.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migration(#[source] DbErr),
    /// The configuration (URL, pool size) is unusable.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// A caller passed a value the schema does not allow (e.g. a malformed guid).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The device exists under another tenant; it is neither moved nor changed.
    #[error("device {guid} belongs to another tenant")]
    TenantConflict {
        /// The canonical guid.
        guid: String,
    },
    /// An object of that name (or unique key) exists already in the tenant.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A stored value did not decode (e.g. JSON written by an incompatible version).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when the database could not be reached or is overloaded: retry later, report not
    /// ready, and never read it as "not found".
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) | StoreError::Migration(e) => db_unavailable(e),
            _ => false,
        }
    }

    /// True when the database refuses this data for good (SQLSTATE classes 22 data exception,
    /// 23 integrity, 54 limits; SQLite TOOBIG, CONSTRAINT, MISMATCH; values sqlx cannot
    /// encode): retrying the same rows cannot succeed. Anything else (outages, read-only
    /// failovers, full disks, timeouts, deadlocks) may pass later and is retried.
    pub fn is_refused_data(&self) -> bool {
        use sea_orm::sqlx::Error;
        match self {
            StoreError::InvalidInput(_) => true,
            StoreError::Db(DbErr::Exec(RuntimeErr::SqlxError(e)))
            | StoreError::Db(DbErr::Query(RuntimeErr::SqlxError(e))) => match e {
                Error::Encode(_) => true,
                Error::Database(db) => {
                    database_code_is(db.as_ref(), sqlite_code_refused, postgres_code_refused)
                }
                _ => false,
            },
            _ => false,
        }
    }
}

fn db_unavailable(e: &DbErr) -> bool {
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            sqlx_unavailable(e)
        }
        _ => false,
    }
}

fn sqlx_unavailable(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error;
    match e {
        Error::Io(_)
        | Error::Tls(_)
        | Error::PoolTimedOut
        | Error::PoolClosed
        | Error::WorkerCrashed
        | Error::Protocol(_) => true,
        Error::Database(db) => database_code_is(
            db.as_ref(),
            sqlite_code_unavailable,
            postgres_code_unavailable,
        ),
        _ => false,
    }
}

/// Applies the SQLite or the PostgreSQL test to a database error's code, by its backend.
fn database_code_is(
    db: &dyn sea_orm::sqlx::error::DatabaseError,
    sqlite: fn(&str) -> bool,
    postgres: fn(&str) -> bool,
) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db
        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
        .is_some()
    {
        sqlite(&code)
    } else {
        postgres(&code)
    }
}

/// SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH (extended codes keep the primary one in
/// the low byte): the row itself is refused.
fn sqlite_code_refused(code: &str) -> bool {
    code.parse::<u32>()
        .is_ok_and(|c| matches!(c & 0xff, 18..=20))
}

/// Data exceptions (class 22), integrity violations (23), program limits (54).
fn postgres_code_refused(code: &str) -> bool {
    matches!(code.get(..2), Some("22" | "23" | "54"))
}

/// SQLITE_BUSY / SQLITE_LOCKED, including extended codes (which keep the primary code in the
/// low byte): another process held the write lock past the busy timeout.
fn sqlite_code_unavailable(code: &str) -> bool {
    code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Connection exceptions (class 08), shutdown (57P01-57P03) and too many connections (53300).
fn postgres_code_unavailable(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "53300" | "57P01" | "57P02" | "57P03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(sqlite_code_unavailable("5"));
        assert!(sqlite_code_unavailable("517")); // SQLITE_BUSY_SNAPSHOT
        assert!(!sqlite_code_unavailable("19")); // constraint
        assert!(postgres_code_unavailable("08006"));
        assert!(postgres_code_unavailable("57P01"));
        assert!(!postgres_code_unavailable("23505"));
        assert!(!postgres_code_unavailable("42501"));
        assert!(postgres_code_refused("22021")); // invalid byte sequence (U+0000)
        assert!(postgres_code_refused("23505"));
        assert!(!postgres_code_refused("25006")); // read-only transaction: retried
        assert!(!postgres_code_refused("40P01")); // deadlock: retried
        assert!(sqlite_code_refused("2067")); // SQLITE_CONSTRAINT_UNIQUE
        assert!(!sqlite_code_refused("13")); // SQLITE_FULL: retried
        let io = DbErr::Conn(RuntimeErr::SqlxError(sea_orm::sqlx::Error::PoolTimedOut));
        assert!(StoreError::from(io).is_unavailable());
        assert!(!StoreError::from(DbErr::RecordNotFound("x".into())).is_unavailable());
        assert!(!StoreError::InvalidInput("x".into()).is_unavailable());
    }
}
