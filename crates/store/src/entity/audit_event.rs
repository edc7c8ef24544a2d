//! The `audit_events` table: one row per fleet event, keyed by the event id.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    /// The event id (also its JetStream de-duplication id).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Sequence in the events stream: the order and the resume point of queries.
    pub stream_seq: i64,
    pub tenant: String,
    pub device_guid: String,
    pub kind: String,
    pub subject: String,
    /// When it happened, Unix nanoseconds.
    pub time_nanos: i64,
    pub source: String,
    pub actor: String,
    pub trace_id: String,
    /// The protobuf-encoded `homeport.events.v1.Event`, exactly as published.
    pub payload: Vec<u8>,
    /// When the audit worker committed it, Unix nanoseconds (publish-to-commit lag).
    pub stored_nanos: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
