//! Relational storage for Homeport: sea-orm entities, migrations applied at connect, and the
//! typed queries services use. PostgreSQL in production, SQLite as the embedded default.
//!
//! **Invariant:** every row carries a tenant id, and every tenant-facing query filters by it;
//! only device login (which knows nothing but the guid) reads across tenants.
//! **Invariant:** nothing here is written per keep-alive; connection timestamps change only
//! on connect and disconnect.

mod audit;
mod config;
mod devices;
pub mod entity;
mod error;
pub mod migration;
mod provisioning;
mod store;
pub mod testing;

pub use audit::{AuditFilter, AuditRecord};
pub use config::StoreConfig;
pub use devices::{canonical_guid, Device, DeviceInfo, DeviceQuery, NewDevice};
pub use error::StoreError;
pub use provisioning::{ConfigRecord, ConfigUpdate};
pub use store::Store;

/// Re-exported so callers can name the connection type without depending on sea-orm directly.
pub use sea_orm::DatabaseConnection;
