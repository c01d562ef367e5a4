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
import unicodedata
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote_plus

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from fflab.db import ROLES, ApiKey, User, utcnow
from fflab.db.models import UiSession
from fflab.scheduling import priority_rank
from fflab.var_dir import private_dir

KEY_PREFIX = "fflab_"
KEY_TOKEN_BYTES = 32
PUBLIC_PREFIX_LENGTH = 14
# A normalised name (``normalise_name``), matched whole (``fullmatch``: a trailing
# newline is not a character ``$`` may skip).
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
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


class InvalidName(ValueError):
    """A user name that is not allowed (422, field ``name``)."""


class NameClash(ValueError):
    """A user name equal or confusable with an existing user's (409, field ``name``)."""


def normalise_name(name: str) -> str:
    """``name`` as it is stored and looked up: NFKC, then casefolded; InvalidName
    unless it is then 1-64 of a-z, 0-9, '_', '.', '@', '-', starting with a letter or
    digit. The one check of both the API (POST /v1/admin/users) and the CLI
    (``fflab admin create-user``)."""
    normal = unicodedata.normalize("NFKC", name).casefold() if isinstance(name, str) else ""
    if not NAME_PATTERN.fullmatch(normal):
        raise InvalidName(
            f"name: must be 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or "
            f"digit (compared without case); got {name!r}"
        )
    return normal


@lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """Each confusable character's prototype, from Unicode's confusables.txt as the
    ``confusable_homoglyphs`` package ships it: a prototype lists all its confusables,
    a confusable lists its prototype alone; where two characters only list each
    other, the smaller stands for both."""
    from confusable_homoglyphs.confusables import confusables_data

    table: dict[str, str] = {}

    def clean(text: str) -> str:
        return text.replace("\u200e", "").replace("\u200f", "")

    for key, entries in confusables_data.items():
        targets = [clean(entry["c"]) for entry in entries]
        if len(targets) > 1:  # a prototype: each of its confusables maps to it
            for target in targets:
                if len(target) == 1:
                    table.setdefault(target, clean(key))
    for key, entries in confusables_data.items():
        if len(key) == 1 and key not in table and len(entries) == 1:
            target = clean(entries[0]["c"])
            table[key] = table.get(target, min(key, target) if len(target) == 1 else target)
    return table


def skeleton(text: str) -> str:
    """Unicode TR39's skeleton: NFD, each character replaced by its prototype, NFD."""
    table = _prototypes()
    return unicodedata.normalize(
        "NFD", "".join(table.get(char, char) for char in unicodedata.normalize("NFD", text)))


def _clash_keys(name: str) -> set[str]:
    """The skeletons a name is compared by: of its NFKC form and of its normalised
    form (case folding turns 'I' into 'i', which no longer looks like 'l')."""
    nfkc = unicodedata.normalize("NFKC", name)
    return {skeleton(nfkc), skeleton(nfkc.casefold())}


def find_user(session: Session, name: str, for_update: bool = False) -> User | None:
    """The user called ``name`` (normalised first); None if there is none. The one
    lookup by name of the API, the web UI and the CLI; ``for_update`` locks the row
    until the transaction ends."""
    try:
        normal = normalise_name(name)
    except InvalidName:
        return None
    query = select(User).where(func.lower(User.name) == normal)
    return session.scalar(query.with_for_update() if for_update else query)


def create_user(session: Session, name: str, role: str = "member") -> User:
    """A new user named ``normalise_name(name)``: InvalidName if it is not a valid
    name, NameClash if it equals or is confusable (same TR39 skeleton) with an
    existing user's."""
    normal = normalise_name(name)
    if role not in ROLES:
        raise InvalidName(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    keys = _clash_keys(name) | _clash_keys(normal)
    for existing in session.scalars(select(User.name)):
        if existing.casefold() == normal or keys & (_clash_keys(existing)):
            raise NameClash(f"name: {name!r} is taken or too like the existing user {existing!r} "
                            f"(names are compared without case and by Unicode's confusable skeleton)")
    user = User(name=normal, role=role)
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
        user = find_user(session, user_name)
        query = query.where(ApiKey.user_id == (user.id if user is not None else -1))
    elif key_or_prefix is not None:
        query = query.where(ApiKey.prefix == key_or_prefix[:PUBLIC_PREFIX_LENGTH])
    else:
        raise ValueError("give a key, its prefix, or a user name")
    keys = list(session.scalars(query))
    for api_key in keys:
        api_key.revoked_at = utcnow()
    return len(keys)


# ----------------------------------------------------------------------------- UI sessions


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def open_ui_session(session: Session, api_key: ApiKey, ttl_s: float) -> str:
    """A new web UI session opened with ``api_key``: its id (only its hash is stored)."""
    session_id = secrets.token_urlsafe(32)
    now = utcnow()
    session.query(UiSession).filter(UiSession.expires_at <= now).delete()  # ended ones go
    session.add(UiSession(id_hash=_session_hash(session_id), api_key_id=api_key.id, created_at=now,
                          expires_at=now + timedelta(seconds=ttl_s)))
    session.flush()
    return session_id


def ui_session_user(session: Session, session_id: str) -> User | None:
    """The user of a live UI session: not signed out, not expired, its key not revoked."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", session_id or ""):
        return None
    return session.scalar(
        select(User).join(ApiKey, ApiKey.user_id == User.id).join(UiSession, UiSession.api_key_id == ApiKey.id)
        .where(UiSession.id_hash == _session_hash(session_id), UiSession.expires_at > utcnow(),
               ApiKey.revoked_at.is_(None)))


def close_ui_session(session: Session, session_id: str) -> None:
    """Sign-out: the session is deleted."""
    session.query(UiSession).filter(UiSession.id_hash == _session_hash(session_id)).delete()


def api_key_of(session: Session, key: str) -> ApiKey | None:
    """The live ApiKey row of a whole key, or None."""
    user = authenticate(session, key)
    if user is None:
        return None
    return session.scalar(select(ApiKey).where(ApiKey.prefix == key[:PUBLIC_PREFIX_LENGTH]))


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
