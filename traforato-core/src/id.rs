//! Identifiers: component ids, local VM ids, sandbox ids and exec ids, parsed strictly once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A component id was empty.
    #[error("id is required")]
    Empty,
    /// A component id contained `-`, which separates sandbox id parts.
    #[error("id {0:?} must not contain '-'")]
    ContainsDash(String),
    /// A component id contained characters outside `[A-Za-z0-9_]`.
    #[error("id {0:?} contains unsupported characters")]
    UnsupportedCharacters(String),
    /// A local VM id was not a canonical lowercase UUIDv4.
    #[error("invalid local_vm_id")]
    InvalidLocalVmId,
    /// A sandbox id did not parse.
    #[error("malformed sandbox_id")]
    MalformedSandboxId,
    /// An exec id did not parse.
    #[error("malformed exec_id")]
    MalformedExecId,
}

/// A broker or worker id: non-empty, `[A-Za-z0-9_]+`, no `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ComponentId(String);

impl ComponentId {
    /// Validates a component id. Surrounding whitespace is trimmed, as configuration values are.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let id = raw.trim();
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.contains('-') {
            return Err(IdError::ContainsDash(id.to_string()));
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(IdError::UnsupportedCharacters(id.to_string()));
        }
        Ok(Self(id.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ComponentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for ComponentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The id of one VM (sandbox instance) on a worker: a canonical lowercase UUIDv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalVmId(uuid::Uuid);

impl LocalVmId {
    /// A fresh random id from the OS CSPRNG.
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Builds an id from 16 bytes of entropy, setting the version and variant bits.
    pub fn from_entropy(bytes: [u8; 16]) -> Self {
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// Parses a canonical UUIDv4: 36 lowercase hex characters with hyphens, version 4,
    /// RFC 4122 variant. Nothing is trimmed.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.len() != 36 {
            return Err(IdError::InvalidLocalVmId);
        }
        let uuid = uuid::Uuid::try_parse(raw).map_err(|_| IdError::InvalidLocalVmId)?;
        if uuid.get_version_num() != 4 || uuid.get_variant() != uuid::Variant::RFC4122 {
            return Err(IdError::InvalidLocalVmId);
        }
        if uuid.hyphenated().to_string() != raw {
            return Err(IdError::InvalidLocalVmId);
        }
        Ok(Self(uuid))
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl fmt::Display for LocalVmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for LocalVmId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for LocalVmId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LocalVmId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A sandbox id: `sbx-<broker_id>-<worker_id>-<local_vm_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId {
    broker: ComponentId,
    worker: ComponentId,
    vm: LocalVmId,
}

impl SandboxId {
    /// Builds the id of a VM on `worker`, placed by `broker`.
    pub fn new(broker: ComponentId, worker: ComponentId, vm: LocalVmId) -> Self {
        Self { broker, worker, vm }
    }

    /// Parses an id strictly: no whitespace anywhere, valid components, canonical UUIDv4.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let rest = raw
            .strip_prefix("sbx-")
            .ok_or(IdError::MalformedSandboxId)?;
        let mut parts = rest.splitn(3, '-');
        let (Some(b), Some(w), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(IdError::MalformedSandboxId);
        };
        let strict = |s: &str| -> Result<ComponentId, IdError> {
            if s.trim() != s {
                return Err(IdError::MalformedSandboxId);
            }
            ComponentId::parse(s).map_err(|_| IdError::MalformedSandboxId)
        };
        let broker = strict(b)?;
        let worker = strict(w)?;
        let vm = LocalVmId::parse(v).map_err(|_| IdError::MalformedSandboxId)?;
        Ok(Self { broker, worker, vm })
    }

    /// The broker that placed the sandbox.
    pub fn broker_id(&self) -> &ComponentId {
        &self.broker
    }

    /// The worker that owns the sandbox.
    pub fn worker_id(&self) -> &ComponentId {
        &self.worker
    }

    /// The VM behind the sandbox.
    pub fn local_vm_id(&self) -> LocalVmId {
        self.vm
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sbx-{}-{}-{}", self.broker, self.worker, self.vm)
    }
}

impl FromStr for SandboxId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SandboxId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SandboxId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An exec id: `exec_` followed by a 26-character ULID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecId(ulid::Ulid);

impl ExecId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }

    /// Parses `exec_<ULID>`.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let rest = raw.strip_prefix("exec_").ok_or(IdError::MalformedExecId)?;
        if rest.len() != 26 {
            return Err(IdError::MalformedExecId);
        }
        let ulid = ulid::Ulid::from_string(rest).map_err(|_| IdError::MalformedExecId)?;
        Ok(Self(ulid))
    }
}

impl Default for ExecId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exec_{}", self.0)
    }
}

impl Serialize for ExecId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExecId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sbx-broker_local-worker_local-550e8400-e29b-41d4-a716-446655440000";

    #[test]
    fn parses_canonical_sandbox_id() {
        let id = SandboxId::parse(ID).unwrap();
        assert_eq!(id.broker_id().as_str(), "broker_local");
        assert_eq!(id.worker_id().as_str(), "worker_local");
        assert_eq!(
            id.local_vm_id().to_string(),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        assert_eq!(id.to_string(), ID);
    }

    #[test]
    fn builds_from_entropy_and_round_trips() {
        let vm = LocalVmId::from_entropy([b'x'; 16]);
        let id = SandboxId::new(
            ComponentId::parse("broker_local").unwrap(),
            ComponentId::parse("worker_local").unwrap(),
            vm,
        );
        let text = id.to_string();
        assert!(text.starts_with("sbx-broker_local-worker_local-"));
        assert_eq!(SandboxId::parse(&text).unwrap(), id);
    }

    #[test]
    fn rejects_malformed_sandbox_ids() {
        for bad in [
            "sbx-broker_local-worker_local-not-a-uuid",
            "sbx_7f4e8d1c2b3a4f5e6d7c8b9a0f1e2d3c_01HZY3J5K6M7N8P9Q0R1S2T3V4",
            "broker_local-worker_local-550e8400-e29b-41d4-a716-446655440000",
            "sbx-broker_local-worker_local-550e8400-e29b-11d4-a716-446655440000",
            "sbx-broker_local-worker_local-550e8400e29b41d4a716446655440000",
            "sbx- broker_local-worker_local-550e8400-e29b-41d4-a716-446655440000",
            "sbx-broker_local-worker_local-550E8400-E29B-41D4-A716-446655440000",
            "sbx-broker_local-worker_local-550e8400-e29b-41d4-c716-446655440000",
            "sbx-broker_local-550e8400-e29b-41d4-a716-446655440000",
            "sbx-",
            "",
        ] {
            assert_eq!(
                SandboxId::parse(bad),
                Err(IdError::MalformedSandboxId),
                "{bad}"
            );
        }
    }

    #[test]
    fn component_ids() {
        assert_eq!(
            ComponentId::parse("worker-local"),
            Err(IdError::ContainsDash("worker-local".into()))
        );
        assert_eq!(ComponentId::parse("  "), Err(IdError::Empty));
        assert!(matches!(
            ComponentId::parse("a.b"),
            Err(IdError::UnsupportedCharacters(_))
        ));
        assert_eq!(ComponentId::parse(" ok_1 ").unwrap().as_str(), "ok_1");
    }

    #[test]
    fn exec_ids_round_trip() {
        let id = ExecId::new();
        let text = id.to_string();
        assert!(text.starts_with("exec_") && text.len() == 31);
        assert_eq!(ExecId::parse(&text).unwrap(), id);
        assert!(ExecId::parse("exec_nope").is_err());
    }
}
