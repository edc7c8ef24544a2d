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

/// `tenant`'s events matching `filter`.
fn filtered(tenant: &str, filter: &AuditFilter) -> sea_orm::Select<Entity> {
    let mut q = Entity::find().filter(Column::Tenant.eq(tenant));
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
    q
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
        Ok(filtered(tenant, filter)
            .filter(Column::StreamSeq.gt(after_seq))
            .order_by_asc(Column::StreamSeq)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// `tenant`'s events matching `filter` with a stream sequence below `before_seq` (0: no
    /// bound), newest first, at most `limit`: the latest page of a trail, for people.
    pub async fn query_audit_events_newest(
        &self,
        tenant: &str,
        filter: &AuditFilter,
        before_seq: i64,
        limit: u64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut q = filtered(tenant, filter);
        if before_seq > 0 {
            q = q.filter(Column::StreamSeq.lt(before_seq));
        }
        Ok(q.order_by_desc(Column::StreamSeq)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// How many of `tenant`'s events of each of `kinds` happened in each of `buckets`
    /// consecutive intervals of `bucket_nanos` from `from_nanos`: one aggregate query, so a
    /// chart of the last hour costs the same for ten devices as for fifty thousand. Returns
    /// `(kind, bucket index, count)` for the non-empty buckets.
    pub async fn count_audit_events_by_bucket(
        &self,
        tenant: &str,
        kinds: &[String],
        from_nanos: i64,
        bucket_nanos: i64,
        buckets: u32,
    ) -> Result<Vec<(String, u32, u64)>, StoreError> {
        use sea_orm::sea_query::{Alias, Expr, Func};
        use sea_orm::{ConnectionTrait as _, FromQueryResult};
        #[derive(FromQueryResult)]
        struct Row {
            kind: String,
            bucket: i64,
            n: i64,
        }
        if kinds.is_empty() || bucket_nanos <= 0 || buckets == 0 {
            return Ok(Vec::new());
        }
        let to = from_nanos.saturating_add(bucket_nanos.saturating_mul(i64::from(buckets)));
        // Integers written into the statement, not bound: PostgreSQL matches a GROUP BY
        // expression to the selected one only if they are the same text, and two bound
        // parameters never are.
        let bucket = Expr::cust(format!("(time_nanos - {from_nanos}) / {bucket_nanos}"));
        let rows = Row::find_by_statement(
            self.db.get_database_backend().build(
                sea_orm::sea_query::Query::select()
                    .column(Column::Kind)
                    .expr_as(bucket.clone(), Alias::new("bucket"))
                    .expr_as(Func::count(Expr::col(Column::Id)), Alias::new("n"))
                    .from(Entity)
                    .and_where(Expr::col(Column::Tenant).eq(tenant))
                    .and_where(Expr::col(Column::Kind).is_in(kinds.iter().cloned()))
                    .and_where(Expr::col(Column::TimeNanos).gte(from_nanos))
                    .and_where(Expr::col(Column::TimeNanos).lt(to))
                    .group_by_col(Column::Kind)
                    .add_group_by([bucket]),
            ),
        )
        .all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let b = u32::try_from(r.bucket).ok().filter(|b| *b < buckets)?;
                Some((r.kind, b, u64::try_from(r.n).unwrap_or(0)))
            })
            .collect())
    }

    /// How many events are stored (all tenants); for benchmarks and tests.
    pub async fn count_audit_events(&self) -> Result<u64, StoreError> {
        use sea_orm::PaginatorTrait;
        Ok(Entity::find().count(&self.db).await?)
    }
}
