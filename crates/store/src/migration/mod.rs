//! Schema migrations, applied by [`crate::Store::connect`]. Append new migrations; never edit
//! one that has shipped.

use sea_orm_migration::prelude::*;

mod m20250101_000001_create_devices;
mod m20261125_000002_create_audit_events;
mod m20261206_000003_audit_time_index;
mod m20261206_000004_provisioning_configs;

/// All migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_create_devices::Migration),
            Box::new(m20261125_000002_create_audit_events::Migration),
            Box::new(m20261206_000003_audit_time_index::Migration),
            Box::new(m20261206_000004_provisioning_configs::Migration),
        ]
    }
}
