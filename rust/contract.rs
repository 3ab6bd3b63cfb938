//! The named results of the backend contract, defined once in Python
//! (`composefs._contract`) and built here: the classes are imported on first use and cached.

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyTuple, PyType};

/// One NamedTuple class of `composefs._contract`.
pub(crate) struct Class {
    name: &'static str,
    cell: GILOnceCell<Py<PyType>>,
}

impl Class {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            cell: GILOnceCell::new(),
        }
    }

    /// The class object.
    pub(crate) fn get<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyType>> {
        self.cell.import(py, "composefs._contract", self.name)
    }

    /// An instance from its fields, in order (`cls(*fields)`).
    pub(crate) fn build<'py>(
        &self,
        py: Python<'py>,
        fields: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.get(py)?.call1(fields)
    }

    /// An instance from a tuple of its fields, without the Python-level `__new__` of the
    /// NamedTuple: `tuple.__new__(cls, fields)` (what `cls._make` does, for many instances).
    pub(crate) fn make<'py>(
        &self,
        py: Python<'py>,
        fields: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        static TUPLE_NEW: GILOnceCell<Py<PyAny>> = GILOnceCell::new();
        let new = TUPLE_NEW.get_or_try_init(py, || {
            py.get_type::<PyTuple>().getattr("__new__").map(Bound::unbind)
        })?;
        new.bind(py).call1((self.get(py)?, fields))
    }
}

pub(crate) static VERITY_MEASUREMENT: Class = Class::new("VerityMeasurement");
pub(crate) static SPLITSTREAM_CONTENTS: Class = Class::new("SplitstreamContents");
pub(crate) static LAYER_SPLIT: Class = Class::new("LayerSplit");
pub(crate) static TAR_ENTRY: Class = Class::new("TarEntry");
