"""Runtime tokens: what a job's actions present to the services, and signed blob URLs.

A job gets one ``ACTIONS_RUNTIME_TOKEN``: a JWT (HS256) signed with a secret kept by this
runner under ``VMRUNNER_HOME`` (mode 0600, made once). Its ``scp`` claim carries
``Actions.Results:<run backend id>:<job backend id>`` as GitHub's does (the artifact client
reads the ids from it without checking the signature); the services read the rest of what the
job may do from the ``vmrunner`` claim: its run, its repository, the cache scope it writes and
those it may read. Blob URLs are signed with the same secret (an HMAC of what, which
permission and until when), so the blob endpoints need no token, as Azure's SAS URLs need none.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from vmrunner.config import vmrunner_home
from vmrunner.errors import ConfigError, TokenError

SECRET_FILE = "services.secret"
#: A job's token lasts longer than any job may (GitHub's limit is 6 hours for hosted runners,
#: 5 days for self-hosted ones).
TOKEN_LIFETIME = 5 * 24 * 3600.0
#: Signed blob URLs expire (an upload or a download is done long before).
URL_LIFETIME = 6 * 3600.0
_ALGORITHM = "HS256"
_RESULTS_SCOPE = "Actions.Results"


def load_secret(home: Path | None = None) -> bytes:
    """The runner's signing secret, made on first use (0600), the same for every process."""
    folder = home or vmrunner_home()
    path = folder / SECRET_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = folder / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
        finally:
            os.close(fd)
        # link() never replaces: if another process made it first, its secret wins.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
        temporary.unlink()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the services' secret {path}: {exc}") from exc
    if len(data) < 32:
        raise ConfigError(f"the services' secret {path} is too short: remove it to make a new one")
    return data


def job_backend_id(run_id: str, job_key: str) -> str:
    """A job's id in the token's scope: a UUID, since a job key may hold ``:`` or spaces."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmrunner:{run_id}/{job_key}"))


@dataclass(frozen=True, slots=True)
class JobGrant:
    """What a job's token lets it do: its run's artifacts, and its repository's caches."""

    run_id: str
    job_key: str
    repository: str
    #: The cache scope the job saves into (its ``github.ref``).
    ref: str
    #: The scopes it may restore from, in the order they are searched (its ref first).
    readable_refs: tuple[str, ...]

    @property
    def job_id(self) -> str:
        return job_backend_id(self.run_id, self.job_key)


class Signer:
    """Issues and checks tokens and blob URL signatures with one runner's secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def token(self, grant: JobGrant, *, now: float | None = None) -> str:
        """A token for ``grant`` (issued ``now``, by default the present)."""
        issued = int(now if now is not None else time.time())
        if ":" in grant.run_id or " " in grant.run_id:
            raise ConfigError(f"run id {grant.run_id!r}: a runtime token's scope cannot hold it")
        claims: dict[str, Any] = {
            "iss": "vmrunner",
            "iat": issued,
            "nbf": issued - 60,
            "exp": issued + int(TOKEN_LIFETIME),
            "scp": f"Actions.GenericRead {_RESULTS_SCOPE}:{grant.run_id}:{grant.job_id}",
            "vmrunner": {
                "run": grant.run_id, "job": grant.job_key, "repository": grant.repository,
                "ref": grant.ref, "refs": list(grant.readable_refs),
            },
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, authorization: str | None) -> JobGrant:
        """The grant of a ``Bearer`` token; ``TokenError`` (401) for anything else."""
        if not authorization:
            raise TokenError("missing runtime token: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("the Authorization header must be 'Bearer <token>'")
        try:
            claims = jwt.decode(
                token.strip(), self._secret, algorithms=[_ALGORITHM],
                options={"require": ["exp", "scp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("the runtime token has expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid runtime token: {exc}") from exc
        own = claims.get("vmrunner")
        if not isinstance(own, dict):
            raise TokenError("invalid runtime token: it grants nothing")
        try:
            refs = tuple(str(ref) for ref in own.get("refs") or ())
            return JobGrant(
                str(own["run"]), str(own["job"]), str(own["repository"]), str(own["ref"]), refs
            )
        except KeyError as exc:
            raise TokenError(f"invalid runtime token: no {exc.args[0]!r} in its grant") from exc

    def sign(self, what: str, permission: str, expires: int) -> str:
        message = f"{what}\n{permission}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def check(self, what: str, permission: str, expires: str, signature: str) -> None:
        """``TokenError`` (403) unless ``signature`` signs ``what`` for ``permission`` and is
        unexpired."""
        if not expires.isdigit() or not signature:
            raise TokenError("the blob URL is not signed", 403)
        if not hmac.compare_digest(self.sign(what, permission, int(expires)), signature):
            raise TokenError("the blob URL's signature does not match", 403)
        if int(expires) < time.time():
            raise TokenError("the blob URL has expired", 403)
