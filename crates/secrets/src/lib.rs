//! Secret storage for Homeport: one [`SecretStore`] trait with a local encrypted file backend
//! (the embedded default) and a HashiCorp Vault KV v2 backend (production).
//!
//! Paths mirror the Open AMT Vault layout (`devices/<guid>` holds `AMT_PASSWORD`,
//! `MEBX_PASSWORD` and `MPS_PASSWORD`), so a Vault shared with Open AMT keeps working.
//!
//! **Invariant:** secret values never appear in `Debug`/`Display` output or in error messages.

mod device;
mod error;
mod local;
mod memory;
mod secret;
mod store;
#[cfg(feature = "vault")]
mod vault;

pub use device::{
    device_path, DeviceSecrets, AMT_PASSWORD, AMT_USERNAME, CIRA_CA_CERT, CIRA_CERTS_PATH,
    MEBX_PASSWORD, MPS_CERTS_PATH, MPS_PASSWORD,
};
pub use error::SecretError;
pub use local::{LocalFileConfig, LocalFileStore};
pub use memory::MemoryStore;
pub use secret::{SecretMap, SecretString};
pub use store::{validate_path, DynSecretStore, SecretStore};
#[cfg(feature = "vault")]
pub use vault::{VaultConfig, VaultStore};
