"""OCI images for the tests: the host's architecture and another one, and the layout of
generated images that ``oci pull`` and the image ids are checked with against cfsctl."""

from __future__ import annotations

from pathlib import Path

from composefs.oci.platform import host_platform
from composefs.testing import LayoutWriter, TarBuilder
from support.tars import seeded_bytes

# cfsctl (ocidir) compares the exact architecture string: give it the host's canonical name
HOST_ARCH = host_platform().architecture
#: an architecture that is not the host's
OTHER_ARCH = "s390x" if HOST_ARCH != "s390x" else "ppc64le"


def _base() -> bytes:
    t = TarBuilder()
    for d in ("etc", "usr", "usr/bin", "usr/lib", "usr/share", "opt", "opt/old", "var"):
        t.dir(d)
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n" * 3)
    t.file("usr/bin/tool", seeded_bytes("tool", 70_000), mode=0o755, uid=1000, gid=100)
    t.file("usr/bin/small", b"tiny\n")
    t.file("usr/bin/sixty-five", b"6" * 65)
    t.file("usr/lib/big", seeded_bytes("big", 300_000))
    t.symlink("usr/bin/link", "tool")
    t.hardlink("usr/bin/hard", "usr/bin/tool")
    t.file("opt/old/a", seeded_bytes("a", 1000))
    t.file("opt/old/b", b"b" * 10)
    t.file("var/gone", b"will be whited out\n" * 8)
    t.fifo("var/fifo")
    t.file(
        "usr/lib/xattr",
        seeded_bytes("x", 500),
        xattrs={"user.comment": "hello=world", "trusted.k": "v"},
    )
    t.file("usr/share/" + "n" * 150, b"long name" * 20)
    return t.build()


def _whiteouts() -> bytes:
    t = TarBuilder(mtime=1_700_000_100)
    t.dir("var")
    t.whiteout("var/gone")
    t.dir("opt")
    t.dir("opt/old")
    t.opaque("opt/old")
    t.file("opt/old/c", seeded_bytes("c", 4000))
    t.dir("usr")
    t.dir("usr/bin")
    t.file("usr/bin/tool", seeded_bytes("tool2", 80_000), mode=0o755)  # replaces the lower one
    t.hardlink("usr/bin/hard2", "opt/old/c")
    return t.build()


def _plain() -> bytes:
    t = TarBuilder(mtime=1_700_000_200)
    t.dir("usr")
    t.dir("usr/share")
    t.file("usr/share/doc", b"uncompressed layer\n" * 10, xattrs={"user.x": "1"})
    return t.build()


def build_layout(path: Path) -> dict[str, str]:
    """The test images; returns tag -> what it exercises."""
    w = LayoutWriter(path)
    base = w.layer(_base(), "gzip")
    whiteouts = w.layer(_whiteouts(), "zstd")
    plain = w.layer(_plain(), "none")
    small = w.layer(
        TarBuilder().dir("usr").file("usr/only", seeded_bytes("o", 2000)).build(), "gzip"
    )

    multi = w.image([base, whiteouts, plain], architecture=HOST_ARCH, platform_in_descriptor=False)
    host = w.image([base, small], architecture=HOST_ARCH)
    other = w.image([small], architecture=OTHER_ARCH)
    arm = w.image([small], architecture="arm", variant="v7")
    index = w.index([other, arm, host])
    # an index entry without platform: the config says the architecture
    noplat = w.image([plain, small], architecture=HOST_ARCH, platform_in_descriptor=False)
    index2 = w.index([other, noplat])
    # `skopeo copy --all`: one index.json entry pointing at an index
    nested = w.index([other, w.image([small, whiteouts], architecture=HOST_ARCH)])
    w.write_index(
        [
            w.tagged(multi, "multi"),
            w.tagged(index, "index"),
            w.tagged(index2, "noplatform"),
            w.tagged(nested, "nested"),
        ]
    )
    return {
        "multi": "gzip/zstd/none layers, whiteouts, opaque dir, hardlinks, xattrs, no platform",
        "index": "multi-platform index",
        "noplatform": "index entry without platform",
        "nested": "skopeo --all style single nested index",
    }
