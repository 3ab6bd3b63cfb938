//! Helpers shared by the Python bindings: byte input from any buffer-protocol object, and
//! `OSError` from `std::io::Error`.

use pyo3::exceptions::PyOSError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};

/// Inputs up to this size are processed without releasing the GIL.
pub(crate) const SMALL: usize = 16 << 10;
/// Mutable buffers are copied (and then processed without the GIL) this much at a time.
const PIECE: usize = 1 << 20;

/// A contiguous byte view of a Python object (`PyObject_GetBuffer` with `PyBUF_SIMPLE`), like
/// the argument parsing of `hashlib`: bytes, bytearray, memoryview, array, mmap, ...
///
/// The view keeps the exporter alive and, for resizable objects such as `bytearray`, locked
/// against resizing until it is dropped.
pub(crate) struct ByteBuf {
    view: Box<ffi::Py_buffer>,
    /// True when the content cannot change while we hold the view (a `bytes` object, directly
    /// or through a memoryview).
    immutable: bool,
}

impl ByteBuf {
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = Box::new(ffi::Py_buffer::new());
        // SAFETY: `obj` is a valid object and `view` a valid out pointer; the GIL is held.
        let r = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
        if r != 0 {
            // CPython's own error: "a bytes-like object is required, not 'str'", or a
            // BufferError for a non-contiguous view.
            return Err(PyErr::fetch(obj.py()));
        }
        let immutable = obj.is_instance_of::<PyBytes>()
            || (obj.is_instance_of::<PyMemoryView>()
                && obj
                    .getattr("obj")
                    .is_ok_and(|base| base.is_instance_of::<PyBytes>()));
        Ok(Self { view, immutable })
    }

    pub(crate) fn len(&self) -> usize {
        self.view.len as usize
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.view.len == 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: PyBUF_SIMPLE gives `len` contiguous bytes at `buf`, valid while the view is
        // held.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }
}

impl Drop for ByteBuf {
    fn drop(&mut self) {
        // SAFETY: the view was filled by PyObject_GetBuffer and is released once, with the
        // GIL held.
        Python::with_gil(|_| unsafe { ffi::PyBuffer_Release(&mut *self.view) });
    }
}

/// Calls `f` on the content of `buf`, in order, in one or more pieces. Large inputs are
/// processed with the GIL released: in place when the content is immutable, otherwise copied
/// piece by piece (so that another thread mutating a `bytearray` cannot race with us).
pub(crate) fn for_each_piece<F>(py: Python<'_>, buf: &ByteBuf, mut f: F)
where
    F: FnMut(&[u8]) + Send,
{
    let data = buf.as_slice();
    if data.len() <= SMALL {
        f(data);
    } else if buf.immutable {
        py.allow_threads(|| f(data));
    } else {
        let mut copy = Vec::with_capacity(PIECE.min(data.len()));
        for piece in data.chunks(PIECE) {
            copy.clear();
            copy.extend_from_slice(piece);
            let copy = &copy;
            py.allow_threads(|| f(copy));
        }
    }
}

/// Runs `f` on the whole content of `buf` with the GIL released (for large inputs), copying
/// it first unless it is immutable.
pub(crate) fn with_slice<F, R>(py: Python<'_>, buf: &ByteBuf, f: F) -> R
where
    F: FnOnce(&[u8]) -> R + Send,
    R: Send,
{
    let data = buf.as_slice();
    if data.len() <= SMALL {
        f(data)
    } else if buf.immutable {
        py.allow_threads(|| f(data))
    } else {
        let copy = data.to_vec();
        py.allow_threads(|| f(&copy))
    }
}

/// `OSError(errno, strerror)` for an OS error, `OSError(message)` otherwise.
pub(crate) fn os_error(err: std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, strerror(errno))),
        None => PyOSError::new_err(err.to_string()),
    }
}

pub(crate) fn strerror(errno: i32) -> String {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: the XSI strerror_r writes a NUL-terminated string into `buf`.
    let r = unsafe { libc::strerror_r(errno, buf.as_mut_ptr(), buf.len()) };
    if r != 0 {
        return format!("Unknown error {errno}");
    }
    // SAFETY: NUL-terminated on success.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
