"""
API failures, rendered as ``metav1.Status`` with the codes and reasons of a real apiserver.

Stock KMock answers 500 where an apiserver says 404, 409 or 422; clients (kopf, the
``kubernetes`` client, kubectl) branch on those codes, so the emulator raises these instead.
"""
from __future__ import annotations

from .common import Obj
from .resources import ApiResource


class ApiError(Exception):
    """An API failure with the same code/reason a real apiserver would answer."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(f'{code} {reason}: {message}')
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        status: Obj = {
            'kind': 'Status', 'apiVersion': 'v1', 'metadata': {},
            'status': 'Failure', 'message': self.message, 'reason': self.reason, 'code': self.code,
        }
        if self.details is not None:
            status['details'] = self.details
        return status

    @classmethod
    def not_found(cls, res: ApiResource | None, name: str | None = None) -> 'ApiError':
        if res is None:
            return cls(404, 'NotFound', 'the server could not find the requested resource', {})
        return cls(404, 'NotFound', f'{res.qualified} "{name}" not found',
                   {'name': name, 'group': res.group, 'kind': res.plural})

    @classmethod
    def already_exists(cls, res: ApiResource, name: str) -> 'ApiError':
        return cls(409, 'AlreadyExists', f'{res.qualified} "{name}" already exists',
                   {'name': name, 'group': res.group, 'kind': res.plural})

    @classmethod
    def conflict(cls, res: ApiResource, name: str, why: str = '') -> 'ApiError':
        why = why or 'the object has been modified; please apply your changes to the latest version and try again'
        return cls(409, 'Conflict', f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}',
                   {'name': name, 'group': res.group, 'kind': res.plural})

    @classmethod
    def invalid(cls, res: ApiResource | None, name: str | None, why: str) -> 'ApiError':
        if res is None:
            return cls(422, 'Invalid', why, {})
        return cls(422, 'Invalid', f'{res.kind} "{name}" is invalid: {why}',
                   {'name': name, 'group': res.group, 'kind': res.kind, 'causes': [{'message': why}]})

    @classmethod
    def bad_request(cls, why: str) -> 'ApiError':
        return cls(400, 'BadRequest', why)

    @classmethod
    def gone(cls, why: str) -> 'ApiError':
        return cls(410, 'Expired', why)
