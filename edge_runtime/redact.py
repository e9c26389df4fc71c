"""Hides credentials in text before it is printed, logged, served or sent anywhere.

A camera URL such as ``rtsp://admin:hunter2@10.0.0.5/stream?token=abc`` ends up in error
messages, warnings, ``/healthz`` and systemd's status line; every one of those is readable
by someone who should not learn the camera's password. :func:`redact` replaces the
userinfo of every URL in a string, and the values of token-like parameters (query
strings, GStreamer ``user-pw=...`` properties), with ``***``.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://userinfo@ — greedy up to the last "@" before the path, so an unencoded "@" in
# a password ("admin:p@ss@host") is hidden too.
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#'\"<>]*@")

# Words that make a parameter's value secret wherever they appear in its name
# (access_token, api_key, apikey, X-Amz-Signature, client_secret, user-pw, passwd ...).
SECRET_WORDS = ("token", "key", "pass", "pwd", "pw", "secret", "auth", "sig", "credential",
                "session", "cookie")
_PARAM = re.compile(
    r"((?:^|[?&;,\s])[\w.\-]*(?:" + "|".join(SECRET_WORDS) + r")[\w.\-]*=)[^&#;,\s'\"<>]+",
    re.IGNORECASE)


def redact(text: object) -> str:
    """``text`` (made a string) with URL userinfo and secret parameter values as ``***``.

    Args:
        text: anything; a non-string is converted with ``str()`` first.

    Returns:
        The text with ``scheme://user:pass@host`` shown as ``scheme://***@host`` and
        ``?token=abc&x=1`` as ``?token=***&x=1``. Text without a URL or a ``key=value``
        comes back unchanged (and is not scanned by a regular expression at all).
    """
    s = text if isinstance(text, str) else str(text)
    if "://" in s:
        s = _USERINFO.sub(r"\1" + MASK + "@", s)
    if "=" in s:
        s = _PARAM.sub(r"\1" + MASK, s)
    return s


class RedactFilter(logging.Filter):
    """A logging filter that redacts every record's message (arguments merged in first).

    Install it on a handler (``handler.addFilter(RedactFilter())``) so that records of
    every logger, ours and third parties', pass through it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrites the record's message in place; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logged as it is
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Adds a :class:`RedactFilter` to every handler of ``logger`` (default: the root
    logger) that does not have one yet; call it after ``logging.basicConfig``."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
