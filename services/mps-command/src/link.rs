//! The path to a device's AMT: WS-Man envelopes, signed with HTTP digest using the device's
//! AMT credentials, sent through the CIRA tunnel, answers parsed.
//!
//! Credentials are cached per device and dropped when a registry event says the device's
//! secrets changed (or it was deleted); a digest rejection also re-reads them once. Digest
//! state (realm, nonce, nc) is cached per device so later calls authenticate pre-emptively,
//! like MPS does, instead of paying a 401 round trip each time. A device's realm is pinned
//! when first seen: a challenge under another realm is refused, so whoever answers for the
//! device cannot choose the realm the password is hashed with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeport_contracts::tunnel::TunnelClient;
use homeport_secrets::{DeviceSecrets, DynSecretStore, SecretString};
use homeport_wsman::digest::{Challenge, DigestSession};
use homeport_wsman::{amt, http, response, Class, Request, Response};

use crate::error::CommandError;

/// AMT's admin account, the one Homeport manages devices with.
pub const AMT_USER: &str = "admin";
/// 401s accepted within one exchange before giving up (MPS gives up at the 4th).
const MAX_CHALLENGES: usize = 3;
/// Exchanges one replica has in flight to one device at most (MPS allows 3; the ingress
/// refuses a device's fifth concurrent request as busy).
const EXCHANGES_PER_DEVICE: usize = 3;
/// How long a device's AMT password is used from memory; registry events drop it sooner, and
/// a digest rejection re-reads it at once.
const PASSWORD_CACHE_TTL: Duration = Duration::from_secs(30);
const PASSWORD_CACHE_MAX: usize = 200_000;
/// Most Pull rounds of one enumeration (AMT classes fit in a few).
const MAX_PULLS: usize = 32;

#[derive(Default)]
pub struct LinkStats {
    pub exchanges: AtomicU64,
    pub challenges: AtomicU64,
}

pub struct DeviceLink {
    tunnel: TunnelClient,
    secrets: DynSecretStore,
    passwords: Mutex<HashMap<String, (SecretString, std::time::Instant)>>,
    digests: Mutex<HashMap<String, DigestSession>>,
    realms: RealmPins,
    timeout: Duration,
    next_id: AtomicU64,
    /// Per-device limit of exchanges in flight from this replica (entries live while used).
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    pub stats: LinkStats,
}

impl DeviceLink {
    pub fn new(tunnel: TunnelClient, secrets: DynSecretStore, timeout: Duration) -> DeviceLink {
        DeviceLink {
            tunnel,
            secrets,
            passwords: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
            realms: RealmPins::default(),
            timeout,
            next_id: AtomicU64::new(fastrand::u64(..1 << 40)),
            in_flight: Mutex::new(HashMap::new()),
            stats: LinkStats::default(),
        }
    }

    pub fn tunnel(&self) -> &TunnelClient {
        &self.tunnel
    }

    /// Waits for one of the device's exchange slots (up to the exchange deadline), so requests
    /// beyond what AMT and the ingress take at once queue here instead of being refused.
    async fn slot(&self, guid: &str) -> Result<Slot<'_>, CommandError> {
        let sem = lock(&self.in_flight)
            .entry(guid.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(EXCHANGES_PER_DEVICE)))
            .clone();
        let permit = tokio::time::timeout(self.timeout, sem.acquire_owned())
            .await
            .map_err(|_| CommandError::Timeout(guid.to_string()))?
            .map_err(|_| CommandError::Unavailable("device slot closed".into()))?;
        Ok(Slot {
            link: self,
            guid: guid.to_string(),
            permit: Some(permit),
        })
    }

    /// Forgets what is cached about `guid` (its secrets changed or it was deleted).
    pub fn forget(&self, guid: &str) {
        lock(&self.passwords).remove(guid);
        lock(&self.digests).remove(guid);
        self.realms.forget(guid);
    }

    async fn password(&self, guid: &str, fresh: bool) -> Result<SecretString, CommandError> {
        if !fresh {
            if let Some((p, at)) = lock(&self.passwords).get(guid) {
                if at.elapsed() < PASSWORD_CACHE_TTL {
                    return Ok(p.clone());
                }
            }
        }
        let secrets = DeviceSecrets::load(self.secrets.as_ref(), guid)
            .await
            .map_err(|e| CommandError::Unavailable(format!("secret store: {e}")))?;
        let password = secrets
            .and_then(|s| s.amt_password)
            .ok_or_else(|| CommandError::NoCredentials(guid.to_string()))?;
        let mut cache = lock(&self.passwords);
        if cache.len() >= PASSWORD_CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            guid.to_string(),
            (password.clone(), std::time::Instant::now()),
        );
        Ok(password)
    }

    /// Starts a conversation with `guid`'s AMT, as part of the operation `trace`.
    pub async fn open(&self, guid: &str, trace: String) -> Result<Call<'_>, CommandError> {
        Ok(Call {
            link: self,
            guid: guid.to_string(),
            password: self.password(guid, false).await?,
            refetched: false,
            trace,
        })
    }
}

/// An exchange slot of one device; the map entry goes when its last holder leaves.
struct Slot<'a> {
    link: &'a DeviceLink,
    guid: String,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut map = lock(&self.link.in_flight);
        // Only the map holds it and nobody waits: remove, so idle devices cost nothing.
        if map.get(&self.guid).is_some_and(|s| {
            Arc::strong_count(s) == 1 && s.available_permits() == EXCHANGES_PER_DEVICE
        }) {
            map.remove(&self.guid);
        }
    }
}

/// Each device's digest realm, pinned when first seen (until the device's secrets change or
/// it is deleted). AMT's realm (`Digest:` and 32 hex digits) does not change while a device
/// stays provisioned.
#[derive(Default)]
struct RealmPins {
    map: Mutex<HashMap<String, String>>,
}

impl RealmPins {
    /// Pins `realm` for `guid` if none is pinned; refuses another realm than the pinned one.
    fn check(&self, guid: &str, realm: &str) -> Result<(), String> {
        let mut map = lock(&self.map);
        match map.get(guid) {
            Some(pinned) if pinned == realm => Ok(()),
            Some(pinned) => Err(format!(
                "device challenged with digest realm {:?}, not its realm {pinned:?}; not answered",
                realm.chars().take(64).collect::<String>()
            )),
            None => {
                if map.len() >= PASSWORD_CACHE_MAX {
                    // Bounded like the other caches; forgetting only costs re-pinning.
                    map.clear();
                }
                map.insert(guid.to_string(), realm.to_string());
                Ok(())
            }
        }
    }

    fn forget(&self, guid: &str) {
        lock(&self.map).remove(guid);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One command's conversation with one device.
pub struct Call<'a> {
    link: &'a DeviceLink,
    pub guid: String,
    password: SecretString,
    refetched: bool,
    /// W3C traceparent sent with every exchange, so the ingress logs the same trace.
    pub trace: String,
}

impl Call<'_> {
    /// One WS-Man exchange, authenticating as needed; a span of the command's trace (action
    /// and resource as attributes, never credentials), continued by the ingress node.
    pub async fn exchange(&mut self, req: &Request) -> Result<Response, CommandError> {
        let span = homeport_telemetry::traces::TraceSpan::start(
            "wsman.exchange",
            false,
            Some(&self.trace),
            vec![
                ("wsman.action", req.action.clone()),
                ("wsman.resource", req.resource_uri.clone()),
                ("homeport.device", self.guid.clone()),
            ],
        );
        let trace = span
            .traceparent()
            .map_or_else(|| self.trace.clone(), str::to_owned);
        let result = self.exchange_in(req, &trace).await;
        span.end(result.as_ref().err().map(|e| e.to_string()).as_deref());
        result
    }

    async fn exchange_in(&mut self, req: &Request, trace: &str) -> Result<Response, CommandError> {
        let link = self.link;
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let envelope = req.to_xml(id);
        let host = format!("{}:16992", self.guid);
        let mut challenges = 0;
        let _slot = link.slot(&self.guid).await?;
        loop {
            link.stats.exchanges.fetch_add(1, Ordering::Relaxed);
            let authorization = lock(&link.digests)
                .get_mut(&self.guid)
                .map(|d| d.authorize(AMT_USER, self.password.expose(), "POST", "/wsman"));
            let bytes = http::request(&host, authorization.as_deref(), &envelope);
            let raw = link
                .tunnel
                .request_traced(&self.guid, None, bytes.into(), link.timeout, Some(trace))
                .await
                .map_err(|e| CommandError::from_tunnel(&self.guid, e))?;
            let reply =
                http::parse_reply(&raw).map_err(|e| CommandError::BadReply(e.to_string()))?;
            match reply.status {
                200 | 400 => {
                    let r = response::parse(&reply.body)?;
                    if reply.status == 400 {
                        return Err(CommandError::BadReply(
                            "HTTP 400 without a SOAP fault".into(),
                        ));
                    }
                    if r.relates_to != id.to_string() {
                        return Err(CommandError::BadReply(format!(
                            "reply relates to message {:?}, not {id}",
                            r.relates_to.chars().take(40).collect::<String>()
                        )));
                    }
                    return Ok(r);
                }
                401 => {
                    link.stats.challenges.fetch_add(1, Ordering::Relaxed);
                    challenges += 1;
                    let challenge = reply
                        .www_authenticate
                        .as_deref()
                        .map(Challenge::parse)
                        .transpose()
                        .map_err(|e| CommandError::BadReply(format!("401 challenge: {e}")))?
                        .ok_or_else(|| CommandError::BadReply("401 without a challenge".into()))?;
                    link.realms
                        .check(&self.guid, &challenge.realm)
                        .map_err(CommandError::BadReply)?;
                    let stale = challenge.stale;
                    lock(&link.digests).insert(self.guid.clone(), DigestSession::new(challenge));
                    if authorization.is_some() && !stale {
                        // The device refused our password: maybe it changed since we cached it.
                        if self.refetched {
                            return Err(CommandError::AuthFailed(self.guid.clone()));
                        }
                        self.refetched = true;
                        self.password = link.password(&self.guid, true).await?;
                    }
                    if challenges > MAX_CHALLENGES {
                        return Err(CommandError::AuthFailed(self.guid.clone()));
                    }
                }
                s => {
                    return Err(CommandError::BadReply(format!(
                        "unexpected HTTP status {s}"
                    )))
                }
            }
        }
    }

    /// The instance a Get returns.
    pub async fn get(&mut self, class: Class) -> Result<Response, CommandError> {
        self.exchange(&Request::get(class)).await
    }

    /// A method call; a non-zero ReturnValue is returned, not an error.
    pub async fn invoke(
        &mut self,
        req: &Request,
        method: &str,
    ) -> Result<(Response, u32), CommandError> {
        let r = self.exchange(req).await?;
        let (_, rv) = r.method_output(method)?;
        Ok((r, rv))
    }

    /// A method call that must succeed (ReturnValue 0).
    pub async fn invoke_ok(
        &mut self,
        req: &Request,
        method: &str,
    ) -> Result<Response, CommandError> {
        let (r, rv) = self.invoke(req, method).await?;
        if rv != 0 {
            return Err(CommandError::ReturnValue {
                method: method.to_string(),
                value: rv,
            });
        }
        Ok(r)
    }

    /// Enumerate + Pull until EndOfSequence; every item, in order.
    pub async fn enumerate(
        &mut self,
        class: Class,
    ) -> Result<Vec<homeport_wsman::xml::Element>, CommandError> {
        let r = self.exchange(&Request::enumerate(class)).await?;
        let mut context = amt::enumeration_context(&r)?;
        let mut items = Vec::new();
        for _ in 0..MAX_PULLS {
            let r = self.exchange(&Request::pull(class, &context)).await?;
            let page = amt::pull_page(&r)?;
            items.extend(page.items.into_iter().cloned());
            match (page.end_of_sequence, page.context) {
                (false, Some(next)) => context = next,
                _ => return Ok(items),
            }
        }
        Err(CommandError::BadReply(format!(
            "{} enumeration did not end after {MAX_PULLS} pulls",
            class.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_devices_realm_is_pinned_when_first_seen() {
        let pins = RealmPins::default();
        let realm = "Digest:727734D63A1FC0423736E48DA554E462";
        assert_eq!(pins.check("g1", realm), Ok(()));
        assert_eq!(pins.check("g1", realm), Ok(()));
        assert!(pins.check("g1", "Digest:attacker-chosen").is_err());
        // Another device has its own.
        assert_eq!(pins.check("g2", "Digest:OTHER"), Ok(()));
        // Once the device's secrets change (re-provisioned), a new realm is accepted.
        pins.forget("g1");
        assert_eq!(pins.check("g1", "Digest:NEW"), Ok(()));
    }
}
