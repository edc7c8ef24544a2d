//! Stored events: batch insert that is idempotent on the event id, and tenant-scoped queries
//! in stream order.

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use crate::entity::audit_event::{ActiveModel, Column, Entity, Model};
use crate::{Store, StoreError};

/// Rows per INSERT statement (PostgreSQL allows 65,535 bind parameters; 12 per row).
const INSERT_CHUNK: usize = 1000;

/// One event to store.
pub type AuditRecord = Model;

/// What a query selects, besides the tenant.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub device_guid: Option<String>,
    pub kind: Option<String>,
    /// Inclusive lower bound, Unix nanoseconds.
    pub from_nanos: Option<i64>,
    /// Exclusive upper bound, Unix nanoseconds.
    pub to_nanos: Option<i64>,
}

impl Store {
    /// Stores `records` in one transaction; records whose id is already stored are skipped.
    /// Returns how many rows were new.
    pub async fn insert_audit_events(&self, records: Vec<AuditRecord>) -> Result<u64, StoreError> {
        let txn = self.db.begin().await?;
        let mut inserted = 0;
        for chunk in records.chunks(INSERT_CHUNK) {
            let rows = chunk.iter().cloned().map(|m| ActiveModel {
                id: Set(m.id),
                stream_seq: Set(m.stream_seq),
                tenant: Set(m.tenant),
                device_guid: Set(m.device_guid),
                kind: Set(m.kind),
                subject: Set(m.subject),
                time_nanos: Set(m.time_nanos),
                source: Set(m.source),
                actor: Set(m.actor),
                trace_id: Set(m.trace_id),
                payload: Set(m.payload),
                stored_nanos: Set(m.stored_nanos),
            });
            inserted += Entity::insert_many(rows)
                .on_conflict(OnConflict::column(Column::Id).do_nothing().to_owned())
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(inserted)
    }

    /// Deletes events published before `before_nanos` (Unix nanoseconds), at most `limit` of
    /// them (the oldest first), so one call holds its locks briefly; returns how many went.
    pub async fn prune_audit_events(
        &self,
        before_nanos: i64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let ids: Vec<String> = Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::TimeNanos.lt(before_nanos))
            .order_by_asc(Column::TimeNanos)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let result = Entity::delete_many()
            .filter(Column::Id.is_in(ids))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// `tenant`'s events matching `filter` with a stream sequence above `after_seq`, oldest
    /// first, at most `limit`.
    pub async fn query_audit_events(
        &self,
        tenant: &str,
        filter: &AuditFilter,
        after_seq: i64,
        limit: u64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut q = Entity::find()
            .filter(Column::Tenant.eq(tenant))
            .filter(Column::StreamSeq.gt(after_seq));
        if let Some(d) = &filter.device_guid {
            q = q.filter(Column::DeviceGuid.eq(d.as_str()));
        }
        if let Some(k) = &filter.kind {
            q = q.filter(Column::Kind.eq(k.as_str()));
        }
        if let Some(f) = filter.from_nanos {
            q = q.filter(Column::TimeNanos.gte(f));
        }
        if let Some(t) = filter.to_nanos {
            q = q.filter(Column::TimeNanos.lt(t));
        }
        Ok(q.order_by_asc(Column::StreamSeq)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// How many events are stored (all tenants); for benchmarks and tests.
    pub async fn count_audit_events(&self) -> Result<u64, StoreError> {
        use sea_orm::PaginatorTrait;
        Ok(Entity::find().count(&self.db).await?)
    }
}
