"""Rewards for RL training: a registry of plain functions, like the advantage estimators.

A reward is a keyword-only function registered under a name::

    @register("my_reward", solved_at=1.0)
    def my_reward(*, completions, answers, problems, records) -> list[float] | RewardOutput: ...

It gets one entry per completion in each list: the completion's text, the gold answer and the
problem of its prompt, and the prompt's whole record (every field the dataset spec keeps, so a
reward may use any dataset column), and returns one finite float per completion, or a
:class:`RewardOutput` that also holds the final answers it extracted (the rollout logs and the
``no_answer_frac`` metric show them; a reward that extracts none leaves them out). ``solved_at`` is
what "solved" means for this reward, stated once: a completion whose reward is at least
``solved_at`` solves its prompt (the solve-rate metrics and the correct/wrong advantage columns).
The trainer calls :func:`compute` with the config key ``reward_kind``, which the config check
validates against :data:`REWARDS`, and knows nothing of grading; a new reward is one decorated
function (here or in a module the run imports) plus its test.

Settings: a reward may also declare keyword parameters named like the trainer's grading settings,
``workers`` (``grading_workers``) and ``timeout`` (``grading_timeout``); :func:`compute` passes the
settings a reward declares and no others, so a reward that grades nothing never sees them.

No I/O here beyond what a reward itself does (the math-verify rewards grade in worker processes).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rsgrpo.registry import refuse_taken

__all__ = ["REWARDS", "REWARD_INPUTS", "PARTIAL_FORMAT_CREDIT", "RewardOutput", "register", "compute",
           "reward_settings", "solved_at", "overlong_penalty"]

REWARDS: dict[str, Callable[..., Sequence[float]]] = {}
_SOLVED_AT: dict[str, float] = {}  # the reward at or above which a completion solves its prompt, per reward
# The keyword arguments every reward receives, one entry per completion each.
REWARD_INPUTS = ("completions", "answers", "problems", "records")
# Reward of "partial" for a well-formed \boxed{} answer that is wrong.
PARTIAL_FORMAT_CREDIT = 0.1


@dataclass(frozen=True)
class RewardOutput:
    """What a reward returns for a batch: one value per completion and, for a reward that extracts
    final answers, those answers (None where a completion gives none)."""

    values: list[float]
    answers: list[str | None] | None = None


def register(name: str, *, solved_at: float = 1.0):
    """Decorator adding a reward function to :data:`REWARDS` as ``name`` (once: a second reward of
    the same name would silently change what existing configs train on); ``solved_at`` is the reward
    at or above which a completion solves its prompt."""

    def wrap(fn):
        refuse_taken(REWARDS, name, "reward")
        params = inspect.signature(fn).parameters
        missing = [p for p in REWARD_INPUTS if p not in params]
        positional = [p for p, v in params.items() if v.kind is not inspect.Parameter.KEYWORD_ONLY]
        if missing or positional:
            raise ValueError(f"reward {name!r}: must be a keyword-only function "
                             f"fn(*, {', '.join(REWARD_INPUTS)}, ...); missing {missing}, "
                             f"not keyword-only {positional}")
        REWARDS[name] = fn
        _SOLVED_AT[name] = float(solved_at)
        return fn

    return wrap


def reward_settings(name: str) -> dict[str, object]:
    """The settings reward ``name`` declares besides its inputs, with their defaults."""
    fn = _lookup(name)
    return {p: v.default for p, v in inspect.signature(fn).parameters.items() if p not in REWARD_INPUTS}


def solved_at(name: str) -> float:
    """The reward at or above which a completion solves its prompt under reward ``name``."""
    _lookup(name)
    return _SOLVED_AT[name]


def _lookup(name: str):
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {sorted(REWARDS)}")
    return REWARDS[name]


def compute(name: str, *, completions: Sequence[str], answers: Sequence[str], problems: Sequence[str],
            records: Sequence[Mapping], settings: Mapping[str, object] | None = None) -> RewardOutput:
    """Rewards of ``completions`` under reward ``name``, checked: one finite float per completion (and
    one extracted answer per completion where the reward returns them).

    ``settings`` (e.g. ``{"workers": 0, "timeout": 5.0}``): passed to the reward as far as it
    declares them.
    """
    fn = _lookup(name)
    n = len(completions)
    for key, values in (("answers", answers), ("problems", problems), ("records", records)):
        if len(values) != n:
            raise ValueError(f"reward {name!r}: {len(values)} {key} for {n} completions")
    declared = reward_settings(name)
    chosen = {k: v for k, v in (settings or {}).items() if k in declared}
    returned = fn(completions=list(completions), answers=list(answers), problems=list(problems),
                  records=list(records), **chosen)
    output = returned if isinstance(returned, RewardOutput) else RewardOutput(list(returned))
    out = [float(x) for x in output.values]
    if len(out) != n:
        raise ValueError(f"reward {name!r} returned {len(out)} values for {n} completions")
    if output.answers is not None and len(output.answers) != n:
        raise ValueError(f"reward {name!r} returned {len(output.answers)} answers for {n} completions")
    bad = next((i for i, x in enumerate(out) if not math.isfinite(x)), None)
    if bad is not None:
        raise ValueError(f"reward {name!r} returned {out[bad]} for completion {bad}: rewards must be finite")
    return RewardOutput(out, None if output.answers is None else list(output.answers))


# ------------------------------------------------------------------------------------------------
# math-verify rewards
# ------------------------------------------------------------------------------------------------
@register("binary", solved_at=1.0)
def binary(*, completions, answers, problems, records, workers: int | None = None,
           timeout: float = 5.0) -> RewardOutput:
    """1.0 when math-verify accepts the completion's final answer, else 0.0 (the paper's reward).
    The answer must also have the format its record asks for (field ``answer_format``, see
    :mod:`rsgrpo.grading.answer_format`: under ``integer`` a restated "5 + 8" is wrong)."""
    from rsgrpo.grading import grade_report

    report = grade_report(answers, completions, workers=workers, timeout=timeout,
                          answer_formats=_answer_formats(records))
    return RewardOutput([1.0 if verdict else 0.0 for verdict in report.verdicts], report.extracted)


@register("partial", solved_at=1.0)
def partial(*, completions, answers, problems, records, workers: int | None = None,
            timeout: float = 5.0) -> RewardOutput:
    """1.0 correct; :data:`PARTIAL_FORMAT_CREDIT` for a wrong (or timed out) answer given in a complete
    ``\\boxed{}``; 0.0 without a boxed answer (fallback phrases earn no format credit) or with a boxed
    answer of the wrong format (``not_integer``: the format is part of what the credit is for). Formats
    as in :func:`binary`. It exists to exercise continuous rewards in the advantage estimators."""
    from rsgrpo.grading import grade_report
    from rsgrpo.grading.report import NOT_INTEGER

    report = grade_report(answers, completions, workers=workers, timeout=timeout,
                          answer_formats=_answer_formats(records))
    values = [1.0 if verdict else (PARTIAL_FORMAT_CREDIT if source == "boxed" and status != NOT_INTEGER else 0.0)
              for verdict, source, status in zip(report.verdicts, report.sources, report.status)]
    return RewardOutput(values, report.extracted)


def _answer_formats(records) -> list[str]:
    """Each prompt's answer format, from its record (absent = the default, ``any``)."""
    from rsgrpo.grading import record_answer_format

    return [record_answer_format(record) for record in records]


# ------------------------------------------------------------------------------------------------
# reward shaping
# ------------------------------------------------------------------------------------------------
def overlong_penalty(lengths: Sequence[int], *, max_tokens: int, buffer: int) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025), added to the reward: 0 up to
    ``max_tokens - buffer`` completion tokens, then falling linearly to -1 at ``max_tokens`` (where the
    engine cuts a completion off), ``(max_tokens - buffer - length) / buffer``."""
    if not 1 <= buffer <= max_tokens:
        raise ValueError(f"overlong buffer must be in [1, max_tokens={max_tokens}], got {buffer}")
    expected = max_tokens - buffer
    return [min(0.0, (expected - n) / buffer) for n in lengths]
