"""Passwords in URLs (hpo.storage, tracking URIs) are never written to disk or printed.

`faultllm hpo hpo.storage=postgresql://user:PASSWORD@host/db` works, but the CLI takes the password
out of the override before Hydra sees it (so Hydra's .hydra/*.yaml, config.yaml and run_info.json
hold postgresql://user:***@host/db) and hands it to the job, and to the worker processes it starts,
in an environment variable. The command's own process still shows it to every user of the machine
(`ps`, /proc/PID/cmdline) while it runs: it warns once, naming the safe ways. Whatever still carries a
password on its way to a file or the console (a resolved ${oc.env:...}, an error message, a log line)
goes through `redact`.
"""

from __future__ import annotations

import logging
import os
import re
import sys

REDACTED = "***"
PASSWORD_ENV = "FAULTLLM_STORAGE_PASSWORD"  # the password taken out of hpo.storage, for this process and its workers
SECRET_OVERRIDES = ("hpo.storage=",)  # the overrides whose password the job puts back (`with_password`)
ARGV_WARNING = (
    "faultllm: warning: {key} has its password on the command line, where every user of this machine can read it "
    "(ps, /proc/PID/cmdline) while the command runs; instead export FAULTLLM_STORAGE=postgresql://user:PASSWORD@host/db "
    "and pass '{key}=${{oc.env:FAULTLLM_STORAGE}}', or use PGPASSWORD or ~/.pgpass"
)

# scheme://user:password@ : the user part has no ':' '/' '@', the password no '@' '/' (URL-encoded otherwise)
_USER_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@/\s]+)@")


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _USER_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)


def redact_tree(value):
    """A config container (dicts, lists, strings) with every string redacted."""
    if isinstance(value, dict):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(item) for item in value]
    return redact(value) if isinstance(value, str) else value


def password_of(url: str) -> str | None:
    """The password written in a URL, or None (none, or already ***)."""
    match = _USER_PASSWORD.search(url)
    return match["password"] if match and match["password"] != REDACTED else None


def hide_passwords(overrides: list[str]) -> list[str]:
    """The command line's overrides with the password of hpo.storage taken out into PASSWORD_ENV (this
    process's environment, which the job and its worker processes read): Hydra never sees it. This
    process's own command line keeps it: one warning on stderr says so."""
    hidden, warned = [], False
    for override in overrides:
        password = password_of(override) if override.startswith(SECRET_OVERRIDES) else None
        if password is not None:
            os.environ[PASSWORD_ENV] = password
            override = redact(override)
            if not warned:
                print(ARGV_WARNING.format(key=override.partition("=")[0]), file=sys.stderr)
                warned = True
        hidden.append(override)
    return hidden


def with_password(url: str) -> str:
    """The URL to connect with: a redacted password is put back from PASSWORD_ENV; without it the
    password is left out, for the driver's own sources (PGPASSWORD, ~/.pgpass)."""
    if f":{REDACTED}@" not in url:
        return url
    password = os.environ.get(PASSWORD_ENV)
    return url.replace(f":{REDACTED}@", f":{password}@" if password else "@", 1)


def worker_environment(url: str) -> dict[str, str]:
    """What a worker process needs besides the redacted URL: the password, in PASSWORD_ENV."""
    password = password_of(url) or os.environ.get(PASSWORD_ENV)
    return {PASSWORD_ENV: password} if password else {}


class RedactingFilter(logging.Filter):
    """A logging filter (configs/hydra/job_logging/faultllm.yaml) that redacts every record: the message
    with its arguments, and the formatted traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _USER_PASSWORD.search(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
