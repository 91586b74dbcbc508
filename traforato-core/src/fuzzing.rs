//! Entry points of the fuzz targets (`fuzz/`) into internals they cannot reach otherwise
//! (feature `fuzzing`); not an API.

/// One packet of `bytes` through a socketpair into the agent protocol's decoders (the
/// worker's of the init's events, the init's of the worker's requests); a message that
/// decodes must encode and decode to itself. Panics on a violation.
pub fn agent_packet(bytes: &[u8]) {
    crate::backend::container::fuzz_packet(bytes);
}
