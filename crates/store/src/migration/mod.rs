//! Schema migrations, applied by [`crate::Store::connect`]. Append new migrations; never edit
//! one that has shipped.

use sea_orm_migration::prelude::*;

mod m20250101_000001_create_devices;

/// All migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20250101_000001_create_devices::Migration)]
    }
}
