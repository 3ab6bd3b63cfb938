//! fs-verity file digests and the two fs-verity ioctls.
//!
//! The digest is the one Linux computes for a file with fs-verity enabled using 4096-byte
//! blocks and no salt: SHA-256 or SHA-512 over a Merkle tree of the file's blocks, then over
//! the 256-byte `struct fsverity_descriptor` that records the tree's root hash and the file
//! size.
//!
//! Rust API:
//! * [`Algorithm`]: `sha256` / `sha512` (kernel ids 1 / 2);
//! * [`Hasher`]: incremental digest, any split of the input;
//! * [`digest`], [`digest_parallel`]: one-shot digest of a byte slice;
//! * [`digest_fd`]: digest of a whole file read with `pread` (several threads if asked);
//! * [`enable_verity`], [`measure_verity`]: `FS_IOC_ENABLE_VERITY` / `FS_IOC_MEASURE_VERITY`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use sha2::Digest as _;

use crate::{sha256x, sha_mb};

/// fs-verity block size used everywhere (data blocks and Merkle tree blocks).
pub const BLOCK_SIZE: usize = 4096;
/// log2 of [`BLOCK_SIZE`].
pub const LG_BLOCK_SIZE: u8 = 12;
/// Size of `struct fsverity_descriptor`.
pub const DESCRIPTOR_SIZE: usize = 256;
/// Largest digest size (SHA-512).
pub const MAX_DIGEST_SIZE: usize = 64;

/// Bytes read by one `pread` call in [`digest_fd`]; also the unit of work of one thread.
const READ_CHUNK: usize = 1 << 20;
/// Data bytes whose leaf hashes [`digest_fd`] and [`digest_parallel`] collect before folding
/// them into the tree; bounds memory for huge files (leaf hashes of 512 MiB: 4 or 8 MiB).
const SEGMENT: usize = 512 << 20;
/// Below this size a multi-threaded request is served by one thread.
const PARALLEL_MIN: u64 = 4 * READ_CHUNK as u64;

/// A hash algorithm supported by fs-verity (and composefs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256, kernel id 1, 32-byte digests.
    Sha256,
    /// SHA-512, kernel id 2, 64-byte digests.
    Sha512,
}

/// The error returned for an algorithm name other than `sha256` or `sha512`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedAlgorithm(pub String);

impl fmt::Display for UnsupportedAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unsupported hash algorithm '{}' (expected sha256 or sha512)",
            self.0
        )
    }
}

impl std::error::Error for UnsupportedAlgorithm {}

impl Algorithm {
    /// Parses `"sha256"` or `"sha512"`.
    pub fn from_name(name: &str) -> Result<Self, UnsupportedAlgorithm> {
        match name {
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            other => Err(UnsupportedAlgorithm(other.to_owned())),
        }
    }

    /// The algorithm with the given kernel id (`FS_VERITY_HASH_ALG_*`).
    pub fn from_kernel_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Sha256),
            2 => Some(Self::Sha512),
            _ => None,
        }
    }

    /// `"sha256"` or `"sha512"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// The kernel's id: 1 for SHA-256, 2 for SHA-512.
    pub const fn kernel_id(self) -> u8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    /// Digest size in bytes: 32 or 64.
    pub const fn digest_size(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// Plain hash (not fs-verity) of `data`.
    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// Hashes every 4096-byte block of `data` (a whole number of blocks) into `out`.
    fn hash_blocks(self, data: &[u8], out: &mut [u8]) {
        debug_assert_eq!(data.len() % BLOCK_SIZE, 0);
        debug_assert_eq!(out.len(), data.len() / BLOCK_SIZE * self.digest_size());
        let simd = simd_level();
        match self {
            Self::Sha256 => {
                let done = if simd >= Simd::Avx512 {
                    sha_mb::sha256_4k_blocks(data, out)
                } else {
                    0
                };
                let (data, out) = (&data[done * BLOCK_SIZE..], &mut out[done * 32..]);
                if simd >= Simd::ShaNi {
                    sha256x::hash_4k_blocks(data, out);
                } else {
                    sha256x::hash_4k_blocks_portable(data, out);
                }
            }
            Self::Sha512 => {
                let done = if simd >= Simd::Avx512 {
                    sha_mb::sha512_4k_blocks(data, out)
                } else {
                    0
                };
                let rest = data[done * BLOCK_SIZE..].chunks_exact(BLOCK_SIZE);
                for (block, dst) in rest.zip(out[done * 64..].chunks_exact_mut(64)) {
                    dst.copy_from_slice(&sha2::Sha512::digest(block));
                }
            }
        }
    }

    /// Hash of one block given by its first `data.len()` bytes, zero-padded to 4096.
    fn hash_padded_block(self, data: &[u8], out: &mut [u8]) {
        let mut block = [0u8; BLOCK_SIZE];
        block[..data.len()].copy_from_slice(data);
        self.hash_blocks(&block, out);
    }
}

impl std::str::FromStr for Algorithm {
    type Err = UnsupportedAlgorithm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The block-hashing code paths, from the most portable to the fastest. Each is used only
/// when the CPU supports it; all give the same results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// The `sha2` crate only (which itself uses single-stream SHA-NI / AVX2 when present).
    Portable,
    /// Two-way interleaved SHA-NI for SHA-256 ([`crate::sha256x`]).
    ShaNi,
    /// 16-way SHA-256 / 8-way SHA-512 with AVX-512 ([`crate::sha_mb`]), SHA-NI for the rest.
    Avx512,
}

static SIMD_LIMIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Restricts block hashing to code paths up to `limit` (for tests and benchmarks; the
/// environment variable `COMPOSEFS_SIMD=portable|shani|avx512` does the same at start-up).
/// Results never change, only speed.
pub fn set_simd_limit(limit: Simd) {
    SIMD_LIMIT.store(limit as u8, Ordering::Relaxed);
}

/// The code path block hashing uses now.
pub fn simd_level() -> Simd {
    static DETECTED: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    let detected = *DETECTED.get_or_init(|| {
        let hw = if sha_mb::avx512_available() {
            Simd::Avx512
        } else if sha256x::shani_available() {
            Simd::ShaNi
        } else {
            Simd::Portable
        };
        let env = match std::env::var("COMPOSEFS_SIMD").as_deref() {
            Ok("portable") => Simd::Portable,
            Ok("shani") => Simd::ShaNi,
            _ => Simd::Avx512,
        };
        hw.min(env)
    });
    let limit = match SIMD_LIMIT.load(Ordering::Relaxed) {
        0 => Simd::Portable,
        1 => Simd::ShaNi,
        _ => Simd::Avx512,
    };
    detected.min(limit)
}

/// One level of the Merkle tree under construction: hashes not yet gathered into a full
/// tree block, and how many hashes this level has received in total.
#[derive(Clone, Debug, Default)]
struct Level {
    pending: Vec<u8>,
    count: u64,
}

/// The Merkle tree above the data blocks, built bottom-up from leaf hashes in file order.
/// Only one partial tree block per level is kept.
#[derive(Clone, Debug)]
struct Tree {
    alg: Algorithm,
    levels: Vec<Level>,
}

impl Tree {
    fn new(alg: Algorithm) -> Self {
        Self {
            alg,
            levels: Vec::new(),
        }
    }

    /// Appends `hashes` (a whole number of digests) to level `lvl`.
    fn push(&mut self, lvl: usize, mut hashes: &[u8]) {
        let dsz = self.alg.digest_size();
        debug_assert_eq!(hashes.len() % dsz, 0);
        if hashes.is_empty() {
            return;
        }
        if self.levels.len() <= lvl {
            self.levels.resize_with(lvl + 1, Level::default);
        }
        let alg = self.alg;
        let level = &mut self.levels[lvl];
        level.count += (hashes.len() / dsz) as u64;
        let mut upper = Vec::new();
        if !level.pending.is_empty() {
            let take = (BLOCK_SIZE - level.pending.len()).min(hashes.len());
            level.pending.extend_from_slice(&hashes[..take]);
            hashes = &hashes[take..];
            if level.pending.len() == BLOCK_SIZE {
                upper.resize(dsz, 0);
                alg.hash_blocks(&level.pending, &mut upper);
                level.pending.clear();
            }
        }
        let whole = hashes.len() / BLOCK_SIZE * BLOCK_SIZE;
        if whole > 0 {
            let start = upper.len();
            upper.resize(start + whole / BLOCK_SIZE * dsz, 0);
            alg.hash_blocks(&hashes[..whole], &mut upper[start..]);
        }
        if whole < hashes.len() {
            if level.pending.capacity() == 0 {
                level.pending.reserve_exact(BLOCK_SIZE);
            }
            level.pending.extend_from_slice(&hashes[whole..]);
        }
        if !upper.is_empty() {
            self.push(lvl + 1, &upper);
        }
    }

    /// The root hash once every leaf has been pushed (zeros for an empty file).
    fn root(mut self) -> Vec<u8> {
        let dsz = self.alg.digest_size();
        let mut lvl = 0;
        loop {
            let Some(level) = self.levels.get_mut(lvl) else {
                return vec![0; dsz];
            };
            match level.count {
                0 => return vec![0; dsz],
                // A level with a single hash is the top: nothing above it was ever filled.
                1 => return std::mem::take(&mut level.pending),
                _ => {
                    if !level.pending.is_empty() {
                        let pending = std::mem::take(&mut level.pending);
                        let mut up = vec![0; dsz];
                        self.alg.hash_padded_block(&pending, &mut up);
                        self.push(lvl + 1, &up);
                    }
                    lvl += 1;
                }
            }
        }
    }
}

/// The 256-byte `struct fsverity_descriptor` for a salt-less 4 KiB tree.
fn descriptor(alg: Algorithm, data_size: u64, root: &[u8]) -> [u8; DESCRIPTOR_SIZE] {
    let mut d = [0u8; DESCRIPTOR_SIZE];
    d[0] = 1; // version
    d[1] = alg.kernel_id();
    d[2] = LG_BLOCK_SIZE;
    d[3] = 0; // salt size
    d[8..16].copy_from_slice(&data_size.to_le_bytes());
    d[16..16 + root.len()].copy_from_slice(root);
    d
}

/// Incremental fs-verity digest: feed the file content in any pieces with [`Hasher::update`],
/// read the digest at any time with [`Hasher::digest`].
#[derive(Clone, Debug)]
pub struct Hasher {
    alg: Algorithm,
    tree: Tree,
    /// Data not hashed yet: less than [`Hasher::BUFFER`] bytes at rest. Small updates are
    /// gathered here so that blocks are hashed 16 at a time (the multi-buffer code paths).
    partial: Vec<u8>,
    size: u64,
}

impl Hasher {
    /// Leaf hashes are computed this many blocks at a time.
    const BATCH_BLOCKS: usize = 256;
    /// Small updates are collected up to this size (16 blocks: one AVX-512 SHA-256 batch,
    /// two SHA-512 batches) before hashing.
    const BUFFER: usize = 16 * BLOCK_SIZE;

    /// A hasher with no data.
    pub fn new(alg: Algorithm) -> Self {
        Self {
            alg,
            tree: Tree::new(alg),
            partial: Vec::new(),
            size: 0,
        }
    }

    /// The algorithm this hasher uses.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Hashes `data` (whole blocks) into the tree.
    fn hash_whole_blocks(&mut self, data: &[u8]) {
        let dsz = self.alg.digest_size();
        let mut leaves = vec![0u8; (data.len() / BLOCK_SIZE).min(Self::BATCH_BLOCKS) * dsz];
        for batch in data.chunks(Self::BATCH_BLOCKS * BLOCK_SIZE) {
            let out = &mut leaves[..batch.len() / BLOCK_SIZE * dsz];
            self.alg.hash_blocks(batch, out);
            self.tree.push(0, out);
        }
    }

    /// Appends `data` to the file content.
    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (Self::BUFFER - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < Self::BUFFER {
                return;
            }
            let mut full = std::mem::take(&mut self.partial);
            self.hash_whole_blocks(&full);
            full.clear();
            self.partial = full;
        }
        let bulk = data.len() / Self::BUFFER * Self::BUFFER;
        if bulk > 0 {
            self.hash_whole_blocks(&data[..bulk]);
        }
        if bulk < data.len() {
            if self.partial.capacity() == 0 {
                self.partial.reserve_exact(Self::BUFFER);
            }
            self.partial.extend_from_slice(&data[bulk..]);
        }
    }

    /// Feeds leaf hashes of whole blocks computed elsewhere. Only valid while no partial
    /// block is buffered; `data_len` is the number of data bytes they cover.
    fn push_leaf_hashes(&mut self, leaves: &[u8], data_len: u64) {
        debug_assert!(self.partial.is_empty());
        debug_assert_eq!(
            leaves.len() as u64 / self.alg.digest_size() as u64 * BLOCK_SIZE as u64,
            data_len
        );
        self.tree.push(0, leaves);
        self.size += data_len;
    }

    /// The Merkle tree root hash of the data so far (zeros when empty).
    pub fn root_hash(&self) -> Vec<u8> {
        let mut tree = self.tree.clone();
        let dsz = self.alg.digest_size();
        let whole = self.partial.len() / BLOCK_SIZE * BLOCK_SIZE;
        if whole > 0 {
            let mut leaves = vec![0u8; whole / BLOCK_SIZE * dsz];
            self.alg.hash_blocks(&self.partial[..whole], &mut leaves);
            tree.push(0, &leaves);
        }
        if whole < self.partial.len() {
            let mut leaf = [0u8; MAX_DIGEST_SIZE];
            self.alg
                .hash_padded_block(&self.partial[whole..], &mut leaf[..dsz]);
            tree.push(0, &leaf[..dsz]);
        }
        tree.root()
    }

    /// The fs-verity digest of the data so far. Does not consume the hasher.
    pub fn digest(&self) -> Vec<u8> {
        let root = self.root_hash();
        self.alg.hash(&descriptor(self.alg, self.size, &root))
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// fs-verity digest of `data`, single-threaded.
pub fn digest(alg: Algorithm, data: &[u8]) -> Vec<u8> {
    let mut hasher = Hasher::new(alg);
    hasher.update(data);
    hasher.digest()
}

/// The number of threads to use for a request of `threads` (0 = one per available core).
pub fn effective_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
}

/// Where the parallel leaf hashing reads its data.
trait Source: Sync {
    /// The `len` bytes at `offset`, or fewer at end of data.
    fn read<'a>(&'a self, offset: u64, len: usize, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]>;
}

struct MemSource<'d>(&'d [u8]);

impl Source for MemSource<'_> {
    fn read<'a>(&'a self, offset: u64, len: usize, _: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        let start = (offset as usize).min(self.0.len());
        let end = start.saturating_add(len).min(self.0.len());
        Ok(&self.0[start..end])
    }
}

struct FdSource<'f>(BorrowedFd<'f>);

impl Source for FdSource<'_> {
    fn read<'a>(&'a self, offset: u64, len: usize, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let n = pread_full(self.0, &mut buf[..len], offset)?;
        Ok(&buf[..n])
    }
}

/// Reads until `buf` is full or end of file; returns the number of bytes read.
fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let pos = offset + done as u64;
        let pos = libc::off_t::try_from(pos)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), pos) };
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
    Ok(done)
}

/// Hashes the first `blocks` whole blocks of `src` with `threads` threads into `hasher`
/// (which must be empty). Returns `Ok(false)` if the source ended early (a file shrinking
/// while being read); `hasher` is then unusable.
fn hash_leaves_parallel(
    src: &dyn Source,
    blocks: u64,
    threads: usize,
    hasher: &mut Hasher,
) -> io::Result<bool> {
    let alg = hasher.alg;
    let dsz = alg.digest_size();
    let chunk_blocks = READ_CHUNK / BLOCK_SIZE;
    let seg_blocks = (SEGMENT / BLOCK_SIZE) as u64;
    let mut leaves = vec![0u8; blocks.min(seg_blocks) as usize * dsz];
    let mut seg_start = 0u64;
    while seg_start < blocks {
        let n = (blocks - seg_start).min(seg_blocks) as usize;
        let out = &mut leaves[..n * dsz];
        let work = Mutex::new(out.chunks_mut(chunk_blocks * dsz).enumerate());
        let stop = AtomicBool::new(false);
        let short = AtomicBool::new(false);
        let error: Mutex<Option<io::Error>> = Mutex::new(None);
        let worker = || {
            let mut buf = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let next = work.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((i, dst)) = next else { break };
                let offset = (seg_start + (i * chunk_blocks) as u64) * BLOCK_SIZE as u64;
                let len = dst.len() / dsz * BLOCK_SIZE;
                match src.read(offset, len, &mut buf) {
                    Ok(data) if data.len() == len => alg.hash_blocks(data, dst),
                    Ok(_) => {
                        short.store(true, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        };
        // No more threads than pieces of work (a huge `threads` must not spawn thousands).
        let helpers = threads.min(n.div_ceil(chunk_blocks)) - 1;
        std::thread::scope(|s| {
            for _ in 0..helpers {
                // If a thread cannot be created, the others just do more of the work.
                let _ = std::thread::Builder::new().spawn_scoped(s, worker);
            }
            worker();
        });
        if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        if short.load(Ordering::Relaxed) {
            return Ok(false);
        }
        hasher.push_leaf_hashes(&leaves[..n * dsz], (n * BLOCK_SIZE) as u64);
        seg_start += n as u64;
    }
    Ok(true)
}

/// fs-verity digest of `data`, hashing with `threads` threads (0 = one per core).
pub fn digest_parallel(alg: Algorithm, data: &[u8], threads: usize) -> Vec<u8> {
    let threads = effective_threads(threads);
    if threads <= 1 || (data.len() as u64) < PARALLEL_MIN {
        return digest(alg, data);
    }
    let mut hasher = Hasher::new(alg);
    let blocks = (data.len() / BLOCK_SIZE) as u64;
    let complete = hash_leaves_parallel(&MemSource(data), blocks, threads, &mut hasher)
        .expect("reading memory cannot fail");
    debug_assert!(complete);
    hasher.update(&data[blocks as usize * BLOCK_SIZE..]);
    hasher.digest()
}

/// Sequential read of `fd` from `offset` to end of file into `hasher`.
fn hash_fd_tail(fd: BorrowedFd<'_>, mut offset: u64, hasher: &mut Hasher) -> io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = pread_full(fd, &mut buf, offset)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
}

/// fs-verity digest of the whole file behind `fd`, read with `pread` from offset 0 to end of
/// file (the file position is neither used nor moved). `threads`: 0 = one per available core,
/// 1 = single-threaded. Errors are those of `fstat`/`pread`.
pub fn digest_fd(fd: impl AsFd, alg: Algorithm, threads: usize) -> io::Result<Vec<u8>> {
    let fd = fd.as_fd();
    let threads = effective_threads(threads);
    let mut hasher = Hasher::new(alg);
    if threads > 1 {
        // SAFETY: an all-zero `struct stat` is a valid value; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let size = st.st_size as u64;
        if (st.st_mode & libc::S_IFMT) == libc::S_IFREG && size >= PARALLEL_MIN {
            let blocks = size / BLOCK_SIZE as u64;
            if hash_leaves_parallel(&FdSource(fd), blocks, threads, &mut hasher)? {
                // Whatever follows the whole blocks (a partial block, or data appended since
                // fstat) is read sequentially up to the real end of file.
                hash_fd_tail(fd, blocks * BLOCK_SIZE as u64, &mut hasher)?;
                return Ok(hasher.digest());
            }
            // The file shrank under us: start over, reading sequentially.
            hasher = Hasher::new(alg);
        }
    }
    hash_fd_tail(fd, 0, &mut hasher)?;
    Ok(hasher.digest())
}

const FS_IOC_ENABLE_VERITY: u64 = 0x4080_6685;
const FS_IOC_MEASURE_VERITY: u64 = 0xc004_6686;

/// `struct fsverity_enable_arg` (`<linux/fsverity.h>`).
#[repr(C)]
struct FsverityEnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

const _: () = assert!(std::mem::size_of::<FsverityEnableArg>() == 128);

/// `struct fsverity_digest` with room for the largest digest.
#[repr(C)]
struct FsverityDigest {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; MAX_DIGEST_SIZE],
}

/// Enables fs-verity on `fd` (`FS_IOC_ENABLE_VERITY`, 4096-byte blocks, no salt, no signature).
/// The file must be open read-only with no writable descriptors; errors are the kernel's
/// (`ENOTTY`/`EOPNOTSUPP`: filesystem without fs-verity, `EEXIST`: already enabled,
/// `ETXTBSY`: open for writing, ...).
pub fn enable_verity(fd: impl AsFd, alg: Algorithm) -> io::Result<()> {
    let arg = FsverityEnableArg {
        version: 1,
        hash_algorithm: alg.kernel_id().into(),
        block_size: BLOCK_SIZE as u32,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    loop {
        // SAFETY: the request number matches the argument struct, which outlives the call.
        let r = unsafe {
            libc::ioctl(
                fd.as_fd().as_raw_fd(),
                FS_IOC_ENABLE_VERITY as _,
                &arg as *const FsverityEnableArg,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads the fs-verity digest of `fd` (`FS_IOC_MEASURE_VERITY`) with a buffer capacity equal
/// to the digest size of `alg`. Returns the kernel's algorithm id and the digest. Errors are
/// the kernel's (`ENODATA`: verity not enabled, `ENOTTY`/`EOPNOTSUPP`: not supported,
/// `EOVERFLOW`: the file's digest is larger than the capacity, ...).
pub fn measure_verity(fd: impl AsFd, alg: Algorithm) -> io::Result<(u8, Vec<u8>)> {
    let mut arg = FsverityDigest {
        digest_algorithm: 0,
        digest_size: alg.digest_size() as u16,
        digest: [0; MAX_DIGEST_SIZE],
    };
    // SAFETY: the struct has room for `digest_size` bytes after the header and outlives the
    // call.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            FS_IOC_MEASURE_VERITY as _,
            &mut arg as *mut FsverityDigest,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let size = usize::from(arg.digest_size).min(alg.digest_size());
    // Kernel algorithm ids fit in a byte (1 and 2 today).
    let id = u8::try_from(arg.digest_algorithm).unwrap_or(u8::MAX);
    Ok((id, arg.digest[..size].to_vec()))
}

#[cfg(feature = "python")]
pub(crate) mod py {
    use super::Algorithm;
    use crate::contract::VERITY_MEASUREMENT;
    use crate::error::Error;
    use crate::pybuf::{for_each_piece, ByteBuf};
    use pyo3::prelude::*;
    use pyo3::types::PyBytes;
    use std::os::fd::BorrowedFd;
    use std::os::fd::RawFd;

    pub(crate) fn algorithm(name: &str) -> PyResult<Algorithm> {
        Ok(Algorithm::from_name(name).map_err(|e| Error::Invalid(e.to_string()))?)
    }

    fn borrow_fd(fd: RawFd) -> PyResult<BorrowedFd<'static>> {
        if fd < 0 {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EBADF)).into());
        }
        // SAFETY: the descriptor is only handed to system calls for the duration of one call;
        // an invalid number makes them fail with EBADF.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// fs-verity digest (4 KiB blocks, no salt) of `data`.
    #[pyfunction]
    fn digest<'py>(
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        algorithm: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let alg = self::algorithm(algorithm)?;
        let buf = ByteBuf::get(data)?;
        let mut hasher = super::Hasher::new(alg);
        for_each_piece(py, &buf, |piece| hasher.update(piece));
        let out = if buf.len() > crate::pybuf::SMALL {
            py.allow_threads(|| hasher.digest())
        } else {
            hasher.digest()
        };
        Ok(PyBytes::new(py, &out))
    }

    /// fs-verity digest of the whole file behind `fd` (pread from offset 0 to EOF).
    #[pyfunction]
    #[pyo3(signature = (fd, algorithm, threads = 0))]
    fn digest_fd<'py>(
        py: Python<'py>,
        fd: RawFd,
        algorithm: &str,
        threads: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let alg = self::algorithm(algorithm)?;
        let fd = borrow_fd(fd)?;
        let out = py
            .allow_threads(|| super::digest_fd(fd, alg, threads))
            .map_err(Error::Io)?;
        Ok(PyBytes::new(py, &out))
    }

    /// Incremental fs-verity digest.
    #[pyclass(module = "composefs._native.fsverity", name = "Hasher")]
    struct Hasher {
        inner: super::Hasher,
    }

    #[pymethods]
    impl Hasher {
        #[new]
        fn new(algorithm: &str) -> PyResult<Self> {
            Ok(Self {
                inner: super::Hasher::new(self::algorithm(algorithm)?),
            })
        }

        /// Appends `data`.
        fn update(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
            let buf = ByteBuf::get(data)?;
            let inner = &mut self.inner;
            for_each_piece(py, &buf, |piece| inner.update(piece));
            Ok(())
        }

        /// The digest of the data so far (the hasher can still be updated).
        fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            let out = if self.inner.size() > crate::pybuf::SMALL as u64 {
                py.allow_threads(|| self.inner.digest())
            } else {
                self.inner.digest()
            };
            PyBytes::new(py, &out)
        }

        /// Bytes fed so far.
        #[getter]
        fn size(&self) -> u64 {
            self.inner.size()
        }

        fn __repr__(&self) -> String {
            format!(
                "<composefs._native.fsverity.Hasher {} size={}>",
                self.inner.algorithm(),
                self.inner.size()
            )
        }
    }

    /// FS_IOC_ENABLE_VERITY with 4096-byte blocks, no salt, no signature.
    #[pyfunction]
    fn enable_verity(py: Python<'_>, fd: RawFd, algorithm: &str) -> PyResult<()> {
        let alg = self::algorithm(algorithm)?;
        let fd = borrow_fd(fd)?;
        Ok(py
            .allow_threads(|| super::enable_verity(fd, alg))
            .map_err(Error::Io)?)
    }

    /// FS_IOC_MEASURE_VERITY: returns a `VerityMeasurement(algorithm_id, digest)`.
    #[pyfunction]
    fn measure_verity<'py>(
        py: Python<'py>,
        fd: RawFd,
        algorithm: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let alg = self::algorithm(algorithm)?;
        let fd = borrow_fd(fd)?;
        let (id, digest) = py
            .allow_threads(|| super::measure_verity(fd, alg))
            .map_err(Error::Io)?;
        VERITY_MEASUREMENT.build(py, (id, PyBytes::new(py, &digest)))
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(digest, m)?)?;
        m.add_function(wrap_pyfunction!(digest_fd, m)?)?;
        m.add_function(wrap_pyfunction!(enable_verity, m)?)?;
        m.add_function(wrap_pyfunction!(measure_verity, m)?)?;
        m.add_class::<Hasher>()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// The non-incremental formulation of the spec, with the plain `sha2` crate.
    fn reference(alg: Algorithm, data: &[u8]) -> Vec<u8> {
        let dsz = alg.digest_size();
        let hb = |b: &[u8]| {
            let mut block = vec![0u8; BLOCK_SIZE];
            block[..b.len()].copy_from_slice(b);
            alg.hash(&block)
        };
        let root = if data.is_empty() {
            vec![0; dsz]
        } else {
            let mut lvl: Vec<u8> = data.chunks(BLOCK_SIZE).flat_map(hb).collect();
            while lvl.len() > dsz {
                lvl = lvl.chunks(BLOCK_SIZE).flat_map(hb).collect();
            }
            lvl
        };
        alg.hash(&descriptor(alg, data.len() as u64, &root))
    }

    const VECTORS: &[(&str, usize, &str, &str)] = &[
        ("empty", 0, "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95", "ccf9e5aea1c2a64efa2f2354a6024b90dffde6bbc017825045dce374474e13d10adb9dadcc6ca8e17a3c075fbd31336e8f266ae6fa93a6c3bed66f9e784e5abf"),
        ("one", 1, "b803429503d95915829b29fdbc8bbad142f3abfd11b1cadf5526582e685c0551", "9fcf5172b085b1c8f9365eecb37a1869e193a4705654a5829f11939cd01d5c0fd97276be8cd9d49f76cfc8dcfeb80f8128e3548a1de50b56912b9e3fc7bde27b"),
        ("b4096", 4096, "13e9b8848ae484a36acb3f3cac0ceb2f7601e96633d15c92f9bd3dd44e492157", "7bf994782b368ecc4e20ce9144701b1a30524d5bbc90987625de22eebc8cf370ec846c1b5e77f9099c6f6cfc0b590359b9ac8083a43e5f7fa5ec05a25dab6e03"),
        ("b4097", 4097, "b0d074abef4d544404facfab6ba242f6a8ccbde90f1325cd286f3c8aa8d0f8aa", "97a1e45daaa69bd7b31908cf835318ba36476984ffa7f4a5913c0187db04ce5f19dc80306f493741d4ad1cdd212b7a9d2691aa3d42563d35471363fbb0fc7f1c"),
        ("b1m", 1 << 20, "93c995656d665b81c3a87eed032fcf06a8f9cecef51e3f5e5af7fa59fef1d439", "41af04461110f14941d920ec99e22353f53c2368e05d2855b3a991c5d3efa27008353a81a3c09cfa37e0c967525ec7481991133cf4249c4df70545c91cead118"),
        ("b5m", 5 << 20, "5c971f3a0baf458bcac3f4145c30f257d1c3c6d968e32a46411be7adc9265b6e", "5860c661ce73b35f007b0cf74438804255b2065129d002feeb2a2252fb0aaf904b253ee4014b4830cc20238abb7222792d58e349b7dba0aa7319071d30462e35"),
        ("b16m1", (16 << 20) + 1, "c915f8d5d9f9bb351aac7eb72e56b1cfcc87dfeeedd8174209b9d2e116222a12", "69b64bbea49e846e3c173e529e08a3aeafeefe3630625169d9b66f9e63ee0e12170208af2f31fef79a0eff60353a63e613ad505f27df3e49d11c1c9e0aa76d16"),
        ("b64m1", (64 << 20) + 1, "acba6554fbff4e8b2fc0361086b9e8ed6afbbd3196ade159c0f3e2bf9ecb2ed1", "8fedd4f06e533c604401fab2dd3cb54567ad80704a80aa78f32f023ce51bb46c297a2e8e3f3e65b35d69c06e37855309dec7ffbd63e2fdb6342e51b86024599b"),
    ];

    #[test]
    fn spec_vectors() {
        for &(name, len, want256, want512) in VECTORS {
            let data = pattern(len);
            for (alg, want) in [(Algorithm::Sha256, want256), (Algorithm::Sha512, want512)] {
                assert_eq!(hex(&digest(alg, &data)), want, "{name} {alg}");
                assert_eq!(
                    hex(&digest_parallel(alg, &data, 3)),
                    want,
                    "{name} {alg} x3"
                );
            }
        }
        let a5m = vec![b'A'; 5 << 20];
        assert_eq!(
            hex(&digest(Algorithm::Sha256, &a5m)),
            "9de923bf050db8bc9794eb39dd77ba789b23c4c42b0903b0253d60be7387d4a8"
        );
        assert_eq!(
            hex(&digest(Algorithm::Sha512, b"hello world")),
            "18430270729d162d4e469daca123ae61893db4b0583d8f7081e3bf4f92b88ba514e7982f10733fb6aa895195c5ae8fd2eb2c47a8be05513ce5a0c51a6f570409"
        );
        assert_eq!(
            hex(&digest(Algorithm::Sha256, b"hello world")),
            "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"
        );
    }

    #[test]
    fn matches_reference_on_interesting_sizes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut sizes = vec![];
        for blocks in [
            0u64, 1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257, 16384, 16385,
        ] {
            for delta in [-1i64, 0, 1, 2048] {
                let s = blocks as i64 * BLOCK_SIZE as i64 + delta;
                if s >= 0 {
                    sizes.push(s as usize);
                }
            }
        }
        for _ in 0..10 {
            sizes.push(rng.gen_range(0..3 << 20));
        }
        let mut data = vec![0u8; 16385 * BLOCK_SIZE + 2048];
        rng.fill_bytes(&mut data);
        for &size in &sizes {
            let d = &data[..size];
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                assert_eq!(digest(alg, d), reference(alg, d), "{alg} size {size}");
            }
        }
    }

    #[test]
    fn every_simd_level() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut data = vec![0u8; (3 << 20) + 123];
        rng.fill_bytes(&mut data);
        let sizes = [0, 1, 4096, 65536, 65537, 200 * 4096, data.len()];
        for limit in [Simd::Portable, Simd::ShaNi, Simd::Avx512] {
            set_simd_limit(limit);
            for &size in &sizes {
                for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                    let d = &data[..size];
                    assert_eq!(digest(alg, d), reference(alg, d), "{limit:?} {alg} {size}");
                }
            }
            let b1m = pattern(1 << 20);
            assert_eq!(
                hex(&digest(Algorithm::Sha256, &b1m)),
                "93c995656d665b81c3a87eed032fcf06a8f9cecef51e3f5e5af7fa59fef1d439"
            );
        }
        set_simd_limit(Simd::Avx512);
    }

    #[test]
    fn incremental_splits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &size in &[0usize, 5, 4096, 4097, 200_000, 600_000, 1 << 20] {
            let mut data = vec![0u8; size];
            rng.fill_bytes(&mut data);
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                let want = reference(alg, &data);
                let mut h = Hasher::new(alg);
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let n = match rng.gen_range(0..4) {
                        0 => rng.gen_range(0..10),
                        1 => rng.gen_range(0..5000),
                        2 => BLOCK_SIZE,
                        _ => rng.gen_range(0..300_000),
                    }
                    .min(rest.len());
                    h.update(&rest[..n]);
                    rest = &rest[n..];
                    // digest() does not consume: an intermediate digest equals a fresh one.
                    if rng.gen_range(0..8) == 0 {
                        let fed = size - rest.len();
                        assert_eq!(h.digest(), reference(alg, &data[..fed]));
                    }
                }
                assert_eq!(h.size(), size as u64);
                assert_eq!(h.digest(), want, "{alg} size {size}");
            }
        }
    }

    #[test]
    fn parallel_and_fd() {
        use std::io::Write;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let dir = std::env::temp_dir();
        for &size in &[
            0usize,
            1,
            4096,
            (4 << 20) - 1,
            (4 << 20) + 5,
            9 << 20,
            (13 << 20) + 4096,
        ] {
            let mut data = vec![0u8; size];
            rng.fill_bytes(&mut data);
            let path = dir.join(format!("cfs-fsverity-test-{}-{size}", std::process::id()));
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&data).unwrap();
            drop(f);
            let f = std::fs::File::open(&path).unwrap();
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                let want = reference(alg, &data);
                for threads in [0, 1, 2, 3, 5] {
                    assert_eq!(digest_parallel(alg, &data, threads), want);
                    assert_eq!(
                        digest_fd(&f, alg, threads).unwrap(),
                        want,
                        "{size} {threads}"
                    );
                }
            }
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn fd_errors_and_position() {
        use std::io::{Seek, SeekFrom, Write};
        let path = std::env::temp_dir().join(format!("cfs-fsverity-pos-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all(b"hello world").unwrap();
        // The file position (at the end now) is neither used nor moved.
        assert_eq!(
            hex(&digest_fd(&f, Algorithm::Sha256, 1).unwrap()),
            "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"
        );
        assert_eq!(f.stream_position().unwrap(), 11);
        f.seek(SeekFrom::Start(3)).unwrap();
        digest_fd(&f, Algorithm::Sha256, 2).unwrap();
        assert_eq!(f.stream_position().unwrap(), 3);
        std::fs::remove_file(&path).unwrap();

        // A pipe cannot be pread.
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let r = unsafe { BorrowedFd::borrow_raw(fds[0]) };
        let err = digest_fd(r, Algorithm::Sha256, 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESPIPE));
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn ioctls_report_errno() {
        let path = std::env::temp_dir().join(format!("cfs-fsverity-ioctl-{}", std::process::id()));
        std::fs::write(&path, b"data").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        match measure_verity(&f, Algorithm::Sha256) {
            Ok((id, d)) => panic!("unexpected verity on temp file: {id} {}", hex(&d)),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
        if let Err(e) = enable_verity(&f, Algorithm::Sha256) {
            assert!(e.raw_os_error().is_some(), "{e}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(Algorithm::from_name("sha512"), Ok(Algorithm::Sha512));
        assert_eq!(
            Algorithm::from_name("md5").unwrap_err().to_string(),
            "unsupported hash algorithm 'md5' (expected sha256 or sha512)"
        );
        assert_eq!(Algorithm::from_kernel_id(1), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_kernel_id(3), None);
    }
}
