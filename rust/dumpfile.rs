//! The composefs dumpfile format (composefs-dump(5)): writer and parser.
//! Pure-Python twin: `python/composefs/_pure/dumpfile.py`.

use crate::tree::FileSystem;

/// Parses a dumpfile into a tree (composefs-rs `dumpfile_to_filesystem` rules).
pub fn parse(_text: &[u8]) -> Result<FileSystem, String> {
    Err("dumpfile parser not implemented yet".to_owned())
}

/// Writes a tree as a dumpfile (composefs-rs `write_dumpfile`). With `raw_modes` false,
/// MODE is `type | (mode & 0o7777)` instead of `mode | type`.
pub fn write(_fs: &FileSystem, _raw_modes: bool) -> Vec<u8> {
    Vec::new()
}
