"""The Optuna adapter of the :class:`~usp.ports.tuner.Tuner` port: TPE (or random search) over a
study kept in one of Optuna's own storages, so that a study survives interruption and several
processes or machines can run it (nothing is ever pickled).

Storages (``open_storage``): ``journal:PATH`` (an append-only journal file; processes on one
machine or on a shared file system), ``redis://HOST:PORT/DB`` (a journal in Redis), or an RDB URL
such as ``sqlite:///tune.db`` or ``postgresql://...`` (SQLAlchemy). The study is a plain Optuna
study: ``optuna.load_study(study_name=..., storage=open_storage(url))`` opens it.

**Seeding.** Optuna's sampler keeps its random state in memory only, so a resumed process could
not continue it. Instead each proposal gets a fresh sampler seeded from the study seed, the
number of counted trials (complete or failed) and the number of trials running elsewhere at
that moment (:func:`proposal_seed`). A trial abandoned on SIGTERM/SIGINT is recorded as failed
with the ``usp_abandoned`` mark: it counts nowhere and no sampler sees it (TPE models complete
trials only), so the resumed run makes, with the same history, the same proposal, bit for bit.
(A process killed outright leaves its trial running; later proposals then see one more running
trial, and differ from an uninterrupted run's.)
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ..ports.tuner import SearchSpace, TrialRecord, TuningError

SAMPLERS = ("tpe", "random")
#: Study user attribute holding the campaign's identity (seed, tier, data, ...).
METADATA_ATTR = "usp_campaign"
_NOTE, _ABANDONED, _WORKER = "usp_note", "usp_abandoned", "usp_worker"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage of ``url``: ``journal:PATH``, ``redis://...`` (or ``rediss://``,
    ``unix://``), or an RDB URL (``sqlite:///tune.db``, ``postgresql://...``).

    Raises:
        TuningError: another form of URL.
    """
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not path.name:
            raise TuningError(f"storage {url!r}: journal:PATH names no file")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(("redis://", "rediss://", "unix://")):
        with warnings.catch_warnings():  # (marked experimental since Optuna 3.1; the interface is used as is)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            backend = JournalRedisBackend(url)
        return JournalStorage(backend)
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    raise TuningError(f"storage {url!r}: expected journal:PATH, redis://HOST:PORT/DB or an RDB URL such as "
                      "sqlite:///tune.db")


def proposal_seed(seed: int, counted: int, running: int) -> int:
    """The sampler seed of a proposal: SHA-256 of the study seed, the counted trials and the
    trials running elsewhere, as a 32-bit integer."""
    digest = hashlib.sha256(f"usp-tune:{seed}:{counted}:{running}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def distribution(space: SearchSpace) -> BaseDistribution:
    """The Optuna distribution of a search space (powers of two as a categorical of them)."""
    choices = space.choices()
    if choices is not None:
        return CategoricalDistribution(choices)
    lo, hi = space.range
    if space.param_type == "int":
        return IntDistribution(int(lo), int(hi))
    return FloatDistribution(float(lo), float(hi), log=space.param_type == "log_uniform")


class OptunaTuner:
    """A study in an Optuna storage (the ``Tuner`` port).

    Args:
        storage: a storage URL (:func:`open_storage`) or an Optuna storage.
        study_name: created if absent, else resumed (minimising).
        seed: the study seed (:func:`proposal_seed`).
        sampler: "tpe" (Optuna's TPE, its defaults) or "random".
        metadata: the campaign's identity (JSON-able); a study started with other metadata is
            refused, so a resumed run cannot silently change its data, seed or search space.

    Raises:
        TuningError: a bad storage URL, or a study started with other metadata.
    """

    def __init__(self, storage: str | optuna.storages.BaseStorage, study_name: str, *, seed: int,
                 sampler: str = "tpe", metadata: Mapping[str, Any] | None = None) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r}: must be one of {', '.join(SAMPLERS)}")
        self.storage = open_storage(storage) if isinstance(storage, str) else storage
        self.seed = int(seed)
        self.sampler = sampler
        self.study = optuna.create_study(storage=self.storage, study_name=study_name, direction="minimize",
                                         load_if_exists=True, sampler=self._sampler(0))
        self._running: dict[int, optuna.Trial] = {}
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        if metadata is not None:
            self._check_metadata(dict(metadata))

    def _check_metadata(self, metadata: dict[str, Any]) -> None:
        known = self.study.user_attrs.get(METADATA_ATTR)
        if known is None:
            self.study.set_user_attr(METADATA_ATTR, metadata)
            return
        differ = sorted(key for key in set(known) | set(metadata) if known.get(key) != metadata.get(key))
        if differ:
            described = "; ".join(f"{key}: study {known.get(key)!r}, this run {metadata.get(key)!r}" for key in differ)
            raise TuningError(f"study {self.study.study_name!r} was started differently ({described}); resume it "
                              "with the same data and options, or name another study")

    def _sampler(self, proposal: int) -> optuna.samplers.BaseSampler:
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=proposal)
        return optuna.samplers.TPESampler(seed=proposal)

    # -- the port ------------------------------------------------------------------------------------
    def ask(self, space: Mapping[str, SearchSpace]) -> tuple[int, dict[str, Any]]:
        frozen = self.study.get_trials(deepcopy=False)
        counted = sum(1 for t in frozen if _state(t) in ("complete", "failed"))
        running = sum(1 for t in frozen if _state(t) == "running")
        self.study.sampler = self._sampler(proposal_seed(self.seed, counted, running))
        trial = self.study.ask({name: distribution(spec) for name, spec in space.items()})
        trial.set_user_attr(_WORKER, self._worker)
        self._running[trial.number] = trial
        return trial.number, {name: trial.params[name] for name in space}

    def complete(self, number: int, value: float) -> None:
        self.study.tell(self._running.pop(number), float(value))

    def fail(self, number: int, reason: str) -> None:
        trial = self._running.pop(number)
        trial.set_user_attr(_NOTE, reason)
        self.study.tell(trial, state=TrialState.FAIL)

    def abandon(self, number: int, reason: str) -> None:
        trial = self._running.pop(number)
        trial.set_user_attr(_NOTE, reason)
        trial.set_user_attr(_ABANDONED, True)
        self.study.tell(trial, state=TrialState.FAIL)

    def trials(self) -> list[TrialRecord]:
        return [TrialRecord(t.number, _state(t), dict(t.params), t.value if t.state == TrialState.COMPLETE else None,
                            str(t.user_attrs.get(_NOTE, "")))
                for t in sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)]

    def restore(self, trials: Sequence[TrialRecord], space: Mapping[str, SearchSpace]) -> None:
        if self.study.get_trials(deepcopy=False):
            raise TuningError(f"study {self.study.study_name!r} already holds trials; restore an archive into a "
                              "new study (another --study name or storage)")
        distributions = {name: distribution(spec) for name, spec in space.items()}
        frozen = []
        for record in trials:
            if record.state not in ("complete", "failed"):
                raise TuningError(f"trial {record.number}: only complete or failed trials are restored")
            complete = record.state == "complete"
            frozen.append(optuna.trial.create_trial(
                state=TrialState.COMPLETE if complete else TrialState.FAIL, value=record.value if complete else None,
                params=dict(record.params), distributions={k: distributions[k] for k in record.params},
                user_attrs={_NOTE: record.note} if record.note else {}))
        self.study.add_trials(frozen)

    def worker_trials(self) -> dict[str, list[int]]:
        """The numbers of the trials each worker (``host:pid``) asked for."""
        workers: dict[str, list[int]] = {}
        for trial in self.study.get_trials(deepcopy=False):
            workers.setdefault(str(trial.user_attrs.get(_WORKER, "")), []).append(trial.number)
        return workers


def _state(trial: optuna.trial.FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.FAIL:
        return "abandoned" if trial.user_attrs.get(_ABANDONED) else "failed"
    if trial.state == TrialState.PRUNED:
        return "failed"
    return "running"


__all__ = ["METADATA_ATTR", "SAMPLERS", "OptunaTuner", "distribution", "open_storage", "proposal_seed"]
