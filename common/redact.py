"""Secrets out of what is printed: `mask_url` for every URL flowaudit logs or shows.

A URL may carry credentials in several places, and each must be masked:
- the user-info of every host of a multi-host authority (`kafka://u:p@h1:9092,u2:p2@h2:9092`);
- a password that itself contains `@` or `:` (`http://user:p@ss@host`: the host starts after the last `@`);
- a user-info with an empty user (`https://:secret@host`) or with no scheme (`user:secret@host:9092`);
- query parameters that hold secrets (`?password=…`, `&token=…`, `access_key=…`).
A user name alone (`http://reader@host`) is not a secret and stays readable.
"""

from __future__ import annotations

import re

MASK = "***"
_SCHEME = re.compile(r"^[a-z][a-z0-9+._-]*://", re.I)  # only with `//`: `user:secret@host` has none
_HOST = re.compile(r"^(?:\[[0-9a-f:.]+\]|[^:@\[\]]+)(?::\d*)?$", re.I)
_SECRET_PARAMETER = re.compile(
    r"(?P<name>[?&;](?:[a-z0-9_.-]*(?:password|passwd|pwd|secret|token|key|credential)[a-z0-9_.-]*)=)"
    r"(?P<value>[^&;#]*)",
    re.I,
)


def _mask_authority_part(part: str) -> str:
    """One `user:password@host:port` of an authority: the password masked, the rest kept."""
    userinfo, at, host = part.rpartition("@")
    if not at:
        return part
    user, colon, password = userinfo.partition(":")
    return f"{user}:{MASK}@{host}" if colon and password else part


def mask_url(url: str | None) -> str | None:
    """The URL with every password and secret query parameter replaced by `***`."""
    if url is None:
        return None
    head = _SCHEME.match(url)
    prefix = head.group(0) if head else ""
    rest = url[len(prefix) :]
    # the authority ends at the first '/', '?' or '#' after the last '@' (a password may hold '/')
    last_at = rest.rfind("@")
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark, last_at + 1)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    masked = ",".join(_mask_authority_part(part) for part in _split_hosts(authority))
    tail = _SECRET_PARAMETER.sub(lambda m: f"{m['name']}{MASK}", tail)
    return prefix + masked + tail


def _split_hosts(authority: str) -> list[str]:
    """Split `u:p@h1:1,u2:p2@h2:2` on the commas between hosts, not on commas inside a password."""
    parts: list[str] = []
    current = ""
    for piece in authority.split(","):
        current = f"{current},{piece}" if current else piece
        # a piece ends a host when what follows its last '@' (or the whole piece) is host[:port]
        if _HOST.match(piece.rpartition("@")[2]):
            parts.append(current)
            current = ""
    if current:
        parts.append(current)
    return parts
