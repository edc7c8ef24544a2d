//! Helpers for tests (this crate's and other crates' integration tests): throwaway PostgreSQL
//! databases and SQLite files with unique names, removed afterwards.
//!
//! Not behind `cfg(test)` so other crates can use them; nothing here runs in production code.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sea_orm::{ConnectOptions, ConnectionTrait, Database};

use crate::StoreError;

/// The admin URL tests use when `HOMEPORT_TEST_PG_URL` is not set (the tests read it; this
/// library does not).
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A PostgreSQL database created for one test.
#[derive(Debug)]
pub struct TempDatabase {
    /// URL of the new database (admin URL with the database name replaced).
    pub url: String,
    name: String,
    admin_url: String,
}

impl TempDatabase {
    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, disconnecting any sessions still open on it.
    pub async fn drop_db(self) -> Result<(), StoreError> {
        admin_exec(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        )
        .await
    }
}

/// A unique name `homeport_test_<label>_<pid>_<nanos>_<n>`, at most 63 bytes (PostgreSQL's
/// identifier limit) and limited to `[a-z0-9_]` so it never needs escaping.
fn unique_name(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let suffix = format!(
        "_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let label: String = label
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .take(63 - "homeport_test_".len() - suffix.len())
        .collect();
    format!("homeport_test_{label}{suffix}")
}

/// `admin_url` with its database name replaced by `name` (query parameters kept).
fn with_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let scheme_end = base
        .find("://")
        .ok_or_else(|| StoreError::Config("admin URL has no scheme".into()))?;
    let host_start = scheme_end + 3;
    let host_end = base[host_start..]
        .find('/')
        .map_or(base.len(), |i| host_start + i);
    let mut url = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

async fn admin_exec(admin_url: &str, sql: &str) -> Result<(), StoreError> {
    let mut options = ConnectOptions::new(admin_url.to_owned());
    options.max_connections(1).sqlx_logging(false);
    let admin = Database::connect(options).await?;
    let result = admin.execute_unprepared(sql).await;
    let _ = admin.close().await;
    result.map(drop).map_err(StoreError::from)
}

/// Creates an empty database named after `label` through `admin_url` (a database the user
/// may connect to, normally `postgres`).
pub async fn temp_postgres(admin_url: &str, label: &str) -> Result<TempDatabase, StoreError> {
    let name = unique_name(label);
    let url = with_database(admin_url, &name)?;
    admin_exec(admin_url, &format!("CREATE DATABASE \"{name}\"")).await?;
    Ok(TempDatabase {
        url,
        name,
        admin_url: admin_url.to_owned(),
    })
}

/// Runs `test` against a fresh PostgreSQL database and drops the database afterwards, even
/// when `test` panics (the panic is then resumed). The test runs as a spawned task so that a
/// panic is caught at the join.
pub async fn with_temp_postgres<F, Fut>(
    admin_url: &str,
    label: &str,
    test: F,
) -> Result<(), StoreError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let db = temp_postgres(admin_url, label).await?;
    let outcome = tokio::spawn(test(db.url.clone())).await;
    let dropped = db.drop_db().await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    dropped
}

/// A SQLite database file in the system temp directory; the file and its WAL/SHM companions
/// are removed on drop.
#[derive(Debug)]
pub struct TempSqlite {
    /// `sqlite://<path>?mode=rwc`.
    pub url: String,
    /// The database file.
    pub path: PathBuf,
}

impl TempSqlite {
    /// A new, not yet created, uniquely named database file.
    pub fn new(label: &str) -> TempSqlite {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name(label)));
        TempSqlite {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            path,
        }
    }
}

impl Drop for TempSqlite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        let name = unique_name("Store Tests/with-odd chars and a very long label indeed!!!");
        assert!(name.len() <= 63, "{name}");
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        assert_ne!(unique_name("x"), unique_name("x"));
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t").ok(),
            Some("postgres://postgres@127.0.0.1:5432/t".into())
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t").ok(),
            Some("postgres://u:p@h/t?sslmode=disable".into())
        );
        assert_eq!(
            with_database("postgres://h:5432", "t").ok(),
            Some("postgres://h:5432/t".into())
        );
    }
}
