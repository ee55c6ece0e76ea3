"""API keys: only a SHA-256 digest of each key is stored, never the key itself.

A key is 256 random bits, so a fast unsalted digest is as safe as a slow password hash here
(there is nothing to brute-force) and lets a request be checked with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

import peewee

from skillq.storage.models import BaseModel, utcnow

#: Every key starts with this, so a key pasted into `Authorization: Bearer` is recognisable
#: and secret scanners can find leaked ones.
KEY_PREFIX = "skq_"


class ApiKey(BaseModel):
    name = peewee.CharField(max_length=200, unique=True)
    digest = peewee.CharField(max_length=64, unique=True)
    role = peewee.CharField(max_length=32)
    created_at = peewee.DateTimeField()
    revoked_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "skillq_api_key"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(name: str, role: str) -> tuple[ApiKey, str]:
    """A new key for `name`; returns the row and the key, which is shown once and then lost.

    Raises `peewee.IntegrityError` if the name is taken (revoked names stay taken, so a log
    line naming a key always means one key).
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.create(name=name, digest=digest_of(key), role=role, created_at=utcnow())
    return row, key


def find_active(key: str) -> ApiKey | None:
    """The unrevoked key matching `key`, or None."""
    return ApiKey.get_or_none((ApiKey.digest == digest_of(key)) & ApiKey.revoked_at.is_null())


def revoke_key(name: str, now: datetime | None = None) -> bool:
    """True if an active key of that name was revoked now."""
    query = ApiKey.update(revoked_at=now or utcnow()).where(
        (ApiKey.name == name) & ApiKey.revoked_at.is_null()
    )
    return query.execute() == 1


def list_keys() -> list[ApiKey]:
    return list(ApiKey.select().order_by(ApiKey.created_at, ApiKey.name))
