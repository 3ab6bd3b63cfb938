//! The composefs EROFS image writer (V0, V1 and V2). Pure-Python twin:
//! `python/composefs/_pure/erofs.py`.

#[cfg(feature = "python")]
pub(crate) mod py {
    use pyo3::prelude::*;

    pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
    }
}
