"""Tuner port: a persistent, resumable study that proposes hyperparameters and records results.

A study lives in a storage (a journal file, Redis, a database) that several processes may share;
each trial is asked for once, then completed with its objective value, failed (counted against
the budget: the proposal could not be evaluated) or abandoned (interrupted: not counted, as if it
had never been asked for). ``usp.adapters.optuna_tuner.OptunaTuner`` implements it with
Optuna's TPE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from ..domain import USPError


class TuningError(USPError):
    """A study cannot be opened, resumed or restored as asked (the message says why)."""


#: The kinds of :class:`SearchSpace` (the specification's names).
PARAM_TYPES = ("float", "log_uniform", "int", "categorical")
#: The one constraint a :class:`SearchSpace` can carry: the value is a power of two.
POWER_OF_TWO = "power of 2"


@attrs.frozen
class SearchSpace:
    """One hyperparameter's search space (spec §21.1).

    Attributes:
        name: the config key.
        param_type: "float" (uniform), "log_uniform", "int" (integers lo..hi) or "categorical".
        range: ``(lo, hi)`` for the numeric types, the tuple of choices for "categorical".
        locked: a locked key: a study refuses it.
        constraint: None, or :data:`POWER_OF_TWO` (an "int" space searched over the powers of two
            between lo and hi).
    """

    name: str
    param_type: str
    range: tuple[Any, ...]
    locked: bool = False
    constraint: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.param_type not in PARAM_TYPES:
            raise ValueError(f"{self.name}: param_type {self.param_type!r} is not one of {PARAM_TYPES}")
        if self.param_type == "categorical":
            if len(self.range) < 1:
                raise ValueError(f"{self.name}: a categorical space needs at least one choice")
        elif len(self.range) != 2 or not self.range[0] < self.range[1]:
            raise ValueError(f"{self.name}: range must be (lo, hi) with lo < hi, got {self.range!r}")
        elif self.param_type == "log_uniform" and not self.range[0] > 0:
            raise ValueError(f"{self.name}: a log-uniform range must be positive, got {self.range!r}")
        if self.constraint not in (None, POWER_OF_TWO) or (self.constraint and self.param_type != "int"):
            raise ValueError(f"{self.name}: constraint {self.constraint!r} is not supported here")

    def choices(self) -> tuple[Any, ...] | None:
        """The finite set of values (categorical, or powers of two), else None."""
        if self.param_type == "categorical":
            return tuple(self.range)
        if self.constraint == POWER_OF_TWO:
            lo, hi = int(self.range[0]), int(self.range[1])
            return tuple(2**e for e in range(hi.bit_length()) if lo <= 2**e <= hi)
        return None


@attrs.frozen
class TrialRecord:
    """One trial of a study.

    Attributes:
        number: the trial's number in the study (0, 1, ..., unique across processes).
        state: "complete", "failed", "abandoned" or "running".
        params: the proposed values, by key.
        value: the objective value (complete trials), else None.
        note: why a trial failed or was abandoned ("" otherwise).
    """

    number: int
    state: str
    params: Mapping[str, Any]
    value: float | None
    note: str = ""

    @property
    def counted(self) -> bool:
        """Whether it counts against the trial budget (complete or failed)."""
        return self.state in ("complete", "failed")


class Tuner(Protocol):
    """A study: proposals in, results out; its history is what makes a run resumable."""

    def ask(self, space: Mapping[str, SearchSpace]) -> tuple[int, dict[str, Any]]:
        """Start a trial: ``(number, params)`` with one value per key of ``space``."""
        ...

    def complete(self, number: int, value: float) -> None:
        """Record the objective value (finite) of a running trial."""
        ...

    def fail(self, number: int, reason: str) -> None:
        """The trial's proposal could not be evaluated (an infeasible config): it counts against
        the budget and is never the best."""
        ...

    def abandon(self, number: int, reason: str) -> None:
        """The trial was interrupted: it does not count, and a resumed run proposes what it would
        have proposed in its place."""
        ...

    def trials(self) -> list[TrialRecord]:
        """Every trial of the study, by number."""
        ...

    def restore(self, trials: Sequence[TrialRecord], space: Mapping[str, SearchSpace]) -> None:
        """Add finished (complete or failed) trials, in order, to an empty study (an archive read
        back); raises ``TuningError`` when the study already holds trials."""
        ...
