//! Native backend of the `composefs` Python package (`composefs._native`).
//!
//! Each module holds one format and has a pure-Python twin of the same name in
//! `python/composefs/_pure/`. The core of every module is plain Rust (tested by
//! `cargo test`); the PyO3 bindings live in a `py` submodule compiled only with the
//! `python` feature, which maturin enables.
//!
//! Layering (a module uses only modules above it in this list, never one below):
//! `error`, `tree` (the model; nothing else of ours), `constants`, `sha256x`, `sha_mb`,
//! `fsverity`, `objects`, `splitstream`, `decompress`, `dumpfile`, `erofs` (`erofs::format` + writer), `mkcomposefs` (C mkcomposefs's reader and writer),
//! `tar_split`, `merge` (layers -> tree -> dumpfile/images), `fs` (directory scanner).

pub mod constants;
pub mod decompress;
pub mod dumpfile;
pub mod erofs;
pub mod error;
pub mod fs;
pub mod fsverity;
pub mod merge;
pub mod mkcomposefs;
pub mod objects;
pub mod sha256x;
pub mod sha_mb;
pub mod splitstream;
pub mod tar_split;
pub mod tree;

#[cfg(feature = "python")]
mod contract;
#[cfg(feature = "python")]
mod pybuf;

#[cfg(feature = "python")]
mod python {
    use pyo3::prelude::*;

    /// Adds `sub` as attribute `name` of `parent` and registers it in `sys.modules`
    /// so that `import composefs._native.<name>` works too (as pyca/cryptography does).
    pub(crate) fn add_submodule(
        parent: &Bound<'_, PyModule>,
        name: &str,
        build: impl FnOnce(&Bound<'_, PyModule>) -> PyResult<()>,
    ) -> PyResult<()> {
        let py = parent.py();
        let sub = PyModule::new(py, name)?;
        build(&sub)?;
        parent.add_submodule(&sub)?;
        // The attribute is `name`; the module itself gets its dotted name, as if imported.
        let full = format!("composefs._native.{name}");
        sub.setattr("__name__", &full)?;
        py.import("sys")?.getattr("modules")?.set_item(full, &sub)?;
        Ok(())
    }

    #[pymodule]
    #[pyo3(name = "_native")]
    fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        add_submodule(m, "fsverity", crate::fsverity::py::register)?;
        add_submodule(m, "splitstream", crate::splitstream::py::register)?;
        add_submodule(m, "tar_split", crate::tar_split::py::register)?;
        add_submodule(m, "merge", crate::merge::py::register)?;
        add_submodule(m, "erofs", crate::erofs::py::register)?;
        add_submodule(m, "fs", crate::fs::py::register)?;
        add_submodule(m, "constants", crate::constants::py::register)?;
        add_submodule(m, "erofs_format", crate::erofs::format::py::register)?;
        Ok(())
    }
}
