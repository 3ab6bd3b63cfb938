//! The Python bindings (`composefs._native.tar_split`).

use std::any::Any;
use std::os::fd::BorrowedFd;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::contract::{LAYER_SPLIT, TAR_ENTRY};
use crate::decompress::Compression;
use crate::fsverity::py::algorithm;
use crate::pybuf::{with_slice, ByteBuf};

use super::Options;

fn fd_arg(fd: i32, what: &str) -> PyResult<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a file descriptor"
        )));
    }
    // SAFETY: the caller keeps the fd open for the duration of the call.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Decompresses, verifies and splits one layer blob; see docs/internals.md.
#[pyfunction]
#[pyo3(signature = (source_fd, compression, objects_fd, algorithm, content_type, secure, threads=0, progress=None))]
#[allow(clippy::too_many_arguments)]
fn split_layer<'py>(
    py: Python<'py>,
    source_fd: i32,
    compression: &str,
    objects_fd: i32,
    algorithm: &str,
    content_type: u64,
    secure: bool,
    threads: usize,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = Options {
        compression: Compression::from_name(compression).map_err(PyValueError::new_err)?,
        algorithm: self::algorithm(algorithm)?,
        content_type,
        secure,
        threads,
    };
    let source = fd_arg(source_fd, "source_fd")?;
    let objects = fd_arg(objects_fd, "objects_fd")?;
    let callback: Option<Py<PyAny>> = progress.map(Bound::unbind);
    let result = py.allow_threads(|| {
        let mut call = |n: u64| -> Result<(), Box<dyn Any + Send>> {
            Python::with_gil(|py| {
                // While we hold the GIL anyway: let Ctrl-C interrupt a long import.
                py.check_signals()?;
                match &callback {
                    Some(cb) => cb.call1(py, (n,)).map(|_| ()),
                    None => Ok(()),
                }
            })
            .map_err(|e| Box::new(e) as Box<dyn Any + Send>)
        };
        let progress: Option<super::Progress<'_>> = if callback.is_some() {
            Some(&mut call)
        } else {
            None
        };
        super::split_layer(source, objects, &opts, progress)
    });
    let r = result?;
    LAYER_SPLIT.build(
        py,
        (
            PyBytes::new(py, &r.stream_file),
            PyBytes::new(py, &r.blob_sha256),
            PyBytes::new(py, &r.tar_sha256),
            r.blob_size,
            r.tar_size,
            r.objects_written,
            r.objects_present,
            r.external_bytes,
            r.inline_bytes,
            r.written_bytes,
        ),
    )
}

/// Parses the tar entries back out of a layer splitstream file.
#[pyfunction]
fn read_entries<'py>(
    py: Python<'py>,
    stream_file: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let buf = ByteBuf::get(stream_file)?;
    let entries = with_slice(py, &buf, super::read_entries)?;
    let opt_bytes = |b: &Option<Vec<u8>>| -> Py<PyAny> {
        match b {
            Some(b) => PyBytes::new(py, b).into_any().unbind(),
            None => py.None(),
        }
    };
    let items = entries
        .iter()
        .map(|e| {
            let xattrs = PyList::new(
                py,
                e.xattrs
                    .iter()
                    .map(|(k, v)| (PyBytes::new(py, k), PyBytes::new(py, v))),
            )?;
            let fields: Vec<Py<PyAny>> = vec![
                PyBytes::new(py, &e.path).into_any().unbind(),
                e.kind.name().into_pyobject(py)?.into_any().unbind(),
                e.mode.into_pyobject(py)?.into_any().unbind(),
                e.uid.into_pyobject(py)?.into_any().unbind(),
                e.gid.into_pyobject(py)?.into_any().unbind(),
                e.mtime.into_pyobject(py)?.into_any().unbind(),
                e.mtime_nsec.into_pyobject(py)?.into_any().unbind(),
                e.size.into_pyobject(py)?.into_any().unbind(),
                opt_bytes(&e.link_target),
                e.rdev.into_pyobject(py)?.into_any().unbind(),
                xattrs.into_any().unbind(),
                opt_bytes(&e.inline),
                opt_bytes(&e.object_id),
            ];
            TAR_ENTRY.make(py, PyTuple::new(py, fields)?)
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(split_layer, m)?)?;
    m.add_function(wrap_pyfunction!(read_entries, m)?)?;
    Ok(())
}
