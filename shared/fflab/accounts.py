"""Users and API keys.

A key is ``fflab_`` plus 43 URL-safe random characters (256 bits). Only its
sha256 is stored, with its first 14 characters as a public prefix for listings
and revocation.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from pathlib import Path
from urllib.parse import unquote_plus

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from fflab.db import ROLES, ApiKey, User, utcnow
from fflab.scheduling import priority_rank
from fflab.var_dir import private_dir

KEY_PREFIX = "fflab_"
KEY_TOKEN_BYTES = 32
PUBLIC_PREFIX_LENGTH = 14
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# A whole key: the prefix and 43 URL-safe characters (token_urlsafe of 32 bytes).
KEY_PATTERN = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{43}}")
# Anything that could hold a key, or part of its secret: the marker and more than the
# public prefix's characters. What follows the public prefix is redacted.
KEY_LIKE = re.compile(rf"({KEY_PREFIX}[A-Za-z0-9_-]{{{PUBLIC_PREFIX_LENGTH - len(KEY_PREFIX)}}})[A-Za-z0-9_-]+")
REDACTED = "[redacted]"


def is_key(text: str) -> bool:
    """Whether ``text`` is shaped like a whole key."""
    return KEY_PATTERN.fullmatch(text) is not None


def contains_key(text: str) -> bool:
    """Whether ``text`` holds more of a key than its public prefix, also
    percent-encoded (as in a URL)."""
    return KEY_LIKE.search(text) is not None or ("%" in text and KEY_LIKE.search(unquote_plus(text)) is not None)


def redact_keys(text: str) -> str:
    """``text`` with every key-like string cut to its public prefix and ``[redacted]``
    (a percent-encoded one is decoded first)."""
    if "%" in text and KEY_LIKE.search(unquote_plus(text)):
        text = unquote_plus(text)
    return KEY_LIKE.sub(rf"\1{REDACTED}", text)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_user(session: Session, name: str, role: str = "member") -> User:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"name must be 1-64 letters, digits, '_', '.', '@' or '-', starting with a "
            f"letter or digit; got {name!r}"
        )
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise ValueError(f"a user named {name!r} already exists")
    user = User(name=name, role=role)
    session.add(user)
    session.flush()
    return user


def set_share(user: User, share_weight: float | None = None, max_priority: str | None = None) -> None:
    """Set the user's fair-share weight (> 0) and highest allowed priority; None
    leaves either unchanged."""
    if share_weight is not None:
        if not (math.isfinite(share_weight) and share_weight > 0):
            raise ValueError(f"share_weight must be a finite number > 0; got {share_weight}")
        user.share_weight = share_weight
    if max_priority is not None:
        priority_rank(max_priority)
        user.max_priority = max_priority


def issue_key(session: Session, user: User) -> str:
    """A new key for ``user``; the only time the key itself is seen."""
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_TOKEN_BYTES)
    session.add(ApiKey(user=user, prefix=key[:PUBLIC_PREFIX_LENGTH], key_hash=hash_key(key)))
    session.flush()
    return key


def authenticate(session: Session, key: str) -> User | None:
    if not is_key(key):  # any bytes a client put in the header: not worth a query
        return None
    digest = hash_key(key)
    api_key = session.scalar(  # the key and its user in one query
        select(ApiKey).options(joinedload(ApiKey.user))
        .where(ApiKey.prefix == key[:PUBLIC_PREFIX_LENGTH], ApiKey.revoked_at.is_(None))
    )
    if api_key is None or not hmac.compare_digest(api_key.key_hash, digest):
        return None
    return api_key.user


def revoke_keys(session: Session, key_or_prefix: str | None = None, user_name: str | None = None) -> int:
    """Revoke one key (given whole or by its public prefix) or all keys of a user."""
    query = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    if user_name is not None:
        query = query.join(User).where(User.name == user_name)
    elif key_or_prefix is not None:
        query = query.where(ApiKey.prefix == key_or_prefix[:PUBLIC_PREFIX_LENGTH])
    else:
        raise ValueError("give a key, its prefix, or a user name")
    keys = list(session.scalars(query))
    for api_key in keys:
        api_key.revoked_at = utcnow()
    return len(keys)


def bootstrap_admin(session: Session, key_file: Path) -> str | None:
    """On a database with no users: create ``admin``, write its key to ``key_file``
    (mode 600) and return the key; otherwise None."""
    if session.scalar(select(func.count()).select_from(User)):
        return None
    key = issue_key(session, create_user(session, "admin", "admin"))
    private_dir(key_file.parent)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    key_file.chmod(0o600)
    return key
