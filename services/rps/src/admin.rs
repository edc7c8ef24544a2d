//! ProvisioningAdmin: profiles, CIRA configs, domains and wireless configs of the caller's
//! tenant. Validated with the reference's rules (clear messages naming the field), settings
//! in the database, secrets in the secret store (written before the row, removed after it),
//! optimistic concurrency through `version`.

use std::sync::Arc;

use base64::Engine as _;
use homeport_auth::caller;
use homeport_proto::provisioning::v1 as pb;
use homeport_proto::provisioning::v1::provisioning_admin_server::ProvisioningAdmin;
use homeport_secrets::{SecretMap, SecretString};
use homeport_store::{ConfigRecord, ConfigUpdate, StoreError};
use tonic::{Request, Response, Status};

use crate::specs::{self, CiraSpec, DomainSpec, ProfileSpec, WirelessSpec};
use crate::Inner;

const DEFAULT_PAGE: u32 = 25;
const MAX_PAGE: u32 = 1000;

pub struct AdminApi {
    pub(crate) inner: Arc<Inner>,
}

fn invalid(field: &str, rule: &str) -> Status {
    Status::invalid_argument(format!("{field}: {rule}"))
}

fn db(e: StoreError) -> Status {
    match e {
        StoreError::AlreadyExists(what) => Status::already_exists(format!("{what} already exists")),
        StoreError::InvalidInput(m) => Status::invalid_argument(m),
        other => Status::unavailable(format!("database: {other}")),
    }
}

fn secret_err(e: homeport_secrets::SecretError) -> Status {
    Status::unavailable(format!("secret store: {e}"))
}

fn spec_of<T: serde::de::DeserializeOwned>(r: &ConfigRecord) -> Result<T, Status> {
    serde_json::from_value(r.spec.clone())
        .map_err(|e| Status::internal(format!("stored {} {} is unreadable: {e}", r.kind, r.name)))
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// One kind of object: how to check a request, what to store, how to answer.
struct Checked {
    name: String,
    unique_key: Option<String>,
    spec: serde_json::Value,
    /// Secrets to write (None: leave what is stored; Some(empty): remove).
    secrets: Option<SecretMap>,
    version: i64,
}

impl AdminApi {
    async fn create(&self, tenant: &str, kind: &str, c: Checked) -> Result<ConfigRecord, Status> {
        // A taken name is refused before anything is written: the secrets of the object that
        // has it must not change. (Two creates racing for a new name can still both write
        // secrets; the insert decides which row exists.)
        if self.exists(tenant, kind, &c.name).await? {
            return Err(Status::already_exists(format!(
                "{kind} {} already exists",
                c.name
            )));
        }
        let path = specs::secret_path(tenant, kind, &c.name);
        if let Some(map) = c.secrets.as_ref().filter(|m| !m.is_empty()) {
            self.inner
                .secrets
                .put(&path, map.clone())
                .await
                .map_err(secret_err)?;
        }
        let created = self
            .inner
            .store
            .create_config(tenant, kind, &c.name, c.unique_key, c.spec)
            .await;
        if created.is_err() && c.secrets.as_ref().is_some_and(|m| !m.is_empty()) {
            // The name was taken: the secrets written belong to the existing object only if
            // it had none; restoring is impossible to do safely, so report it clearly.
            tracing::warn!(tenant, kind, name = %c.name, "create refused after its secrets were written");
        }
        created.map_err(db)
    }

    async fn update(
        &self,
        tenant: &str,
        kind: &str,
        mut c: Checked,
    ) -> Result<ConfigRecord, Status> {
        if c.version <= 0 {
            return Err(invalid("version", "send back the version you read"));
        }
        let current = self
            .inner
            .store
            .get_config(tenant, kind, &c.name)
            .await
            .map_err(db)?
            .ok_or_else(|| Status::not_found(format!("{kind} {} not found", c.name)))?;
        if current.version != c.version {
            return Err(stale(&current));
        }
        // A CIRA password is write-only, so a client cannot send it back: an update without
        // one keeps the stored password (delete and create the config to go back to random
        // per-device passwords).
        if kind == specs::CIRA
            && c.secrets.as_ref().is_some_and(SecretMap::is_empty)
            && current.spec.get("static_password") == Some(&serde_json::Value::Bool(true))
        {
            c.secrets = None;
            c.spec["static_password"] = serde_json::Value::Bool(true);
        }
        let path = specs::secret_path(tenant, kind, &c.name);
        match &c.secrets {
            Some(map) if !map.is_empty() => self
                .inner
                .secrets
                .put(&path, map.clone())
                .await
                .map_err(secret_err)?,
            Some(_) => self.inner.secrets.delete(&path).await.map_err(secret_err)?,
            None => {}
        }
        match self
            .inner
            .store
            .update_config(tenant, kind, &c.name, c.version, c.unique_key, c.spec)
            .await
            .map_err(db)?
        {
            ConfigUpdate::Updated(r) => Ok(r),
            ConfigUpdate::Stale(r) => Err(stale(&r)),
            ConfigUpdate::NotFound => {
                Err(Status::not_found(format!("{kind} {} not found", c.name)))
            }
        }
    }

    async fn get(&self, tenant: &str, kind: &str, name: &str) -> Result<ConfigRecord, Status> {
        self.inner
            .store
            .get_config(tenant, kind, name)
            .await
            .map_err(db)?
            .ok_or_else(|| Status::not_found(format!("{kind} {name} not found")))
    }

    async fn list(
        &self,
        tenant: &str,
        kind: &str,
        r: &pb::ListRequest,
    ) -> Result<(Vec<ConfigRecord>, u64), Status> {
        let top = if r.top == 0 {
            DEFAULT_PAGE
        } else {
            r.top.min(MAX_PAGE)
        };
        self.inner
            .store
            .list_configs(tenant, kind, u64::from(r.skip), u64::from(top))
            .await
            .map_err(db)
    }

    /// Deletes unless a profile names it (`referenced_by` picks the reference out of a
    /// profile), then its secrets.
    async fn delete(
        &self,
        tenant: &str,
        kind: &str,
        name: &str,
        referenced_by: Option<fn(&ProfileSpec, &str) -> bool>,
    ) -> Result<(), Status> {
        if let Some(uses) = referenced_by {
            let mut skip = 0;
            loop {
                let (page, total) = self
                    .inner
                    .store
                    .list_configs(tenant, specs::PROFILE, skip, 500)
                    .await
                    .map_err(db)?;
                for p in &page {
                    let spec: ProfileSpec = spec_of(p)?;
                    if uses(&spec, name) {
                        return Err(Status::failed_precondition(format!(
                            "{kind} {name} is used by profile {}; change or delete that profile first",
                            p.name
                        )));
                    }
                }
                skip += page.len() as u64;
                if page.is_empty() || skip >= total {
                    break;
                }
            }
        }
        if !self
            .inner
            .store
            .delete_config(tenant, kind, name)
            .await
            .map_err(db)?
        {
            return Err(Status::not_found(format!("{kind} {name} not found")));
        }
        self.inner
            .secrets
            .delete(&specs::secret_path(tenant, kind, name))
            .await
            .map_err(secret_err)?;
        Ok(())
    }

    async fn exists(&self, tenant: &str, kind: &str, name: &str) -> Result<bool, Status> {
        Ok(self
            .inner
            .store
            .get_config(tenant, kind, name)
            .await
            .map_err(db)?
            .is_some())
    }

    async fn check_profile(&self, tenant: &str, p: &pb::Profile) -> Result<Checked, Status> {
        if !specs::valid_name(&p.name) {
            return Err(invalid(
                "name",
                "required; letters, digits and $@!%*#?&-_~^, at most 64",
            ));
        }
        let acm = match pb::Activation::try_from(p.activation) {
            Ok(pb::Activation::Ccm) => false,
            Ok(pb::Activation::Acm) => true,
            _ => return Err(invalid("activation", "must be CCM or ACM")),
        };
        let mut secrets = SecretMap::new();
        if let Some(pw) = static_or_random(
            "amt_password",
            "generate_random_password",
            "required",
            &p.amt_password,
            p.generate_random_password,
        )? {
            secrets.insert(specs::AMT_PASSWORD.into(), pw);
        }
        if acm {
            if let Some(pw) = static_or_random(
                "mebx_password",
                "generate_random_mebx_password",
                "required for ACM",
                &p.mebx_password,
                p.generate_random_mebx_password,
            )? {
                secrets.insert(specs::MEBX_PASSWORD.into(), pw);
            }
        } else if !p.mebx_password.is_empty() || p.generate_random_mebx_password {
            return Err(invalid(
                "mebx_password",
                "only ACM profiles set the MEBx password",
            ));
        }
        let consent = match pb::UserConsent::try_from(p.user_consent) {
            Ok(pb::UserConsent::None) => "None",
            Ok(pb::UserConsent::Kvm) => "KVM",
            Ok(pb::UserConsent::All) => "All",
            _ if acm => "KVM",
            _ => "All",
        };
        if !acm && consent != "All" {
            return Err(invalid(
                "user_consent",
                "client control mode always requires consent for all redirection (All)",
            ));
        }
        if !p.cira_config_name.is_empty()
            && !self
                .exists(tenant, specs::CIRA, &p.cira_config_name)
                .await?
        {
            return Err(invalid(
                "cira_config_name",
                &format!("CIRA config {} does not exist", p.cira_config_name),
            ));
        }
        if !p.wifi_configs.is_empty() && !p.dhcp_enabled {
            return Err(invalid(
                "wifi_configs",
                "wireless profiles need dhcp_enabled",
            ));
        }
        if p.wifi_configs.len() > 8 {
            return Err(invalid("wifi_configs", "at most 8"));
        }
        for w in &p.wifi_configs {
            if !(1..=255).contains(&w.priority) {
                return Err(invalid("wifi_configs.priority", "1-255"));
            }
            if !self
                .exists(tenant, specs::WIRELESS, &w.profile_name)
                .await?
            {
                return Err(invalid(
                    "wifi_configs.profile_name",
                    &format!("wireless config {} does not exist", w.profile_name),
                ));
            }
        }
        if p.tags.len() > 64 || p.tags.iter().any(|t| t.is_empty() || t.len() > 64) {
            return Err(invalid("tags", "at most 64 tags of 1-64 characters"));
        }
        let spec = ProfileSpec {
            activation: if acm { "acmactivate" } else { "ccmactivate" }.into(),
            generate_random_password: p.generate_random_password,
            generate_random_mebx_password: p.generate_random_mebx_password,
            cira_config_name: Some(p.cira_config_name.clone()).filter(|c| !c.is_empty()),
            tags: p.tags.clone(),
            dhcp_enabled: p.dhcp_enabled,
            ip_sync_enabled: p.ip_sync_enabled,
            user_consent: consent.into(),
            ider_enabled: p.ider_enabled,
            kvm_enabled: p.kvm_enabled,
            sol_enabled: p.sol_enabled,
            wifi_configs: p
                .wifi_configs
                .iter()
                .map(|w| (w.profile_name.clone(), w.priority))
                .collect(),
            local_wifi_sync_enabled: p.local_wifi_sync_enabled,
        };
        Ok(Checked {
            name: p.name.clone(),
            unique_key: None,
            spec: json(&spec),
            secrets: Some(secrets),
            version: p.version,
        })
    }

    async fn check_cira(&self, _tenant: &str, c: &pb::CiraConfig) -> Result<Checked, Status> {
        if !specs::valid_name(&c.name) {
            return Err(invalid(
                "name",
                "required; letters, digits and $@!%*#?&-_~^, at most 64",
            ));
        }
        let addr = c.mps_server_address.trim();
        match c.server_address_format {
            3 => {
                if addr.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err(invalid(
                        "mps_server_address",
                        "must be an IPv4 address for format 3",
                    ));
                }
                if c.common_name.is_empty() {
                    return Err(invalid(
                        "common_name",
                        "required with an IPv4 address (format 3)",
                    ));
                }
            }
            4 => {
                if addr.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(invalid(
                        "mps_server_address",
                        "must be an IPv6 address for format 4",
                    ));
                }
            }
            201 => {
                if !specs::valid_fqdn(addr) {
                    return Err(invalid(
                        "mps_server_address",
                        "must be a host name or IPv4 address for format 201",
                    ));
                }
            }
            _ => {
                return Err(invalid(
                    "server_address_format",
                    "3 (IPv4), 4 (IPv6) or 201 (FQDN)",
                ))
            }
        }
        if !(1024..=49151).contains(&c.mps_port) {
            return Err(invalid("mps_port", "1024-49151"));
        }
        if !(5..=16).contains(&c.username.len())
            || !c.username.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid("username", "5-16 letters and digits"));
        }
        match c.auth_method {
            2 => {}
            1 => return Err(invalid("auth_method", "mutual TLS (1) is not supported by Homeport's ingress; use 2 (user name and password)")),
            _ => return Err(invalid("auth_method", "2 (user name and password)")),
        }
        let mut root = c.mps_root_certificate.trim().to_string();
        if root.is_empty() {
            // Homeport knows its ingress's root: the CIRA certificates live in the secret store.
            root = self.inner.ingress_root_der().await.ok_or_else(|| {
                invalid(
                    "mps_root_certificate",
                    "required (base64 DER of the ingress root): none is stored by an ingress yet",
                )
            })?;
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(&root)
            .map_err(|_| invalid("mps_root_certificate", "must be base64 DER"))?;
        openssl::x509::X509::from_der(&der)
            .map_err(|_| invalid("mps_root_certificate", "is not a DER certificate"))?;
        let mut secrets = SecretMap::new();
        if !c.password.is_empty() {
            if !(8..=63).contains(&c.password.len())
                || !c.password.chars().all(|ch| ch.is_ascii_graphic())
            {
                return Err(invalid("password", "8-63 printable characters"));
            }
            secrets.insert(
                specs::MPS_PASSWORD.into(),
                SecretString::new(c.password.clone()),
            );
        }
        let spec = CiraSpec {
            mps_server_address: addr.to_string(),
            server_address_format: c.server_address_format,
            mps_port: c.mps_port,
            username: c.username.clone(),
            static_password: !c.password.is_empty(),
            common_name: c.common_name.clone(),
            auth_method: c.auth_method,
            mps_root_certificate: root,
            proxy_details: c.proxy_details.clone(),
        };
        Ok(Checked {
            name: c.name.clone(),
            unique_key: None,
            spec: json(&spec),
            secrets: Some(secrets),
            version: c.version,
        })
    }

    async fn check_domain(&self, _tenant: &str, d: &pb::Domain) -> Result<Checked, Status> {
        if !specs::valid_name(&d.name) {
            return Err(invalid(
                "name",
                "required; letters, digits and $@!%*#?&-_~^, at most 64",
            ));
        }
        let suffix = d.domain_suffix.trim().trim_end_matches('.').to_lowercase();
        if !specs::valid_fqdn(&suffix) || !suffix.contains('.') {
            return Err(invalid(
                "domain_suffix",
                "a DNS suffix such as vprodemo.com",
            ));
        }
        if d.provisioning_cert_password.is_empty() || d.provisioning_cert_password.len() > 64 {
            return Err(invalid(
                "provisioning_cert_password",
                "required, at most 64 characters",
            ));
        }
        let format = if d.provisioning_cert_storage_format.is_empty() {
            "raw".to_string()
        } else {
            d.provisioning_cert_storage_format.clone()
        };
        if format != "raw" && format != "string" {
            return Err(invalid("provisioning_cert_storage_format", "raw or string"));
        }
        let pfx =
            crate::acm::Provisioning::decode(&d.provisioning_cert, &d.provisioning_cert_password)
                .map_err(|e| invalid("provisioning_cert", &e))?;
        let now = chrono::Utc::now().timestamp();
        if pfx.expires < now {
            return Err(invalid(
                "provisioning_cert",
                "a certificate of the chain has expired",
            ));
        }
        let labels =
            |s: &str| -> Vec<String> { s.rsplit('.').take(2).map(str::to_lowercase).collect() };
        if labels(&pfx.leaf_common_name) != labels(&suffix) {
            return Err(invalid(
                "domain_suffix",
                &format!(
                    "must end like the certificate's common name {} (its last two labels)",
                    pfx.leaf_common_name
                ),
            ));
        }
        let mut secrets = SecretMap::new();
        secrets.insert(
            specs::CERT.into(),
            SecretString::new(d.provisioning_cert.trim().to_string()),
        );
        secrets.insert(
            specs::CERT_PASSWORD.into(),
            SecretString::new(d.provisioning_cert_password.clone()),
        );
        let spec = DomainSpec {
            domain_suffix: suffix.clone(),
            provisioning_cert_storage_format: format,
            expiration_date: pfx.expires,
        };
        Ok(Checked {
            name: d.name.clone(),
            unique_key: Some(suffix),
            spec: json(&spec),
            secrets: Some(secrets),
            version: d.version,
        })
    }

    async fn check_wireless(
        &self,
        _tenant: &str,
        w: &pb::WirelessConfig,
    ) -> Result<Checked, Status> {
        if w.name.is_empty()
            || w.name.len() > 32
            || !w.name.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid("name", "1-32 letters and digits"));
        }
        let psk = match w.authentication_method {
            4 | 6 => true,
            5 | 7 => {
                return Err(invalid(
                    "authentication_method",
                    "802.1x methods (5, 7) need IEEE 802.1x configurations, which Homeport does not support yet",
                ))
            }
            _ => return Err(invalid("authentication_method", "4 WPA-PSK, 5 WPA-802.1x, 6 WPA2-PSK or 7 WPA2-802.1x")),
        };
        if !matches!(w.encryption_method, 3 | 4) {
            return Err(invalid("encryption_method", "3 TKIP or 4 CCMP"));
        }
        if w.ssid.is_empty() || w.ssid.len() > 32 {
            return Err(invalid("ssid", "1-32 characters"));
        }
        if psk && !(8..=63).contains(&w.psk_passphrase.len()) {
            return Err(invalid("psk_passphrase", "8-63 characters for PSK methods"));
        }
        if !w.ieee8021x_profile_name.is_empty() {
            return Err(invalid(
                "ieee8021x_profile_name",
                "only with 802.1x methods",
            ));
        }
        if w.link_policy
            .iter()
            .any(|l| !matches!(l, 1 | 14 | 16 | 224))
        {
            return Err(invalid("link_policy", "values 1, 14, 16, 224"));
        }
        let mut secrets = SecretMap::new();
        secrets.insert(
            specs::PSK_PASSPHRASE.into(),
            SecretString::new(w.psk_passphrase.clone()),
        );
        let spec = WirelessSpec {
            authentication_method: w.authentication_method,
            encryption_method: w.encryption_method,
            ssid: w.ssid.clone(),
            link_policy: w.link_policy.clone(),
            ieee8021x_profile_name: String::new(),
        };
        Ok(Checked {
            name: w.name.clone(),
            unique_key: None,
            spec: json(&spec),
            secrets: Some(secrets),
            version: w.version,
        })
    }
}

/// A profile password is either static or fresh per device (`random`), exactly one of the
/// two; a static one must be one AMT accepts. Returns the static one, if any.
fn static_or_random(
    field: &str,
    random_field: &str,
    required: &str,
    value: &str,
    random: bool,
) -> Result<Option<SecretString>, Status> {
    match (value.is_empty(), random) {
        (false, true) => Err(invalid(
            field,
            &format!("give either a static password or {random_field}, not both"),
        )),
        (true, false) => Err(invalid(
            field,
            &format!("{required} unless {random_field} is set"),
        )),
        (false, false) if !specs::valid_amt_password(value) => Err(invalid(
            field,
            "8-32 characters with a lower-case and an upper-case letter, a digit and one of !@#$%^&*",
        )),
        (false, false) => Ok(Some(SecretString::new(value))),
        (true, true) => Ok(None),
    }
}

fn stale(current: &ConfigRecord) -> Status {
    Status::aborted(format!(
        "{} {} changed since you read it: the stored version is {}",
        current.kind, current.name, current.version
    ))
}

fn profile_pb(r: &ConfigRecord) -> Result<pb::Profile, Status> {
    let s: ProfileSpec = spec_of(r)?;
    Ok(pb::Profile {
        name: r.name.clone(),
        activation: if s.is_acm() {
            pb::Activation::Acm
        } else {
            pb::Activation::Ccm
        } as i32,
        amt_password: String::new(),
        generate_random_password: s.generate_random_password,
        mebx_password: String::new(),
        generate_random_mebx_password: s.generate_random_mebx_password,
        cira_config_name: s.cira_config_name.unwrap_or_default(),
        tags: s.tags,
        dhcp_enabled: s.dhcp_enabled,
        ip_sync_enabled: s.ip_sync_enabled,
        user_consent: match s.user_consent.as_str() {
            "None" => pb::UserConsent::None,
            "KVM" => pb::UserConsent::Kvm,
            _ => pb::UserConsent::All,
        } as i32,
        ider_enabled: s.ider_enabled,
        kvm_enabled: s.kvm_enabled,
        sol_enabled: s.sol_enabled,
        wifi_configs: s
            .wifi_configs
            .into_iter()
            .map(|(profile_name, priority)| pb::WifiLink {
                profile_name,
                priority,
            })
            .collect(),
        local_wifi_sync_enabled: s.local_wifi_sync_enabled,
        tenant: r.tenant_id.clone(),
        version: r.version,
    })
}

fn cira_pb(r: &ConfigRecord) -> Result<pb::CiraConfig, Status> {
    let s: CiraSpec = spec_of(r)?;
    Ok(pb::CiraConfig {
        name: r.name.clone(),
        mps_server_address: s.mps_server_address,
        server_address_format: s.server_address_format,
        mps_port: s.mps_port,
        username: s.username,
        password: String::new(),
        common_name: s.common_name,
        auth_method: s.auth_method,
        mps_root_certificate: s.mps_root_certificate,
        proxy_details: s.proxy_details,
        tenant: r.tenant_id.clone(),
        version: r.version,
    })
}

fn domain_pb(r: &ConfigRecord) -> Result<pb::Domain, Status> {
    let s: DomainSpec = spec_of(r)?;
    Ok(pb::Domain {
        name: r.name.clone(),
        domain_suffix: s.domain_suffix,
        provisioning_cert: String::new(),
        provisioning_cert_storage_format: s.provisioning_cert_storage_format,
        provisioning_cert_password: String::new(),
        expiration_date: s.expiration_date,
        tenant: r.tenant_id.clone(),
        version: r.version,
    })
}

fn wireless_pb(r: &ConfigRecord) -> Result<pb::WirelessConfig, Status> {
    let s: WirelessSpec = spec_of(r)?;
    Ok(pb::WirelessConfig {
        name: r.name.clone(),
        authentication_method: s.authentication_method,
        encryption_method: s.encryption_method,
        ssid: s.ssid,
        psk_passphrase: String::new(),
        link_policy: s.link_policy,
        ieee8021x_profile_name: s.ieee8021x_profile_name,
        tenant: r.tenant_id.clone(),
        version: r.version,
    })
}

fn all<T>(
    rs: &[ConfigRecord],
    f: fn(&ConfigRecord) -> Result<T, Status>,
) -> Result<Vec<T>, Status> {
    rs.iter().map(f).collect()
}

fn uses_cira(p: &ProfileSpec, name: &str) -> bool {
    p.cira_config_name
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case(name))
}

fn uses_wireless(p: &ProfileSpec, name: &str) -> bool {
    p.wifi_configs
        .iter()
        .any(|(w, _)| w.eq_ignore_ascii_case(name))
}

/// The five calls of each kind of admin object differ only in names, messages and the
/// check and conversion they use.
macro_rules! admin_api {
    ($(($msg:ty, $list:ident, $items:ident, $kind:expr, $check:ident, $to_pb:ident, $refs:expr,
        $create:ident, $get:ident, $update:ident, $delete:ident, $list_fn:ident)),* $(,)?) => {
        #[tonic::async_trait]
        impl ProvisioningAdmin for AdminApi {
            async fn get_cira_root_certificate(
                &self,
                req: Request<pb::CiraRootRequest>,
            ) -> Result<Response<pb::CiraRootCertificate>, Status> {
                caller(&req)?;
                let root = self.inner.ingress_root().await.ok_or_else(|| {
                    Status::not_found("no ingress has stored its CIRA certificates yet")
                })?;
                let pem = root
                    .to_pem()
                    .map_err(|e| Status::internal(format!("encoding the root: {e}")))?;
                Ok(Response::new(pb::CiraRootCertificate {
                    pem: String::from_utf8_lossy(&pem).into_owned(),
                }))
            }

            $(
                async fn $create(&self, req: Request<$msg>) -> Result<Response<$msg>, Status> {
                    let t = caller(&req)?.tenant;
                    let c = self.$check(&t, req.get_ref()).await?;
                    Ok(Response::new($to_pb(&self.create(&t, $kind, c).await?)?))
                }

                async fn $get(&self, req: Request<pb::NameRef>) -> Result<Response<$msg>, Status> {
                    let t = caller(&req)?.tenant;
                    Ok(Response::new($to_pb(&self.get(&t, $kind, &req.get_ref().name).await?)?))
                }

                async fn $update(&self, req: Request<$msg>) -> Result<Response<$msg>, Status> {
                    let t = caller(&req)?.tenant;
                    let c = self.$check(&t, req.get_ref()).await?;
                    Ok(Response::new($to_pb(&self.update(&t, $kind, c).await?)?))
                }

                async fn $delete(
                    &self,
                    req: Request<pb::NameRef>,
                ) -> Result<Response<pb::Deleted>, Status> {
                    let t = caller(&req)?.tenant;
                    self.delete(&t, $kind, &req.get_ref().name, $refs).await?;
                    Ok(Response::new(pb::Deleted {}))
                }

                async fn $list_fn(
                    &self,
                    req: Request<pb::ListRequest>,
                ) -> Result<Response<pb::$list>, Status> {
                    let t = caller(&req)?.tenant;
                    let (rs, total) = self.list(&t, $kind, req.get_ref()).await?;
                    Ok(Response::new(pb::$list {
                        $items: all(&rs, $to_pb)?,
                        total,
                    }))
                }
            )*
        }
    };
}

admin_api!(
    (
        pb::Profile,
        ProfileList,
        profiles,
        specs::PROFILE,
        check_profile,
        profile_pb,
        None,
        create_profile,
        get_profile,
        update_profile,
        delete_profile,
        list_profiles
    ),
    (
        pb::CiraConfig,
        CiraConfigList,
        cira_configs,
        specs::CIRA,
        check_cira,
        cira_pb,
        Some(uses_cira as fn(&ProfileSpec, &str) -> bool),
        create_cira_config,
        get_cira_config,
        update_cira_config,
        delete_cira_config,
        list_cira_configs
    ),
    (
        pb::Domain,
        DomainList,
        domains,
        specs::DOMAIN,
        check_domain,
        domain_pb,
        None,
        create_domain,
        get_domain,
        update_domain,
        delete_domain,
        list_domains
    ),
    (
        pb::WirelessConfig,
        WirelessConfigList,
        wireless_configs,
        specs::WIRELESS,
        check_wireless,
        wireless_pb,
        Some(uses_wireless as fn(&ProfileSpec, &str) -> bool),
        create_wireless_config,
        get_wireless_config,
        update_wireless_config,
        delete_wireless_config,
        list_wireless_configs
    ),
);
