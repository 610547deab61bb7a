"""The documented error types of ADE; every user-facing failure raises one of these."""

from __future__ import annotations


class ADEError(Exception):
    """Base class of every error ADE raises on purpose."""


class TraceError(ADEError):
    """A trace dataset cannot be used at all (missing directory, no shards, unreadable)."""


class ArtifactError(ADEError):
    """An exported predictor cannot be loaded; the message names the file and the problem."""


class InputError(ADEError, ValueError):
    """A request's inputs (image, instruction, options) are invalid; the message says the fix."""


class BackboneUnavailableError(ADEError, ImportError):
    """A backbone's library is not installed; the message names what to install."""


class VerifierError(ADEError):
    """A verifier call produced no score (unreadable answer, HTTP error after retries, timeout).

    ``seconds`` is what the failed call cost, so that budgets can still charge it.
    """

    def __init__(self, message: str, seconds: float = 0.0) -> None:
        super().__init__(message)
        self.seconds = float(seconds)
