"""Typed errors of the registry. The API maps each to one HTTP status (``http_status``);
Celery tasks treat ``AdapterInvalid`` as final and ``TransientError`` as retryable."""

from __future__ import annotations

from typing import Any


class LorafleetError(Exception):
    """Base of every domain error: a stable machine-readable ``code`` and a message."""

    code: str = "error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def __reduce__(self) -> tuple[Any, ...]:
        # ``BaseException`` pickles as ``cls(*args)``, which a subclass with another
        # constructor signature (``AdapterInvalid(code, detail)``) cannot be rebuilt from,
        # and Celery hands ``on_failure`` a copy that went through pickle. Rebuild without
        # calling the subclass's ``__init__``, then restore every attribute (``message``,
        # an overridden ``code``, ``detail``, ...).
        return (_restore, (type(self), self.args), dict(self.__dict__))


def _restore(cls: type[LorafleetError], args: tuple[Any, ...]) -> LorafleetError:
    """Unpickle a ``LorafleetError`` of any subclass (its state is set by pickle after)."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    return error


class AdapterInvalid(LorafleetError):
    """The adapter's files are broken, hostile or incompatible. Final: never retried."""

    http_status = 422

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail, code=code)
        self.detail = detail


class NotFound(LorafleetError):
    code = "not_found"
    http_status = 404


class AlreadyExists(LorafleetError):
    code = "already_exists"
    http_status = 409


class VersionConflict(LorafleetError):
    """Same coordinates, different bytes: versions are immutable."""

    code = "version_conflict"
    http_status = 409


class IllegalTransition(LorafleetError):
    """A status change the status machine does not allow, or a lost compare-and-set."""

    code = "illegal_transition"
    http_status = 409


class QuotaExceeded(LorafleetError):
    code = "quota_exceeded"
    http_status = 413


class BadRequest(LorafleetError):
    code = "bad_request"
    http_status = 400


class Unauthorized(LorafleetError):
    code = "unauthorized"
    http_status = 401


class Forbidden(LorafleetError):
    code = "forbidden"
    http_status = 403


class DatabaseNotMigrated(LorafleetError):
    code = "database_not_migrated"
    http_status = 503


class TransientError(LorafleetError):
    """A fault that may pass (database, object store, network): retry with backoff."""

    code = "transient"
    http_status = 503


class SelfApproval(Forbidden):
    """Four-eyes: the namespace requires an approver other than the version's uploader."""

    code = "self_approval"


class AliasTargetConflict(LorafleetError):
    """A version that aliases route to cannot leave ``ready`` unless the request drops it
    from them (``store.aliases.release_version``)."""

    code = "alias_target"
    http_status = 409
