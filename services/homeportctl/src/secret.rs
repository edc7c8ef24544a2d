//! Secret values (bearer token, device passwords) and reading them from files.

use std::fmt;
use std::path::Path;

use anyhow::Context as _;

/// A token or password. `Debug` prints `***`, so the parsed command line can be logged or
/// dumped without leaking it.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// The value itself; call it only where the value is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_exposed(self) -> String {
        self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A file's bytes without one trailing `\n`, which editors and `echo` add but nobody means
/// as part of a secret. Exactly what mps-command trims from its HS256 secret file, so a token
/// minted from the same file verifies.
pub fn read_file_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(bytes)
}

/// A password from `file` if given, else from the environment variable `env`, else empty
/// (the API treats an empty password as "not provided"). Never taken from argv, where other
/// local users could read it in the process list.
pub fn password(file: Option<&Path>, env: &str) -> anyhow::Result<Secret> {
    match file {
        Some(path) => {
            let bytes = read_file_bytes(path)?;
            String::from_utf8(bytes)
                .map(Secret)
                .with_context(|| format!("{} is not UTF-8", path.display()))
        }
        None => Ok(Secret(std::env::var(env).unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        assert_eq!(format!("{:?}", Secret::from("hunter2".to_string())), "***");
    }

    #[test]
    fn one_trailing_newline_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("homeportctl-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (content, expected) in [
            (&b"abc\n"[..], &b"abc"[..]),
            (b"abc\r\n", b"abc\r"),
            (b"abc\n\n", b"abc\n"),
            (b"abc", b"abc"),
        ] {
            let path = dir.join("s");
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_file_bytes(&path).unwrap(), expected);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
