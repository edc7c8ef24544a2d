//! DeviceRegistry: devices of the caller's tenant, with their connection status from presence.
//! Credentials given at creation go to the secret store only. Every change emits an event,
//! which also tells every replica to drop what it cached about the device.

use std::sync::Arc;

use futures_util::StreamExt as _;
use homeport_contracts::events::envelope;
use homeport_proto::device::v1 as pb;
use homeport_proto::device::v1::device_registry_server::DeviceRegistry;
use homeport_proto::events::v1 as ev;
use homeport_secrets::{DeviceSecrets, SecretString};
use homeport_store::{canonical_guid, Device, DeviceQuery, NewDevice, StoreError};
use tonic::{Request, Response, Status};

use crate::error::CommandError;
use crate::Inner;
use homeport_auth::{caller, Caller};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
const SCAN_BATCH: u64 = 500;
/// Distinct tags listed at most.
const MAX_TAGS: u64 = 1000;

pub struct RegistryApi {
    pub(crate) inner: Arc<Inner>,
}

fn db(e: StoreError) -> CommandError {
    match e {
        StoreError::InvalidInput(m) => CommandError::InvalidArgument(m),
        other => CommandError::Unavailable(format!("database: {other}")),
    }
}

fn guid_of(s: &str) -> Result<String, CommandError> {
    canonical_guid(s)
        .ok_or_else(|| CommandError::InvalidArgument(format!("{s:?} is not a device GUID")))
}

fn unix(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp()
}

/// Deadline of one device's presence read.
const PRESENCE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Presence reads in flight at once while listing devices.
const PRESENCE_READS: usize = 32;

impl Inner {
    async fn to_pb(&self, d: Device) -> pb::Device {
        // A presence read that does not answer in time leaves the status unknown
        // (unspecified) rather than holding the whole call.
        let located =
            tokio::time::timeout(PRESENCE_READ_TIMEOUT, self.link.tunnel().locate(&d.guid)).await;
        let (status, presence) = match located {
            Ok(Ok(Some(p))) => (pb::ConnectionStatus::Connected, Some(p)),
            Ok(Ok(None)) => (pb::ConnectionStatus::Disconnected, None),
            Ok(Err(_)) | Err(_) => (pb::ConnectionStatus::Unspecified, None),
        };
        let info = d.device_info.unwrap_or_default();
        pb::Device {
            status: status as i32,
            node: presence
                .as_ref()
                .map(|p| p.node.clone())
                .unwrap_or_default(),
            connected_since: presence
                .and_then(|p| chrono::DateTime::parse_from_rfc3339(&p.connected_at).ok())
                .map(|t| t.timestamp())
                .unwrap_or(0),
            guid: d.guid,
            tenant: d.tenant_id,
            hostname: d.hostname.unwrap_or_default(),
            friendly_name: d.friendly_name.unwrap_or_default(),
            tags: d.tags,
            mps_username: d.mps_username,
            created_at: unix(d.created_at),
            updated_at: unix(d.updated_at),
            fw_version: info.fw_version.unwrap_or_default(),
            fw_build: info.fw_build.unwrap_or_default(),
            fw_sku: info.fw_sku.unwrap_or_default(),
            control_mode: info.current_mode.unwrap_or_default(),
            last_connected_at: d.last_connected_at.map_or(0, unix),
            last_disconnected_at: d.last_disconnected_at.map_or(0, unix),
            last_seen: if status == pb::ConnectionStatus::Connected {
                chrono::Utc::now().timestamp()
            } else {
                d.last_disconnected_at
                    .or(d.last_connected_at)
                    .map_or(0, unix)
            },
        }
    }

    fn registry_event(&self, caller: &Caller, guid: &str, change: &str, fields: Vec<String>) {
        let mut e = envelope(&caller.tenant, guid, change, &self.source);
        e.actor = caller.subject.clone();
        e.payload = Some(ev::event::Payload::DeviceRegistryChanged(
            ev::DeviceRegistryChanged {
                change: change.to_string(),
                fields,
            },
        ));
        let subject = self.names.device_event(&caller.tenant, guid, change);
        if let Err(err) = self.events.publish(subject, &e) {
            tracing::error!(device = %guid, error = %err, "registry event not queued");
        }
        self.forget(guid);
    }
}

/// Deletes a device of the caller's tenant and its secrets (secrets first: if that fails,
/// nothing changed and the caller can retry).
pub(crate) async fn remove_device(
    inner: &Inner,
    caller: &Caller,
    guid: &str,
) -> Result<(), CommandError> {
    let guid = guid_of(guid)?;
    if inner
        .store
        .get_device_for_tenant(&caller.tenant, &guid)
        .await
        .map_err(db)?
        .is_none()
    {
        return Err(CommandError::NotFound(guid));
    }
    inner
        .secrets
        .delete(&homeport_secrets::device_path(&guid))
        .await
        .map_err(|e| CommandError::Unavailable(format!("secret store: {e}")))?;
    let deleted = inner
        .store
        .delete_device(&caller.tenant, &guid)
        .await
        .map_err(db)?;
    // Whatever the row delete said, the secrets are gone: tell every replica.
    inner.registry_event(caller, &guid, "deleted", Vec::new());
    if !deleted {
        return Err(CommandError::NotFound(guid));
    }
    Ok(())
}

fn secret(s: &str) -> Option<SecretString> {
    (!s.is_empty()).then(|| SecretString::new(s))
}

#[tonic::async_trait]
impl DeviceRegistry for RegistryApi {
    async fn create_device(
        &self,
        req: Request<pb::CreateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let parent = homeport_auth::traceparent(&req);
        homeport_telemetry::traces::traced(
            "DeviceRegistry/CreateDevice",
            parent.as_deref(),
            async move {
                let c = caller(&req)?;
                let r = req.into_inner();
                let guid = guid_of(&r.guid)?;
                if r.mps_username.trim().is_empty() {
                    return Err(
                        CommandError::InvalidArgument("mps_username is required".into()).into(),
                    );
                }
                let inner = &self.inner;
                let secrets = DeviceSecrets {
                    amt_password: secret(&r.amt_password),
                    mebx_password: secret(&r.mebx_password),
                    mps_password: secret(&r.mps_password),
                };
                // A GUID identifies one machine, registered in one tenant: it is refused the same way
                // whichever tenant holds it (ALREADY_EXISTS, the same words), so the answer tells
                // nothing about that tenant. The insert itself decides, so of two racing creates
                // exactly one wins.
                let device = inner
                    .store
                    .create_device(NewDevice {
                        guid: guid.clone(),
                        tenant_id: c.tenant.clone(),
                        hostname: Some(r.hostname).filter(|h| !h.is_empty()),
                        friendly_name: Some(r.friendly_name).filter(|h| !h.is_empty()),
                        tags: r.tags,
                        mps_username: r.mps_username,
                        device_info: None,
                    })
                    .await
                    .map_err(db)?
                    .ok_or_else(|| {
                        Status::already_exists(format!("device {guid} is already registered"))
                    })?;
                // Secrets only by the create that inserted the row: a racing create (any tenant) was
                // refused above and never touches this device's secrets.
                if secrets != DeviceSecrets::default() {
                    secrets
                        .save(inner.secrets.as_ref(), &guid)
                        .await
                        .map_err(|e| CommandError::Unavailable(format!("secret store: {e}")))?;
                }
                inner.registry_event(&c, &guid, "created", Vec::new());
                Ok(Response::new(inner.to_pb(device).await))
            },
        )
        .await
    }

    async fn get_device(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::Device>, Status> {
        let parent = homeport_auth::traceparent(&req);
        homeport_telemetry::traces::traced(
            "DeviceRegistry/GetDevice",
            parent.as_deref(),
            async move {
                let c = caller(&req)?;
                let guid = guid_of(&req.into_inner().guid)?;
                let d = self
                    .inner
                    .store
                    .get_device_for_tenant(&c.tenant, &guid)
                    .await
                    .map_err(db)?
                    .ok_or(CommandError::NotFound(guid))?;
                Ok(Response::new(self.inner.to_pb(d).await))
            },
        )
        .await
    }

    async fn update_device(
        &self,
        req: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let parent = homeport_auth::traceparent(&req);
        homeport_telemetry::traces::traced(
            "DeviceRegistry/UpdateDevice",
            parent.as_deref(),
            async move {
                let c = caller(&req)?;
                let r = req.into_inner();
                let guid = guid_of(&r.guid)?;
                let inner = &self.inner;
                let d = inner
                    .store
                    .get_device_for_tenant(&c.tenant, &guid)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| CommandError::NotFound(guid.clone()))?;
                let all = r.update_mask.is_empty();
                let wants = |f: &str| all || r.update_mask.iter().any(|m| m == f);
                for m in &r.update_mask {
                    if !matches!(m.as_str(), "hostname" | "friendly_name" | "tags") {
                        return Err(CommandError::InvalidArgument(format!(
                            "cannot update field {m:?}"
                        ))
                        .into());
                    }
                }
                let mut changed = Vec::new();
                let mut new = NewDevice {
                    guid: guid.clone(),
                    tenant_id: c.tenant.clone(),
                    hostname: d.hostname.clone(),
                    friendly_name: d.friendly_name.clone(),
                    tags: d.tags.clone(),
                    mps_username: d.mps_username.clone(),
                    device_info: d.device_info.clone(),
                };
                if wants("hostname") {
                    new.hostname = Some(r.hostname).filter(|h| !h.is_empty());
                    changed.push("hostname".to_string());
                }
                if wants("friendly_name") {
                    new.friendly_name = Some(r.friendly_name).filter(|h| !h.is_empty());
                    changed.push("friendly_name".to_string());
                }
                if wants("tags") {
                    new.tags = r.tags;
                    changed.push("tags".to_string());
                }
                let d = inner.store.upsert_device(new).await.map_err(db)?;
                inner.registry_event(&c, &guid, "updated", changed);
                Ok(Response::new(inner.to_pb(d).await))
            },
        )
        .await
    }

    async fn delete_device(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::DeleteDeviceResponse>, Status> {
        let parent = homeport_auth::traceparent(&req);
        homeport_telemetry::traces::traced(
            "DeviceRegistry/DeleteDevice",
            parent.as_deref(),
            async move {
                let c = caller(&req)?;
                remove_device(&self.inner, &c, &req.into_inner().guid).await?;
                Ok(Response::new(pb::DeleteDeviceResponse {}))
            },
        )
        .await
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let parent = homeport_auth::traceparent(&req);
        homeport_telemetry::traces::traced(
            "DeviceRegistry/ListDevices",
            parent.as_deref(),
            async move {
                let c = caller(&req)?;
                let r = req.into_inner();
                let page = match r.page_size {
                    0 => DEFAULT_PAGE,
                    n => n.min(MAX_PAGE),
                } as usize;
                let mut offset: u64 = if r.page_token.is_empty() {
                    0
                } else {
                    r.page_token
                        .parse()
                        .map_err(|_| Status::invalid_argument("bad page_token"))?
                };
                let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
                let query = DeviceQuery {
                    hostname: nonempty(&r.hostname),
                    friendly_name: nonempty(&r.friendly_name),
                    search: nonempty(r.search.trim()),
                    tags: r.tags.clone(),
                    any_tag: r.any_tag,
                };
                if query.search.as_ref().is_some_and(|s| s.len() > 256) {
                    return Err(Status::invalid_argument("search: at most 256 characters"));
                }
                let want_status = pb::ConnectionStatus::try_from(r.status)
                    .unwrap_or(pb::ConnectionStatus::Unspecified);
                let inner = &self.inner;
                // The count runs beside the page's reads (a search scans the table once for
                // each, so together they take the time of one).
                let counting = async {
                    if r.with_total {
                        inner
                            .store
                            .count_query_devices(&c.tenant, &query)
                            .await
                            .map_err(db)
                    } else {
                        Ok(0)
                    }
                };
                let (total, listed) = tokio::join!(counting, async {
                    let mut out = Vec::new();
                    let mut exhausted = false;
                    // The registry filters run in the database; the connection status comes from
                    // presence, so with a status filter scan in batches until the page is full.
                    let batch_size = if want_status == pb::ConnectionStatus::Unspecified {
                        page as u64
                    } else {
                        SCAN_BATCH
                    };
                    'scan: while out.len() < page {
                        let batch = inner
                            .store
                            .query_devices(&c.tenant, &query, batch_size, offset)
                            .await
                            .map_err(db)?;
                        let short = (batch.len() as u64) < batch_size;
                        if batch.is_empty() {
                            exhausted = true;
                            break;
                        }
                        let start = offset;
                        offset += batch.len() as u64;
                        // Presence of the batch, read concurrently, kept in order.
                        let devices: Vec<(u64, pb::Device)> =
                            futures_util::stream::iter(batch.into_iter().zip(start..))
                                .map(|(d, at)| async move { (at, inner.to_pb(d).await) })
                                .buffered(PRESENCE_READS)
                                .collect()
                                .await;
                        for (at, device) in devices {
                            if want_status != pb::ConnectionStatus::Unspecified
                                && device.status != want_status as i32
                            {
                                continue;
                            }
                            out.push(device);
                            if out.len() == page {
                                // The next page starts after the last device of this one.
                                offset = at + 1;
                                break 'scan;
                            }
                        }
                        if short {
                            exhausted = true;
                            break;
                        }
                    }
                    Ok::<_, Status>((out, exhausted, offset))
                });
                let total = total?;
                let (out, exhausted, offset) = listed?;
                Ok(Response::new(pb::ListDevicesResponse {
                    devices: out,
                    next_page_token: if exhausted {
                        String::new()
                    } else {
                        offset.to_string()
                    },
                    total,
                }))
            },
        )
        .await
    }

    async fn get_fleet_stats(
        &self,
        req: Request<pb::GetFleetStatsRequest>,
    ) -> Result<Response<pb::FleetStats>, Status> {
        let c = caller(&req)?;
        let total = self
            .inner
            .store
            .count_devices(&c.tenant)
            .await
            .map_err(db)?;
        if !self.inner.fleet.loaded() {
            return Err(Status::unavailable(
                "presence is still loading; try again in a moment",
            ));
        }
        let (connected, nodes) = self.inner.fleet.counts(&c.tenant);
        Ok(Response::new(pb::FleetStats {
            total,
            connected,
            disconnected: total.saturating_sub(connected),
            nodes: nodes
                .into_iter()
                .map(|(node, connected)| pb::NodeCount { node, connected })
                .collect(),
        }))
    }

    async fn list_tags(
        &self,
        req: Request<pb::ListTagsRequest>,
    ) -> Result<Response<pb::ListTagsResponse>, Status> {
        let c = caller(&req)?;
        let tags = self
            .inner
            .store
            .device_tags(&c.tenant, MAX_TAGS)
            .await
            .map_err(db)?;
        Ok(Response::new(pb::ListTagsResponse { tags }))
    }
}
