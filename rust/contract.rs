//! The named results of the backend contract, defined once in Python
//! (`composefs._contract`) and built here: the classes are imported on first use and cached.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyTuple, PyType};
use std::sync::OnceLock;

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

    /// An instance from a tuple of its fields without the Python-level `__new__` of the
    /// NamedTuple: `tuple.__new__(cls, fields)` (what `cls._make` does), through the C slot,
    /// for the many entries of `read_entries`.
    pub(crate) fn make<'py>(
        &self,
        py: Python<'py>,
        fields: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cls = self.get(py)?;
        let args = PyTuple::new(py, [fields])?;
        let new = tuple_new();
        // SAFETY: `tuple`'s tp_new with a subclass of tuple and an args tuple holding one
        // iterable is `tuple.__new__(cls, fields)`; it returns a new reference or NULL with
        // an exception set.
        unsafe {
            let obj = new(cls.as_type_ptr(), args.as_ptr(), std::ptr::null_mut());
            Bound::from_owned_ptr_or_err(py, obj)
        }
    }
}

/// The `tp_new` slot of `tuple` (looked up once).
fn tuple_new() -> ffi::newfunc {
    static NEW: OnceLock<usize> = OnceLock::new();
    let addr = *NEW.get_or_init(|| {
        // SAFETY: PyType_GetSlot accepts static types since Python 3.10 (abi3-py311 here);
        // tuple always has a tp_new.
        let slot = unsafe {
            ffi::PyType_GetSlot(std::ptr::addr_of_mut!(ffi::PyTuple_Type), ffi::Py_tp_new)
        };
        slot as usize
    });
    // SAFETY: the address is tuple's tp_new, a `newfunc`, valid for the process lifetime.
    unsafe { std::mem::transmute::<usize, ffi::newfunc>(addr) }
}

pub(crate) static VERITY_MEASUREMENT: Class = Class::new("VerityMeasurement");
pub(crate) static SPLITSTREAM_CONTENTS: Class = Class::new("SplitstreamContents");
pub(crate) static LAYER_SPLIT: Class = Class::new("LayerSplit");
pub(crate) static TAR_ENTRY: Class = Class::new("TarEntry");
