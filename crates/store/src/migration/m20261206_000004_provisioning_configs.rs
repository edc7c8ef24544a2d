//! Creates `provisioning_configs`: the rps admin objects (profiles, CIRA configs, domains,
//! wireless configs), one row each, the validated settings as a JSON document. Secrets never
//! land here (they go to the secret store).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000004_provisioning_configs"
    }
}

#[derive(DeriveIden)]
enum ProvisioningConfigs {
    Table,
    TenantId,
    Kind,
    NameKey,
    Name,
    UniqueKey,
    Version,
    Spec,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ProvisioningConfigs as P;
        manager
            .create_table(
                Table::create()
                    .table(P::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(P::TenantId).text().not_null())
                    .col(ColumnDef::new(P::Kind).text().not_null())
                    // Names are case-insensitive like the reference's citext: the key is the
                    // lowercase name, `name` keeps the spelling the caller chose.
                    .col(ColumnDef::new(P::NameKey).text().not_null())
                    .col(ColumnDef::new(P::Name).text().not_null())
                    // A second per-tenant unique value (a domain's suffix); NULL for the rest.
                    .col(ColumnDef::new(P::UniqueKey).text().null())
                    .col(ColumnDef::new(P::Version).big_integer().not_null())
                    .col(ColumnDef::new(P::Spec).json_binary().not_null())
                    .col(
                        ColumnDef::new(P::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(P::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(P::TenantId)
                            .col(P::Kind)
                            .col(P::NameKey),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_provisioning_unique_key")
                    .table(P::Table)
                    .col(P::TenantId)
                    .col(P::Kind)
                    .col(P::UniqueKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProvisioningConfigs::Table).to_owned())
            .await
    }
}
