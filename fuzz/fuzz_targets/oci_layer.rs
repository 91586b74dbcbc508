//! Fuzz target: the OCI layer unpacker (tar, gzip, zstd) on hostile archives. Nothing
//! panics, and nothing is ever written outside the layer's directory: a sibling directory
//! stays empty and no path outside is touched through `..`, absolute names or symlinks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traforato_core::backend::container::oci::layer::{unpack, Budget, Mapping};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let blob = dir.path().join("blob");
    std::fs::write(&blob, data).expect("write blob");
    let dest = dir.path().join("layer");
    let beside = dir.path().join("beside");
    std::fs::create_dir(&dest).expect("layer dir");
    std::fs::create_dir(&beside).expect("sibling dir");
    // Root maps ids to a range as the worker does; others keep their own.
    let mapping = Mapping {
        uid_base: if rustix::process::geteuid().is_root() {
            100_000
        } else {
            0
        },
        count: 65_536,
    };
    let budget = Budget {
        max_bytes: 1 << 20,
        max_entries: 1_000,
    };
    let _ = unpack(&blob, &dest, mapping, budget);
    let escaped: Vec<_> = std::fs::read_dir(&beside).expect("sibling").collect();
    assert!(escaped.is_empty(), "written beside the layer: {escaped:?}");
    let top: Vec<_> = std::fs::read_dir(dir.path())
        .expect("temp dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(top.len(), 3, "written next to the layer: {top:?}");
});
