//! sea-orm entities, one module per table. Services use the typed methods on
//! [`crate::Store`]; the entities are public for ad-hoc queries and other crates' tables.

pub mod audit_event;
pub mod device;
pub mod provisioning_config;
