"""Which of a rank's (prompt, completion) pairs go into which micro-batch of the update.

Every micro-batch is right-padded to its longest row (:func:`rsgrpo.train.loss.build_batch`), so
its cost in compute and activation memory is ``rows x longest row`` token slots, padding included.
Without a token budget (``micro_batch_tokens: null``) the pairs are cut into contiguous chunks of
``micro_batch_size`` rows in group order, as they come. With one, the pairs are sorted by length and
packed so that each micro-batch's ``rows x longest row`` stays within the budget: rows of similar
length share a micro-batch and little of its work is padding.

Pure functions of the lengths (no torch, no ranks); :class:`rsgrpo.train.actor.Actor` builds the
batches and makes every rank run the same number of them.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan", "padded_slots", "padding_fraction"]


def plan(lengths: Sequence[int], *, max_rows: int, max_tokens: int | None = None) -> list[list[int]]:
    """Row indices of each micro-batch of sequences of ``lengths`` (prompt + completion tokens).

    ``max_tokens`` None: contiguous chunks of ``max_rows`` rows. Otherwise the rows, longest first,
    are packed greedily: a micro-batch's width is its first (longest) row and it takes the next rows
    while ``rows x width <= max_tokens`` and ``rows <= max_rows``; a row longer than the budget gets a
    micro-batch of its own. The micro-batches come longest first (the first one reserves the largest
    buffers, which the later, smaller ones reuse); within each the rows are in ascending index order,
    so a plan of one micro-batch is the contiguous batch itself.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    n = len(lengths)
    if max_tokens is None:
        return [list(range(start, min(start + max_rows, n))) for start in range(0, n, max_rows)]
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    # longest first; equal lengths in index order, so the plan depends on the lengths alone
    order = sorted(range(n), key=lambda row: (-lengths[row], row))
    batches: list[list[int]] = []
    current: list[int] = []
    for row in order:
        if current and (len(current) == max_rows or (len(current) + 1) * lengths[current[0]] > max_tokens):
            batches.append(sorted(current))
            current = []
        current.append(row)
    if current:
        batches.append(sorted(current))
    return batches


def padded_slots(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Token slots the micro-batches occupy once padded: ``rows x longest row``, summed."""
    return sum(len(rows) * max(lengths[row] for row in rows) for rows in batches if rows)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of the padded token slots of ``batches`` that are padding (0 with no rows)."""
    slots = padded_slots(lengths, batches)
    if slots == 0:
        return 0.0
    return 1.0 - sum(lengths[row] for rows in batches for row in rows) / slots
