//! Creates the `audit_events` table: every fleet event, once, keyed by its event id.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000002_create_audit_events"
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    StreamSeq,
    Tenant,
    DeviceGuid,
    Kind,
    Subject,
    TimeNanos,
    Source,
    Actor,
    TraceId,
    Payload,
    StoredNanos,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AuditEvents::Id)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::StreamSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::Tenant).text().not_null())
                    .col(ColumnDef::new(AuditEvents::DeviceGuid).text().not_null())
                    .col(ColumnDef::new(AuditEvents::Kind).text().not_null())
                    .col(ColumnDef::new(AuditEvents::Subject).text().not_null())
                    .col(
                        ColumnDef::new(AuditEvents::TimeNanos)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::Source).text().not_null())
                    .col(ColumnDef::new(AuditEvents::Actor).text().not_null())
                    .col(ColumnDef::new(AuditEvents::TraceId).text().not_null())
                    .col(ColumnDef::new(AuditEvents::Payload).binary().not_null())
                    .col(
                        ColumnDef::new(AuditEvents::StoredNanos)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Queries are per tenant in stream order, optionally per device.
        for (name, cols) in [
            (
                "idx_audit_tenant_seq",
                vec![AuditEvents::Tenant, AuditEvents::StreamSeq],
            ),
            (
                "idx_audit_tenant_device_seq",
                vec![
                    AuditEvents::Tenant,
                    AuditEvents::DeviceGuid,
                    AuditEvents::StreamSeq,
                ],
            ),
        ] {
            let mut index = Index::create();
            index.if_not_exists().name(name).table(AuditEvents::Table);
            for c in cols {
                index.col(c);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(AuditEvents::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
