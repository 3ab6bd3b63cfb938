#!/usr/bin/env python3
"""Start-up of the ``composefs`` command against ``cfsctl`` (and, optionally, another checkout
of this package), in one run.

    python3 benches/startup.py [--runs 20] [--baseline NAME=PATH/python]...

Each command runs ``--runs`` times, the tools interleaved (a, b, c, a, b, c, ...), after two
warm-up runs (page cache, ``__pycache__``). Python runs in a fresh venv without pip or site
packages, so that no ``.pth`` hook of the machine's site-packages counts; the package is found
through ``PYTHONPATH``. Printed: the median wall time and CPU time (user + system of the
process) in ms, and the ratios. The CPU time is the steadier figure on a busy machine.

Not a test: the machine is shared and noisy; compare ratios from one run, never turn a time
into a pass/fail check (``tests/unit/cli/test_startup.py`` checks what is imported instead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OURS = HERE.parent / "python"
sys.path.insert(0, str(OURS))

from composefs.oci.platform import host_platform  # noqa: E402
from composefs.testing import LayoutWriter, TarBuilder  # noqa: E402

COMMANDS = {
    "--help": ["--help"],
    "oci images": ["oci", "images"],
    "oci compute-id": ["oci", "compute-id", "img"],
}


def _layout(path: Path) -> None:
    """A small two-layer image tagged ``t``."""
    w = LayoutWriter(path)
    base = TarBuilder().dir("usr").dir("usr/bin")
    for i in range(50):
        base.file(f"usr/bin/f{i}", bytes([i]) * (100 + 37 * i))
    top = TarBuilder().dir("etc").file("etc/os-release", b"ID=startup\n")
    layers = [w.layer(base.build(), "gzip"), w.layer(top.build(), "none")]
    w.write_index([w.tagged(w.image(layers, architecture=host_platform().architecture), "t")])


def _env(pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COMPOSEFS_"))}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return wall * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="the python/ directory of another checkout, shown as NAME (repeatable)",
    )
    parser.add_argument("--cfsctl", default=shutil.which("cfsctl") or "~/.cargo/bin/cfsctl")
    args = parser.parse_args()
    cfsctl = os.path.expanduser(args.cfsctl)
    with tempfile.TemporaryDirectory(prefix="composefs-startup-") as tmp_name:
        tmp = Path(tmp_name)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"], check=True)
        python = str(tmp / "venv/bin/python3")
        _layout(tmp / "layout")
        tools: dict[str, tuple[list[str], dict[str, str], Path]] = {
            "composefs": ([python, "-m", "composefs.cli"], _env(str(OURS)), tmp / "ours")
        }
        for i, spec in enumerate(args.baseline):
            name, _, path = spec.rpartition("=")
            name = name or f"baseline{i + 1}"
            tools[name] = ([python, "-m", "composefs.cli"], _env(path), tmp / f"base{i}")
        tools["cfsctl"] = ([cfsctl], _env(None), tmp / "cfsctl")
        for prefix, env, repo in tools.values():
            for step in (["init", "--insecure"], ["oci", "pull", f"oci:{tmp / 'layout'}:t", "img"]):
                subprocess.run(
                    [*prefix, "--repo", str(repo), *step], env=env, check=True, capture_output=True
                )
        results: dict[tuple[str, str], tuple[float, float]] = {}
        for command, argv in COMMANDS.items():
            samples: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
            for i in range(args.runs + 2):
                for tool, (prefix, env, repo) in tools.items():
                    sample = _once([*prefix, "--repo", str(repo), *argv], env)
                    if i >= 2:
                        samples[tool].append(sample)
            for tool, values in samples.items():
                results[(command, tool)] = (
                    statistics.median(w for w, _ in values),
                    statistics.median(c for _, c in values),
                )
        bare = [_once([python, "-c", "pass"], _env(None)) for _ in range(args.runs)]
    names = list(tools)
    print(f"median of {args.runs} runs, wall / CPU ms")
    print(f"{'command':16}" + "".join(f"{n:>17}" for n in names) + "   ratios (wall, CPU)")
    for command in COMMANDS:
        row = f"{command:16}"
        for tool in names:
            wall, cpu = results[(command, tool)]
            row += f"{wall:9.1f} / {cpu:5.1f}"
        ours = results[(command, "composefs")]
        for tool in names[1:]:
            other = results[(command, tool)]
            row += f"   /{tool}: {ours[0] / other[0]:.2f}, {ours[1] / max(other[1], 0.1):.2f}"
        print(row)
    wall = statistics.median(w for w, _ in bare)
    cpu = statistics.median(c for _, c in bare)
    print(f"python -c pass (the venv's interpreter alone): {wall:.1f} / {cpu:.1f}")


if __name__ == "__main__":
    main()
