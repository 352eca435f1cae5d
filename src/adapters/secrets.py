"""Secrets from a ``.env`` file (``[io] credentials_vault_path``) into the process environment.

Adapters such as the Redis and S3 stores take their credentials from environment variables
(docs/persistence.md); :func:`load_credentials` fills those variables from a file that is never
committed. The environment always wins: a variable that is already set, even to an empty
string, is left as it is, so a deployment can override any line of the file.

Format, one assignment per line (UTF-8, a leading byte-order mark allowed, ``\\n`` or ``\\r\\n``)::

    # a comment line; blank lines are ignored
    REDIS_PASSWORD=s3cr#t                   # unquoted: surrounding whitespace is stripped, and
    export USP_S3_BUCKET = snapshots        #   " #" starts a comment ("s3cr#t" keeps its "#")
    API_TOKEN='literal $HOME \\n'            # single quotes: every character as written
    GREETING="line one\\nline \\"two\\""       # double quotes: escapes \\\\ \\" \\n \\r \\t
                                            #   (any other backslash is kept as written)

* a name is ASCII letters, digits and underscores, not starting with a digit, optionally
  preceded by ``export``;
* there is no variable expansion (``$HOME`` stays ``$HOME``) and no multi-line value (write
  ``\\n`` inside double quotes);
* after a closing quote only whitespace and a ``#`` comment may follow;
* when a name appears twice, the later line wins (as in a shell);
* a value may not contain a NUL character (the environment cannot hold one).

The whole file is parsed before anything is set, so a malformed file changes nothing. Errors are
:class:`~usp.domain.ConfigError` naming the file and line; they never quote a line's contents, and
nothing here logs a value.
"""

from __future__ import annotations

import logging
import os
import re

from ..domain import ConfigError

__all__ = ["load_credentials"]

logger = logging.getLogger("usp.secrets")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_EXPORT = re.compile(r"export[ \t]+")
_COMMENT = re.compile(r"[ \t]#")  # in an unquoted value, "#" after whitespace starts a comment
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


class _LineError(Exception):
    """A problem with one line; the message never contains the line's value."""


def load_credentials(path: str | os.PathLike[str]) -> list[str]:
    """Set the variables of the ``.env`` file at ``path`` that the environment does not already
    hold, and return their names in the order the file first assigns them.

    A missing file returns ``[]`` (the file is optional). See the module documentation for the
    format.

    Raises:
        ConfigError: the file cannot be read (a directory, no permission), is not UTF-8, or has a
            malformed line (no ``=``, an invalid name, an unterminated quote, text after a
            closing quote, a NUL character). The message names the file and, for a line, its
            number, but never a value.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        logger.debug("no credentials file at %s", filename)
        return []
    except OSError as exc:
        raise ConfigError(f"credentials file {filename}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"credentials file {filename}, line {line}: not valid UTF-8 (byte offset "
                          f"{exc.start}); save the file as UTF-8") from None
    assignments = _parse(text, filename)
    loaded: list[str] = []
    for name, value in assignments.items():
        if name in os.environ:
            continue
        os.environ[name] = value
        loaded.append(name)
    logger.debug("credentials file %s: set %d variable(s) %s; %d already set in the environment",
                 filename, len(loaded), loaded, len(assignments) - len(loaded))
    return loaded


def _parse(text: str, filename: str) -> dict[str, str]:
    """``{name: value}`` of every assignment in ``text`` (later lines win, order of first use)."""
    assignments: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            name, value = _parse_assignment(stripped)
        except _LineError as exc:
            raise ConfigError(f"credentials file {filename}, line {number}: {exc}") from None
        assignments[name] = value
    return assignments


def _parse_assignment(line: str) -> tuple[str, str]:
    """``(name, value)`` of one stripped, non-comment line."""
    prefix = _EXPORT.match(line)
    if prefix and not _NAME.fullmatch(line.partition("=")[0].strip()):  # not a variable named "export"
        line = line[prefix.end():]
    if "=" not in line:
        raise _LineError("expected NAME=VALUE (no '=' on the line)")
    name, _, rest = line.partition("=")
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise _LineError("invalid variable name (ASCII letters, digits and underscores, not starting "
                         "with a digit, optionally after 'export ')")
    value = _parse_value(rest, name)
    if "\0" in value:
        raise _LineError(f"the value of {name} contains a NUL character")
    return name, value


def _parse_value(rest: str, name: str) -> str:
    """The value written as ``rest`` (everything after the ``=``)."""
    text = rest.lstrip()
    if text[:1] == "'":
        end = text.find("'", 1)
        if end < 0:
            raise _LineError(f"the value of {name} has no closing single quote")
        value, after = text[1:end], text[end + 1:]
    elif text[:1] == '"':
        value, after = _double_quoted(text, name)
    else:
        comment = _COMMENT.search(rest)
        return (rest[:comment.start()] if comment else rest).strip()
    after = after.strip()
    if after and not after.startswith("#"):
        raise _LineError(f"unexpected text after the closing quote of the value of {name}")
    return value


def _double_quoted(text: str, name: str) -> tuple[str, str]:
    """The unescaped content of the double-quoted value opening ``text``, and what follows it."""
    out: list[str] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(out), text[i + 1:]
        if char == "\\" and i + 1 < len(text):
            following = text[i + 1]
            out.append(_ESCAPES.get(following, "\\" + following))
            i += 2
            continue
        out.append(char)
        i += 1
    raise _LineError(f"the value of {name} has no closing double quote")
