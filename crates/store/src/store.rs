//! The [`Store`] handle: connects, configures SQLite for sharing, and applies migrations.

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::migration::Migrator;
use crate::{StoreConfig, StoreError};

/// How long an SQLite statement waits for another process's write lock. Bulk enrollment by a
/// simulator can hold it for a while; failing fast would only turn that into retries.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Key of the PostgreSQL advisory lock that serializes migrations across replicas starting
/// together ("HPMIGRAT" in ASCII).
const PG_MIGRATION_LOCK: i64 = 0x4850_4d49_4752_4154;

/// A pooled database handle with the schema migrated. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) db: DatabaseConnection,
}

impl Store {
    /// Connects with default pool settings and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with(StoreConfig::new(url)).await
    }

    /// Connects with `config` and applies pending migrations.
    pub async fn connect_with(config: StoreConfig) -> Result<Store, StoreError> {
        let backend = backend_of(&config.url)?;
        if config.max_connections == 0 {
            return Err(StoreError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        let mut options = ConnectOptions::new(config.url.clone());
        options
            .max_connections(config.max_connections)
            .min_connections(config.min_connections.min(config.max_connections))
            .acquire_timeout(config.acquire_timeout)
            // Statement logging at info would flood logs during bulk enrollment.
            .sqlx_logging(false);
        if backend == DatabaseBackend::Sqlite {
            if is_sqlite_memory(&config.url) {
                // An in-memory database lives as long as a connection to it: keep exactly one,
                // forever.
                let forever = Duration::from_secs(u64::from(u32::MAX));
                options
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(forever)
                    .max_lifetime(forever);
            }
            options.map_sqlx_sqlite_opts(|o| {
                // WAL lets readers in other processes work while one writes; NORMAL sync is
                // durable at checkpoints and the usual pairing with WAL.
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true)
            });
        }
        let db = Database::connect(options).await?;
        migrate(&db).await?;
        tracing::debug!(url = %config.redacted_url(), "store connected and migrated");
        Ok(Store { db })
    }

    /// Wraps an existing connection without migrating (the caller already did).
    pub fn from_connection(db: DatabaseConnection) -> Store {
        Store { db }
    }

    /// The underlying connection, for other crates' tables and ad-hoc queries.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Which database this is.
    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    /// Checks the database answers, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }

    /// Closes the pool; outstanding clones stop working.
    pub async fn close(self) -> Result<(), StoreError> {
        Ok(self.db.close().await?)
    }
}

fn backend_of(url: &str) -> Result<DatabaseBackend, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DatabaseBackend::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(DatabaseBackend::Sqlite)
    } else {
        Err(StoreError::Config(format!(
            "unsupported database URL {:?}: expected postgres:// or sqlite:",
            crate::config::redact_url(url)
        )))
    }
}

fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Applies pending migrations so that several processes starting at once do not race: on
/// PostgreSQL under a transaction-scoped advisory lock (DDL is transactional there), on
/// SQLite in a transaction that takes the write lock before reading the migration table.
async fn migrate(db: &DatabaseConnection) -> Result<(), StoreError> {
    match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            let txn = db.begin().await?;
            txn.execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})"
            ))
            .await?;
            Migrator::up(&txn, None)
                .await
                .map_err(StoreError::Migration)?;
            txn.commit().await?;
        }
        _ => {
            // A tiny table whose only purpose is a write as the transaction's first statement:
            // SQLite then holds the write lock before the migrator reads anything, so a second
            // process waits (busy timeout) instead of failing on a stale snapshot.
            db.execute_unprepared(
                "CREATE TABLE IF NOT EXISTS homeport_migration_lock (id INTEGER PRIMARY KEY)",
            )
            .await?;
            let txn = db.begin().await?;
            txn.execute_unprepared(
                "INSERT OR REPLACE INTO homeport_migration_lock (id) VALUES (1)",
            )
            .await?;
            Migrator::up(&txn, None)
                .await
                .map_err(StoreError::Migration)?;
            txn.commit().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_backends() {
        assert_eq!(
            backend_of("postgres://h/db").ok(),
            Some(DatabaseBackend::Postgres)
        );
        assert_eq!(
            backend_of("sqlite::memory:").ok(),
            Some(DatabaseBackend::Sqlite)
        );
        assert!(matches!(
            backend_of("mysql://u:pw@h/db"),
            Err(StoreError::Config(ref m)) if !m.contains("pw")
        ));
        assert!(is_sqlite_memory("sqlite::memory:"));
        assert!(!is_sqlite_memory("sqlite:///tmp/x.db?mode=rwc"));
    }
}
