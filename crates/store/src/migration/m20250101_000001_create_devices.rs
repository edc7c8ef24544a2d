//! Creates the `devices` table and its tenant index.

use sea_orm_migration::prelude::*;

/// The first migration.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000001_create_devices"
    }
}

#[derive(DeriveIden)]
enum Devices {
    Table,
    Guid,
    TenantId,
    Hostname,
    FriendlyName,
    Tags,
    MpsUsername,
    DeviceInfo,
    CreatedAt,
    UpdatedAt,
    LastConnectedAt,
    LastDisconnectedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Devices::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Devices::Guid)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Devices::TenantId)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(ColumnDef::new(Devices::Hostname).text().null())
                    .col(ColumnDef::new(Devices::FriendlyName).text().null())
                    .col(ColumnDef::new(Devices::Tags).json_binary().not_null())
                    .col(ColumnDef::new(Devices::MpsUsername).text().not_null())
                    .col(ColumnDef::new(Devices::DeviceInfo).json_binary().null())
                    .col(
                        ColumnDef::new(Devices::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Devices::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Devices::LastConnectedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Devices::LastDisconnectedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Listing and counting are always per tenant, ordered by guid.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_devices_tenant_guid")
                    .table(Devices::Table)
                    .col(Devices::TenantId)
                    .col(Devices::Guid)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Devices::Table).if_exists().to_owned())
            .await
    }
}
