//! The one error type of the crate's fallible APIs, and its one conversion to a Python
//! exception (`impl From<Error> for PyErr`): every binding raises through it.
//!
//! * [`Error::Invalid`]: malformed input, `ValueError(message)`;
//! * [`Error::Io`]: a system call failed, `OSError(errno, strerror)`;
//! * [`Error::IoPath`]: a system call on a named file failed,
//!   `OSError(errno, strerror, filename)`;
//! * [`Error::Callback`]: a caller's callback failed; its exception is re-raised unchanged.

use std::any::Any;
use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// Malformed input (a `ValueError`), with the message of composefs-rs or of the parser.
    Invalid(String),
    /// A system call failed (an `OSError`).
    Io(io::Error),
    /// A system call on `path` failed (an `OSError` naming the file).
    IoPath { path: Vec<u8>, err: io::Error },
    /// A callback failed; what it raised is carried through unchanged.
    Callback(Box<dyn Any + Send>),
}

/// The result type of the crate's fallible APIs.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::IoPath`].
    pub fn at(path: &[u8], err: io::Error) -> Self {
        Self::IoPath {
            path: path.to_vec(),
            err,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(m) => f.write_str(m),
            Self::Io(e) => write!(f, "{e}"),
            Self::IoPath { path, err } => {
                write!(f, "{}: {err}", String::from_utf8_lossy(path))
            }
            Self::Callback(_) => f.write_str("progress callback failed"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Self::Invalid(m)
    }
}

#[cfg(feature = "python")]
impl From<Error> for pyo3::PyErr {
    fn from(e: Error) -> Self {
        use pyo3::exceptions::{PyOSError, PyValueError};
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        match e {
            Error::Invalid(m) => PyValueError::new_err(m),
            Error::Io(err) => crate::pybuf::os_error(err),
            Error::IoPath { path, err } => match err.raw_os_error() {
                Some(errno) => {
                    let name = OsStr::from_bytes(&path).to_os_string();
                    PyOSError::new_err((errno, crate::pybuf::strerror(errno), name))
                }
                None => PyOSError::new_err(format!("{}: {err}", String::from_utf8_lossy(&path))),
            },
            Error::Callback(b) => match b.downcast::<pyo3::PyErr>() {
                Ok(e) => *e,
                Err(_) => PyOSError::new_err("progress callback failed"),
            },
        }
    }
}
