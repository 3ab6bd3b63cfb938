"""fs-verity digests and ioctls of both backends (``_pure.fsverity``, ``_native.fsverity``).

Known answers come from repository.md §1.5 (computed with ``fsverity digest``, fsverity-utils
1.5); random sizes are checked against the ``fsverity`` tool itself, and the backends against
each other.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import os
import random
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import run, tool

ALGORITHMS = ("sha256", "sha512")
BLOCK = 4096


def pattern(n: int) -> bytes:
    """``bytes(i % 251 for i in range(n))``, quickly."""
    return (bytes(range(251)) * (n // 251 + 1))[:n]


@functools.cache
def vector_data(name: str) -> bytes:
    return {
        "empty": lambda: b"",
        "hello": lambda: b"hello world",
        "one": lambda: pattern(1),
        "b4096": lambda: pattern(4096),
        "b4097": lambda: pattern(4097),
        "b1m": lambda: pattern(1 << 20),
        "b5m": lambda: pattern(5 << 20),
        "A5m": lambda: b"A" * (5 << 20),
        "b16m1": lambda: pattern((16 << 20) + 1),
        "b64m1": lambda: pattern((64 << 20) + 1),
    }[name]()


# repository.md §1.5, 4K rows.
VECTORS = {
    "empty": (
        "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95",
        "ccf9e5aea1c2a64efa2f2354a6024b90dffde6bbc017825045dce374474e13d1"
        "0adb9dadcc6ca8e17a3c075fbd31336e8f266ae6fa93a6c3bed66f9e784e5abf",
    ),
    "hello": (
        "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64",
        "18430270729d162d4e469daca123ae61893db4b0583d8f7081e3bf4f92b88ba5"
        "14e7982f10733fb6aa895195c5ae8fd2eb2c47a8be05513ce5a0c51a6f570409",
    ),
    "one": (
        "b803429503d95915829b29fdbc8bbad142f3abfd11b1cadf5526582e685c0551",
        "9fcf5172b085b1c8f9365eecb37a1869e193a4705654a5829f11939cd01d5c0f"
        "d97276be8cd9d49f76cfc8dcfeb80f8128e3548a1de50b56912b9e3fc7bde27b",
    ),
    "b4096": (
        "13e9b8848ae484a36acb3f3cac0ceb2f7601e96633d15c92f9bd3dd44e492157",
        "7bf994782b368ecc4e20ce9144701b1a30524d5bbc90987625de22eebc8cf370"
        "ec846c1b5e77f9099c6f6cfc0b590359b9ac8083a43e5f7fa5ec05a25dab6e03",
    ),
    "b4097": (
        "b0d074abef4d544404facfab6ba242f6a8ccbde90f1325cd286f3c8aa8d0f8aa",
        "97a1e45daaa69bd7b31908cf835318ba36476984ffa7f4a5913c0187db04ce5f"
        "19dc80306f493741d4ad1cdd212b7a9d2691aa3d42563d35471363fbb0fc7f1c",
    ),
    "b1m": (
        "93c995656d665b81c3a87eed032fcf06a8f9cecef51e3f5e5af7fa59fef1d439",
        "41af04461110f14941d920ec99e22353f53c2368e05d2855b3a991c5d3efa270"
        "08353a81a3c09cfa37e0c967525ec7481991133cf4249c4df70545c91cead118",
    ),
    "b5m": (
        "5c971f3a0baf458bcac3f4145c30f257d1c3c6d968e32a46411be7adc9265b6e",
        "5860c661ce73b35f007b0cf74438804255b2065129d002feeb2a2252fb0aaf90"
        "4b253ee4014b4830cc20238abb7222792d58e349b7dba0aa7319071d30462e35",
    ),
    "A5m": (
        "9de923bf050db8bc9794eb39dd77ba789b23c4c42b0903b0253d60be7387d4a8",
        "2e74ae8925c28c02e7a34693181b1e7b4b65cdbe9bae17a24c0c2372682977ca"
        "398959f566e9522a25987ddf47f07f5fa1481cd1465c955039b89073b90695e3",
    ),
    "b16m1": (
        "c915f8d5d9f9bb351aac7eb72e56b1cfcc87dfeeedd8174209b9d2e116222a12",
        "69b64bbea49e846e3c173e529e08a3aeafeefe3630625169d9b66f9e63ee0e12"
        "170208af2f31fef79a0eff60353a63e613ad505f27df3e49d11c1c9e0aa76d16",
    ),
    "b64m1": (
        "acba6554fbff4e8b2fc0361086b9e8ed6afbbd3196ade159c0f3e2bf9ecb2ed1",
        "8fedd4f06e533c604401fab2dd3cb54567ad80704a80aa78f32f023ce51bb46c"
        "297a2e8e3f3e65b35d69c06e37855309dec7ffbd63e2fdb6342e51b86024599b",
    ),
}

VECTOR_CASES = [
    pytest.param(name, alg, expected[i], id=f"{name}-{alg}")
    for name, expected in VECTORS.items()
    for i, alg in enumerate(ALGORITHMS)
]


def reference_digest(data: bytes, alg: str) -> bytes:
    """The non-incremental formulation of repository.md §1.2-1.3 (slow; small inputs only)."""
    h: Callable[..., Any] = getattr(hashlib, alg)
    size = h(b"").digest_size

    def hash_block(b: bytes) -> bytes:
        return h(b + bytes(BLOCK - len(b))).digest()

    if not data:
        root = bytes(size)
    else:
        level = b"".join(hash_block(data[i : i + BLOCK]) for i in range(0, len(data), BLOCK))
        while len(level) > size:
            level = b"".join(hash_block(level[i : i + BLOCK]) for i in range(0, len(level), BLOCK))
        root = level
    descriptor = struct.pack("<BBBBIQ", 1, ALGORITHMS.index(alg) + 1, 12, 0, 0, len(data))
    descriptor += root.ljust(64, b"\0") + bytes(32 + 144)
    return h(descriptor).digest()


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def digest_path(fsverity: ModuleType, path: Path, alg: str, threads: int = 0) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        result: bytes = fsverity.digest_fd(fd, alg, threads)
        return result
    finally:
        os.close(fd)


def tool_digest(path: Path, alg: str) -> bytes:
    """``fsverity digest --hash-alg=ALG PATH`` (the C implementation, fsverity-utils)."""
    out = run(tool("fsverity"), "digest", f"--hash-alg={alg}", path).stdout.decode()
    match = re.fullmatch(rf"{alg}:([0-9a-f]+) .*\n", out)
    assert match, out
    return bytes.fromhex(match.group(1))


# --------------------------------------------------------------------------------------------
# Known answers


@pytest.mark.parametrize(("name", "alg", "expected"), VECTOR_CASES)
def test_vectors_digest(backend_module: ModuleType, name: str, alg: str, expected: str) -> None:
    assert backend_module.fsverity.digest(vector_data(name), alg).hex() == expected


@pytest.mark.parametrize(("name", "alg", "expected"), VECTOR_CASES)
def test_vectors_digest_fd_and_hasher(
    backend_module: ModuleType, tmp_path: Path, name: str, alg: str, expected: str
) -> None:
    fsverity = backend_module.fsverity
    data = vector_data(name)
    path = write_file(tmp_path / "f", data)
    for threads in (1, 0, 3):
        assert digest_path(fsverity, path, alg, threads).hex() == expected, threads
    hasher = fsverity.Hasher(alg)
    view = memoryview(data)
    for start in range(0, len(view), 3 << 20):  # 3 MiB pieces, not aligned to tree blocks
        hasher.update(view[start : start + (3 << 20)])
    assert hasher.size == len(data)
    assert hasher.digest().hex() == expected


def test_reference_formulation_matches_vectors() -> None:
    """The slow reference used below agrees with the published vectors."""
    for name in ("empty", "hello", "one", "b4096", "b4097", "b1m"):
        for i, alg in enumerate(ALGORITHMS):
            assert reference_digest(vector_data(name), alg).hex() == VECTORS[name][i]


# --------------------------------------------------------------------------------------------
# Against the fsverity tool

# Interesting sizes: around one block, around the fan-out of one tree block (128 hashes for
# SHA-256, 64 for SHA-512), and sizes giving 2- and 3-level trees for both algorithms.
TOOL_SIZES = sorted(
    {
        0,
        1,
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
        64 * BLOCK - 1,
        64 * BLOCK,
        64 * BLOCK + 1,
        128 * BLOCK - 1,
        128 * BLOCK,
        128 * BLOCK + 1,
        129 * BLOCK + 17,  # sha256: 2 levels
        64 * 64 * BLOCK + 1,  # sha512: 3 levels (16 MiB + 1)
        128 * 128 * BLOCK + 3 * BLOCK + 5,  # sha256: 3 levels (64 MiB + 12 KiB + 5)
    }
)


@pytest.mark.parametrize("size", TOOL_SIZES)
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_against_fsverity_tool(
    backend_module: ModuleType, tmp_path: Path, alg: str, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    path = write_file(tmp_path / "f", data)
    expected = tool_digest(path, alg)
    fsverity = backend_module.fsverity
    assert fsverity.digest(data, alg) == expected
    assert digest_path(fsverity, path, alg, 1) == expected
    assert digest_path(fsverity, path, alg, 0) == expected


@settings(max_examples=15)
@given(size=st.integers(0, 3 << 20), seed=st.integers(0, 2**32 - 1))
def test_random_sizes_against_fsverity_tool(
    backend_module: ModuleType, tmp_path_factory: pytest.TempPathFactory, size: int, seed: int
) -> None:
    data = random.Random(seed).randbytes(size)
    path = write_file(tmp_path_factory.mktemp("f") / "f", data)
    for alg in ALGORITHMS:
        expected = tool_digest(path, alg)
        assert backend_module.fsverity.digest(data, alg) == expected
        assert digest_path(backend_module.fsverity, path, alg, 0) == expected


# --------------------------------------------------------------------------------------------
# digest / digest_fd details


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_buffer_types(backend_module: ModuleType, alg: str) -> None:
    data = pattern(3 * BLOCK + 100)
    expected = reference_digest(data, alg)
    fsverity = backend_module.fsverity
    assert fsverity.digest(data, alg) == expected
    assert fsverity.digest(bytearray(data), alg) == expected
    assert fsverity.digest(memoryview(data), alg) == expected
    padded = b"xyz" + data + b"tail"
    assert fsverity.digest(memoryview(padded)[3:-4], alg) == expected
    hasher = fsverity.Hasher(alg)
    hasher.update(bytearray(data[:5000]))
    hasher.update(memoryview(padded)[3 + 5000 : -4])
    assert hasher.digest() == expected


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_digest_fd_threads_agree(backend_module: ModuleType, tmp_path: Path, alg: str) -> None:
    # Big enough for the parallel / read-ahead code paths of both backends, with a tail that
    # is not a whole block.
    data = random.Random(7).randbytes((40 << 20) + 12345)
    path = write_file(tmp_path / "f", data)
    expected = backend_module.fsverity.digest(data, alg)
    for threads in (1, 0, 2, 5):
        assert digest_path(backend_module.fsverity, path, alg, threads) == expected, threads


def test_digest_fd_uses_pread(backend_module: ModuleType, tmp_path: Path) -> None:
    """The whole file from offset 0, whatever the file position; the position is not moved."""
    data = pattern(5 * BLOCK + 3)
    path = write_file(tmp_path / "f", data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 1000, os.SEEK_SET)
        for threads in (1, 0):
            assert backend_module.fsverity.digest_fd(fd, "sha256", threads) == (
                reference_digest(data, "sha256")
            )
            assert os.lseek(fd, 0, os.SEEK_CUR) == 1000
        assert backend_module.fsverity.digest_fd(fd, "sha512") == reference_digest(data, "sha512")
    finally:
        os.close(fd)


def test_digest_fd_errors(backend_module: ModuleType, tmp_path: Path) -> None:
    fsverity = backend_module.fsverity
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)  # a closed descriptor
    with pytest.raises(OSError) as info:
        fsverity.digest_fd(fd, "sha256")
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        fsverity.digest_fd(-1, "sha256")
    assert info.value.errno == errno.EBADF
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for threads in (1, 0):
            with pytest.raises(OSError) as info:
                fsverity.digest_fd(fd, "sha256", threads)
            assert info.value.errno == errno.EISDIR
    finally:
        os.close(fd)
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            fsverity.digest_fd(read_end, "sha256")
        assert info.value.errno == errno.ESPIPE
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("bad", ["sha1", "SHA256", "", "sha256 ", "fsverity-sha256-12"])
def test_unsupported_algorithm(backend_module: ModuleType, tmp_path: Path, bad: str) -> None:
    fsverity = backend_module.fsverity
    message = re.escape(f"unsupported hash algorithm '{bad}' (expected sha256 or sha512)")
    path = write_file(tmp_path / "f", b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match=f"^{message}$"):
            fsverity.digest(b"x", bad)
        with pytest.raises(ValueError, match=f"^{message}$"):
            fsverity.digest_fd(fd, bad)
        with pytest.raises(ValueError, match=f"^{message}$"):
            fsverity.Hasher(bad)
        with pytest.raises(ValueError, match=f"^{message}$"):
            fsverity.enable_verity(fd, bad)
        with pytest.raises(ValueError, match=f"^{message}$"):
            fsverity.measure_verity(fd, bad)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Hasher


@settings(max_examples=60)
@given(
    alg=st.sampled_from(ALGORITHMS),
    size=st.one_of(
        st.integers(0, 3 * BLOCK),
        st.integers(63 * BLOCK, 66 * BLOCK),
        st.integers(127 * BLOCK, 130 * BLOCK),
    ),
    cuts=st.lists(st.integers(0, 130 * BLOCK), max_size=12),
    peek=st.booleans(),
)
def test_hasher_any_split(
    backend_module: ModuleType, alg: str, size: int, cuts: list[int], peek: bool
) -> None:
    data = random.Random(size).randbytes(size)
    expected = backend_module.fsverity.digest(data, alg)
    hasher = backend_module.fsverity.Hasher(alg)
    bounds = sorted({0, size, *(c for c in cuts if c < size)})
    for start, end in itertools.pairwise(bounds):
        hasher.update(data[start:end])
        assert hasher.size == end
        if peek:  # digest() does not consume: it is the digest of the prefix
            assert hasher.digest() == backend_module.fsverity.digest(data[:end], alg)
    hasher.update(b"")
    assert hasher.size == size
    assert hasher.digest() == expected
    assert hasher.digest() == expected  # twice: still the same


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_hasher_three_levels(backend_module: ModuleType, alg: str) -> None:
    """Random splits of a file with a 3-level tree, peeking at level-boundary prefixes."""
    fsverity = backend_module.fsverity
    size = (64 << 20) + 5 * BLOCK + 7 if alg == "sha256" else (16 << 20) + 3
    data = memoryview(random.Random(3).randbytes(size))
    rng = random.Random(alg)
    fanout = BLOCK // (32 if alg == "sha256" else 64)
    checkpoints = {fanout * BLOCK, fanout * fanout * BLOCK, fanout * fanout * BLOCK + 1}
    hasher = fsverity.Hasher(alg)
    pos = 0
    while pos < size:
        step = rng.choice([1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 1 << 20, 5 << 20])
        nxt = min(size, pos + step)
        for point in sorted(checkpoints):
            if pos < point <= nxt:
                hasher.update(data[pos:point])
                assert hasher.digest() == fsverity.digest(data[:point], alg), point
                pos = point
        hasher.update(data[pos:nxt])
        pos = nxt
    assert hasher.size == size
    assert hasher.digest() == fsverity.digest(data, alg)


def test_hasher_repr_and_size(backend_module: ModuleType) -> None:
    hasher = backend_module.fsverity.Hasher("sha512")
    hasher.update(b"abc")
    assert hasher.size == 3
    assert "size=3" in repr(hasher)
    with pytest.raises(AttributeError):
        hasher.size = 5  # read-only


# --------------------------------------------------------------------------------------------
# Native == python


@settings(max_examples=100)
@given(data=st.binary(max_size=3 * BLOCK + 1), alg=st.sampled_from(ALGORITHMS))
def test_native_equals_python_small(
    pure_backend: ModuleType, native_backend: ModuleType, data: bytes, alg: str
) -> None:
    assert native_backend.fsverity.digest(data, alg) == pure_backend.fsverity.digest(data, alg)


@settings(max_examples=40)
@given(
    size=st.integers(0, 1 << 21),
    seed=st.integers(0, 2**32 - 1),
    alg=st.sampled_from(ALGORITHMS),
    cuts=st.lists(st.integers(0, 1 << 21), max_size=6),
)
def test_native_equals_python(
    pure_backend: ModuleType,
    native_backend: ModuleType,
    size: int,
    seed: int,
    alg: str,
    cuts: list[int],
) -> None:
    data = random.Random(seed).randbytes(size)
    expected = pure_backend.fsverity.digest(data, alg)
    assert native_backend.fsverity.digest(data, alg) == expected
    bounds = sorted({0, size, *(c for c in cuts if c < size)})
    hashers = [pure_backend.fsverity.Hasher(alg), native_backend.fsverity.Hasher(alg)]
    for start, end in itertools.pairwise(bounds):
        for hasher in hashers:
            hasher.update(data[start:end])
        assert hashers[0].digest() == hashers[1].digest()
    assert hashers[0].digest() == hashers[1].digest() == expected


# --------------------------------------------------------------------------------------------
# ioctls

NOT_SUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_ioctls(backend_module: ModuleType, tmp_path: Path, alg: str) -> None:
    """Where fs-verity is missing both ioctls fail with a real errno; where it exists, enabling
    works and the kernel measures the same digest as userspace."""
    fsverity = backend_module.fsverity
    data = pattern(3 * BLOCK + 5)
    path = write_file(tmp_path / "f", data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            fsverity.measure_verity(fd, alg)  # not enabled (yet)
        assert info.value.errno in (errno.ENODATA, *NOT_SUPPORTED)
        try:
            fsverity.enable_verity(fd, alg)
        except OSError as e:
            assert e.errno in NOT_SUPPORTED, e
            with pytest.raises(OSError) as info:
                fsverity.measure_verity(fd, alg)
            assert info.value.errno in NOT_SUPPORTED
            return
        kernel_id, measured = fsverity.measure_verity(fd, alg)
        assert kernel_id == ALGORITHMS.index(alg) + 1
        assert measured == fsverity.digest(data, alg) == fsverity.digest_fd(fd, alg)
        with pytest.raises(OSError) as info:
            fsverity.enable_verity(fd, alg)
        assert info.value.errno == errno.EEXIST
    finally:
        os.close(fd)


def test_ioctl_bad_fd(backend_module: ModuleType) -> None:
    fsverity = backend_module.fsverity
    for call in (fsverity.enable_verity, fsverity.measure_verity):
        with pytest.raises(OSError) as info:
            call(-1, "sha256")
        assert info.value.errno == errno.EBADF


# --------------------------------------------------------------------------------------------
# The pure backend's multi-process digest_fd


@pytest.fixture
def small_parallel_min(pure_backend: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The pure fsverity module, hashing files of 1 MiB and more with worker processes, in
    pieces of 64 KiB."""
    fsverity = pure_backend.fsverity
    monkeypatch.setattr(fsverity, "_PARALLEL_MIN", 1 << 20)
    monkeypatch.setattr(fsverity, "_PARALLEL_MIN_PART", 256 << 10)
    monkeypatch.setattr(fsverity, "_PIECE", 64 << 10)
    return fsverity  # type: ignore[no-any-return]


@pytest.mark.parametrize("size", [1 << 20, (1 << 20) + 1, (3 << 20) - 1, (5 << 20) + 4096])
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_pure_parallel_sizes(
    small_parallel_min: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    alg: str,
    size: int,
) -> None:
    data = random.Random(size).randbytes(size)
    path = write_file(tmp_path / "f", data)
    expected = reference_digest(data, alg)
    started: list[list[str]] = []
    popen = subprocess.Popen

    def spy(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(args)
        return popen(args, **kwargs)

    monkeypatch.setattr(small_parallel_min.subprocess, "Popen", spy)
    for threads in (2, 3, 7):
        started.clear()
        assert digest_path(small_parallel_min, path, alg, threads) == expected, threads
        assert 1 <= len(started) <= min(threads, size // (256 << 10)) - 1


def test_pure_parallel_falls_back(
    small_parallel_min: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No interpreter to start, or a worker failing: the same digest, computed sequentially."""
    data = random.Random(1).randbytes((2 << 20) + 77)
    path = write_file(tmp_path / "f", data)
    expected = reference_digest(data, "sha256")
    with monkeypatch.context() as m:
        m.setattr(small_parallel_min.sys, "executable", str(tmp_path / "no-python"))
        assert digest_path(small_parallel_min, path, "sha256", 2) == expected
    for worker in (
        "import sys; sys.exit(3)",  # dies at once
        "import os; os.write(1, b'x' * 32)",  # answers garbage
        "import os, sys; sys.stdin.readline(); os.write(1, bytes(8))",  # answers: no hashes
        "import os, sys; sys.stdin.readline(); os.write(1, b'\\x00\\x02' + bytes(6))",  # cut
    ):
        monkeypatch.setattr(small_parallel_min, "_WORKER", worker)
        assert digest_path(small_parallel_min, path, "sha256", 2) == expected
