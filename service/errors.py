"""Domain exceptions of the service layer; no HTTP here.

The gateway answers each with an RFC 9457 problem (:func:`api.problems.problem_for` maps the class to a
status and title; :attr:`ServiceError.code` is the problem type's slug); the workers turn them into a
job's or an archive entry's error.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """A refused request or input. ``extensions`` are extra facts (a limit, the accepted types, ...)."""

    code: ClassVar[str] = "error"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class InputRejected(ServiceError):
    """An uploaded photo or archive that the service does not accept."""

    code = "validation-error"


class EmptyInput(InputRejected):
    code = "validation-error"


class TooLarge(InputRejected):
    code = "too-large"


class TooManyPixels(InputRejected):
    code = "too-many-pixels"


class TooManyEntries(InputRejected):
    code = "too-many-entries"


class UnsupportedMediaType(InputRejected):
    code = "unsupported-media-type"


class InvalidArchive(InputRejected):
    code = "invalid-archive"


class InvalidJSON(ServiceError):
    """Client JSON refused before (or while) parsing: nested too deep, or not JSON. ``errors`` lists where."""

    code = "validation-error"
