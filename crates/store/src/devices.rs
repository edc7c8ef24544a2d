//! Devices: the domain types and the queries on the `devices` table.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{Alias, Expr, OnConflict};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};

use crate::entity::device::{self, Column, Entity};
use crate::{Store, StoreError};

/// Rows per INSERT in bulk upserts: 11 columns × 500 stays far below both PostgreSQL's 65,535
/// and SQLite's 32,766 bind-parameter limits, and keeps each statement quick.
const BULK_CHUNK: usize = 500;

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Canonical lowercase guid.
    pub guid: String,
    /// Owning tenant (`""` is the default tenant).
    pub tenant_id: String,
    /// Host name.
    pub hostname: Option<String>,
    /// Human-friendly name.
    pub friendly_name: Option<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// CIRA user name.
    pub mps_username: String,
    /// AMT version, build, SKU and so on, when known.
    pub device_info: Option<DeviceInfo>,
    /// First registration.
    pub created_at: DateTime<Utc>,
    /// Last change of the registration data.
    pub updated_at: DateTime<Utc>,
    /// Start of the most recent CIRA session.
    pub last_connected_at: Option<DateTime<Utc>>,
    /// End of the most recent CIRA session.
    pub last_disconnected_at: Option<DateTime<Utc>>,
}

/// What AMT reports about itself. Known fields are typed; anything else is kept in `extra`
/// so newer writers do not lose data through older readers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Firmware version, e.g. `16.1.25`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_version: Option<String>,
    /// Firmware build number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_build: Option<String>,
    /// Firmware SKU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_sku: Option<String>,
    /// Provisioning mode (e.g. `ACM`, `CCM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_mode: Option<String>,
    /// AMT feature string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
    /// Last known IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Which devices a listing selects, besides the tenant; empty fields select everything.
#[derive(Clone, Debug, Default)]
pub struct DeviceQuery {
    /// Exact host name.
    pub hostname: Option<String>,
    /// Exact friendly name.
    pub friendly_name: Option<String>,
    /// Case-insensitive substring of the guid, host name or friendly name.
    pub search: Option<String>,
    /// Devices carrying these tags: every one of them, or any with `any_tag`.
    pub tags: Vec<String>,
    pub any_tag: bool,
}

/// A device to register or update. Timestamps are set by the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDevice {
    /// Any case; stored lowercase. Must be a UUID.
    pub guid: String,
    /// Owning tenant.
    #[serde(default)]
    pub tenant_id: String,
    /// Host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Human-friendly name.
    #[serde(default)]
    pub friendly_name: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// CIRA user name.
    pub mps_username: String,
    /// What AMT reports about itself.
    #[serde(default)]
    pub device_info: Option<DeviceInfo>,
}

impl NewDevice {
    /// A device in the default tenant with no optional data.
    pub fn new(guid: impl Into<String>, mps_username: impl Into<String>) -> Self {
        Self {
            guid: guid.into(),
            tenant_id: String::new(),
            hostname: None,
            friendly_name: None,
            tags: Vec::new(),
            mps_username: mps_username.into(),
            device_info: None,
        }
    }
}

/// The canonical form of a device guid (lowercase UUID, `8-4-4-4-12` hex digits), or `None`
/// if `guid` is not a UUID. Surrounding whitespace is ignored.
pub fn canonical_guid(guid: &str) -> Option<String> {
    let guid = guid.trim();
    let groups: Vec<&str> = guid.split('-').collect();
    let lengths_ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()));
    lengths_ok.then(|| guid.to_ascii_lowercase())
}

fn require_guid(guid: &str) -> Result<String, StoreError> {
    canonical_guid(guid)
        .ok_or_else(|| StoreError::InvalidInput(format!("device guid {guid:?} is not a UUID")))
}

/// Timestamps are kept to microseconds, PostgreSQL's precision, so a device read back from
/// either backend equals the one written.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn to_model(d: device::Model) -> Result<Device, StoreError> {
    let tags = serde_json::from_value(d.tags).map_err(|_| {
        StoreError::Corrupt(format!("tags of device {} are not a string array", d.guid))
    })?;
    let device_info = d
        .device_info
        .map(serde_json::from_value)
        .transpose()
        .map_err(|_| StoreError::Corrupt(format!("device_info of device {} is invalid", d.guid)))?;
    Ok(Device {
        guid: d.guid,
        tenant_id: d.tenant_id,
        hostname: d.hostname,
        friendly_name: d.friendly_name,
        tags,
        mps_username: d.mps_username,
        device_info,
        created_at: d.created_at,
        updated_at: d.updated_at,
        last_connected_at: d.last_connected_at,
        last_disconnected_at: d.last_disconnected_at,
    })
}

/// The row to insert, and its canonical guid.
fn to_active(
    new: NewDevice,
    at: DateTime<Utc>,
) -> Result<(String, device::ActiveModel), StoreError> {
    let guid = require_guid(&new.guid)?;
    let device_info = new
        .device_info
        .map(serde_json::to_value)
        .transpose()
        .map_err(|_| StoreError::InvalidInput(format!("device_info of {guid} is not JSON")))?;
    let row = device::ActiveModel {
        guid: Set(guid.clone()),
        tenant_id: Set(new.tenant_id),
        hostname: Set(new.hostname),
        friendly_name: Set(new.friendly_name),
        tags: Set(serde_json::Value::from(new.tags)),
        mps_username: Set(new.mps_username),
        device_info: Set(device_info),
        created_at: Set(at),
        updated_at: Set(at),
        last_connected_at: NotSet,
        last_disconnected_at: NotSet,
    };
    Ok((guid, row))
}

/// Insert, or update the registration data of an existing device of the same tenant.
/// `created_at` and the connection times are kept. A device of another tenant is left alone
/// (the WHERE on the update), so a tenant can never take over another tenant's device.
fn upsert_on_conflict() -> OnConflict {
    OnConflict::column(Column::Guid)
        .update_columns([
            Column::Hostname,
            Column::FriendlyName,
            Column::Tags,
            Column::MpsUsername,
            Column::DeviceInfo,
            Column::UpdatedAt,
        ])
        .action_and_where(
            Expr::col((Entity, Column::TenantId))
                .equals((Alias::new("excluded"), Column::TenantId)),
        )
        .to_owned()
}

impl Store {
    /// Registers a device or updates its registration data, returning the stored row.
    /// Fails with [`StoreError::TenantConflict`] if the guid belongs to another tenant.
    pub async fn upsert_device(&self, new: NewDevice) -> Result<Device, StoreError> {
        let tenant = new.tenant_id.clone();
        let (guid, active) = to_active(new, now())?;
        Entity::insert(active)
            .on_conflict(upsert_on_conflict())
            .exec_without_returning(&self.db)
            .await?;
        match self.get_device(&guid).await? {
            Some(device) if device.tenant_id == tenant => Ok(device),
            Some(_) => Err(StoreError::TenantConflict { guid }),
            // Deleted between the upsert and the read: report it as the race it is.
            None => Err(StoreError::Db(sea_orm::DbErr::RecordNotFound(format!(
                "device {guid} deleted concurrently"
            )))),
        }
    }

    /// Registers a device that does not exist yet, in any tenant: `Ok(None)` when the guid is
    /// already registered (so of two racing creates exactly one succeeds, and only its caller
    /// goes on to store secrets).
    pub async fn create_device(&self, new: NewDevice) -> Result<Option<Device>, StoreError> {
        let (guid, active) = to_active(new, now())?;
        let inserted = Entity::insert(active)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(device::Column::Guid)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        if inserted == 0 {
            return Ok(None);
        }
        self.get_device(&guid).await
    }

    /// Upserts many devices in one transaction, `BULK_CHUNK` rows per statement, as a
    /// simulator enrolling tens of thousands of devices needs. Guids repeated in `devices`
    /// keep the last entry. Devices that exist under another tenant are skipped. Returns the
    /// number of rows inserted or updated.
    pub async fn bulk_upsert_devices(&self, devices: Vec<NewDevice>) -> Result<u64, StoreError> {
        let at = now();
        // One statement must not touch a row twice (PostgreSQL refuses), so deduplicate first.
        let mut order = Vec::with_capacity(devices.len());
        let mut latest: HashMap<String, device::ActiveModel> =
            HashMap::with_capacity(devices.len());
        for new in devices {
            let (guid, active) = to_active(new, at)?;
            if latest.insert(guid.clone(), active).is_none() {
                order.push(guid);
            }
        }
        let rows: Vec<device::ActiveModel> = order
            .into_iter()
            .filter_map(|guid| latest.remove(&guid))
            .collect();
        let txn = self.db.begin().await?;
        let mut written = 0;
        for chunk in rows.chunks(BULK_CHUNK) {
            written += Entity::insert_many(chunk.to_vec())
                .on_conflict(upsert_on_conflict())
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(written)
    }

    /// Reads a device of any tenant. Only for device login, which knows just the guid;
    /// tenant-facing APIs use [`Store::get_device_for_tenant`].
    pub async fn get_device(&self, guid: &str) -> Result<Option<Device>, StoreError> {
        let Some(guid) = canonical_guid(guid) else {
            return Ok(None);
        };
        Entity::find_by_id(guid)
            .one(&self.db)
            .await?
            .map(to_model)
            .transpose()
    }

    /// Reads several devices of any tenant in one query, for logins arriving together; the
    /// result holds the devices found, keyed by canonical guid. Only for device login.
    pub async fn get_devices(
        &self,
        guids: &[String],
    ) -> Result<HashMap<String, Device>, StoreError> {
        let mut canonical: Vec<String> = guids.iter().filter_map(|g| canonical_guid(g)).collect();
        let Some(last) = canonical.last().cloned() else {
            return Ok(HashMap::new());
        };
        // Padded to a power of two with repeats of the last guid, so batches come in a handful
        // of statement shapes that stay in the driver's prepared-statement cache, instead of
        // one shape (and one more prepare round trip) per batch size.
        canonical.resize(canonical.len().next_power_of_two(), last);
        Entity::find()
            .filter(Column::Guid.is_in(canonical))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| to_model(m).map(|d| (d.guid.clone(), d)))
            .collect()
    }

    /// Reads a device if it belongs to `tenant`.
    pub async fn get_device_for_tenant(
        &self,
        tenant: &str,
        guid: &str,
    ) -> Result<Option<Device>, StoreError> {
        let Some(guid) = canonical_guid(guid) else {
            return Ok(None);
        };
        Entity::find_by_id(guid)
            .filter(Column::TenantId.eq(tenant))
            .one(&self.db)
            .await?
            .map(to_model)
            .transpose()
    }

    /// A page of `tenant`'s devices ordered by guid.
    pub async fn list_devices(
        &self,
        tenant: &str,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<Device>, StoreError> {
        self.query_devices(tenant, &DeviceQuery::default(), limit, offset)
            .await
    }

    /// A page of `tenant`'s devices matching `query`, ordered by guid: every filter runs in the
    /// database, so a search over fifty thousand devices reads one page, not the table.
    pub async fn query_devices(
        &self,
        tenant: &str,
        query: &DeviceQuery,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<Device>, StoreError> {
        self.device_select(tenant, query)
            .order_by_asc(Column::Guid)
            .limit(limit)
            .offset(offset)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_model)
            .collect()
    }

    /// How many of `tenant`'s devices match `query`.
    pub async fn count_query_devices(
        &self,
        tenant: &str,
        query: &DeviceQuery,
    ) -> Result<u64, StoreError> {
        Ok(self.device_select(tenant, query).count(&self.db).await?)
    }

    fn device_select(&self, tenant: &str, query: &DeviceQuery) -> sea_orm::Select<Entity> {
        use sea_orm::sea_query::extension::postgres::PgBinOper;
        use sea_orm::sea_query::{Condition, Func, LikeExpr, SimpleExpr};
        let mut q = Entity::find().filter(Column::TenantId.eq(tenant));
        if let Some(h) = &query.hostname {
            q = q.filter(Column::Hostname.eq(h.as_str()));
        }
        if let Some(f) = &query.friendly_name {
            q = q.filter(Column::FriendlyName.eq(f.as_str()));
        }
        if let Some(text) = query.search.as_deref().filter(|t| !t.is_empty()) {
            // Case-insensitive substring of the guid, host name or friendly name; LIKE's
            // wildcards in the text are matched literally.
            let escaped: String = text
                .to_lowercase()
                .chars()
                .flat_map(|c| match c {
                    '%' | '_' | '!' => vec!['!', c],
                    c => vec![c],
                })
                .collect();
            let pattern = format!("%{escaped}%");
            let like = |col: Column| -> SimpleExpr {
                Expr::expr(Func::lower(Expr::col(col)))
                    .like(LikeExpr::new(pattern.clone()).escape('!'))
            };
            q = q.filter(
                Condition::any()
                    .add(like(Column::Guid))
                    .add(like(Column::Hostname))
                    .add(like(Column::FriendlyName)),
            );
        }
        if !query.tags.is_empty() {
            let postgres = self.backend() == sea_orm::DatabaseBackend::Postgres;
            let has = |tag: &String| -> SimpleExpr {
                if postgres {
                    Expr::col(Column::Tags).binary(
                        PgBinOper::Contains,
                        Expr::val(serde_json::json!([tag]).to_string())
                            .cast_as(Alias::new("jsonb")),
                    )
                } else {
                    Expr::cust_with_values(
                        "EXISTS (SELECT 1 FROM json_each(devices.tags) WHERE json_each.value = ?)",
                        [tag.clone()],
                    )
                }
            };
            let mut c = if query.any_tag {
                Condition::any()
            } else {
                Condition::all()
            };
            for t in &query.tags {
                c = c.add(has(t));
            }
            q = q.filter(c);
        }
        q
    }

    /// The distinct tags of `tenant`'s devices, sorted, at most `limit`.
    pub async fn device_tags(&self, tenant: &str, limit: u64) -> Result<Vec<String>, StoreError> {
        use sea_orm::{ConnectionTrait as _, Statement};
        let sql = match self.backend() {
            sea_orm::DatabaseBackend::Postgres => "SELECT DISTINCT t AS tag FROM devices, jsonb_array_elements_text(tags) AS t WHERE tenant_id = $1 ORDER BY 1 LIMIT $2",
            _ => "SELECT DISTINCT json_each.value AS tag FROM devices, json_each(devices.tags) WHERE tenant_id = ? ORDER BY 1 LIMIT ?",
        };
        let rows = self
            .db
            .query_all(Statement::from_sql_and_values(
                self.backend(),
                sql,
                [
                    tenant.into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String>("", "tag").map_err(StoreError::from))
            .collect()
    }

    /// How many devices `tenant` has.
    pub async fn count_devices(&self, tenant: &str) -> Result<u64, StoreError> {
        Ok(Entity::find()
            .filter(Column::TenantId.eq(tenant))
            .count(&self.db)
            .await?)
    }

    /// Deletes a device of `tenant`; false if there was none (including one of another
    /// tenant, which is left alone).
    pub async fn delete_device(&self, tenant: &str, guid: &str) -> Result<bool, StoreError> {
        let Some(guid) = canonical_guid(guid) else {
            return Ok(false);
        };
        let result = Entity::delete_many()
            .filter(Column::Guid.eq(guid))
            .filter(Column::TenantId.eq(tenant))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected > 0)
    }

    /// Records the start of a CIRA session. Only moves forward: a late, older event (events
    /// are delivered at least once, not in order) does not overwrite a newer time. Returns
    /// whether the row changed.
    pub async fn mark_connected(&self, guid: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.advance_timestamp(guid, Column::LastConnectedAt, at)
            .await
    }

    /// Records the end of a CIRA session; same rules as [`Store::mark_connected`].
    pub async fn mark_disconnected(
        &self,
        guid: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.advance_timestamp(guid, Column::LastDisconnectedAt, at)
            .await
    }

    /// Records many session starts (`connected`) or ends in one statement: each device's
    /// column moves to its time when that is later than what is stored (events arrive at
    /// least once and out of order). Guids that are not UUIDs are skipped. Returns the rows
    /// changed.
    pub async fn record_sessions(
        &self,
        connected: bool,
        marks: &[(String, DateTime<Utc>)],
    ) -> Result<u64, StoreError> {
        let column = if connected {
            Column::LastConnectedAt
        } else {
            Column::LastDisconnectedAt
        };
        // The latest time per device, so one statement sets each row once.
        let mut latest: HashMap<String, DateTime<Utc>> = HashMap::new();
        for (guid, at) in marks {
            if let Some(g) = canonical_guid(guid) {
                let at = at.trunc_subsecs(6);
                let slot = latest.entry(g).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        if latest.is_empty() {
            return Ok(0);
        }
        let mut case = sea_orm::sea_query::CaseStatement::new();
        for (guid, at) in &latest {
            case = case.case(Expr::col(Column::Guid).eq(guid.clone()), Expr::val(*at));
        }
        let value: sea_orm::sea_query::SimpleExpr = case.finally(Expr::col(column)).into();
        let result = Entity::update_many()
            .col_expr(column, value.clone())
            .filter(Column::Guid.is_in(latest.into_keys()))
            .filter(
                sea_orm::Condition::any()
                    .add(column.is_null())
                    .add(Expr::col(column).lt(value)),
            )
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    async fn advance_timestamp(
        &self,
        guid: &str,
        column: Column,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let Some(guid) = canonical_guid(guid) else {
            return Ok(false);
        };
        let at = at.trunc_subsecs(6);
        let result = Entity::update_many()
            .col_expr(column, Expr::value(at))
            .filter(Column::Guid.eq(guid))
            .filter(column.is_null().or(column.lt(at)))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_canonical_form() {
        assert_eq!(
            canonical_guid(" 12345678-9ABC-DEF0-1234-56789ABCDEF0 ").as_deref(),
            Some("12345678-9abc-def0-1234-56789abcdef0")
        );
        for bad in [
            "",
            "1234",
            "12345678-9abc-def0-1234-56789abcdef",
            "12345678-9abc-def0-1234-56789abcdefg",
            "123456789-abc-def0-1234-56789abcdef0",
            "12345678-9abc-def0-1234-56789abcdef0-0",
        ] {
            assert_eq!(canonical_guid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn device_info_keeps_unknown_fields() {
        let json = serde_json::json!({"fw_version": "16.1", "future": {"x": 1}});
        let info: DeviceInfo = serde_json::from_value(json.clone()).expect("decode");
        assert_eq!(info.fw_version.as_deref(), Some("16.1"));
        assert_eq!(serde_json::to_value(&info).expect("encode"), json);
    }
}
