"""The order in which training prompts are drawn: a pure function of (records, seed, position).

The training records form an endless stream, epoch after epoch, each epoch a fresh seeded
permutation of all records (every record once per epoch). A run's data position is an index into
that stream, the number of prompts drawn so far (a step draws ``prompts_per_step`` prompts per
generation round, and dynamic sampling may spend several rounds), so resuming needs nothing but the
position, and the prompts of a round do not depend on how many ranks share it: they are split into
equal contiguous blocks, one per rank.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["epoch_permutation", "stream_indices", "rank_slice"]


@functools.lru_cache(maxsize=4)
def epoch_permutation(n_records: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The record order of ``epoch``: ``torch.randperm`` seeded with ``seed * 1_000_003 + epoch``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n_records, generator=generator).tolist())


def stream_indices(n_records: int, seed: int, start: int, count: int) -> list[int]:
    """Record indices at stream positions ``[start, start + count)``."""
    if n_records < 1:
        raise ValueError("the training set holds no records")
    return [epoch_permutation(n_records, seed, pos // n_records)[pos % n_records]
            for pos in range(start, start + count)]


def rank_slice(indices: list[int], rank: int, world_size: int) -> tuple[list[int], int]:
    """This rank's block of a round's record ``indices`` and the position of its first prompt in
    the round. Each rank samples, grades and computes advantages for whole groups, so group statistics
    never need another rank's samples."""
    if len(indices) % world_size:
        raise ValueError(f"{len(indices)} prompts cannot be split evenly over {world_size} ranks")
    per_rank = len(indices) // world_size
    first = rank * per_rank
    return indices[first:first + per_rank], first
