"""Build and call SPAM's C kernel (`spam_kernel.c`) for float32 tensors on CPU.

The shared library is compiled on first use with the system C compiler (`$CC`, else `cc`, `gcc`;
the file includes only the C library, so the build is quick) and cached under
`$SPAMBENCH_KERNEL_CACHE` (default ~/.cache/spam-bench/kernels) by a hash of the source, the flags,
the compiler and this CPU's feature flags: `-march=native` code built on one machine must never be
loaded on another whose CPU lacks those instructions (a shared home directory on a cluster).
Concurrent builds (Ray trials starting together) each write a private file and rename it into place.

When no compiler is found or the build fails, `load()` returns None with the reason in
`unavailable_reason()`, and SPAM falls back to its torch-ops kernel, which gives the same results.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("spam_kernel.c")
FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared"]

_HYPER = [ctypes.c_double] * 7 + [ctypes.c_int] * 3  # theta, b1, 1-b1, b2, 1-b2, step, eps, clip, guard, threads
_ptr, _i64 = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "spam_dense": [_ptr, _ptr, _ptr, _ptr, _i64, *_HYPER],
    "spam_masked": [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, *_HYPER],
}

_libs: dict[str, ctypes.CDLL | None] = {}
_reasons: dict[str, str] = {}


def arch() -> str:
    """The `-march` the kernel is built for: $SPAMBENCH_KERNEL_ARCH, default `native` (this CPU's
    instructions, AVX-512 included where present); e.g. `x86-64-v3` for a portable AVX2 build."""
    return os.environ.get("SPAMBENCH_KERNEL_ARCH", "native")


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("SPAMBENCH_KERNEL_CACHE", Path.home() / ".cache" / "spam-bench" / "kernels"))


def _build(cc: str, march: str) -> Path:
    flags = [*FLAGS, f"-march={march}"]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(flags), version, _cpu_flags()]).encode()).hexdigest()
    target = _cache_dir() / f"spam_kernel_{key[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{cc} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The kernel library for `arch()`, built on first use; None (see `unavailable_reason`) if it
    cannot be built."""
    march = arch()
    if march in _libs:
        return _libs[march]
    _libs[march] = None
    cc = _compiler()
    if cc is None:
        _reasons[march] = "no C compiler ($CC, cc or gcc) on PATH"
        return None
    try:
        # torch is imported first, so the kernel's libgomp.so.1 resolves to the OpenMP runtime
        # torch already loaded: one thread pool, sized by torch.get_num_threads() per call.
        lib = ctypes.CDLL(str(_build(cc, march)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _reasons[march] = f"could not build {SOURCE.name} for -march={march}: {exc}"
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int64
    _libs[march] = lib
    return lib


def unavailable_reason() -> str | None:
    load()
    return _reasons.get(arch())


def dense(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hyper: tuple) -> int:
    """One step on a whole (flat, contiguous) tensor; returns the number of clipped entries."""
    lib = load()
    assert lib is not None
    return lib.spam_dense(
        p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), p.numel(), *hyper, torch.get_num_threads()
    )


def masked(p: torch.Tensor, g: torch.Tensor, bits: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hyper: tuple) -> int:
    """One step on the entries of flat p whose bit is set in the packed mask `bits` (compact m, v)."""
    lib = load()
    assert lib is not None and bits.dtype == torch.uint8 and bits.is_contiguous() and bits.numel() * 8 >= p.numel()
    clipped = lib.spam_masked(
        p.data_ptr(),
        g.data_ptr(),
        bits.data_ptr(),
        m.data_ptr(),
        v.data_ptr(),
        p.numel(),
        *hyper,
        torch.get_num_threads(),
    )
    if clipped < 0:
        raise MemoryError("spam_masked: could not allocate its chunk offsets")
    return clipped
