//! Device credentials at the Open AMT paths (`devices/<guid>`, keys `AMT_PASSWORD`, ...).

use crate::{SecretError, SecretMap, SecretStore, SecretString};

/// Key of the AMT admin digest password (the user is always [`AMT_USERNAME`]).
pub const AMT_PASSWORD: &str = "AMT_PASSWORD";
/// Key of the MEBx password.
pub const MEBX_PASSWORD: &str = "MEBX_PASSWORD";
/// Key of the CIRA (APF) password the device presents to the ingress.
pub const MPS_PASSWORD: &str = "MPS_PASSWORD";
/// The AMT digest user that [`AMT_PASSWORD`] belongs to.
pub const AMT_USERNAME: &str = "admin";
/// Path of the ingress TLS material, as Open AMT MPS names it.
pub const MPS_CERTS_PATH: &str = "MPSCerts";
/// Where the CIRA ingress keeps the certificates it generated (shared by its nodes, and read
/// by rps, which gives devices the root), and the key of the root certificate (PEM) there.
pub const CIRA_CERTS_PATH: &str = "certs/cira";
pub const CIRA_CA_CERT: &str = "CA_CERT";

/// The secret path of a device: `devices/<guid>`, with the guid lowercased because device
/// guids are stored in canonical lowercase everywhere else.
pub fn device_path(guid: &str) -> String {
    format!("devices/{}", guid.to_ascii_lowercase())
}

/// The credentials of one device. `Debug` shows which are present, never their values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSecrets {
    /// AMT admin digest password.
    pub amt_password: Option<SecretString>,
    /// MEBx password.
    pub mebx_password: Option<SecretString>,
    /// CIRA (APF) password.
    pub mps_password: Option<SecretString>,
}

impl DeviceSecrets {
    /// Picks the known keys out of a stored map; other keys are ignored (Open AMT tools may
    /// store more).
    pub fn from_map(map: &SecretMap) -> Self {
        Self {
            amt_password: map.get(AMT_PASSWORD).cloned(),
            mebx_password: map.get(MEBX_PASSWORD).cloned(),
            mps_password: map.get(MPS_PASSWORD).cloned(),
        }
    }

    /// The map to store; absent credentials are left out rather than stored empty.
    pub fn to_map(&self) -> SecretMap {
        let mut map = SecretMap::new();
        let fields = [
            (AMT_PASSWORD, &self.amt_password),
            (MEBX_PASSWORD, &self.mebx_password),
            (MPS_PASSWORD, &self.mps_password),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                map.insert(key.to_owned(), value.clone());
            }
        }
        map
    }

    /// Reads the credentials of `guid`; `Ok(None)` when the device has none stored.
    pub async fn load(
        store: &(impl SecretStore + ?Sized),
        guid: &str,
    ) -> Result<Option<Self>, SecretError> {
        Ok(store
            .get(&device_path(guid))
            .await?
            .map(|map| Self::from_map(&map)))
    }

    /// Replaces the stored credentials of `guid`.
    pub async fn save(
        &self,
        store: &(impl SecretStore + ?Sized),
        guid: &str,
    ) -> Result<(), SecretError> {
        store.put(&device_path(guid), self.to_map()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn path_is_lowercase() {
        assert_eq!(
            device_path("12345678-9ABC-DEF0-1234-56789ABCDEF0"),
            "devices/12345678-9abc-def0-1234-56789abcdef0"
        );
    }

    #[test]
    fn map_round_trip() {
        let secrets = DeviceSecrets {
            amt_password: Some("amt".into()),
            mebx_password: None,
            mps_password: Some("mps".into()),
        };
        let map = secrets.to_map();
        assert_eq!(map.len(), 2);
        assert_eq!(map[AMT_PASSWORD].expose(), "amt");
        assert_eq!(DeviceSecrets::from_map(&map), secrets);
        let debug = format!("{secrets:?}");
        assert!(
            !debug.contains("amt\"") && !debug.contains("mps\""),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn load_and_save() {
        let store = MemoryStore::new();
        assert_eq!(DeviceSecrets::load(&store, "ABC").await.ok(), Some(None));
        let secrets = DeviceSecrets {
            mps_password: Some("p".into()),
            ..Default::default()
        };
        secrets.save(&store, "ABC").await.expect("save");
        let loaded = DeviceSecrets::load(&store, "abc").await.expect("load");
        assert_eq!(loaded, Some(secrets));
    }
}
