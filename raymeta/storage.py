"""Storage URIs: ``s3://bucket/prefix``, ``gs://bucket/prefix``, and any URI
``pyarrow.fs.FileSystem.from_uri`` opens, beside plain local paths. The one place that turns a URI
into a filesystem, moves files and directories to and from it, and words its errors.

A run's outputs, checkpoints and task files may live on object storage, so that a worker node needs
no shared disk and a replaced head node loses nothing (as Ray Train's
``RunConfig(storage_path=...)``). Everything else in raymeta reads and writes local paths: a URI is
staged in a local directory and copied with :func:`upload` / :func:`download`
(``pyarrow.fs.copy_files``), at the moments the caller chooses (a checkpoint is complete only when
its manifest, the last object written, is there: :mod:`raymeta.core.checkpoint`).

Endpoint and credentials come from the filesystem's own configuration: for S3 the standard
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` (or
``~/.aws``, or the node's instance role), which is how MinIO, Ceph or a local test server is reached
with no code change. A URI that carries credentials itself (``s3://KEY:SECRET@bucket``) is refused:
it would be saved with the run's config and printed in its log.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import RaymetaError

__all__ = ["StorageError", "is_uri", "join", "check_uri", "filesystem", "exists", "read_bytes",
           "read_text", "write_bytes", "upload", "download", "listing", "delete", "fetch",
           "local_model_path", "absolute", "staging_root", "local_path"]


class StorageError(RaymetaError):
    """A storage URI cannot be used: no such bucket, credentials refused, unknown scheme, object
    missing. The message names the URI; ``reason`` is the rest."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{_redact(uri)}: {reason}")
        self.uri, self.reason = _redact(uri), reason

    def __reduce__(self):  # crosses from a Ray actor to the driver as itself
        return (type(self), (self.uri, self.reason))


def is_uri(path: str | os.PathLike | None) -> bool:
    """``scheme://...`` other than ``file://`` (which is a local path)."""
    if path is None or isinstance(path, Path):
        return False
    scheme = str(path).split("://", 1)[0] if "://" in str(path) else ""
    return bool(scheme) and scheme.isidentifier() and scheme != "file"


def local_path(path: str | os.PathLike) -> Path:
    """A local path, ``file://`` stripped."""
    s = str(path)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


# Either form: join, exists, read_bytes / read_text, delete and absolute take a URI or a local
# path, so that a caller holding "a path or a URI" (output_dir, data_dir, --init) needs no branch
# of its own.


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for a URI (always ``/``) or a local path."""
    if not is_uri(base):
        return str(Path(base, *parts))
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def check_uri(uri: str, key: str = "output_dir") -> None:
    """A URI's form, before anything runs: no credentials inside it, a bucket (``netloc``) after the
    scheme."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise StorageError(f"{key} {_redact(uri)}",
                           "credentials inside the URI would be saved with the run and logged; "
                           "give them in the environment (AWS_ACCESS_KEY_ID, "
                           "AWS_SECRET_ACCESS_KEY) instead")
    if not parts.netloc:
        raise StorageError(f"{key} {uri}", f"no bucket after '{parts.scheme}://'")


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        return uri.replace(parts.netloc, "***@" + parts.netloc.rsplit("@", 1)[-1], 1)
    return uri


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    # pyarrow's S3 messages end with a request id: noise in a one-line error
    return line.split(" (Request ID:", 1)[0][:200]


def _fail(uri: str, what: str, e: BaseException) -> StorageError:
    msg = _first_line(e)
    if ("NO_SUCH_BUCKET" in msg or "bucket does not exist" in msg.lower()
            or "not found. To create buckets" in msg):
        return StorageError(uri, f"cannot {what}: the bucket '{urlsplit(uri).netloc}' does not "
                            "exist (create it first)")
    if any(s in msg for s in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                              "AccessDenied",
                              "INVALID_ACCESS_KEY", "403")):
        return StorageError(uri, f"cannot {what}: the credentials were refused (AWS_ACCESS_KEY_ID "
                            "/ AWS_SECRET_ACCESS_KEY, or the filesystem's own configuration)")
    return StorageError(uri, f"cannot {what} ({msg})")


def filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for ``uri``. An unknown scheme or an unusable
    endpoint is one line."""
    import pyarrow.fs as pafs

    check_uri(uri, "URI")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    # ArrowInvalid, ArrowNotImplementedError: a bad scheme
    except (ValueError, NotImplementedError, OSError) as e:
        raise _fail(uri, "open its filesystem", e) from None
    return fs, path.rstrip("/")


def _info(uri: str) -> Any:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise _fail(uri, "read", e) from None


def exists(path: str | os.PathLike) -> bool:
    """Whether anything (an object, a prefix; a file, a directory) is at the URI or local
    ``path``."""
    import pyarrow.fs as pafs

    if not is_uri(path):
        return local_path(path).exists()
    return _info(str(path)).type != pafs.FileType.NotFound


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The object at a URI (a missing one: a one-line :class:`StorageError` naming it), or the local
    file (``OSError`` as ``Path.read_bytes`` raises it)."""
    if not is_uri(uri):
        return local_path(uri).read_bytes()
    uri = str(uri)
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(uri, "not found") from None
    except OSError as e:
        raise _fail(uri, "read", e) from None


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """:func:`read_bytes`, decoded."""
    return read_bytes(path).decode(encoding)


def write_bytes(uri: str, data: bytes) -> None:
    """One object, written whole (an object store shows it only once it is complete)."""
    fs, path = filesystem(uri)
    try:
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise _fail(uri, "write", e) from None


def listing(uri: str, recursive: bool = False) -> dict[str, int | None]:
    """Relative path -> size (None for a directory) of what lies under ``uri``; empty when nothing
    does."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except OSError as e:
        raise _fail(uri, "list", e) from None
    out: dict[str, int | None] = {}
    for info in infos:
        rel = info.path[len(path):].lstrip("/")
        out[rel] = info.size if info.type == pafs.FileType.File else None
    return out


def delete(uri: str | os.PathLike) -> None:
    """A directory (prefix) and everything under it, or one object (a local file); nothing there is
    fine."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        local = local_path(uri)
        if local.is_dir() and not local.is_symlink():
            shutil.rmtree(local)
        elif local.exists() or local.is_symlink():
            local.unlink()
        return
    uri = str(uri)
    fs, path = filesystem(uri)
    try:
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)
    except OSError as e:
        raise _fail(uri, "delete", e) from None


def upload(local: str | Path, uri: str, *, skip: tuple[str, ...] = (),
           last: tuple[str, ...] = ()) -> None:
    """Copy the file or directory tree ``local`` to ``uri``. ``skip``: top-level names left out.
    ``last``: files (relative paths) written after every other one: a manifest, whose presence tells
    a reader the rest is there."""
    import pyarrow.fs as pafs

    local = Path(local)
    fs, path = filesystem(uri)
    try:
        if local.is_file():
            pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
            return
        files = sorted(p for p in local.rglob("*") if p.is_file()
                       and p.relative_to(local).parts[0] not in skip)
        rel = [p.relative_to(local).as_posix() for p in files]
        order = [r for r in rel if r not in last] + [r for r in last if r in rel]
        for r in order:
            pafs.copy_files(str(local / r), f"{path}/{r}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
    except OSError as e:
        raise _fail(uri, "write", e) from None


_CHUNK = 64 << 20


def download(uri: str, local: str | Path) -> Path:
    """Copy the object or prefix ``uri`` to the local path ``local`` (created); returns it."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    local = Path(local)
    try:
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            raise StorageError(uri, "not found")
        if kind == pafs.FileType.File:
            local.parent.mkdir(parents=True, exist_ok=True)
        else:
            local.mkdir(parents=True, exist_ok=True)
        # 64 MiB reads: copy_files' default (1 MiB) makes a ranged GET per MiB, which a server that
        # re-reads the object per request (moto's) turns into quadratic time
        # (benchmarks/checkpoint_storage.py, benchmarks/results/reliability.md:
        # 28.6 s against 1.6 s to pull a MiniLM checkpoint)
        pafs.copy_files(path, str(local), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem(),
                        chunk_size=_CHUNK)
    except OSError as e:
        raise _fail(uri, "read", e) from None
    return local


def _cache_root() -> Path:
    return Path(os.environ.get("RAYMETA_CACHE_DIR", Path.home() / ".cache" / "raymeta")) / "remote"


def fetch(uri: str) -> Path:
    """A local copy of the object or prefix ``uri``, for readers that need a path (a task's file,
    ``--init``'s model directory). Cached by URI, sizes and modification times: a changed object is
    fetched again."""
    import pyarrow.fs as pafs

    info = _info(uri)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(uri, "not found")
    tree = listing(uri, recursive=True) if info.type == pafs.FileType.Directory else {"": info.size}
    stamp = repr((uri, sorted(tree.items()), str(info.mtime)))
    key = hashlib.sha256(stamp.encode()).hexdigest()[:20]
    name = Path(urlsplit(uri).path).name or "root"
    target = _cache_root() / key / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        download(uri, tmp / name)
        # another process may have won the race: its copy is the same
        os.replace(tmp / name, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_model_path(name_or_path: str) -> str:
    """A model's ``name_or_path`` (or an ``--init``) as :mod:`raymeta.core.model` loads it: a
    storage URI fetched to a local copy (:func:`fetch`: cached, fetched again once it changed), on
    the node that calls this; a hub name, an alias or a local path as it is. The ``fetch=`` of
    core.model's loaders."""
    return str(fetch(name_or_path)) if is_uri(name_or_path) else name_or_path


def absolute(path: str | os.PathLike) -> str:
    """A URI as it is; a local path made absolute and resolved (for a process whose working
    directory is not this one's: a Ray task, a Tune trial)."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def staging_root() -> Path:
    """Where local stand-ins for storage URIs are made: ``$RAYMETA_STAGING_DIR``, else the system's
    temp dir."""
    root = Path(os.environ.get("RAYMETA_STAGING_DIR", tempfile.gettempdir()))
    root.mkdir(parents=True, exist_ok=True)
    return root
