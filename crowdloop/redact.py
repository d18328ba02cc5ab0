"""Keep credentials out of log records that libraries write at DEBUG level.

botocore logs every request it sends at DEBUG, ``Authorization`` header included, which
carries the access key id (``Credential=AKIA.../...``) and, with temporary credentials, the
session token in ``X-Amz-Security-Token``. A user who turns on DEBUG logging (or forwards
botocore's logs to Prefect) must not find them in their logs, so the modules that use boto3
attach this filter to botocore's loggers. Nothing is imported from boto3 here.
"""

from __future__ import annotations

import logging
import re

BOTOCORE_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.hooks", "botocore.retryhandler",
                    "botocore.httpsession", "botocore.parsers")

_PATTERNS = [
    (re.compile(r"(Credential=)[^/,\s'\"]+"), r"\1***"),
    (re.compile(r"(['\"](?:Authorization|X-Amz-Security-Token)['\"]:\s*b?)(['\"])[^'\"]*\2", re.IGNORECASE), r"\1\2***\2"),
    (re.compile(r"(x-amz-security-token:)\S+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(X-Amz-Security-Token=)[^&\s'\"]+", re.IGNORECASE), r"\1***"),
]


def redact(text: str) -> str:
    """``text`` with AWS credential fields replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactCredentials(logging.Filter):
    """Rewrites a record's message without credentials (runs only for records that are emitted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to the handler's own error path
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def protect_loggers(names: tuple[str, ...] = BOTOCORE_LOGGERS) -> None:
    """Attach ``RedactCredentials`` to each named logger once."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())
