//! The composefs EROFS image writer (V0, V1 and V2), byte-identical to composefs-rs 0.9
//! (`erofs::writer`). Pure-Python twin: `python/composefs/_pure/erofs.py`.
//!
//! The format notes are in the project's spec (erofs-image.md, section 3). In short:
//!
//! * V0 and V1 ("epoch 1", the layout of C `mkcomposefs`): inodes numbered breadth-first, 256
//!   whiteout stubs (`00`..`ff`) in the root, compact inodes where they fit, user whiteouts
//!   escaped into regular files carrying overlay xattrs, the shared xattr table after the
//!   inodes in descending key order.
//! * V2 (composefs-rs's original layout): inodes numbered depth-first, always extended inodes,
//!   no stubs, no escaping of whiteouts, the shared xattr table in ascending order.
//!
//! The writer works in three steps: collect the inodes (with their xattrs, directory entries
//! and data decisions), compute every offset in one arithmetic pass, then fill a zeroed buffer
//! of the final size (the padding is already there).

pub mod format;
pub mod limits;
mod writer;

pub use writer::{mkfs, write, xxh32};

use crate::constants::EROFS_VERSIONS;

/// `version` as a supported EROFS format version, or the error every entry point reports.
pub fn check_version(version: i64) -> Result<u8, String> {
    u8::try_from(version)
        .ok()
        .filter(|v| EROFS_VERSIONS.contains(v))
        .ok_or_else(|| format!("unsupported EROFS format version {version} (expected 0, 1 or 2)"))
}

#[cfg(feature = "python")]
pub(crate) mod py {
    use crate::error::Error;
    use crate::pybuf::{with_slice, ByteBuf, SMALL};
    use pyo3::prelude::*;
    use pyo3::types::PyBytes;

    /// Parses a dumpfile and returns the EROFS image of format `version` (0, 1 or 2).
    #[pyfunction]
    fn mkfs<'py>(
        py: Python<'py>,
        dumpfile: &Bound<'py, PyAny>,
        version: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let version = super::check_version(version).map_err(Error::Invalid)?;
        let buf = ByteBuf::get(dumpfile)?;
        // The image is at least 4 KiB even for a tiny dumpfile: always run without the GIL.
        let image = if buf.len() <= SMALL {
            let copy = buf.as_slice().to_vec();
            py.allow_threads(|| super::mkfs(&copy, version))
        } else {
            with_slice(py, &buf, |data| super::mkfs(data, version))
        }
        .map_err(Error::Invalid)?;
        Ok(PyBytes::new(py, &image))
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(mkfs, m)?)?;
        m.add_function(wrap_pyfunction!(crate::mkcomposefs::py::mkcomposefs, m)?)
    }
}
