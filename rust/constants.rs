//! Format facts shared by the modules, stated once, with the same names and values as
//! `python/composefs/constants.py` (exposed as `composefs._native.constants`; a test compares
//! the two). The EROFS on-disk layout is in `erofs/format.rs`.

use crate::tree::XattrFiltering;

/// Regular-file bodies of at most this many bytes are stored inline in layer splitstreams and
/// composefs images; larger ones are objects (composefs-rs `INLINE_CONTENT_MAX_V0`).
pub const INLINE_CONTENT_MAX: u64 = 64;

/// EROFS image formats: 0 and 1 are C mkcomposefs's, 2 composefs-rs's legacy layout.
pub const EROFS_VERSIONS: [u8; 3] = [0, 1, 2];
/// The format a new repository builds (composefs-rs 0.9 default).
pub const DEFAULT_EROFS_VERSION: u8 = 1;

/// Xattr filtering of the OCI transform: only `security.capability`, or also `user.*`.
pub const ALLOWLIST_ONLY: &str = "allowlist-only";
pub const KEEP_USER_XATTRS: &str = "keep-user-xattrs";
pub const XATTR_MODES: [&str; 2] = [ALLOWLIST_ONLY, KEEP_USER_XATTRS];

/// fs-verity algorithm numbers (`FS_VERITY_HASH_ALG_*`), also the splitstream header's.
pub const ALGORITHM_IDS: [(&str, u8); 2] = [("sha256", 1), ("sha512", 2)];

/// Splitstream content types: an 8-byte ASCII tag read as a little-endian u64.
pub const LAYER_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"ocilayer");
pub const CONFIG_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"ociconfg");
pub const MANIFEST_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"ocimanif");
pub const BLOB_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"oci_blob");
pub const INDEX_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"ociindx\0");

/// The [`XattrFiltering`] a mode name (one of [`XATTR_MODES`]) stands for.
pub fn xattr_filtering(name: &str) -> Result<XattrFiltering, String> {
    match name {
        ALLOWLIST_ONLY => Ok(XattrFiltering::AllowlistOnly),
        KEEP_USER_XATTRS => Ok(XattrFiltering::KeepUserXattrs),
        _ => Err(format!(
            "invalid xattr filtering mode {name:?} (expected {ALLOWLIST_ONLY:?} or {KEEP_USER_XATTRS:?})"
        )),
    }
}

#[cfg(feature = "python")]
pub(crate) mod py {
    use pyo3::prelude::*;
    use pyo3::types::{PyDict, PyTuple};

    /// `composefs._native.constants`: the constants above, by name.
    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        use super::*;
        let py = m.py();
        m.add("INLINE_CONTENT_MAX", INLINE_CONTENT_MAX)?;
        m.add("EROFS_VERSIONS", PyTuple::new(py, EROFS_VERSIONS)?)?;
        m.add("DEFAULT_EROFS_VERSION", DEFAULT_EROFS_VERSION)?;
        m.add("ALLOWLIST_ONLY", ALLOWLIST_ONLY)?;
        m.add("KEEP_USER_XATTRS", KEEP_USER_XATTRS)?;
        m.add("XATTR_MODES", PyTuple::new(py, XATTR_MODES)?)?;
        let ids = PyDict::new(py);
        for (name, id) in ALGORITHM_IDS {
            ids.set_item(name, id)?;
        }
        m.add("ALGORITHM_IDS", ids)?;
        m.add("LAYER_CONTENT_TYPE", LAYER_CONTENT_TYPE)?;
        m.add("CONFIG_CONTENT_TYPE", CONFIG_CONTENT_TYPE)?;
        m.add("MANIFEST_CONTENT_TYPE", MANIFEST_CONTENT_TYPE)?;
        m.add("BLOB_CONTENT_TYPE", BLOB_CONTENT_TYPE)?;
        m.add("INDEX_CONTENT_TYPE", INDEX_CONTENT_TYPE)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_modes() {
        assert_eq!(
            xattr_filtering(ALLOWLIST_ONLY),
            Ok(XattrFiltering::AllowlistOnly)
        );
        assert_eq!(
            xattr_filtering(KEEP_USER_XATTRS),
            Ok(XattrFiltering::KeepUserXattrs)
        );
        assert_eq!(
            xattr_filtering("all").unwrap_err(),
            "invalid xattr filtering mode \"all\" (expected \"allowlist-only\" or \"keep-user-xattrs\")"
        );
    }

    #[test]
    fn algorithm_ids() {
        for (name, id) in ALGORITHM_IDS {
            assert_eq!(
                crate::fsverity::Algorithm::from_name(name)
                    .unwrap()
                    .kernel_id(),
                id
            );
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(LAYER_CONTENT_TYPE, 0x7265_7961_6c69_636f);
        assert_eq!(INDEX_CONTENT_TYPE.to_le_bytes(), *b"ociindx\0");
    }
}
