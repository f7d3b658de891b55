//! The shared FortiGate log corpus of this repository (`tests/data/corpus/*.log`: real lines from public sources,
//! every format FortiOS sends), for the parser's tests and benchmarks and for the load generator.

use std::path::{Path, PathBuf};

/// The corpus directory, found from this crate's manifest directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/corpus")
}

/// Every non-empty line of every `.log` file, files in name order, lines in file order.
///
/// # Panics
/// If the corpus cannot be read: the tests and benchmarks that call this are meaningless without it.
pub fn lines() -> Vec<Vec<u8>> {
    let dir = dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus dir {} is readable: {e}", dir.display()))
        .map(|e| e.expect("corpus dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("corpus file {} is readable: {e}", f.display()));
            bytes.split(|&c| c == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect::<Vec<_>>()
        })
        .collect()
}
