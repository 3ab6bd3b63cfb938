//! Writing objects into a repository's `objects/` directory, as composefs-rs 0.9's streaming
//! path does (`create_object_tmpfile_impl`, `finalize_object_tmpfile_impl`,
//! `link_tmpfile_as_object`):
//!
//! * the content goes to an `O_TMPFILE` in `objects/` (mode 0644 & ~umask), or, where the
//!   filesystem has no `O_TMPFILE` (`EOPNOTSUPP`), to `objects/.tmp-object-<12 alnum>`;
//! * its fs-verity digest is computed while it is written (our fast [`Hasher`]);
//! * the file is reopened read-only and fs-verity enabled on it; a secure store requires that
//!   and checks the kernel's measurement against our digest, an insecure one tolerates
//!   "not supported" (`ENOTTY`, `EOPNOTSUPP`) and stops asking after the first refusal;
//! * an object of the same name and size already there is kept ([`Stored::Present`]); else
//!   `xx/` is created (0755) and the file linked in, through `/proc/self/fd` (or
//!   `AT_EMPTY_PATH`), or renamed with `RENAME_NOREPLACE` for the named fallback
//!   ([`Stored::Written`]; `EEXIST` means another writer won the race: `Present`).

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::fsverity::{self, Algorithm, Hasher};

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A new file was linked into `objects/`.
    Written,
    /// An object of that name and size was there already; ours was discarded.
    Present,
}

/// Why an object could not be stored.
#[derive(Debug)]
pub enum Error {
    /// A system call failed.
    Io(io::Error),
    /// The kernel's fs-verity digest differs from ours (secure stores only).
    VerityMismatch {
        /// Our digest.
        expected: Vec<u8>,
        /// The kernel's.
        found: Vec<u8>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::VerityMismatch { expected, found } => write!(
                f,
                "Double-checking verity digest: Expected digest {} but found {}",
                hex(expected),
                hex(found)
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A verity mismatch is invalid input (`ValueError`), a system call failure an `OSError`.
impl From<Error> for crate::error::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => Self::Io(e),
            e @ Error::VerityMismatch { .. } => Self::Invalid(e.to_string()),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in generated names")
}

/// `/proc/self/fd/<fd>`.
fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    cstr(&format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// 12 random alphanumeric characters (as composefs-rs' `generate_tmpname`).
fn random_suffix() -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut seed = [0u8; 16];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    let mut x = if got == seed.len() as isize {
        u128::from_le_bytes(seed)
    } else {
        // No entropy source: time and a counter still make collisions unlikely, and a
        // collision is retried.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        t ^ (u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)) << 64)
            ^ u128::from(std::process::id())
    };
    (0..12)
        .map(|_| {
            let c = ALNUM[(x % ALNUM.len() as u128) as usize];
            x /= ALNUM.len() as u128;
            char::from(c)
        })
        .collect()
}

/// An `objects/` directory to store objects in; shared by the worker threads.
#[derive(Debug)]
pub struct ObjectStore {
    dir: OwnedFd,
    alg: Algorithm,
    secure: bool,
    /// Set after the first `EOPNOTSUPP` from `O_TMPFILE`: use named temporary files.
    no_tmpfile: AtomicBool,
    /// Set (insecure stores) after the first "not supported" from `FS_IOC_ENABLE_VERITY`.
    no_verity: AtomicBool,
    /// `xx/` subdirectories known to exist.
    dirs: [AtomicBool; 256],
}

impl ObjectStore {
    /// A store writing into the directory `objects` (duplicated; the caller keeps its fd).
    pub fn new(objects: BorrowedFd<'_>, alg: Algorithm, secure: bool) -> io::Result<Self> {
        Ok(Self {
            dir: objects.try_clone_to_owned()?,
            alg,
            secure,
            no_tmpfile: AtomicBool::new(false),
            no_verity: AtomicBool::new(false),
            dirs: std::array::from_fn(|_| AtomicBool::new(false)),
        })
    }

    /// The fs-verity algorithm of the repository.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Starts a new object.
    pub fn create(&self) -> io::Result<ObjectWriter<'_>> {
        let (file, name) = self.tmpfile()?;
        Ok(ObjectWriter {
            store: self,
            file: Some(file),
            name,
            hasher: Hasher::new(self.alg),
        })
    }

    /// Stores `data` as one object; returns its id and what happened.
    pub fn store(&self, data: &[u8]) -> Result<(Vec<u8>, Stored), Error> {
        let mut w = self.create()?;
        w.write(data)?;
        w.finish()
    }

    fn tmpfile(&self) -> io::Result<(File, Option<CString>)> {
        let flags = libc::O_RDWR | libc::O_CLOEXEC;
        if !self.no_tmpfile.load(Ordering::Relaxed) {
            // SAFETY: plain openat on our directory fd with a static path.
            let fd = unsafe {
                libc::openat(
                    self.dir.as_raw_fd(),
                    c".".as_ptr(),
                    flags | libc::O_TMPFILE,
                    0o644 as libc::c_uint,
                )
            };
            if fd >= 0 {
                // SAFETY: a new fd we own.
                return Ok((unsafe { File::from_raw_fd(fd) }, None));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(err);
            }
            self.no_tmpfile.store(true, Ordering::Relaxed);
        }
        for _ in 0..16 {
            let name = cstr(&format!(".tmp-object-{}", random_suffix()));
            // SAFETY: openat with a NUL-terminated name relative to our directory.
            let fd = unsafe {
                libc::openat(
                    self.dir.as_raw_fd(),
                    name.as_ptr(),
                    flags | libc::O_CREAT | libc::O_EXCL,
                    0o644 as libc::c_uint,
                )
            };
            if fd >= 0 {
                // SAFETY: a new fd we own.
                return Ok((unsafe { File::from_raw_fd(fd) }, Some(name)));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(err);
            }
        }
        Err(io::Error::from_raw_os_error(libc::EEXIST))
    }

    fn unlink(&self, name: &CStr) {
        // SAFETY: unlinkat on our directory; failure leaves a stray temp file for gc.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) };
    }

    /// Enables fs-verity on `ro` (retrying while another process briefly holds a writable
    /// fd, then on a copy, as composefs-rs does). Returns the fd to link (a new anonymous
    /// copy in that last case), whether fs-verity is on (insecure stores tolerate "not
    /// supported"), and whether the fd is a copy.
    fn enable_verity(&self, ro: OwnedFd) -> Result<(OwnedFd, bool, bool), Error> {
        if !self.secure && self.no_verity.load(Ordering::Relaxed) {
            return Ok((ro, false, false));
        }
        let mut attempt = 0;
        loop {
            match fsverity::enable_verity(&ro, self.alg) {
                Ok(()) => return Ok((ro, true, false)),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EEXIST) => return Ok((ro, true, false)),
                    Some(libc::ENOTTY | libc::EOPNOTSUPP) if !self.secure => {
                        self.no_verity.store(true, Ordering::Relaxed);
                        return Ok((ro, false, false));
                    }
                    Some(libc::ETXTBSY) if attempt < 3 => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Some(libc::ETXTBSY) => {
                        return Ok((self.enable_verity_on_copy(ro)?, true, true))
                    }
                    _ => return Err(e.into()),
                },
            }
        }
    }

    /// A forked child still holds a writable fd to our file: copy it and try again.
    fn enable_verity_on_copy(&self, ro: OwnedFd) -> io::Result<OwnedFd> {
        loop {
            // SAFETY: openat on our directory.
            let fd = cvt(unsafe {
                libc::openat(
                    self.dir.as_raw_fd(),
                    c".".as_ptr(),
                    libc::O_RDWR | libc::O_CLOEXEC | libc::O_TMPFILE,
                    0o644 as libc::c_uint,
                )
            })?;
            // SAFETY: new fd we own.
            let copy = unsafe { File::from_raw_fd(fd) };
            let mut src = File::from(ro.try_clone()?);
            let mut dst = &copy;
            io::Seek::rewind(&mut src)?;
            io::copy(&mut src, &mut dst)?;
            let ro_copy = reopen_ro(copy.as_fd())?;
            drop(copy);
            if fsverity::enable_verity(&ro_copy, self.alg).is_ok() {
                return Ok(ro_copy);
            }
        }
    }

    fn ensure_dir(&self, first: u8) -> io::Result<()> {
        let known = &self.dirs[first as usize];
        if known.load(Ordering::Relaxed) {
            return Ok(());
        }
        let name = cstr(&format!("{first:02x}"));
        // SAFETY: mkdirat on our directory with a NUL-terminated name.
        let r = unsafe { libc::mkdirat(self.dir.as_raw_fd(), name.as_ptr(), 0o755) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(err);
            }
        }
        known.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Size of `objects/<path>`, if it exists.
    fn existing_size(&self, path: &CStr) -> Option<u64> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstatat fills `st` on success.
        let r = unsafe { libc::fstatat(self.dir.as_raw_fd(), path.as_ptr(), st.as_mut_ptr(), 0) };
        // SAFETY: initialized on success.
        (r == 0).then(|| unsafe { st.assume_init() }.st_size as u64)
    }

    /// Puts the finished file `fd` (named `tmpname` in `objects/`, or anonymous) in place
    /// as `id`.
    fn link(
        &self,
        fd: BorrowedFd<'_>,
        tmpname: Option<&CStr>,
        id: &[u8],
        size: u64,
    ) -> io::Result<Stored> {
        let path = cstr(&format!("{:02x}/{}", id[0], hex(&id[1..])));
        if self.existing_size(&path) == Some(size) {
            return Ok(Stored::Present);
        }
        self.ensure_dir(id[0])?;
        let r = if let Some(name) = tmpname {
            // SAFETY: renameat2 on our directory with NUL-terminated names.
            unsafe {
                libc::renameat2(
                    self.dir.as_raw_fd(),
                    name.as_ptr(),
                    self.dir.as_raw_fd(),
                    path.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            }
        } else {
            let proc_path = proc_fd_path(fd);
            // SAFETY: linkat with NUL-terminated paths.
            let r = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc_path.as_ptr(),
                    self.dir.as_raw_fd(),
                    path.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                // No /proc: AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH, but may work.
                // SAFETY: as above.
                unsafe {
                    libc::linkat(
                        fd.as_raw_fd(),
                        c"".as_ptr(),
                        self.dir.as_raw_fd(),
                        path.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    )
                }
            } else {
                r
            }
        };
        if r == 0 {
            return Ok(Stored::Written);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) {
            Ok(Stored::Present)
        } else {
            Err(err)
        }
    }
}

fn reopen_ro(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = proc_fd_path(fd);
    // SAFETY: open with a NUL-terminated path.
    let r = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// One object being written: [`ObjectWriter::write`] its content, then
/// [`ObjectWriter::finish`]. Dropping it unfinished discards it.
#[derive(Debug)]
pub struct ObjectWriter<'s> {
    store: &'s ObjectStore,
    file: Option<File>,
    name: Option<CString>,
    hasher: Hasher,
}

impl ObjectWriter<'_> {
    /// Appends `data` (hashed, then written, in cache-sized pieces).
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut file = self.file.as_ref().expect("object writer not finished");
        for piece in data.chunks(128 << 10) {
            self.hasher.update(piece);
            file.write_all(piece)?;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.hasher.size()
    }

    /// Completes the object: enables fs-verity if possible, links it in; returns its id.
    pub fn finish(mut self) -> Result<(Vec<u8>, Stored), Error> {
        let store = self.store;
        let file = self.file.take().expect("object writer not finished");
        let id = self.hasher.digest();
        let size = self.hasher.size();
        let verity_possible = store.secure || !store.no_verity.load(Ordering::Relaxed);
        let stored = if verity_possible {
            // The kernel refuses to enable fs-verity while a writable fd is open.
            let ro = reopen_ro(file.as_fd())?;
            drop(file);
            let (fd, enabled, copied) = store.enable_verity(ro)?;
            if enabled {
                let (_, measured) = fsverity::measure_verity(&fd, store.alg)?;
                if measured != id {
                    return Err(Error::VerityMismatch {
                        expected: id,
                        found: measured,
                    });
                }
            }
            // A copy has no name: link it; the named original is removed on drop.
            let name = if copied { None } else { self.name.as_deref() };
            let stored = store.link(fd.as_fd(), name, &id, size)?;
            if stored == Stored::Written && !copied {
                self.name = None;
            }
            stored
        } else {
            let stored = store.link(file.as_fd(), self.name.as_deref(), &id, size)?;
            if stored == Stored::Written {
                self.name = None;
            }
            stored
        };
        Ok((id, stored))
    }
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.store.unlink(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "cfs-objects-test-{tag}-{}-{}",
                std::process::id(),
                random_suffix()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open_dir(p: &std::path::Path) -> File {
        File::open(p).unwrap()
    }

    #[test]
    fn store_and_dedup() {
        let tmp = TempDir::new("dedup");
        let dir = open_dir(&tmp.0);
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let store = ObjectStore::new(dir.as_fd(), alg, false).unwrap();
            let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect();
            let (id, how) = store.store(&data).unwrap();
            assert_eq!(how, Stored::Written);
            assert_eq!(id, fsverity::digest(alg, &data));
            let path = tmp.0.join(format!("{:02x}/{}", id[0], hex(&id[1..])));
            assert_eq!(std::fs::read(&path).unwrap(), data);
            let (id2, how2) = store.store(&data).unwrap();
            assert_eq!((id2, how2), (id.clone(), Stored::Present));
            // a same-named file of another size is replaced? No: linkat fails with EEXIST.
            std::fs::write(&path, b"short").unwrap();
            let (_, how3) = store.store(&data).unwrap();
            assert_eq!(how3, Stored::Present);
            // piecewise writing gives the same id
            let mut w = store.create().unwrap();
            for piece in data.chunks(7777) {
                w.write(piece).unwrap();
            }
            assert_eq!(w.size(), data.len() as u64);
            assert_eq!(w.finish().unwrap().0, id);
        }
        // nothing but xx/ directories is left behind
        for e in std::fs::read_dir(&tmp.0).unwrap() {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_dir(), "{:?}", e.path());
            assert_eq!(e.file_name().len(), 2);
        }
    }

    #[test]
    fn named_fallback() {
        let tmp = TempDir::new("named");
        let dir = open_dir(&tmp.0);
        let store = ObjectStore::new(dir.as_fd(), Algorithm::Sha256, false).unwrap();
        store.no_tmpfile.store(true, Ordering::Relaxed);
        let (id, how) = store.store(b"hello world, a named temporary file").unwrap();
        assert_eq!(how, Stored::Written);
        let (_, how) = store.store(b"hello world, a named temporary file").unwrap();
        assert_eq!(how, Stored::Present);
        let w = store.create().unwrap();
        drop(w); // discarded: its temporary name is removed
        let names: Vec<String> = std::fs::read_dir(&tmp.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![format!("{:02x}", id[0])]);
    }

    #[test]
    fn suffixes_are_alnum() {
        let s = random_suffix();
        assert_eq!(s.len(), 12);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(s, random_suffix());
    }
}
