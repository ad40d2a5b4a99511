"""Argument checks shared by several course_lib modules."""

from __future__ import annotations


def check_positive_int(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is an int (not a bool), ``ValueError`` unless > 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"Invalid {name}: {value} (expected a positive int)")
