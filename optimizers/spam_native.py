"""Build and call SPAM's C kernel (`spam_kernel.c`) for float32 tensors on CPU.

The shared library is compiled on first use with the system C compiler (`$CC`, else `cc`, `gcc`;
the file includes only the C library, so the build is quick) and cached under
`$SPAMBENCH_KERNEL_CACHE` (default ~/.cache/spam-bench/kernels) by a hash of the source, the flags,
the compiler and this CPU's feature flags: `-march=native` code built on one machine must never be
loaded on another whose CPU lacks those instructions (a shared home directory on a cluster).
Concurrent builds (Ray trials starting together) each write a private file and rename it into place.

When no compiler is found or the build fails, `load()` returns None with the reason in
`unavailable_reason()`, and SPAM falls back to its torch-ops kernel, which gives the same results.

Loading a shared library runs its code (its constructors run at dlopen), so the cache is a trust
boundary (docs/architecture.md#trust-boundaries):
- the cache folder is created with mode 0700, and a folder that is a symbolic link, owned by
  another user, or writable by group or others is not used: the kernel is then built in a private
  temporary folder for this process, with a one-line warning;
- each library is loaded only if it is a regular file owned by the user, not writable by group or
  others, and its sha256 matches the one recorded beside it (`<name>.so.sha256`) when it was built;
  otherwise it is rebuilt (with a one-line warning when a recorded hash did not match).
The cache must stay on the machine that built it: a CI cache (actions/cache and the like) or a shared
folder must not hold it, since whoever can write there could plant a library with a matching hash.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import sys
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
_warned: set[str] = set()


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


def _warn(line: str) -> None:
    """One line on stderr, once per process."""
    if line not in _warned:
        _warned.add(line)
        print(f"spam-bench: warning: {line}", file=sys.stderr)


def _untrusted(path: Path, *, folder: bool) -> str | None:
    """Why `path` may hold what another user wrote (so must not be loaded from), or None."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if folder != stat.S_ISDIR(st.st_mode) or not (folder or stat.S_ISREG(st.st_mode)):
        return f"{path} is not a {'folder' if folder else 'regular file'}"
    uid = os.getuid() if hasattr(os, "getuid") else st.st_uid
    if st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _recorded(library: Path) -> Path:
    return library.with_name(f"{library.name}.sha256")


def _cache_problem(library: Path) -> str | None:
    """Why the cached `library` must not be loaded, or None; "" when it merely has no recorded hash
    (built before hashes were recorded): it is then rebuilt without a warning."""
    problem = _untrusted(library, folder=False)
    if problem:
        return problem
    recorded = _recorded(library)
    if not os.path.lexists(recorded):
        return ""
    problem = _untrusted(recorded, folder=False)
    if problem:
        return problem
    if _sha256(library) != recorded.read_text().strip():
        return f"its sha256 differs from the one recorded when it was built ({recorded.name})"
    return None


def _compile(cc: str, flags: list[str], target: Path) -> None:
    """Compile into a private file beside `target`, record its sha256, then rename it into place."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{cc} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
            )
        fd, digest_tmp = tempfile.mkstemp(suffix=".sha256", dir=target.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(_sha256(Path(tmp)) + "\n")
        os.replace(digest_tmp, _recorded(target))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build(cc: str, march: str) -> tuple[Path, str | None]:
    """The library to load, and a private folder to remove once it is loaded (None: it is cached)."""
    flags = [*FLAGS, f"-march={march}"]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(flags), version, _cpu_flags()]).encode()).hexdigest()
    name = f"spam_kernel_{key[:16]}.so"
    cache = _cache_dir()
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = _untrusted(cache, folder=True)
    except OSError as err:
        problem = f"{cache}: {err.strerror or err}"
    if problem:
        _warn(f"not using the kernel cache ({problem}); building SPAM's C kernel in a private temporary folder")
        private = tempfile.mkdtemp(prefix="spam-kernel-")  # mode 0700, this process's alone
        _compile(cc, flags, Path(private) / name)
        return Path(private) / name, private
    target = cache / name
    if os.path.lexists(target):
        problem = _cache_problem(target)
        if problem is None:
            return target, None
        if problem:
            _warn(f"not loading {target}: {problem}; rebuilding it")
        target.unlink()
    _compile(cc, flags, target)
    problem = _cache_problem(target)
    if problem is not None:
        raise RuntimeError(f"{target} changed right after it was built: {problem or 'its hash is missing'}")
    return target, None


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
        path, private = _build(cc, march)
        try:
            lib = ctypes.CDLL(str(path))
        finally:
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)  # the loaded mapping outlives the file
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
