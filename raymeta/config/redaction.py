"""Secrets out of whatever is saved or logged: values under a secret's name, and token-shaped
strings."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["is_secret_key", "redact"]

# Names of secrets, matched against a key's whole name or its last one to three words (``hf_token``,
# ``use_auth_token``, ``aws_secret_access_key``, ``apiKey``), never as substrings:
# ``model.tokenizer`` or a ``max_tokens`` is a setting, and redacting it would save a config.yaml
# that no longer reloads as its run.
_SECRET_NAMES = frozenset({
    "token", "secret", "password", "passwd", "auth", "credential", "credentials",
    "api_key", "apikey", "access_key", "secret_key", "private_key", "secret_access_key",
})
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})\b")


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret: ``token``, ``hf_token``, ``api_key``,
    ``client_secret``... (not ``tokenizer``, ``max_tokens``, ``pad_token_id``)."""
    camel = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key))  # apiKey -> api_Key
    words = [w for w in re.split(r"[_\-.\s]+", camel.lower()) if w]
    return any("_".join(words[-n:]) in _SECRET_NAMES for n in (1, 2, 3) if n <= len(words))


def redact(obj: Any) -> Any:
    """Replace secret values before anything is logged or saved: those under a secret's name
    (:func:`is_secret_key`), and hub-token- or AWS-key-shaped strings anywhere."""
    if isinstance(obj, dict):
        return {k: ("***" if is_secret_key(k) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return _SECRET_VALUE.sub("***", obj)
    return obj
