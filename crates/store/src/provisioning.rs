//! Provisioning admin objects (rps profiles, CIRA configs, domains, wireless configs): one
//! row per object, its validated settings a JSON document the rps owns, a version for
//! optimistic concurrency. Names are unique per tenant and kind, case-insensitively.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, SqlErr,
};

use crate::entity::provisioning_config::{self, Column, Entity};
use crate::{Store, StoreError};

/// One stored admin object.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigRecord {
    pub tenant_id: String,
    pub kind: String,
    /// As the caller spelled it.
    pub name: String,
    pub unique_key: Option<String>,
    pub version: i64,
    pub spec: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What an update found.
#[derive(Debug)]
pub enum ConfigUpdate {
    Updated(ConfigRecord),
    /// The stored version is not the one the caller read: here is the current record.
    Stale(ConfigRecord),
    NotFound,
}

fn key(name: &str) -> String {
    name.to_lowercase()
}

fn record(m: provisioning_config::Model) -> ConfigRecord {
    ConfigRecord {
        tenant_id: m.tenant_id,
        kind: m.kind,
        name: m.name,
        unique_key: m.unique_key,
        version: m.version,
        spec: m.spec,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

impl Store {
    /// Stores a new object; [`StoreError::AlreadyExists`] when the name (or the unique key)
    /// is taken in this tenant and kind.
    pub async fn create_config(
        &self,
        tenant: &str,
        kind: &str,
        name: &str,
        unique_key: Option<String>,
        spec: serde_json::Value,
    ) -> Result<ConfigRecord, StoreError> {
        let at = Utc::now().trunc_subsecs(6);
        let row = provisioning_config::ActiveModel {
            tenant_id: Set(tenant.to_string()),
            kind: Set(kind.to_string()),
            name_key: Set(key(name)),
            name: Set(name.to_string()),
            unique_key: Set(unique_key.map(|k| key(&k))),
            version: Set(1),
            spec: Set(spec),
            created_at: Set(at),
            updated_at: Set(at),
        };
        let inserted = Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    Column::TenantId,
                    Column::Kind,
                    Column::NameKey,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await;
        match inserted {
            Ok(0) => Err(StoreError::AlreadyExists(format!("{kind} {name}"))),
            Ok(_) => self.get_config(tenant, kind, name).await?.ok_or_else(|| {
                StoreError::AlreadyExists(format!("{kind} {name} (deleted meanwhile)"))
            }),
            Err(e) if unique_violation(&e) => {
                Err(StoreError::AlreadyExists(format!("{kind} {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_config(
        &self,
        tenant: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<ConfigRecord>, StoreError> {
        Ok(
            Entity::find_by_id((tenant.to_string(), kind.to_string(), key(name)))
                .one(&self.db)
                .await?
                .map(record),
        )
    }

    /// The object whose unique key (a domain's suffix) is `unique_key`, case-insensitively.
    pub async fn find_config_by_unique_key(
        &self,
        tenant: &str,
        kind: &str,
        unique_key: &str,
    ) -> Result<Option<ConfigRecord>, StoreError> {
        Ok(Entity::find()
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::Kind.eq(kind))
            .filter(Column::UniqueKey.eq(key(unique_key)))
            .one(&self.db)
            .await?
            .map(record))
    }

    /// A page of a tenant's objects of one kind, ordered by name, and the total count.
    pub async fn list_configs(
        &self,
        tenant: &str,
        kind: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<ConfigRecord>, u64), StoreError> {
        let base = Entity::find()
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::Kind.eq(kind));
        let total = base.clone().count(&self.db).await?;
        let rows = base
            .order_by_asc(Column::NameKey)
            .offset(offset)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok((rows.into_iter().map(record).collect(), total))
    }

    /// Replaces an object's settings if its version is still `expected_version`.
    pub async fn update_config(
        &self,
        tenant: &str,
        kind: &str,
        name: &str,
        expected_version: i64,
        unique_key: Option<String>,
        spec: serde_json::Value,
    ) -> Result<ConfigUpdate, StoreError> {
        let at = Utc::now().trunc_subsecs(6);
        let result = Entity::update_many()
            .col_expr(Column::Spec, Expr::value(spec))
            .col_expr(Column::UniqueKey, Expr::value(unique_key.map(|k| key(&k))))
            .col_expr(Column::Version, Expr::value(expected_version + 1))
            .col_expr(Column::UpdatedAt, Expr::value(at))
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::Kind.eq(kind))
            .filter(Column::NameKey.eq(key(name)))
            .filter(Column::Version.eq(expected_version))
            .exec(&self.db)
            .await;
        let result = match result {
            Err(e) if unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("{kind} {name}")))
            }
            r => r?,
        };
        let current = self.get_config(tenant, kind, name).await?;
        Ok(match (result.rows_affected, current) {
            (_, None) => ConfigUpdate::NotFound,
            (0, Some(c)) => ConfigUpdate::Stale(c),
            (_, Some(c)) => ConfigUpdate::Updated(c),
        })
    }

    /// Deletes an object; false if there was none.
    pub async fn delete_config(
        &self,
        tenant: &str,
        kind: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        let r = Entity::delete_many()
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::Kind.eq(kind))
            .filter(Column::NameKey.eq(key(name)))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }
}
