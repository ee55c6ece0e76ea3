"""Worker tokens and the remote workers that registered with them.

A worker token lets a machine that reaches only the API fetch and run jobs over HTTP
(`skillq worker --remote`). Like an API key, only a SHA-256 digest of it is stored (256 random
bits leave nothing to brute-force); it names the queues its workers may take jobs from and
the capabilities (`gpu`, ...) they may claim. A token is not a user: it cannot submit, read
or cancel jobs, and user credentials cannot call the worker routes.

Each `register` call makes a `RemoteWorker` row: which token it came with, the queues and
capabilities it serves, and optionally the skills it has. Its lease on a job is the job row's
own `worker_id` and `heartbeat_at`, exactly as for a local worker, so one rule (no beat for
`workers.dead_after_secs`) decides everywhere whether an attempt is still alive.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime

import peewee

from skillq.storage.models import BaseModel, JSONField, utcnow

#: Every worker token starts with this; the auth backend leaves such a bearer credential to
#: the worker routes instead of taking it for a JWT.
TOKEN_PREFIX = "skqw_"
#: Remote worker ids start with this (no ':' so they are never taken for `host:pid`).
REMOTE_ID_PREFIX = "remote-"


class WorkerToken(BaseModel):
    name = peewee.CharField(max_length=100, unique=True)
    digest = peewee.CharField(max_length=64, unique=True)
    queues = JSONField()
    capabilities = JSONField()
    created_at = peewee.DateTimeField()
    revoked_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "skillq_worker_token"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class RemoteWorker(BaseModel):
    id = peewee.CharField(max_length=64, primary_key=True)
    token = peewee.CharField(max_length=100, index=True)
    queues = JSONField()
    capabilities = JSONField()
    #: The skills it has for `execute_skill` jobs; None: any skill.
    skills = JSONField(null=True)
    registered_at = peewee.DateTimeField()

    class Meta:
        table_name = "skillq_remote_worker"


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(name: str, queues: list[str], capabilities: list[str]) -> tuple[WorkerToken, str]:
    """A new token; returns the row and the token, shown once. Raises
    `peewee.IntegrityError` if the name is taken (revoked names stay taken)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = WorkerToken.create(
        name=name,
        digest=digest_of(token),
        queues=sorted(set(queues)),
        capabilities=sorted(set(capabilities)),
        created_at=utcnow(),
    )
    return row, token


def find_active(token: str) -> WorkerToken | None:
    return WorkerToken.get_or_none(
        (WorkerToken.digest == digest_of(token)) & WorkerToken.revoked_at.is_null()
    )


def revoke_token(name: str, now: datetime | None = None) -> bool:
    """True if an active token of that name was revoked now; its workers stop at once."""
    query = WorkerToken.update(revoked_at=now or utcnow()).where(
        (WorkerToken.name == name) & WorkerToken.revoked_at.is_null()
    )
    return query.execute() == 1


def list_tokens() -> list[WorkerToken]:
    return list(WorkerToken.select().order_by(WorkerToken.created_at, WorkerToken.name))


def register_worker(
    token: str, *, queues: list[str], capabilities: list[str], skills: list[str] | None
) -> RemoteWorker:
    return RemoteWorker.create(
        id=REMOTE_ID_PREFIX + uuid.uuid4().hex,
        token=token,
        queues=sorted(set(queues)),
        capabilities=sorted(set(capabilities)),
        skills=None if skills is None else sorted(set(skills)),
        registered_at=utcnow(),
    )


def get_worker(worker_id: str, token: str) -> RemoteWorker | None:
    """The remote worker `worker_id` if it registered with `token`; another token's worker is
    None, as an unknown one, so ids cannot be probed."""
    return RemoteWorker.get_or_none((RemoteWorker.id == worker_id) & (RemoteWorker.token == token))


def is_remote(worker_id: str | None) -> bool:
    return worker_id is not None and worker_id.startswith(REMOTE_ID_PREFIX)
