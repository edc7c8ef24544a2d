//! The `provisioning_configs` table: rps admin objects of every kind, keyed by tenant, kind
//! and lowercase name.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provisioning_configs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    /// "profile", "cira", "domain", "wireless".
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub name_key: String,
    pub name: String,
    pub unique_key: Option<String>,
    /// Bumped by every update; callers send back the one they read (optimistic concurrency).
    pub version: i64,
    pub spec: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
