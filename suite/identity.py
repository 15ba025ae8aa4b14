"""Code identity: a fingerprint of the code that produced a run, so results stay tied to it.

A run's numbers depend on its spec and on code: the suite's training path, the task's package, the
optimizer's module and the libraries they call. Each part is hashed on its own, so that when a
complete run is no longer current the suite can say which part changed:
- `suite`: every module of `spam_bench.suite` that the run context reaches through its imports;
- `task` and `optimizer`: the module that defines the plug-in and every module of the same package
  it imports (followed transitively, lazy imports inside functions included), plus the data files
  that sit next to them (`*.yaml` scales, `*.c` kernels). A plug-in outside spam-bench also records
  its distribution's version;
- `libraries`: the installed versions of the distributions the task and optimizer declare, and torch
  and numpy.

Hashes are of file contents, not timestamps, so a fresh clone of the same commit has the same
fingerprint. Nothing here imports the modules it hashes: it reads their source.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import subprocess
from collections.abc import Iterable
from functools import cache, lru_cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".yaml", ".yml", ".c", ".json")
SUITE_ENTRY = "spam_bench.suite.context"
ALWAYS_LIBRARIES = ("torch", "numpy")


def _source(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of every module `path` imports (anywhere in the file), relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def module_closure(root: str, within: str) -> dict[str, Path]:
    """Source files of `root` and of every module under `within` it reaches through imports, by name."""
    seen: dict[str, Path] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or not (name == within or name.startswith(within + ".")):
            continue
        path = _source(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(path, name))
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)  # a package's __init__ runs before any of its modules
    return seen


def _named_files(modules: dict[str, Path]) -> dict[str, Path]:
    """The modules' sources and the data files beside them, keyed by location-independent names."""
    files = dict(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for sub in ("", "configs"):
            folder = path.parent / sub
            if folder.is_dir():
                files.update(
                    {
                        f"{package}/{sub}/{f.name}": f
                        for f in folder.iterdir()
                        if f.is_file() and f.suffix in DATA_SUFFIXES
                    }
                )
    return files


def _hash_files(files: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _package_of(module: str) -> str:
    """The package whose modules count as part of a plug-in defined in `module`.

    For spam-bench's own plug-ins that is the layer package (`spam_bench.tasks`), so that llm4bit's
    fingerprint covers the llm modules it reuses; for anyone else, their top-level package.
    """
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "spam_bench" and len(parts) > 1 else parts[0]


@cache
def _distributions() -> dict[str, list[str]]:
    """Top-level import name -> distributions: a scan of every installed package's metadata (seconds
    on a full environment), so once per process, and only for a plug-in from outside spam-bench."""
    return dict(packages_distributions())


def _distribution(module: str) -> str | None:
    dists = _distributions().get(module.split(".")[0])
    return dists[0] if dists else None


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _installed(module: str) -> bool:
    """Whether `module` is a file of an installed (not editable) distribution: under site-packages."""
    path = _source(module)
    return path is not None and any(part in ("site-packages", "dist-packages") for part in path.parts)


@cache
def component_hash(module: str) -> str:
    """The hash of a plug-in's code, from the module that defines it.

    A plug-in from an installed distribution (torch.optim.SGD, a pip-installed optimizer package) is
    identified by that distribution's name and version: its files change only with its version, and
    parsing a whole library's import graph (torch: about 1,700 modules) cost half a minute per run.
    Code that is yours to edit (this project, an editable install, a notebook's module) is hashed."""
    if module.split(".")[0] != "spam_bench" and _installed(module) and (dist := _distribution(module)):
        return f"{dist}=={_version(dist)}"
    modules = module_closure(module, _package_of(module))
    if not modules:
        return "unknown"
    text = _hash_files(_named_files(modules))
    if module.split(".")[0] != "spam_bench" and (dist := _distribution(module)):
        text += f"+{dist}=={_version(dist)}"
    return text


def fingerprint(*, task_module: str, optimizer_module: str, libraries: Iterable[str]) -> dict[str, Any]:
    """The code identity of a (task, optimizer) pair: per-part hashes and an overall `id`."""
    parts: dict[str, Any] = {
        "suite": component_hash(SUITE_ENTRY),
        "task": component_hash(task_module),
        "optimizer": component_hash(optimizer_module),
        "libraries": {dist: _version(dist) for dist in sorted(set(ALWAYS_LIBRARIES) | set(libraries))},
    }
    blob = json.dumps(parts, sort_keys=True).encode()
    return {"id": hashlib.sha256(blob).hexdigest()[:12], **parts}


def changed_parts(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Which parts of a fingerprint differ, in words ('the optimizer's code', 'library torch')."""
    if not old:
        return ["no code fingerprint was recorded"]
    words = {"suite": "the suite's code", "task": "the task's code", "optimizer": "the optimizer's code"}
    out = [words[k] for k in words if old.get(k) != new.get(k)]
    old_libs, new_libs = old.get("libraries") or {}, new.get("libraries") or {}
    out += [
        f"library {d} {old_libs.get(d)} -> {new_libs.get(d)}"
        for d in sorted(set(old_libs) | set(new_libs))
        if old_libs.get(d) != new_libs.get(d)
    ]
    return out or ["the code fingerprint"]


@lru_cache(maxsize=1)
def project_git() -> dict[str, Any] | None:
    """The git commit and dirty flag of spam-bench's own checkout, or None.

    Only when this package is imported from a checkout of spam-bench itself: a wheel installed in a
    virtual environment that happens to live inside some other repository must not report that
    repository's commit.
    """
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, cwd=here, timeout=5
        )
        if top.returncode != 0:
            return None
        root = Path(top.stdout.strip())
        pyproject = root / "pyproject.toml"
        if not (
            pyproject.exists()
            and 'name = "spam-bench"' in pyproject.read_text()
            and (root / "suite" / "contract.py").resolve() == here / "contract.py"
        ):
            return None
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=root, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit or None, "dirty": bool(dirty)}
