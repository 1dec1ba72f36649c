"""Atomic, resumable checkpoints: safetensors + JSON only (never pickle).

Layout of ``<output_dir>/checkpoints/step-00000050/``::

    model/                      encoder via save_pretrained (safetensors) + tokenizer (LoRA:
                                merged), and its sentence-transformers files (:mod:`.st_folder`)
    model/adapter/              model.trainable: lora only: the peft adapter + tokenizer
    trainer_state.safetensors   outer optimizer moments, heads, head optimizers (and, unless
                                model.trainable is full, the trainable parameters: ``shared.*``)
    trainer_state.json          step, scheduler, param groups, mixture, RNG note
    config.yaml                 the resolved config
    manifest.json               every other file's size and SHA-256 (written last)

Each checkpoint is written into a hidden temporary directory, fsynced, then renamed into
place; ``LATEST`` is replaced atomically afterwards. A kill at any moment leaves either
the previous checkpoint or the new one, never half of one: old checkpoints, too, are renamed
to a hidden name before they are deleted, so every ``step-*`` directory is complete. Hidden
leftovers of a killed writer are never read, and the next save removes them.

A checkpoint counts only when its manifest is there and every file matches it: a checkpoint damaged
after it was written (a truncated file, a file changed, a manifest lost) is passed over for the
newest complete one, with a warning naming the file. On object storage, which has no rename, the
manifest is the last object uploaded (:mod:`raymeta.train.checkpoint_mirror`), so the same rule
makes those checkpoints atomic too. This module reads and writes local paths only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ExperimentConfig, save_config
from ..errors import ModelError, RaymetaError
from .jsonio import dumps as strict_dumps
from .model_card import write_model_card
from .st_folder import write_sentence_transformers
from .trainable import is_peft, merged_copy

__all__ = ["ADAPTER_DIR", "MANIFEST", "save_checkpoint", "latest_checkpoint", "load_checkpoint",
           "load_encoder_weights", "export_model", "share_files", "atomic_dir",
           "checkpoint_problem", "is_step_dir"]

log = logging.getLogger("raymeta.train")

_STEP_DIR = re.compile(r"^step-(\d{8})$")
ADAPTER_DIR = "adapter"  # model.trainable: lora: the peft adapter, beside the merged model
_STATE = "trainer_state.json"
# written last: each file's size and SHA-256; a checkpoint without it is incomplete
MANIFEST = "manifest.json"


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable, not only its files."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(root)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(root: Path) -> None:
    files = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (root / MANIFEST).write_text(strict_dumps({"format": 1, "files": files}, indent=1,
                                              sort_keys=True))


def _read_manifest(path: Path) -> dict[str, dict[str, Any]] | str:
    """The manifest's files, or what is wrong with it (naming the file)."""
    f = path / MANIFEST
    if not f.is_file():
        return f"{f}: missing (the checkpoint was not written to the end)"
    try:
        files = json.loads(f.read_text())["files"]
        assert isinstance(files, dict) and all({"size", "sha256"} <= set(v) for v in files.values())
        return files
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{f}: not a readable manifest"


def checkpoint_problem(path: str | Path, *, checksums: bool = True) -> str | None:
    """What is wrong with the checkpoint directory ``path`` (one line naming the file), or None when
    every file its manifest lists is there with its size (and, with ``checksums``, its SHA-256)."""
    path = Path(path)
    files = _read_manifest(path)
    if isinstance(files, str):
        return files
    for rel, want in files.items():
        f = path / rel
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != want["size"]:
            return (f"{f}: {f.stat().st_size} bytes, the manifest says {want['size']} (truncated "
                    "or changed)")
        if checksums and _sha256(f) != want["sha256"]:
            return f"{f}: its SHA-256 differs from the manifest's (changed or damaged)"
    return None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _remove_dir(path: Path) -> None:
    """Rename (atomic), then delete: a kill halfway through a delete leaves a hidden leftover, never
    a half-deleted directory under its real name that still looks complete."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _writer_gone(pid: int) -> bool:
    if pid == os.getpid():  # this process writes one checkpoint at a time: an own leftover is stale
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    # a killed process its parent has not reaped yet still answers kill(pid, 0): a zombie (Linux)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _remove_leftovers(root: Path, names: str) -> None:
    """Remove what killed writers left in ``root``: ``.tmp-NAME-PID``, ``.old-NAME-PID``,
    ``.trash-NAME-PID`` (NAME matching the regex ``names``) and ``.LATEST.tmpPID``, once process PID
    is gone."""
    pattern = re.compile(rf"^\.(?:(?:tmp|old|trash)-(?:{names})-|LATEST\.tmp)(\d+)$")
    for p in root.iterdir():
        m = pattern.match(p.name)
        if m and _writer_gone(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


class atomic_dir:
    """``with atomic_dir(target) as tmp:`` write into ``tmp``; on success it becomes ``target``."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.tmp = self.target.with_name(f".tmp-{self.target.name}-{os.getpid()}")

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(self.target.parent, re.escape(self.target.name))
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        _fsync_tree(self.tmp)
        old = self.target.with_name(f".old-{self.target.name}-{os.getpid()}")
        # rename can't replace a non-empty dir: move the old one aside first
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        _fsync_dir(self.target.parent)
        shutil.rmtree(old, ignore_errors=True)


def _save_encoder(encoder: torch.nn.Module, path: Path, tokenizer: Any,
                  cfg: ExperimentConfig | None = None, pooling: str | None = None) -> None:
    """A complete Hugging Face model directory at ``path``, which is a sentence-transformers one
    too: its files describe raymeta's pooling (``pooling``, else ``cfg.model.pooling``, else the
    family's default; :func:`~raymeta.core.st_folder.write_sentence_transformers`). Under
    ``model.trainable: lora`` the adapters are merged into it (``AutoModel.from_pretrained`` needs
    no peft, and the sentence-transformers files describe the merged model), and ``path/adapter``
    holds the peft adapter itself (``PeftModel.from_pretrained(base, path/adapter)``), with the
    tokenizer in both."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per save is noise in a step log
    full = merged_copy(encoder)
    # The trainer's parameters are views into one flat buffer; save_pretrained would take
    # views of one storage for tied weights, so it gets independent copies.
    sd = {k: v.detach().clone().contiguous() for k, v in full.state_dict().items()}
    full.save_pretrained(path, state_dict=sd, safe_serialization=True)
    tokenizer.save_pretrained(path)
    write_sentence_transformers(path, full, tokenizer, cfg, pooling=pooling)
    if is_peft(encoder):
        # the embeddings are not adapted: nothing to save of them (and no probe of the base's
        # vocabulary)
        encoder.save_pretrained(path / ADAPTER_DIR, safe_serialization=True,
                                save_embedding_layers=False)
        tokenizer.save_pretrained(path / ADAPTER_DIR)


# share_files: smaller files (the model card, configs) stay a directory's own, so that editing one
# in place never changes the other directory
SHARE_MIN_BYTES = 1 << 20


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def share_files(path: Path, other: Path, *, min_bytes: int = SHARE_MIN_BYTES) -> list[str]:
    """Replace each file under ``path`` of at least ``min_bytes`` whose bytes equal those of the
    file at the same relative path under ``other`` by a hard link to that file (``final/`` written
    at the step ``best/`` holds: the weights once on disk). Byte-checked, so a stale ``other`` is
    never linked to. Where no link can be made (another filesystem, a filesystem without hard
    links), the copy stays. Each link replaces its file by a rename. Returns the relative paths now
    shared."""
    shared: list[str] = []
    for p in sorted(path.rglob("*")):
        if p.is_symlink() or not p.is_file() or p.stat().st_size < min_bytes:
            continue
        rel = p.relative_to(path)
        q = other / rel
        if q.is_symlink() or not q.is_file() or os.path.samefile(p, q) or not _same_bytes(p, q):
            continue
        link = p.with_name(f".{p.name}.link{os.getpid()}")
        link.unlink(missing_ok=True)
        try:
            os.link(q, link)
        except OSError as e:  # EXDEV (another filesystem), EPERM or ENOTSUP (no hard links)
            log.debug("%s: not linked to %s (%s); kept as a copy", p, q, e)
            continue
        os.replace(link, p)
        shared.append(rel.as_posix())
    return shared


def export_model(target: Path, encoder: torch.nn.Module, tokenizer: Any, *,
                 files: dict[str, str] | None = None,
                 cfg: ExperimentConfig | None = None, step: int | None = None,
                 card: dict[str, Any] | None = None, pooling: str | None = None,
                 share_with: Path | None = None) -> Path:
    """A directory loadable by ``AutoModel.from_pretrained``, ``SentenceTransformer`` and
    ``SetFitModel.from_pretrained`` (atomic), embedding with ``pooling`` (default:
    ``cfg.model.pooling``, else the family's); with LoRA, also ``target/adapter`` (see
    :func:`_save_encoder`). ``files``: more text files to write into it (name -> text), inside the
    same atomic rename (``best``'s score travels with its weights). With ``cfg``, the directory gets
    a Hugging Face model card (``README.md``) of the run at ``step``; ``card``: its extra fields.
    ``share_with``: a directory exported from the same parameters (``best/`` at ``final/``'s step):
    the large files that are byte-identical in it become hard links to its (:func:`share_files`)
    before the rename."""
    with atomic_dir(target) as tmp:
        _save_encoder(encoder, tmp, tokenizer, cfg, pooling)
        if cfg is not None:
            write_model_card(tmp, cfg, step=int(step or 0), extra=card)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if share_with is not None and Path(share_with).is_dir():
            share_files(tmp, Path(share_with))
    return target


def save_checkpoint(
    output_dir: str | Path, step: int, *, encoder: torch.nn.Module, tokenizer: Any,
                    cfg: ExperimentConfig,
    tensors: dict[str, torch.Tensor], state: dict[str, Any], keep_last: int = 2,
) -> Path:
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root, r"step-\d{8}")
    target = root / f"step-{step:08d}"
    # Checkpoints after this step belong to another timeline (an earlier run in this directory, or
    # the steps after the checkpoint this run was restored from): removed first, so that the newest
    # complete checkpoint is always this run's latest one.
    for later in sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name)
                        and p.name > target.name):
        _remove_dir(later)
    try:
        with atomic_dir(target) as tmp:
            _save_encoder(encoder, tmp / "model", tokenizer, cfg)
            write_model_card(tmp / "model", cfg, step=step)
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                      str(tmp / "trainer_state.safetensors"))
            save_config(cfg, tmp)
            (tmp / _STATE).write_text(strict_dumps({**state, "step": step}, indent=1,
                                                   sort_keys=True))
            _write_manifest(tmp)
        _atomic_write_text(root / "LATEST", target.name + "\n")
    # the disk is full, or gone: the previous checkpoint is intact (atomic_dir)
    except (OSError, SafetensorError) as e:
        code = _io_errno(e)
        if code not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES):
            raise
        prev = latest_checkpoint(output_dir, warn=False)
        raise RaymetaError(f"checkpoint {target}: cannot be written ({os.strerror(code)}); "
                           + (f"the previous one, {prev.name}, is intact: free space, then --resume"
                              if prev is not None
                              else "no earlier checkpoint to resume from")) from None
    for old in sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))[:-keep_last]:
        _remove_dir(old)
    return target


def _io_errno(e: BaseException) -> int | None:
    """The errno of a failed write: an ``OSError``'s, or the ``(os error N)`` that safetensors' Rust
    writer puts in its message instead (a full disk under ``save_file`` is a
    ``SafetensorError``)."""
    if isinstance(e, OSError):
        return e.errno
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m else None


def is_step_dir(name: str) -> bool:
    """Whether ``name`` is a checkpoint's directory name (``step-00000050``), local or under a
    URI."""
    return _STEP_DIR.match(name) is not None


def latest_checkpoint(output_dir: str | Path, *, warn: bool = True) -> Path | None:
    """The newest complete checkpoint (:func:`checkpoint_problem`). It is also the one ``LATEST``
    names, except after a kill between a checkpoint's rename into place and the ``LATEST`` update:
    then the newer, complete one wins. A damaged newer one is passed over, with a warning naming the
    file (``warn``)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for p in sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name)), reverse=True):
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        if warn:
            log.warning("checkpoint %s is incomplete or damaged (%s); trying an older one", p.name,
                        problem)
    return None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    p = Path(path)
    try:
        tensors = load_file(str(p / "trainer_state.safetensors"))
        state = json.loads((p / _STATE).read_text())
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"checkpoint {p}: cannot be read "
                         f"({str(e).splitlines()[0][:160]})") from None
    return tensors, state


def load_encoder_weights(encoder: torch.nn.Module, model_dir: str | Path) -> None:
    """Load ``model.safetensors`` into an existing encoder; a different architecture is one clear
    line."""
    f = Path(model_dir) / "model.safetensors"
    try:
        sd = load_file(str(f))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"checkpoint {f}: not a readable safetensors file "
                         f"({str(e).splitlines()[0][:160]})") from None
    own = encoder.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        k = (bad or missing or extra)[0]
        what = (f"shape {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" if bad else "missing"
                if missing else "unexpected")
        raise ModelError(f"checkpoint {f}: different architecture from the configured model "
                         f"(tensor '{k}': {what})")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k])
