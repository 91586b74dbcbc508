//! OCI image references (`alpine:3.20`, `ghcr.io/org/img:tag`, `repo@sha256:…`) parsed and
//! normalised the way Docker does it (Docker Hub's `docker.io/library/…`, `:latest`), and
//! content digests.

use std::fmt;

/// The registry of references that name none.
pub const DOCKER_HUB: &str = "docker.io";

/// The tag of references that name neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Why a reference or digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty, or with characters no reference has.
    #[error("invalid image reference {0:?}")]
    Invalid(String),
    /// A repository path with upper case or bad separators.
    #[error("invalid repository name {0:?}: lower case letters, digits and . _ - / only")]
    Repository(String),
    /// A tag that is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid tag {0:?}")]
    Tag(String),
    /// A digest that is not `sha256:` and 64 lower-case hex digits.
    #[error("invalid digest {0:?}: only sha256 digests are supported")]
    Digest(String),
}

/// A `sha256:<64 hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`.
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        let invalid = || ReferenceError::Digest(raw.to_string());
        let hex = raw.strip_prefix("sha256:").ok_or_else(invalid)?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid());
        }
        Ok(Self {
            hex: hex.to_string(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = Hasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The 64 hex digits (a file name in the content store).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Computes a [`Digest`] of bytes fed in pieces.
pub struct Hasher(ring::digest::Context);

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher(sha256)")
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// An empty hash.
    pub fn new() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let hex = self
            .0
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Digest { hex }
    }
}

/// A normalised image reference: registry, repository, and a tag or a digest (or both).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`...
    pub registry: String,
    /// `library/alpine`, `org/img`...
    pub repository: String,
    /// The tag; `latest` when the reference named neither a tag nor a digest.
    pub tag: Option<String>,
    /// The digest, when the reference pins one.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@digest]`. The first component is a registry when
    /// it has a `.` or a `:` or is `localhost`; otherwise the registry is Docker Hub, where a
    /// one-component repository is under `library/`. `index.docker.io` is Docker Hub.
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        let text = raw.trim();
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::Invalid(raw.to_string()));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest)?)),
            None => (text, None),
        };
        // A tag follows the last `:` after the last `/` (a registry port comes before it).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(ReferenceError::Invalid(raw.to_string()));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        check_repository(&repository)?;
        let tag = match tag {
            Some(tag) => {
                check_tag(tag)?;
                Some(tag.to_string())
            }
            None if digest.is_none() => Some(DEFAULT_TAG.to_string()),
            None => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl fmt::Display for Reference {
    /// The normalised form: `docker.io/library/alpine:3.20`, `ghcr.io/o/i@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Path components of lower-case letters and digits, joined by `.`, `_`, `__` or runs of `-`.
fn check_repository(repository: &str) -> Result<(), ReferenceError> {
    let invalid = || ReferenceError::Repository(repository.to_string());
    if repository.is_empty() || repository.len() > 255 {
        return Err(invalid());
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(invalid());
        }
        if !bytes
            .iter()
            .all(|&b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid());
        }
        if component.contains("..")
            || component.contains("___")
            || component.contains("._")
            || component.contains("_.")
        {
            return Err(invalid());
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || matches!(b, b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ReferenceError::Tag(tag.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7";

    fn norm(raw: &str) -> String {
        Reference::parse(raw).unwrap().to_string()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(
            norm("python:3.12-slim"),
            "docker.io/library/python:3.12-slim"
        );
        assert_eq!(norm("org/img"), "docker.io/org/img:latest");
        assert_eq!(
            norm("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(norm(" docker.io/alpine:3 "), "docker.io/library/alpine:3");
    }

    #[test]
    fn registries_ports_and_digests() {
        assert_eq!(norm("ghcr.io/org/img:tag"), "ghcr.io/org/img:tag");
        assert_eq!(norm("localhost/img"), "localhost/img:latest");
        let r = Reference::parse("127.0.0.1:5000/team/app:v1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1.2"))
        );
        assert_eq!(r.manifest_ref(), "v1.2");
        let r = Reference::parse(&format!("127.0.0.1:5000/app@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/app@sha256:{HEX}"));
        let r = Reference::parse(&format!("alpine:3.20@sha256:{HEX}")).unwrap();
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/alpine:3.20@sha256:{HEX}")
        );
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "  ",
            "Alpine",
            "a b",
            "alpine:",
            "alpine:-x",
            "org//img",
            "img_",
            "a..b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Reference::parse("alpine@sha256:abc"),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("alpine@sha512:{HEX}")),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("UPPER/case"),
            Err(ReferenceError::Repository(_))
        ));
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        let mut h = Hasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), d);
        assert!(Digest::parse(&format!("sha256:{}", HEX.to_uppercase())).is_err());
    }
}
