//! Index on `audit_events.time_nanos`, so retention deletes old events without a full scan.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000003_audit_time_index"
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    TimeNanos,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_audit_time")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::TimeNanos)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_audit_time")
                    .table(AuditEvents::Table)
                    .to_owned(),
            )
            .await
    }
}
