"""The registry of claims: one entry binds a number, its function and its row of the paper.

A claim function is registered where it is defined, with :func:`paper_claim` (the paper's
claims, 1-15) or :func:`kit_check` (the kit's own, 16-21); it names itself when it builds
its result (``claim(near_zero_shallow, ...)``), so each number is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ClaimSpec:
    """One registered claim."""

    number: int
    key: str  # the function's name, the claim's key in claims.json and metrics.json
    sentence: str  # the claim in words (the paper's, or the kit's for its checks)
    figure: str  # section and figure ("§3, Fig. 2"), or "kit, NN" for the kit's checks
    reported: str  # what the paper reported
    source: Literal["paper", "kit"]
    function: Callable[..., Any]


#: Number -> :class:`ClaimSpec`, filled as :mod:`lvlm_kit.claims` imports its modules.
REGISTRY: dict[int, ClaimSpec] = {}


def _register(
    source: Literal["paper", "kit"], number: int, sentence: str, figure: str, reported: str
) -> Callable[[F], F]:
    def add(function: F) -> F:
        taken = REGISTRY.get(number)
        if taken is not None and taken.function.__qualname__ != function.__qualname__:
            raise ValueError(f"claim {number} is already {taken.key}; pick another number.")
        REGISTRY[number] = ClaimSpec(
            number, function.__name__, sentence, figure, reported, source, function
        )
        return function

    return add


def paper_claim(number: int, sentence: str, figure: str, reported: str) -> Callable[[F], F]:
    """Register one of the paper's claims (decorator).

    Args:
        number: its number in the report.
        sentence: the paper's claim in words.
        figure: section and figure.
        reported: what the paper reported (a number, or "qualitative").
    """
    return _register("paper", number, sentence, figure, reported)


def kit_check(number: int, sentence: str, figure: str, reported: str) -> Callable[[F], F]:
    """Register one of the kit's own checks (decorator); arguments as :func:`paper_claim`."""
    return _register("kit", number, sentence, figure, reported)


def spec_of(which: int | Callable[..., Any]) -> ClaimSpec:
    """The registered claim with this number, or of this claim function.

    Raises:
        KeyError: nothing registered under it.
    """
    if isinstance(which, int):
        return REGISTRY[which]
    for spec in REGISTRY.values():
        if spec.function is which:
            return spec
    raise KeyError(f"{which!r} is not a registered claim (decorate it with paper_claim).")
