"""Checked claims: a sentence that states what an experiment found comes from its data.

A chapter never types a measured number or a finding into its prose. The cell that has the
data states it, and the prose shows what the cell glued (myst-nb's ``{glue:text}`` role)::

    from course_lib.claims import Claims
    claims = Claims("warmup")

    claims.number("best_loss", best, ".3f")           # prose: {glue:text}`best_loss`
    claims.check("warmup_helps", lo_warm < lo_cold,   # the build fails if it is false
                 "warmup ends lower than no warmup at every seed",
                 evidence=f"{lo_warm:.3f} against {lo_cold:.3f}")
    claims.either("rule", sqrt_err < lin_err,         # phrased from the data, at any scale
                  "the square-root rule fits better", "the linear rule fits better")

The methods return nothing, so a cell that ends with one shows no stray output; what was glued
is in ``claims.stated``. ``check`` raises :class:`ClaimError`, naming the chapter and the sentence, when the data does
not support the sentence: the chapter's cell fails, so the book does not build. ``either``
is for findings that may go either way at another scale or seed: the data picks the words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ClaimError", "Claims"]


class ClaimError(AssertionError):
    """A chapter's sentence that its data no longer supports."""


def _glue(key: str, text: str) -> None:
    try:
        from myst_nb import glue
    except ImportError:  # outside a book build (a plain script): nothing to paste into
        return
    glue(key, text, display=False)


@dataclass
class Claims:
    """The checked statements and glued numbers of one chapter."""

    chapter: str
    stated: dict[str, str] = field(default_factory=dict)

    def _record(self, key: str, text: str) -> None:
        if not key.isidentifier():
            raise ValueError(f"{self.chapter}: claim key {key!r} must be a Python identifier")
        if key in self.stated and self.stated[key] != text:
            raise ValueError(
                f"{self.chapter}: claim key {key!r} glued twice with different text "
                f"({self.stated[key]!r}, then {text!r}); give each statement its own key"
            )
        self.stated[key] = text
        _glue(key, text)

    def number(self, key: str, value: float, fmt: str = ".3g") -> None:
        """Glue ``value`` formatted by ``fmt`` (a :func:`format` spec)."""
        try:
            text = format(value, fmt)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{self.chapter}: cannot format {key}={value!r} with {fmt!r}"
            ) from error
        self._record(key, text)

    def text(self, key: str, text: str) -> None:
        """Glue a phrase computed from the data (a list of names, a range)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{self.chapter}: claim {key!r} needs a non-empty sentence")
        self._record(key, text)

    def check(self, key: str, holds: bool, sentence: str, *, evidence: str = "") -> None:
        """Glue ``sentence`` if ``holds``; otherwise fail the chapter, naming the sentence."""
        if not isinstance(sentence, str) or not sentence.strip():
            raise ValueError(f"{self.chapter}: claim {key!r} needs a non-empty sentence")
        if not bool(holds):
            detail = f" ({evidence})" if evidence else ""
            raise ClaimError(
                f"chapter {self.chapter!r}: the data no longer supports the sentence "
                f"{sentence!r}{detail}. Rewrite the sentence from the data, or fix the experiment."
            )
        self._record(key, sentence)

    def either(self, key: str, condition: bool, if_true: str, if_false: str) -> None:
        """Glue whichever of two sentences the data supports."""
        self.text(key, if_true if bool(condition) else if_false)
