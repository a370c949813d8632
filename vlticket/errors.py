"""Exceptions raised by vlticket.

Every error is a :class:`VlticketError`, itself a ``ValueError``, so callers can catch one class.
Messages name the parameter or tensor, what was expected and what was found.
"""

from __future__ import annotations


class VlticketError(ValueError):
    """Base class of every error vlticket raises on bad input."""


class ArgumentError(VlticketError):
    """An argument has a value outside what the function accepts."""


class MismatchError(VlticketError):
    """Two collections of named tensors do not line up."""


class NameMismatchError(MismatchError):
    """Names are missing or unexpected (e.g. a mask for another model)."""


class ShapeMismatchError(MismatchError):
    """A tensor has another shape than its counterpart."""


class FileFormatError(VlticketError):
    """A file is truncated, foreign, hostile or of an unsupported version."""


class HubError(VlticketError):
    """A Hugging Face Hub request failed: no such repo or revision, no access, no network, or
    offline mode with nothing cached. The message is one line saying what failed and how to fix
    it; the huggingface_hub error is kept as ``__cause__``."""
