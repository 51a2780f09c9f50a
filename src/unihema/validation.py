"""Validation of configuration values: one error base class and one helper.

Every configuration dataclass checks its fields with :func:`require`, so every invalid value is reported
the same way: the dotted name of the field, what it must be, and the value that was given::

    vision.d_model must be a positive integer, got 0

A family of configurations may subclass :class:`ValidationError` so that callers can catch just that
family (:class:`unihema.model.configuration.ConfigError` for the model,
:class:`unihema.train.stages.TrainConfigError` for training runs); ``except ValidationError`` (or
``except ValueError``) catches them all.

Usage::

    from unihema.validation import ValidationError, is_int, require

    class LossConfigError(ValidationError):
        '''An invalid loss configuration.'''

    require(is_int(value) and value > 0, "loss.num_classes", "must be a positive integer", value,
            error=LossConfigError)
    # -> LossConfigError("loss.num_classes must be a positive integer, got 0")

    require(bool(tasks), "stages[0].tasks", "must name at least one task")  # no value: no ", got ..."

    raise LossConfigError.for_field("loss", f"has an unknown field ({exc})")  # a failure with no condition

A module with many checks binds its error class once:
``_require = functools.partial(require, error=LossConfigError)``.
"""

from __future__ import annotations

import math
from typing import Any, Final, TypeVar

NO_VALUE: Final[Any] = object()
"""Default of the ``value`` arguments: the message then ends without ``, got ...``."""

_Error = TypeVar("_Error", bound="ValidationError")


class ValidationError(ValueError):
    """An invalid configuration value. The message names the field (see :meth:`for_field`).

    Subclass it for one family of configurations; build instances with :meth:`for_field` or
    :func:`require`. Constructing one from a ready-made message (``ValidationError("...")``) also works,
    e.g. to prefix the file an error came from.
    """

    @classmethod
    def for_field(cls: type[_Error], field: str, message: str, value: Any = NO_VALUE) -> _Error:
        """The error ``"<field> <message>, got <repr(value)>"`` (without ``, got ...`` when no ``value``).

        Args:
            field: dotted name of the offending field, e.g. ``"vision.d_model"`` or
                ``"stages[2] (step3_joint).lr"``.
            message: what the field must be, e.g. ``"must be a positive integer"``.
            value: the offending value, shown with ``repr``; omit it when there is no single value to show.
        """
        suffix = "" if value is NO_VALUE else f", got {value!r}"
        return cls(f"{field} {message}{suffix}")


def require(
    condition: bool,
    field: str,
    message: str,
    value: Any = NO_VALUE,
    *,
    error: type[ValidationError] = ValidationError,
) -> None:
    """Raise ``error.for_field(field, message, value)`` unless ``condition`` holds.

    Args:
        condition: the check; nothing happens when it is true.
        field: dotted name of the field being checked.
        message: what the field must be (``"must be one of ('a', 'b')"``).
        value: the value being checked, shown in the message with ``repr``.
        error: the :class:`ValidationError` subclass to raise.

    Raises:
        ValidationError: of class ``error``, e.g. ``vision.d_model must be a positive integer, got 0``.
    """
    if not condition:
        raise error.for_field(field, message, value)


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``bool`` is not, although Python makes it an ``int``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite ``int`` or ``float`` (not a ``bool``, not NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
