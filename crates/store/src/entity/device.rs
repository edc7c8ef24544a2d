//! The `devices` table: one row per AMT device, keyed by its canonical lowercase guid.

use sea_orm::entity::prelude::*;

/// A stored device row. Connection status is deliberately absent: presence lives in NATS KV,
/// and only connect/disconnect times are recorded here.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "devices")]
pub struct Model {
    /// Canonical lowercase guid.
    #[sea_orm(primary_key, auto_increment = false)]
    pub guid: String,
    /// Owning tenant; `""` is the default tenant, as in Open AMT.
    pub tenant_id: String,
    /// Host name reported or configured for the device.
    pub hostname: Option<String>,
    /// Human-friendly name.
    pub friendly_name: Option<String>,
    /// JSON array of strings.
    pub tags: Json,
    /// CIRA user name the device logs in with.
    pub mps_username: String,
    /// JSON object with AMT version, build, SKU and so on.
    pub device_info: Option<Json>,
    /// When the row was first inserted.
    pub created_at: DateTimeUtc,
    /// When the device's registration data last changed.
    pub updated_at: DateTimeUtc,
    /// Start of the most recent CIRA session.
    pub last_connected_at: Option<DateTimeUtc>,
    /// End of the most recent CIRA session.
    pub last_disconnected_at: Option<DateTimeUtc>,
}

/// No relations yet.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
