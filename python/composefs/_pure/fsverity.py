"""fs-verity digests (4 KiB blocks, no salt) and the fs-verity ioctls, in pure Python.

The pure-Python twin of ``composefs._native.fsverity``; see ``docs/internals.md`` for the
contract. Blocks are hashed one by one with :mod:`hashlib` (OpenSSL), iterated in C with
``map()`` over memoryviews of large buffers, so that the per-block overhead stays small; for large
files :func:`digest_fd` also shares the data blocks out to worker processes (see there why not
threads).
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import operator
import os
import select
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import TypeAlias

from composefs._contract import VerityMeasurement
from composefs.constants import ALGORITHM_IDS

# A hashlib constructor: hashlib.sha256 or hashlib.sha512.
_New: TypeAlias = Callable[..., "hashlib._Hash"]

#: Byte arguments: any contiguous buffer.
Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["Hasher", "digest", "digest_fd", "enable_verity", "measure_verity"]

BLOCK_SIZE = 4096
LG_BLOCK_SIZE = 12

# name -> (kernel algorithm id, hashlib constructor, digest size)
_ALGORITHMS: dict[str, tuple[int, _New, int]] = {
    "sha256": (ALGORITHM_IDS["sha256"], hashlib.sha256, 32),
    "sha512": (ALGORITHM_IDS["sha512"], hashlib.sha512, 64),
}

# <linux/fsverity.h>: _IOW('f', 133, struct fsverity_enable_arg), _IOWR('f', 134, struct
# fsverity_digest)
FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_MEASURE_VERITY = 0xC0046686

# Read size of digest_fd and unit of the hashing loop: a multiple of BLOCK_SIZE, large enough
# that per-read overhead vanishes, small enough not to matter for memory.
_CHUNK = 8 << 20

_ZERO_BLOCK = bytes(BLOCK_SIZE)
_SLICES = [slice(i, i + BLOCK_SIZE) for i in range(0, _CHUNK, BLOCK_SIZE)]
_DIGEST = operator.methodcaller("digest")


def _algorithm(algorithm: str) -> tuple[int, _New, int]:
    try:
        return _ALGORITHMS[algorithm]
    except (KeyError, TypeError):
        if not isinstance(algorithm, str):
            raise TypeError(f"algorithm must be a str, not {type(algorithm).__name__}") from None
        raise ValueError(
            f"unsupported hash algorithm '{algorithm}' (expected sha256 or sha512)"
        ) from None


def _byte_view(data: Buffer) -> memoryview:
    """A flat, byte-format view of any buffer (bytes, bytearray, memoryview, array, ...)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _hash_blocks(view: memoryview, new: _New) -> bytes:
    """The concatenated hashes of the blocks of ``view``; a partial last block is zero-padded."""
    n = len(view)
    full = n - n % BLOCK_SIZE
    parts = []
    # The hot loop, one hashlib call per 4 KiB block, is iterated in C by map() over
    # precomputed slices: no bytecode runs per block.
    for start in range(0, full, _CHUNK):
        piece = view[start : min(start + _CHUNK, full)]
        slices = _SLICES if len(piece) == _CHUNK else _SLICES[: len(piece) // BLOCK_SIZE]
        parts.append(b"".join(map(_DIGEST, map(new, map(piece.__getitem__, slices)))))
    if full != n:
        h = new(view[full:])
        h.update(_ZERO_BLOCK[: BLOCK_SIZE - (n - full)])
        parts.append(h.digest())
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _root_from_leaves(leaves: bytes, new: _New, size: int) -> bytes:
    """The Merkle root above the level-0 hashes ``leaves`` (empty for an empty file)."""
    if not leaves:
        return bytes(size)
    level = leaves
    while len(level) > size:
        level = _hash_blocks(memoryview(level), new)
    return level


def _descriptor_digest(alg_id: int, new: _New, root: bytes, data_size: int) -> bytes:
    descriptor = (
        struct.pack("<BBBBIQ", 1, alg_id, LG_BLOCK_SIZE, 0, 0, data_size)
        + root.ljust(64, b"\0")
        + bytes(32 + 144)
    )
    return new(descriptor).digest()


def digest(data: Buffer, algorithm: str) -> bytes:
    """The fs-verity digest (4 KiB blocks, no salt) of ``data`` (any buffer)."""
    alg_id, new, size = _algorithm(algorithm)
    view = _byte_view(data)
    root = _root_from_leaves(_hash_blocks(view, new), new, size)
    return _descriptor_digest(alg_id, new, root, len(view))


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Fills ``view`` from ``offset``, returning fewer bytes only at end of file."""
    done = 0
    total = len(view)
    while done < total:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - always present on Linux
        return os.cpu_count() or 1


def digest_fd(fd: int, algorithm: str, threads: int = 0) -> bytes:
    """The fs-verity digest of the whole file behind ``fd``, read with ``pread`` from offset 0.

    The file position is neither used nor moved. ``threads=0`` means one worker per available
    core, ``1`` runs in the calling thread only.

    The workers beyond the calling thread are processes, not threads: hashing a 4 KiB block is
    one hashlib call that drops and retakes the GIL, and two threads doing that hand the GIL
    back and forth so often that they are slower than one (measured on 2 cores: 1.2 s against
    1.06 s per GiB). So a large regular file (``_PARALLEL_MIN``) is hashed in pieces of
    ``_PIECE`` bytes, by this thread and by fresh interpreters (``sys.executable -I -S``) that
    inherit the descriptor, take pieces on request and return their hashes through a pipe; each
    takes the next piece when it is free, so a worker that shares its core with other
    processes just does less. Whatever cannot be done that way (no interpreter to start, a
    worker failing, the file changing size) is done here, sequentially, with the same result.
    """
    alg_id, new, size = _algorithm(algorithm)
    if threads < 0:
        raise OverflowError(f"threads must be >= 0, not {threads}")  # as for a Rust usize
    if threads == 0:
        threads = _available_cores()
    st = os.fstat(fd)
    result = None
    if threads > 1 and stat.S_ISREG(st.st_mode) and st.st_size >= _PARALLEL_MIN:
        result = _leaves_parallel(fd, new, algorithm, st.st_size, threads)
    if result is None:
        result = _leaves_sequential(fd, new, 0, st.st_size)
    leaves, data_size = result
    root = _root_from_leaves(leaves, new, size)
    return _descriptor_digest(alg_id, new, root, data_size)


def _leaves_sequential(fd: int, new: _New, offset: int, size_hint: int) -> tuple[bytes, int]:
    """The level-0 hashes of the file from ``offset`` (block aligned) to EOF, and its size."""
    # Big enough to read a small file (and see its end) with one pread; always a multiple of
    # the block size, so that every full read ends on a block boundary.
    length = min(_CHUNK, ((size_hint - offset) // BLOCK_SIZE + 1) * BLOCK_SIZE)
    view = memoryview(bytearray(length))
    leaves: list[bytes] = []
    while True:
        n = _pread_full(fd, view, offset)
        if n:
            leaves.append(_hash_blocks(view[:n], new))
        offset += n
        if n < length:
            return b"".join(leaves), offset


# Files at least this large are hashed by several processes (when threads != 1): starting an
# interpreter costs about 15 ms, 3% of the time to hash this much.
_PARALLEL_MIN = 64 << 20
# ... with one process per this much data at most.
_PARALLEL_MIN_PART = 16 << 20
# The unit of work handed out: small, so that whoever is free takes the next one (a worker that
# shares its core with other processes just does less), large enough for the handing out to cost
# nothing. Its hashes (16 or 32 KiB) fit in a pipe buffer twice.
_PIECE = 2 << 20

# The worker process: for each request line "start length" on stdin, hashes the blocks of that
# range of the inherited descriptor and writes the hashes to stdout, preceded by their length
# (u64 LE; fewer hashes if the file ended early). Exits at the end of stdin.
_WORKER = """
import hashlib, operator, os, struct, sys
fd, name, piece = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
new = getattr(hashlib, name)
digest = operator.methodcaller("digest")
view = memoryview(bytearray(piece))
slices = [slice(i, i + 4096) for i in range(0, piece, 4096)]
for request in sys.stdin.buffer:
    start, length = map(int, request.split())
    got = 0
    while got < length:
        n = os.preadv(fd, [view[got:length]], start + got)
        if n == 0:
            break
        got += n
    hashes = b"".join(map(digest, map(new, map(view.__getitem__, slices[: got // 4096]))))
    out = memoryview(struct.pack("<Q", len(hashes)) + hashes)
    while out:
        out = out[os.write(1, out) :]
"""


def _leaves_parallel(
    fd: int, new: _New, name: str, file_size: int, workers: int
) -> tuple[bytes, int] | None:
    """The level-0 hashes and size of a regular file, hashed by this process and up to
    ``workers - 1`` worker processes; ``None`` if they cannot be used (then nothing is lost but
    the time spent)."""
    executable = sys.executable
    if not executable or getattr(sys, "frozen", False):
        return None
    hash_size = new().digest_size
    end = file_size - file_size % BLOCK_SIZE  # the whole blocks; the rest is read at the end
    starts = range(0, end, _PIECE)
    results: list[bytes] = [b""] * len(starts)
    processes: list[subprocess.Popen[bytes]] = []
    queued: dict[int, collections.deque[int]] = {}  # worker stdout -> pieces it was given
    # poll(), not select(): descriptor numbers may exceed FD_SETSIZE in a busy process. Only
    # workers with pieces queued are registered (a dead idle one would report POLLHUP forever).
    poller = select.poll()
    next_piece = 0
    ok = False

    def hand_out(process: subprocess.Popen[bytes]) -> None:
        nonlocal next_piece
        if next_piece < len(starts):
            assert process.stdin is not None and process.stdout is not None
            start = starts[next_piece]
            try:
                process.stdin.write(b"%d %d\n" % (start, min(_PIECE, end - start)))
            except OSError:  # the worker is gone
                raise _WorkerFailed from None
            pieces = queued[process.stdout.fileno()]
            if not pieces:
                poller.register(process.stdout.fileno(), select.POLLIN)
            pieces.append(next_piece)
            next_piece += 1

    try:
        for _ in range(min(workers, file_size // _PARALLEL_MIN_PART) - 1):
            try:
                process = subprocess.Popen(
                    [executable, "-I", "-S", "-c", _WORKER, str(fd), name, str(_PIECE)],
                    bufsize=0,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(fd,),
                )
            except OSError:
                return None
            assert process.stdout is not None
            processes.append(process)
            queued[process.stdout.fileno()] = collections.deque()
            hand_out(process)
            hand_out(process)  # two each, so that a worker never waits for this process
        by_fd = {p.stdout.fileno(): p for p in processes if p.stdout is not None}
        view = memoryview(bytearray(_PIECE))
        while True:
            if next_piece < len(starts):
                ready = poller.poll(0)
            elif any(queued.values()):
                ready = poller.poll()  # only the workers' last pieces are left
            else:
                break
            for f, _ in ready:
                i = queued[f].popleft()
                if not queued[f]:
                    poller.unregister(f)
                header = _read_exact(f, 8)
                expected = min(_PIECE, end - starts[i]) // BLOCK_SIZE * hash_size
                if len(header) < 8 or int.from_bytes(header, "little") != expected:
                    return None  # the worker failed, or the file shrank
                results[i] = _read_exact(f, expected)
                if len(results[i]) < expected:
                    return None
                hand_out(by_fd[f])
            if next_piece < len(starts):
                i = next_piece
                next_piece += 1
                piece = view[: min(_PIECE, end - starts[i])]
                if _pread_full(fd, piece, starts[i]) < len(piece):
                    return None  # the file shrank
                results[i] = _hash_blocks(piece, new)
        ok = True
    except _WorkerFailed:
        return None
    finally:
        for process in processes:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()  # a worker exits at the end of its input
            if not ok:
                process.kill()
            process.wait()
            process.stdout.close()
    # Whatever follows the whole blocks (a partial block, or data appended since fstat).
    tail, data_size = _leaves_sequential(fd, new, end, file_size)
    results.append(tail)
    return b"".join(results), data_size


class _WorkerFailed(Exception):
    pass


def _read_exact(fd: int, n: int) -> bytes:
    """``n`` bytes from a pipe; fewer only if it is closed first."""
    parts = []
    while n:
        data = os.read(fd, n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


class Hasher:
    """Incremental fs-verity digest: any split of the input gives the same result."""

    __slots__ = ("_alg_id", "_hash_size", "_levels", "_new", "_partial", "_size")

    def __init__(self, algorithm: str) -> None:
        self._alg_id, self._new, self._hash_size = _algorithm(algorithm)
        self._size = 0
        # Data received after the last complete block (less than BLOCK_SIZE bytes).
        self._partial = bytearray()
        # _levels[k]: the hashes of level k (0 = data blocks) that do not yet fill a tree
        # block; a full tree block is hashed at once into level k + 1.
        self._levels: list[bytearray] = []

    @property
    def size(self) -> int:
        """Number of bytes fed so far."""
        return self._size

    def update(self, data: Buffer) -> None:
        """Feeds more data."""
        view = _byte_view(data)
        n = len(view)
        if not n:
            return
        self._size += n
        partial = self._partial
        if partial:
            take = min(BLOCK_SIZE - len(partial), n)
            partial += view[:take]
            view = view[take:]
            if len(partial) < BLOCK_SIZE:
                return
            self._push(0, self._new(partial).digest())
            partial.clear()
        n = len(view)
        full = n - n % BLOCK_SIZE
        # Bounded pieces, so that the level-0 buffer never grows beyond a few KiB per MiB fed.
        for start in range(0, full, _CHUNK):
            self._push(0, _hash_blocks(view[start : min(start + _CHUNK, full)], self._new))
        if full != n:
            partial += view[full:]

    def _push(self, k: int, hashes: bytes) -> None:
        levels = self._levels
        while True:
            if k == len(levels):
                levels.append(bytearray())
            level = levels[k]
            level += hashes
            full = len(level) - len(level) % BLOCK_SIZE
            if not full:
                return
            hashes = _hash_blocks(memoryview(level)[:full], self._new)
            del level[:full]
            k += 1

    def digest(self) -> bytes:
        """The digest of everything fed so far (the state is kept: updates may follow)."""
        new, size = self._new, self._hash_size
        if self._size == 0:
            root = bytes(size)
        else:
            # Complete the tree on copies: hash the partial data block, then every partial
            # level block, carrying each result one level up, until one hash is left.
            count = -(-self._size // BLOCK_SIZE)  # hashes at the current level
            carry = _hash_blocks(memoryview(self._partial), new) if self._partial else b""
            fanout = BLOCK_SIZE // size
            k = 0
            while count > 1:
                pending = (self._levels[k] if k < len(self._levels) else b"") + carry
                carry = _hash_blocks(memoryview(pending), new) if pending else b""
                count = -(-count // fanout)
                k += 1
            root = bytes(self._levels[k] if k < len(self._levels) else b"") + carry
        return _descriptor_digest(self._alg_id, new, root, self._size)

    def __repr__(self) -> str:
        name = "sha256" if self._alg_id == ALGORITHM_IDS["sha256"] else "sha512"
        return f"<composefs._pure.fsverity.Hasher {name} size={self._size}>"


def _fd(fd: int) -> int:
    """``fd`` as a descriptor number; a negative one is ``EBADF`` (as for the native backend)."""
    fd = operator.index(fd)
    if fd < 0:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return fd


def enable_verity(fd: int, algorithm: str) -> None:
    """``FS_IOC_ENABLE_VERITY`` with 4 KiB blocks, no salt and no signature."""
    alg_id, _, _ = _algorithm(algorithm)
    # struct fsverity_enable_arg: version, hash_algorithm, block_size, salt_size, salt_ptr,
    # sig_size, __reserved1, sig_ptr, __reserved2[11]
    arg = struct.pack("<IIIIQIIQ88x", 1, alg_id, BLOCK_SIZE, 0, 0, 0, 0, 0)
    fcntl.ioctl(_fd(fd), FS_IOC_ENABLE_VERITY, arg)


def measure_verity(fd: int, algorithm: str) -> VerityMeasurement:
    """``FS_IOC_MEASURE_VERITY``: the kernel's algorithm id and digest of a verity file.

    The digest buffer holds exactly the digest size of ``algorithm``, so a file with a larger
    digest fails with ``EOVERFLOW``.
    """
    _, _, size = _algorithm(algorithm)
    # struct fsverity_digest: u16 digest_algorithm, u16 digest_size (capacity in, size out),
    # u8 digest[]
    buf = bytearray(struct.pack("<HH", 0, size) + bytes(size))
    fcntl.ioctl(_fd(fd), FS_IOC_MEASURE_VERITY, buf, True)
    alg_id, out_size = struct.unpack_from("<HH", buf)
    return VerityMeasurement(alg_id, bytes(buf[4 : 4 + min(out_size, size)]))
