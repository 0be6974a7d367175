"""Packing local files of a runtime_env into content-addressed zips kept in Redis.

A ``working_dir`` or ``py_modules`` entry is read on the submitting host, hashed by content,
zipped with fixed timestamps and uploaded once (``SET NX pkg:<hash>``); the env then names it
as ``pkg://<hash>``. Files matched by ``excludes`` or by a ``.gitignore`` inside the directory
stay behind (gitignore rules, as Ray applies them). A resolved env (every path replaced that
way) is itself stored once under its hash (``renv:<hash>``), which is what tasks carry in their
shape and nodes look up.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rayr.runtime_env.validation import PACKAGE_SCHEME, merge

if TYPE_CHECKING:
    import pathspec

DEFAULT_EXCLUDES = ("__pycache__", ".git", "*.pyc")
GITIGNORE = ".gitignore"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class _Ignores:
    """What to leave out of a package, by gitignore rules (``pathspec``), as Ray decides it:
    ``excludes`` (and the defaults) against paths relative to the package root, and each
    ``.gitignore`` found on the way against paths relative to its own directory. A path is
    left out when any of them matches it; nothing below a left-out directory is read."""

    def __init__(self, excludes: list[str]) -> None:
        import pathspec  # only when packaging: ~20 ms of every driver's import otherwise

        self._spec = pathspec.GitIgnoreSpec.from_lines
        # (directory relative to the root, "" or ending in "/"; its rules), outermost first
        self.rules: list[tuple[str, pathspec.PathSpec]] = [("", self._spec(excludes))]

    def enter(self, root: str, rel_dir: str) -> None:
        """Take up the ``.gitignore`` of directory ``rel_dir`` (relative to ``root``), if any."""
        path = os.path.join(root, rel_dir, GITIGNORE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                self.rules.append((rel_dir, self._spec(f.read().splitlines())))

    def excluded(self, rel: str, is_dir: bool) -> bool:
        # a trailing "/" marks a directory, so patterns like "data/" match it and not a file
        name = rel + "/" if is_dir else rel
        return any(name.startswith(base) and spec.match_file(name[len(base):]) for base, spec in self.rules)


def _walk(root: str, prefix: str, excludes: list[str]) -> Iterator[tuple[str, str]]:
    """(archive name, absolute path) of each file under ``root``, excluded ones skipped."""
    ignores = _Ignores(excludes)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        ignores.enter(root, rel_dir)
        dirnames[:] = sorted(d for d in dirnames if not ignores.excluded(rel_dir + d, True))
        for name in sorted(filenames):
            if not ignores.excluded(rel_dir + name, False):
                yield prefix + rel_dir + name, os.path.join(dirpath, name)


def _zip_members(source: str) -> list[tuple[str, bytes, int]]:
    """Files of a user-given zip; a single top-level directory is stripped, as Ray does."""
    with zipfile.ZipFile(source) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        tops = {i.filename.split("/", 1)[0] for i in infos}
        strip = len(tops) == 1 and all("/" in i.filename for i in infos)
        out = []
        for info in infos:
            name = info.filename.split("/", 1)[1] if strip else info.filename
            out.append((name, zf.read(info), (info.external_attr >> 16) or 0o644))
        return out


def collect(source: str, *, keep_name: bool, excludes: list[str], field: str = "working_dir"
            ) -> list[tuple[str, bytes, int]]:
    """(archive name, content, mode) of the files to ship for ``source``.

    ``keep_name``: the directory (or file) itself is the top-level entry (py_modules, so
    ``import <name>`` works); otherwise its contents are (working_dir).

    Raises:
        ValueError: ``source`` does not exist, or is neither a directory, a .zip nor a .py file.
    """
    path = os.path.abspath(source)
    patterns = [*DEFAULT_EXCLUDES, *excludes]
    if os.path.isdir(path):
        prefix = os.path.basename(path.rstrip(os.sep)) + "/" if keep_name else ""
        out = []
        for name, full in _walk(path, prefix, patterns):
            with open(full, "rb") as f:
                out.append((name, f.read(), os.stat(full).st_mode & 0o777))
        return out
    if os.path.isfile(path) and path.endswith(".zip"):
        return _zip_members(path)
    if os.path.isfile(path) and keep_name and path.endswith(".py"):
        with open(path, "rb") as f:
            return [(os.path.basename(path), f.read(), 0o644)]
    if not os.path.exists(path):
        raise ValueError(f"runtime_env {field!r}: the path {path} does not exist (given as {source!r})")
    kinds = "a directory, a .zip file or a .py file" if keep_name else "a directory or a .zip file"
    raise ValueError(f"runtime_env {field!r}: {path} must be {kinds}")


def content_hash(files: list[tuple[str, bytes, int]]) -> str:
    digest = hashlib.sha256()
    for name, data, mode in sorted(files):
        digest.update(f"{name}\0{mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:32]


def build_zip(files: list[tuple[str, bytes, int]]) -> bytes:
    """A zip with fixed timestamps (the same files give the same bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_DATE)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def upload(r: Any, keys: Any, source: str, *, keep_name: bool, excludes: list[str], limit: int) -> str:
    """Pack ``source`` and store it once in the cluster; returns its ``pkg://`` URI.

    Raises:
        ValueError: the path is missing, or the package is larger than ``limit`` bytes.
    """
    files = collect(source, keep_name=keep_name, excludes=excludes,
                    field="py_modules" if keep_name else "working_dir")
    digest = content_hash(files)
    key = keys.package(digest)
    if not r.exists(key):
        data = build_zip(files)
        if len(data) > limit:
            raise ValueError(
                f"runtime_env {'py_modules' if keep_name else 'working_dir'!r}: {os.path.abspath(source)} "
                f"packs to {len(data)} bytes, more than the "
                f"limit of {limit} bytes (setting runtime_env_max_package_bytes). Leave large files "
                "out with 'excludes', or ship data another way."
            )
        r.set(key, data, nx=True)
    return PACKAGE_SCHEME + digest


def resolve(env: dict[str, Any] | None, r: Any, keys: Any, limit: int) -> dict[str, Any]:
    """The env with local paths uploaded and replaced by ``pkg://`` URIs; ``excludes`` applied."""
    if not env:
        return {}
    out = {k: v for k, v in env.items() if k != "excludes"}
    excludes = list(env.get("excludes", []))
    if "working_dir" in env and not env["working_dir"].startswith(PACKAGE_SCHEME):
        out["working_dir"] = upload(r, keys, env["working_dir"], keep_name=False, excludes=excludes,
                                    limit=limit)
    if "py_modules" in env:
        out["py_modules"] = [
            m if m.startswith(PACKAGE_SCHEME)
            else upload(r, keys, m, keep_name=True, excludes=excludes, limit=limit)
            for m in env["py_modules"]
        ]
    return out


def env_hash(resolved: dict[str, Any]) -> str:
    """The name of a resolved env; "" for the empty env (the default workers)."""
    if not resolved:
        return ""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def register(r: Any, keys: Any, resolved: dict[str, Any]) -> str:
    """Store the resolved env once under its hash (nodes read it there); returns the hash."""
    digest = env_hash(resolved)
    if digest:
        r.set(keys.runtime_env(digest), json.dumps(resolved, sort_keys=True), nx=True)
    return digest


def lookup(r: Any, keys: Any, digest: str) -> dict[str, Any] | None:
    raw = r.get(keys.runtime_env(digest))
    return None if raw is None else dict(json.loads(raw))


def derive(parent: dict[str, Any] | None, env: dict[str, Any] | None, r: Any, keys: Any,
           limit: int) -> tuple[str, dict[str, Any]]:
    """(hash, resolved env) of a task whose own validated ``env`` is merged over ``parent``."""
    merged = merge(parent, resolve(env, r, keys, limit))
    return register(r, keys, merged), merged
