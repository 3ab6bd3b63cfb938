//! Reading a directory on disk into the tree model (composefs-rs 0.9 `fs.rs`
//! `read_filesystem`), with the file contents hashed (and optionally stored as objects) by
//! worker threads. The pure-Python twin is `python/composefs/_pure/fs.py`.
//!
//! The rules (the same as `python/composefs/fs.py`):
//!
//! * the root is opened `O_NOFOLLOW`; directories are read recursively, entries in byte
//!   order of their names, mount points crossed;
//! * `Stat`: `st_mode & 0o7777`, uid, gid, mtime seconds and nanoseconds, and every xattr
//!   (the entry's own, a symlink's too);
//! * every non-directory is keyed by `(st_dev, st_ino)`: a second name of the same inode is a
//!   hard link to the first one's leaf;
//! * regular files of at most 64 bytes are inline, larger ones external: their fs-verity
//!   digest is computed, and the content stored into `objects/` when a store is given;
//! * symlinks keep their target, devices `st_rdev`; fifos and sockets are kept.
//!
//! The scan itself runs on the calling thread; external files are handed (as open
//! descriptors, through a bounded queue) to `threads` workers which read them with `pread`.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Mutex;

use crate::constants::INLINE_CONTENT_MAX;
pub use crate::error::Error;
use crate::fsverity::{self, Algorithm, Hasher};
use crate::objects::{self, ObjectStore};
use crate::tree::{Content, Directory, FileSystem, Inode, Leaf, Stat, XattrFiltering};

const READ_BUF: usize = 128 << 10;

fn io_err(path: &[u8], err: io::Error) -> Error {
    Error::at(path, err)
}

/// What to do with the directory.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    pub algorithm: Algorithm,
    /// The repository's `objects/` directory: external files are stored there.
    pub objects: Option<BorrowedFd<'a>>,
    /// fs-verity required on every stored object.
    pub secure: bool,
    /// Hashing threads; 0 = one per available core.
    pub threads: usize,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `os.path.join(base, name)` for a name without slashes, in place.
fn join_into(base: &mut Vec<u8>, name: &[u8]) {
    if !base.is_empty() && !base.ends_with(b"/") {
        base.push(b'/');
    }
    base.extend_from_slice(name);
}

fn openat(dir: libc::c_int, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: a NUL-terminated path; the result is a new fd we own.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: just opened.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `struct stat` is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn lstatat(dir: BorrowedFd<'_>, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: as in `fstat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated name, valid out pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// Where to read an entry's xattrs: its own descriptor, or (symlinks, devices, fifos,
/// sockets) its name, without following a final symlink.
enum XattrSource<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a CString),
}

/// Calls `f(buf)` (a list/get xattr call) with a buffer large enough, retrying on `ERANGE`.
fn xattr_call(mut f: impl FnMut(*mut libc::c_char, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = f(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let n = f(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

fn read_xattrs(src: &XattrSource<'_>) -> io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let names = match src {
        // SAFETY (both): the buffer pointer/length pair is valid (or null/0).
        XattrSource::Fd(fd) => {
            xattr_call(|b, n| unsafe { libc::flistxattr(fd.as_raw_fd(), b, n) })?
        }
        XattrSource::Path(p) => xattr_call(|b, n| unsafe { libc::llistxattr(p.as_ptr(), b, n) })?,
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = cstring(name)?;
        let value = match src {
            // SAFETY (both): NUL-terminated name, valid buffer.
            XattrSource::Fd(fd) => xattr_call(|b, n| unsafe {
                libc::fgetxattr(fd.as_raw_fd(), cname.as_ptr(), b.cast(), n)
            })?,
            XattrSource::Path(p) => xattr_call(|b, n| unsafe {
                libc::lgetxattr(p.as_ptr(), cname.as_ptr(), b.cast(), n)
            })?,
        };
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

fn make_stat(st: &libc::stat, src: &XattrSource<'_>) -> io::Result<Stat> {
    Ok(Stat {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs: read_xattrs(src)?,
    })
}

/// A directory's entries (name, is a directory), in byte order.
fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, bool)>> {
    // fdopendir takes ownership of its descriptor: give it a duplicate.
    let dup = dir.try_clone_to_owned()?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(dup);
    // SAFETY: `raw` is an open directory fd, owned by the DIR stream from here on.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own `raw`.
        unsafe { libc::close(raw) };
        return Err(err);
    }
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid DIR stream.
        let ent = unsafe { libc::readdir64(stream) };
        if ent.is_null() {
            let errno = io::Error::last_os_error();
            break match errno.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(errno),
            };
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let (name, dtype) = unsafe {
            (
                std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes(),
                (*ent).d_type,
            )
        };
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match dtype {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => {
                let cname = cstring(name)?;
                let st = lstatat(dir, &cname)?;
                st.st_mode & libc::S_IFMT == libc::S_IFDIR
            }
            _ => false,
        };
        out.push((name.to_vec(), is_dir));
    };
    // SAFETY: the stream is closed once.
    unsafe { libc::closedir(stream) };
    result?;
    out.sort_unstable();
    Ok(out)
}

fn read_small(fd: BorrowedFd<'_>, size: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: a valid writable buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    buf.truncate(done);
    Ok(buf)
}

fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let pos =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    loop {
        // SAFETY: a valid writable buffer.
        let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), pos) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// An external file to hash (and store).
struct Job {
    leaf: usize,
    fd: OwnedFd,
    path: Vec<u8>,
}

/// Hashes (and stores) one file, reading it from offset 0 to end of file.
fn process(
    job: &Job,
    alg: Algorithm,
    store: Option<&ObjectStore>,
    buf: &mut [u8],
) -> Result<Vec<u8>, Error> {
    let fd = job.fd.as_fd();
    let path = &job.path;
    match store {
        None => {
            let mut hasher = Hasher::new(alg);
            let mut offset = 0u64;
            loop {
                let n = pread(fd, buf, offset).map_err(|e| io_err(path, e))?;
                if n == 0 {
                    return Ok(hasher.digest());
                }
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
        }
        Some(store) => {
            let mut w = store.create().map_err(|e| io_err(path, e))?;
            let mut offset = 0u64;
            loop {
                let n = pread(fd, buf, offset).map_err(|e| io_err(path, e))?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]).map_err(|e| io_err(path, e))?;
                offset += n as u64;
            }
            match w.finish() {
                Ok((id, _)) => Ok(id),
                Err(objects::Error::Io(e)) => Err(io_err(path, e)),
                Err(e) => Err(Error::Invalid(e.to_string())),
            }
        }
    }
}

type Outcome = (usize, Result<Vec<u8>, Error>);

fn worker(
    jobs: &Mutex<Receiver<Job>>,
    results: Sender<Outcome>,
    alg: Algorithm,
    store: Option<&ObjectStore>,
    abort: &AtomicBool,
) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if abort.load(Ordering::Relaxed) {
            continue;
        }
        let r = process(&job, alg, store, &mut buf);
        if r.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        if results.send((job.leaf, r)).is_err() {
            return;
        }
    }
}

/// The tree walk; external files go to `queue` (or are processed here without workers).
struct Scanner<'s> {
    alg: Algorithm,
    store: Option<&'s ObjectStore>,
    leaves: Vec<Leaf>,
    inodes: HashMap<(u64, u64), usize>,
    queue: Option<SyncSender<Job>>,
    abort: &'s AtomicBool,
    buf: Vec<u8>,
}

/// Directories held open at once by a scan: deeper ones are closed while their
/// sub-directories are read, and opened again (through `..`, checked to be the same
/// directory) when the scan comes back to them.
const MAX_OPEN_DIRS: usize = 64;

/// A directory being read: its descriptor (`None` while closed), its identity, the tree
/// built so far, the entries left to read, its name in its parent and the length of the
/// current path before that name.
struct Frame {
    fd: Option<OwnedFd>,
    key: (u64, u64),
    dir: Directory,
    children: std::vec::IntoIter<(Vec<u8>, bool)>,
    name: Vec<u8>,
    path_len: usize,
}

impl Scanner<'_> {
    /// Opens and lists the directory `name` of `parent` (whose path is `path`).
    fn open_dir(&mut self, parent: libc::c_int, name: &[u8], path: &[u8]) -> Result<Frame, Error> {
        let e = |err| io_err(path, err);
        let cname = cstring(name).map_err(e)?;
        let fd = openat(
            parent,
            &cname,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
        .map_err(e)?;
        let st = fstat(fd.as_fd()).map_err(e)?;
        let stat = make_stat(&st, &XattrSource::Fd(fd.as_fd())).map_err(e)?;
        let children = list(fd.as_fd()).map_err(e)?;
        Ok(Frame {
            fd: Some(fd),
            key: (st.st_dev, st.st_ino),
            dir: Directory::new(stat),
            children: children.into_iter(),
            name: Vec::new(),
            path_len: 0,
        })
    }

    /// Reads the tree at `path`, depth-first in name order, without recursion: one frame
    /// per open directory, one path buffer.
    fn directory(&mut self, path: &[u8]) -> Result<Directory, Error> {
        let mut cur = path.to_vec();
        let mut stack = vec![self.open_dir(libc::AT_FDCWD, path, path)?];
        loop {
            let Some(top) = stack.last_mut() else {
                unreachable!("the root frame is returned, never popped here");
            };
            let next = if self.abort.load(Ordering::Relaxed) {
                None
            } else {
                top.children.next()
            };
            let Some(fd) = top.fd.as_ref() else {
                unreachable!("the directory being read is open");
            };
            match next {
                Some((child, true)) => {
                    let len = cur.len();
                    join_into(&mut cur, &child);
                    let mut frame = self.open_dir(fd.as_raw_fd(), &child, &cur)?;
                    frame.name = child;
                    frame.path_len = len;
                    stack.push(frame);
                    if stack.len() > MAX_OPEN_DIRS {
                        let at = stack.len() - 1 - MAX_OPEN_DIRS;
                        stack[at].fd = None;
                    }
                }
                Some((child, false)) => {
                    let len = cur.len();
                    join_into(&mut cur, &child);
                    let idx = self.leaf(fd.as_fd(), &child, &cur)?;
                    top.dir.entries.insert(child, Inode::Leaf(idx));
                    cur.truncate(len);
                }
                None => {
                    let Some(done) = stack.pop() else {
                        unreachable!("checked above");
                    };
                    let Some(parent) = stack.last_mut() else {
                        return Ok(done.dir);
                    };
                    cur.truncate(done.path_len);
                    if parent.fd.is_none() {
                        parent.fd = Some(Self::reopen_parent(&done, parent.key, &cur)?);
                    }
                    let Frame { name, dir, .. } = done;
                    parent
                        .dir
                        .entries
                        .insert(name, Inode::Directory(Box::new(dir)));
                }
            }
        }
    }

    /// The parent of `child` again (closed while deeper directories were read), through
    /// `..`; it must be the directory first opened.
    fn reopen_parent(child: &Frame, key: (u64, u64), path: &[u8]) -> Result<OwnedFd, Error> {
        let e = |err| io_err(path, err);
        let Some(fd) = child.fd.as_ref() else {
            unreachable!("the directory just read is open");
        };
        let dotdot = cstring(b"..").map_err(e)?;
        let parent = openat(
            fd.as_raw_fd(),
            &dotdot,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
        .map_err(e)?;
        let st = fstat(parent.as_fd()).map_err(e)?;
        if (st.st_dev, st.st_ino) != key {
            return Err(Error::Invalid(format!(
                "{}: directory moved during the scan",
                String::from_utf8_lossy(path)
            )));
        }
        Ok(parent)
    }

    fn changed(path: &[u8]) -> Error {
        Error::Invalid(format!(
            "{}: File type changed between readdir() and fstat()",
            String::from_utf8_lossy(path)
        ))
    }

    fn leaf(&mut self, dir: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<usize, Error> {
        let e = |err| io_err(path, err);
        let cname = cstring(name).map_err(e)?;
        let st = lstatat(dir, &cname).map_err(e)?;
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFDIR {
            return Err(Self::changed(path));
        }
        if fmt == libc::S_IFREG {
            // O_NONBLOCK: an entry that became a fifo since the lstat must not block us.
            let fd = openat(
                dir.as_raw_fd(),
                &cname,
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW,
            )
            .map_err(e)?;
            let st = fstat(fd.as_fd()).map_err(e)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(Self::changed(path));
            }
            let key = (st.st_dev, st.st_ino);
            if let Some(&i) = self.inodes.get(&key) {
                return Ok(i);
            }
            let stat = make_stat(&st, &XattrSource::Fd(fd.as_fd())).map_err(e)?;
            let size = st.st_size as u64;
            let idx = self.leaves.len();
            let content = if size <= INLINE_CONTENT_MAX {
                Content::Inline(read_small(fd.as_fd(), size).map_err(e)?)
            } else {
                let job = Job {
                    leaf: idx,
                    fd,
                    path: path.to_vec(),
                };
                match &self.queue {
                    Some(q) => {
                        // The workers only stop early after an error, which ends the scan.
                        if q.send(job).is_err() {
                            self.abort.store(true, Ordering::Relaxed);
                        }
                        Content::External {
                            id: Vec::new(),
                            size,
                        }
                    }
                    None => Content::External {
                        id: process(&job, self.alg, self.store, &mut self.buf)?,
                        size,
                    },
                }
            };
            self.leaves.push(Leaf { stat, content });
            self.inodes.insert(key, idx);
            return Ok(idx);
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(&i) = self.inodes.get(&key) {
            return Ok(i);
        }
        let proc_path =
            cstring(format!("/proc/self/fd/{}/", dir.as_raw_fd()).as_bytes()).map_err(e)?;
        let mut full = proc_path.into_bytes();
        full.extend_from_slice(name);
        let full = cstring(&full).map_err(e)?;
        let stat = make_stat(&st, &XattrSource::Path(&full)).map_err(e)?;
        let content = match fmt {
            libc::S_IFLNK => {
                let mut buf = vec![0u8; (st.st_size as usize).max(255) + 1];
                loop {
                    // SAFETY: valid buffer and NUL-terminated name.
                    let n = unsafe {
                        libc::readlinkat(
                            dir.as_raw_fd(),
                            cname.as_ptr(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                        )
                    };
                    if n < 0 {
                        return Err(e(io::Error::last_os_error()));
                    }
                    if (n as usize) < buf.len() {
                        buf.truncate(n as usize);
                        break;
                    }
                    buf.resize(buf.len() * 2, 0);
                }
                Content::Symlink(buf)
            }
            libc::S_IFCHR => Content::CharacterDevice(st.st_rdev),
            libc::S_IFBLK => Content::BlockDevice(st.st_rdev),
            libc::S_IFIFO => Content::Fifo,
            libc::S_IFSOCK => Content::Socket,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown file type {:o}",
                    st.st_mode
                )))
            }
        };
        self.leaves.push(Leaf { stat, content });
        let idx = self.leaves.len() - 1;
        self.inodes.insert(key, idx);
        Ok(idx)
    }
}

/// Reads the directory tree at `path` (composefs-rs `read_filesystem`).
pub fn read_filesystem(path: &[u8], opts: &Options<'_>) -> Result<FileSystem, Error> {
    let store = match opts.objects {
        Some(dir) => Some(
            ObjectStore::new(dir, opts.algorithm, opts.secure)
                .map_err(|e| io_err(b"objects", e))?,
        ),
        None => None,
    };
    let threads = fsverity::effective_threads(opts.threads);
    let abort = AtomicBool::new(false);
    let mut scanner = Scanner {
        alg: opts.algorithm,
        store: store.as_ref(),
        leaves: Vec::new(),
        inodes: HashMap::new(),
        queue: None,
        abort: &abort,
        buf: Vec::new(),
    };
    if threads <= 1 {
        scanner.buf = vec![0u8; READ_BUF];
        let root = scanner.directory(path)?;
        return Ok(FileSystem {
            root,
            leaves: scanner.leaves,
        });
    }
    let (tx, rx) = sync_channel::<Job>(threads * 64);
    let jobs = Mutex::new(rx);
    let (rtx, rrx) = channel::<Outcome>();
    let (scanned, outcomes) = std::thread::scope(|s| {
        for _ in 0..threads {
            let rtx = rtx.clone();
            let (jobs, abort, store) = (&jobs, &abort, store.as_ref());
            s.spawn(move || worker(jobs, rtx, opts.algorithm, store, abort));
        }
        drop(rtx);
        scanner.queue = Some(tx);
        let scanned = scanner.directory(path);
        // Closing the queue lets the workers finish.
        scanner.queue = None;
        if scanned.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let outcomes: Vec<Outcome> = rrx.iter().collect();
        (scanned, outcomes)
    });
    let mut leaves = std::mem::take(&mut scanner.leaves);
    // The first error in scan order wins: a hashing error of a leaf found before the scan
    // failed, else the scan's own error.
    let mut first_failed: Option<(usize, Error)> = None;
    for (idx, r) in outcomes {
        match r {
            Ok(id) => {
                if let Some(Leaf {
                    content: Content::External { id: slot, .. },
                    ..
                }) = leaves.get_mut(idx)
                {
                    *slot = id;
                }
            }
            Err(err) => {
                if first_failed.as_ref().is_none_or(|(i, _)| idx < *i) {
                    first_failed = Some((idx, err));
                }
            }
        }
    }
    match (scanned, first_failed) {
        (_, Some((idx, err))) if idx < leaves.len() => Err(err),
        (Err(err), _) => Err(err),
        (Ok(_), Some((_, err))) => Err(err),
        (Ok(root), None) => {
            if leaves
                .iter()
                .any(|l| matches!(&l.content, Content::External { id, .. } if id.is_empty()))
            {
                return Err(Error::Invalid("a file was not hashed".into()));
            }
            Ok(FileSystem { root, leaves })
        }
    }
}

/// [`read_filesystem`], then `transform_for_oci` when `transform` is given.
pub fn scan(
    path: &[u8],
    opts: &Options<'_>,
    transform: Option<XattrFiltering>,
) -> Result<FileSystem, Error> {
    let mut fs = read_filesystem(path, opts)?;
    if let Some(mode) = transform {
        fs.transform_for_oci(mode).map_err(Error::Invalid)?;
    }
    Ok(fs)
}

#[cfg(feature = "python")]
pub(crate) mod py {
    use super::{Error, Options};
    use crate::constants::{xattr_filtering, ALLOWLIST_ONLY, DEFAULT_EROFS_VERSION};
    use crate::fsverity::py::algorithm;
    use crate::tree::XattrFiltering;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::PyBytes;
    use std::os::fd::BorrowedFd;

    struct Args {
        path: Vec<u8>,
        alg: crate::fsverity::Algorithm,
        objects: Option<BorrowedFd<'static>>,
        transform: Option<XattrFiltering>,
    }

    fn args(
        path: &Bound<'_, PyAny>,
        alg: &str,
        objects_fd: Option<i32>,
        transform: bool,
        xattrs: &str,
    ) -> PyResult<Args> {
        let py = path.py();
        let raw = py.import("os")?.call_method1("fsencode", (path,))?;
        let raw = raw.downcast::<PyBytes>()?.as_bytes().to_vec();
        if raw.contains(&0) {
            return Err(PyValueError::new_err("embedded null byte"));
        }
        let alg = algorithm(alg)?;
        let mode = xattr_filtering(xattrs).map_err(Error::Invalid)?;
        let objects = match objects_fd {
            None => None,
            Some(fd) if fd < 0 => {
                return Err(PyValueError::new_err(
                    "objects_fd must be a file descriptor",
                ))
            }
            // SAFETY: the caller keeps the fd open for the duration of the call.
            Some(fd) => Some(unsafe { BorrowedFd::borrow_raw(fd) }),
        };
        Ok(Args {
            path: raw,
            alg,
            objects,
            transform: transform.then_some(mode),
        })
    }

    /// Reads a directory tree and returns its dumpfile (`cfsctl create-dumpfile`).
    #[pyfunction]
    #[pyo3(signature = (path, algorithm, objects_fd=None, transform=true, xattrs=ALLOWLIST_ONLY, threads=0, secure=false),
        text_signature = "(path, algorithm, objects_fd=None, transform=True, xattrs='allowlist-only', threads=0, secure=False)")]
    #[allow(clippy::too_many_arguments)]
    fn scan_directory<'py>(
        py: Python<'py>,
        path: &Bound<'py, PyAny>,
        algorithm: &str,
        objects_fd: Option<i32>,
        transform: bool,
        xattrs: &str,
        threads: usize,
        secure: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let a = args(path, algorithm, objects_fd, transform, xattrs)?;
        let opts = Options {
            algorithm: a.alg,
            objects: a.objects,
            secure,
            threads,
        };
        let out = py.allow_threads(|| {
            super::scan(&a.path, &opts, a.transform).map(|fs| crate::dumpfile::write(&fs, true))
        })?;
        Ok(PyBytes::new(py, &out))
    }

    /// Reads a directory tree and returns the EROFS image of each format in `versions`.
    #[pyfunction]
    #[pyo3(signature = (path, algorithm, objects_fd=None, transform=true, xattrs=ALLOWLIST_ONLY, versions=vec![DEFAULT_EROFS_VERSION.into()], threads=0, secure=false),
        text_signature = "(path, algorithm, objects_fd=None, transform=True, xattrs='allowlist-only', versions=[1], threads=0, secure=False)")]
    #[allow(clippy::too_many_arguments)]
    fn mkfs_directory<'py>(
        py: Python<'py>,
        path: &Bound<'py, PyAny>,
        algorithm: &str,
        objects_fd: Option<i32>,
        transform: bool,
        xattrs: &str,
        versions: Vec<i64>,
        threads: usize,
        secure: bool,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let versions = versions
            .into_iter()
            .map(crate::erofs::check_version)
            .collect::<Result<Vec<u8>, String>>()
            .map_err(Error::Invalid)?;
        let a = args(path, algorithm, objects_fd, transform, xattrs)?;
        let opts = Options {
            algorithm: a.alg,
            objects: a.objects,
            secure,
            threads,
        };
        let images = py.allow_threads(|| {
            let fs = super::scan(&a.path, &opts, a.transform)?;
            versions
                .iter()
                .map(|v| crate::erofs::write(&fs, *v).map_err(Error::Invalid))
                .collect::<Result<Vec<_>, Error>>()
        })?;
        Ok(images.iter().map(|i| PyBytes::new(py, i)).collect())
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(scan_directory, m)?)?;
        m.add_function(wrap_pyfunction!(mkfs_directory, m)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("cfs-fs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn opts(threads: usize) -> Options<'static> {
        Options {
            algorithm: Algorithm::Sha256,
            objects: None,
            secure: false,
            threads,
        }
    }

    #[test]
    fn scan_is_the_same_with_any_number_of_threads() {
        let t = TempDir::new("threads");
        let root = t.0.join("tree");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        for (i, size) in [0usize, 64, 65, 5000, 300_000].iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
            std::fs::write(root.join(format!("usr/lib/f{i}")), data).unwrap();
        }
        std::fs::hard_link(root.join("usr/lib/f3"), root.join("usr/h")).unwrap();
        std::os::unix::fs::symlink("lib/f1", root.join("usr/s")).unwrap();
        let path = root.as_os_str().as_bytes();
        let one = scan(path, &opts(1), Some(XattrFiltering::AllowlistOnly)).unwrap();
        let four = scan(path, &opts(4), Some(XattrFiltering::AllowlistOnly)).unwrap();
        assert_eq!(one, four);
        assert_eq!(one.nlinks().iter().filter(|&&n| n == 2).count(), 1);
        let f4 = one.leaves.iter().find_map(|l| match &l.content {
            Content::External { id, size: 300_000 } => Some(id.clone()),
            _ => None,
        });
        let data: Vec<u8> = (0..300_000usize).map(|j| (j * 7 + 4) as u8).collect();
        assert_eq!(f4, Some(fsverity::digest(Algorithm::Sha256, &data)));
        let dump = String::from_utf8(crate::dumpfile::write(&one, true)).unwrap();
        assert!(dump.contains("/usr/s 6 120777 1 "), "{dump}");
    }

    #[test]
    fn errors_name_the_path() {
        let t = TempDir::new("errors");
        let missing = t.0.join("missing");
        match read_filesystem(missing.as_os_str().as_bytes(), &opts(2)) {
            Err(Error::IoPath { path, err }) => {
                assert_eq!(path, missing.as_os_str().as_bytes());
                assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other:?}"),
        }
        let link = t.0.join("link");
        std::os::unix::fs::symlink(&t.0, &link).unwrap();
        match read_filesystem(link.as_os_str().as_bytes(), &opts(1)) {
            Err(Error::IoPath { err, .. }) => assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR)),
            other => panic!("{other:?}"),
        }
        let empty = t.0.join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = scan(
            empty.as_os_str().as_bytes(),
            &opts(1),
            Some(XattrFiltering::AllowlistOnly),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "Directory entry \"usr\" does not exist");
    }
}
