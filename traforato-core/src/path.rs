//! Sandbox paths: absolute, lexically cleaned, never above `/`.

use std::fmt;

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path was empty after trimming.
    #[error("path query parameter is required")]
    Required,
    /// The path did not start with `/`.
    #[error("path must be an absolute path")]
    NotAbsolute,
    /// The path contained a NUL byte.
    #[error("path must not contain NUL bytes")]
    Nul,
}

/// An absolute path inside a sandbox: `//` collapsed, `.` dropped, `..` resolved and clamped
/// at `/`, no trailing slash (except `/` itself). Resolution against the sandbox's real
/// filesystem (symlinks) is the backend's job and must stay inside the sandbox root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxPath(String);

impl SandboxPath {
    /// The root directory.
    pub fn root() -> Self {
        Self("/".to_string())
    }

    /// Normalises a client-supplied path (trimmed first).
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PathError::Required);
        }
        if !raw.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        let mut parts: Vec<&str> = Vec::new();
        for seg in raw.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        Ok(Self::from_components(&parts))
    }

    fn from_components(parts: &[&str]) -> Self {
        if parts.is_empty() {
            return Self::root();
        }
        let mut s = String::new();
        for p in parts {
            s.push('/');
            s.push_str(p);
        }
        Self(s)
    }

    /// The path as text, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The components below `/`, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The last component, or `/` for the root.
    pub fn file_name(&self) -> &str {
        self.components().last().unwrap_or("/")
    }

    /// The parent directory; the root is its own parent.
    pub fn parent(&self) -> Self {
        let parts: Vec<&str> = self.components().collect();
        if parts.is_empty() {
            return Self::root();
        }
        Self::from_components(&parts[..parts.len() - 1])
    }

    /// `self/name`, where `name` is a single component (no `/`, not `.`/`..`).
    pub fn join(&self, name: &str) -> Self {
        debug_assert!(!name.contains('/') && name != "." && name != ".." && !name.is_empty());
        if self.is_root() {
            Self(format!("/{name}"))
        } else {
            Self(format!("{}/{name}", self.0))
        }
    }

    /// The path relative to `/`, e.g. `workspace/a.txt`; empty for the root.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// True when `self` is `other` or below it.
    pub fn starts_with(&self, other: &SandboxPath) -> bool {
        other.is_root() || self.0 == other.0 || self.0.starts_with(&format!("{}/", other.0))
    }
}

impl fmt::Display for SandboxPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let p = |s| SandboxPath::parse(s).unwrap().as_str().to_string();
        assert_eq!(p("/"), "/");
        assert_eq!(p(" /workspace//a/./b/../c/ "), "/workspace/a/c");
        assert_eq!(p("/../x"), "/x");
        assert_eq!(p("/.."), "/");
        assert_eq!(SandboxPath::parse(""), Err(PathError::Required));
        assert_eq!(SandboxPath::parse("rel"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn parent_join_relative() {
        let p = SandboxPath::parse("/a/b").unwrap();
        assert_eq!(p.parent().as_str(), "/a");
        assert_eq!(p.parent().parent().as_str(), "/");
        assert_eq!(p.file_name(), "b");
        assert_eq!(p.join("c").as_str(), "/a/b/c");
        assert_eq!(SandboxPath::root().join("w").as_str(), "/w");
        assert_eq!(p.relative(), "a/b");
        assert!(p.starts_with(&SandboxPath::parse("/a").unwrap()));
        assert!(!SandboxPath::parse("/ab")
            .unwrap()
            .starts_with(&SandboxPath::parse("/a").unwrap()));
    }
}
