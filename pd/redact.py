"""Keep secrets out of everything the harness writes: files, logs and error messages.

Two kinds of secret reach the harness: credentials inside URLs
(``https://user:password@host/v1``, e.g. ``generation.openai_base_url``) and API keys or
tokens (``OPENAI_API_KEY``, config keys such as ``api_key``). Whatever is recorded
(provenance, evaluation rows, cache entries, log lines) goes through :func:`redact`
first; log handlers get :class:`RedactingFilter`.

- :func:`redact_url` drops a URL's user-info and masks secret-looking query parameters.
- :func:`redact_text` does the same to every URL inside a free text, masks
  ``Bearer <token>`` and replaces any of the given secret values.
- :func:`redact` walks dicts, lists and tuples: values under secret-looking keys are
  masked, strings are passed through :func:`redact_text`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "[redacted]"

# A key names a secret when its last word (split on '_', '-', '.' or case change) is one of these, or it
# ends in one of the compound names. "max_tokens", "token_ids" and hashes such as "run_key" are not secrets.
_SECRET_WORDS = {"apikey", "token", "password", "passwd", "pwd", "secret", "authorization", "auth",
                 "credential", "credentials", "cookie", "bearer"}
_SECRET_ENDINGS = ("api_key", "access_key", "secret_key", "private_key", "session_key")
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@?#]*@)")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}")


def is_secret_key(name: Any) -> bool:
    """Whether a mapping key names a secret (``api_key``, ``OPENAI_API_KEY``, ``hf-token``, ``Authorization``...).

    Args:
        name: the key; non-strings are never secret names.

    Returns:
        True for names whose last word is a secret word (apikey, token, password, secret,
        authorization, auth, credential(s), cookie, bearer) or that end in ``api_key``,
        ``access_key``, ``secret_key``, ``private_key`` or ``session_key``; False otherwise
        (``max_tokens``, ``token_ids``, ``key``, ``run_key``...).
    """
    if not isinstance(name, str):
        return False
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_").replace(".", "_")
    words = [w for w in snake.split("_") if w]
    return bool(words) and (words[-1] in _SECRET_WORDS or "_".join(words).endswith(_SECRET_ENDINGS))


def redact_url(url: str) -> str:
    """``url`` without user-info and with secret-looking query values masked.

    Args:
        url: any URL, e.g. ``https://user:pw@host:8000/v1?api_key=x``.

    Returns:
        The same URL without ``user:pw@`` and with the values of query parameters whose
        names look secret (see :func:`is_secret_key`) replaced by ``[redacted]``:
        ``https://host:8000/v1?api_key=%5Bredacted%5D``. Text that is not a URL comes back
        unchanged.
    """
    if not isinstance(url, str) or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_USERINFO.sub(r"\g<scheme>", url)
    pairs = parse_qsl(parts.query, keep_blank_values=True) if parts.query else []
    secret_query = any(is_secret_key(k) for k, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return url  # nothing to hide: the text stays exactly as it was
    query = urlencode([(k, MASK if is_secret_key(k) else v) for k, v in pairs]) if secret_query else parts.query
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, query, parts.fragment))


def split_url_credentials(url: str | None) -> tuple[str | None, str | None]:
    """A URL without its user-info, and the secret that user-info carried.

    ``https://user:key@host/v1`` -> (``https://host/v1``, ``key``); ``https://key@host/v1`` ->
    (``https://host/v1``, ``key``) (a lone user name is a token); any other URL comes back
    unchanged with None. The query is kept as it is (it is the server's address, not only a secret).

    Args:
        url: a URL, or None.

    Returns:
        ``(url without user-info, password or lone user name)``.
    """
    if not isinstance(url, str) or "://" not in url:
        return url, None
    try:
        parts = urlsplit(url)
        secret = parts.password if parts.password else parts.username
    except ValueError:
        return _URL_USERINFO.sub(r"\g<scheme>", url), None
    if "@" not in parts.netloc:
        return url, None
    bare = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment))
    return bare, unquote(secret) if secret else None


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL redacted (:func:`redact_url`), bearer tokens and the given secret values masked.

    Args:
        text: free text such as a log line or an error message.
        secrets: exact values to mask wherever they occur (e.g. the API key in use);
            empty and very short values (under 4 characters) are ignored.

    Returns:
        The redacted text.
    """
    if not isinstance(text, str):
        return text
    for s in secrets:
        if isinstance(s, str) and len(s) >= 4:
            text = text.replace(s, MASK)
    text = _URL_USERINFO.sub(r"\g<scheme>", text)
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


def redact(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``obj`` safe to write: secret-named values masked, URLs without credentials.

    Args:
        obj: JSON-like data (dicts, lists, tuples, strings, numbers, None); other objects
            come back as they are.
        secrets: exact secret values to mask inside strings (see :func:`redact_text`).

    Returns:
        The same structure; under a secret-looking key (see :func:`is_secret_key`) a
        non-empty value becomes ``"[redacted]"`` (None and "" stay, so "no key" remains
        visible); every string is passed through :func:`redact_text`.
    """
    secrets = tuple(secrets)
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (after %-formatting) in place.

    Attach it to handlers (``handler.addFilter(RedactingFilter())``) so that every record
    they write is covered, or to a logger to cover the records created on that logger.
    """

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = set(secrets)

    def add_secret(self, value: str | None) -> None:
        """Also mask ``value`` (e.g. an API key in use) from now on."""
        if value:
            self.secrets.add(value)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed record: leave it to the handler's own error path
            return True
        clean = redact_text(message, self.secrets)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


_LOGGER_FILTER = RedactingFilter()


def redact_logger(name: str, secret: str | None = None) -> None:
    """Redact every record created on logger ``name`` (once per logger), also masking ``secret``.

    Args:
        name: a logger name such as ``"httpx"`` (which logs request URLs, user-info included).
        secret: a value to mask from now on in records of every logger so redacted.
    """
    _LOGGER_FILTER.add_secret(secret)
    logger = logging.getLogger(name)
    if _LOGGER_FILTER not in logger.filters:
        logger.addFilter(_LOGGER_FILTER)


KEY_VARIABLE = "OPENAI_API_KEY"


def export_url_key(base_url: str | None, environ: dict | None = None) -> str | None:
    """Move the secret of a base URL's user-info into ``OPENAI_API_KEY`` and return the URL without it.

    Jobs started afterwards (local processes, and SLURM jobs submitted with ``--export=ALL``)
    inherit the variable, so their specifications, which Snakemake records in
    ``.snakemake/metadata``, need only the bare URL. The URL's secret replaces a key already set:
    the config named this server with it.

    Args:
        base_url: ``generation.openai_base_url`` (None: nothing to do).
        environ: the environment to set (default ``os.environ``).

    Returns:
        The URL without user-info (None for None).
    """
    bare, secret = split_url_credentials(base_url)
    if secret:
        (os.environ if environ is None else environ)[KEY_VARIABLE] = secret
    return bare
