//! Secrets held in configuration and memory (passwords, keys, tokens, webhook secrets): a type
//! that never shows its value in `Debug`, logs or serialized output.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a set secret prints as.
pub const REDACTED: &str = "***";

/// A secret string (the `secrecy` crate's, zeroed when dropped). `Debug` and `Serialize` give
/// `***` (or `""` when it is empty, so printed configuration says whether one is set); only
/// [`Secret::expose`] gives the value, at the one place that needs it.
///
/// ```
/// use malaka_db::secret::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s:?}"), "\"***\"");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value, for the place that uses it (a signature, a login, a connection).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    fn shown(&self) -> &'static str {
        if self.is_empty() { "" } else { REDACTED }
    }
}

impl Default for Secret {
    fn default() -> Self {
        Self::new(String::new())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// `url` with its password (`scheme://user:PASSWORD@host`) replaced by `***`; anything that is
/// not a URL is returned as it is.
pub fn redact_url_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            if u.set_password(Some(REDACTED)).is_ok() {
                u.to_string()
            } else {
                url.to_owned()
            }
        }
        _ => url.to_owned(),
    }
}

/// `url` cut to `scheme://host[:port]`: what errors, logs and labels may say about a URL whose
/// path or query may hold a secret (chat webhooks put theirs in the path).
pub fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => u.origin().ascii_serialization(),
        _ => "(an invalid URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
        let empty = Secret::default();
        assert_eq!(format!("{empty:?}"), "\"\"");
        assert_eq!(serde_json::to_string(&empty).unwrap(), "\"\"");
        let back: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn urls_lose_their_password_or_their_path() {
        assert_eq!(
            redact_url_password("postgres://app:hunter2@db.example:5432/malaka"),
            "postgres://app:***@db.example:5432/malaka"
        );
        assert_eq!(
            redact_url_password("sqlite:///var/lib/malaka.db"),
            "sqlite:///var/lib/malaka.db"
        );
        assert_eq!(
            origin("https://hooks.example.com/services/T000/B000/XXXX?k=1"),
            "https://hooks.example.com"
        );
        assert_eq!(origin("http://10.0.0.1:8080/x"), "http://10.0.0.1:8080");
        assert_eq!(origin("not a url"), "(an invalid URL)");
    }
}
