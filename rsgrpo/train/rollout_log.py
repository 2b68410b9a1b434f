"""Training rollouts a person can read: every ``rollout_log_every`` steps, the first
``rollout_log_groups`` groups of the step (in data order) go to ``<run_dir>/rollouts/step-NNNNNN.jsonl``
(one JSON object per group) and, as markdown, to the run's sinks (TensorBoard text, W&B, MLflow).

Why: a reward that can be gamed is gamed (a policy restating the problem, answers without a box,
completions cut at the length limit), and the metrics alone do not show how. One group's object::

    {"step": 10, "position": 37, "id": "p12", "problem": ..., "prompt": ..., "answer": "13", "kept": true,
     "completions": [{"text": ..., "extracted": "13", "reward": 1.0, "advantage": 0.75,
                      "tokens": 9, "finished": true}, ...]}

``position`` is the prompt's place in the data stream; ``kept`` says whether the update learned from
the group (a group dropped by dynamic sampling, or drawn beyond the step's batch, has advantages
``null``); ``reward`` is the reward the advantages were computed from (after any overlong penalty);
``extracted`` is the final answer the reward extracted (``null`` throughout for a reward that extracts
none).
"""

from __future__ import annotations

import json
from pathlib import Path

from rsgrpo.io import atomic_path
from rsgrpo.layout import ROLLOUTS
from rsgrpo.train.rollout import Rollout

__all__ = ["rollout_path", "rank_groups", "write_rollouts", "to_markdown"]

_PREVIEW_CHARS = 2000  # per completion in the markdown view; the JSONL keeps the whole text


def rollout_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / ROLLOUTS / f"step-{step:06d}.jsonl"


def rank_groups(rollout: Rollout, records: list[dict], prompts: list, *, step: int, limit: int) -> list[dict]:
    """This rank's groups among the step's first ``limit`` (by offset), as the objects of the log."""
    groups = []
    for group, offset in enumerate(rollout.offsets):
        if offset >= limit:
            continue
        record, kept = records[rollout.indices[group]], bool(rollout.kept[group])
        answers = rollout.answers[group] if rollout.answers is not None else [None] * len(rollout.completions[group])
        groups.append({
            "step": step, "position": rollout.start + offset, "id": str(record["id"]),
            "problem": str(record["problem"]), "prompt": prompts[rollout.indices[group]],
            "answer": str(record["answer"]), "kept": kept,
            "completions": [{"text": c.text, "extracted": answers[j], "reward": float(rollout.rewards[group, j]),
                             "advantage": float(rollout.advantages[group, j]) if kept else None,
                             "tokens": len(c.token_ids), "finished": bool(c.finished)}
                            for j, c in enumerate(rollout.completions[group])]})
    return groups


def write_rollouts(run_dir: str | Path, step: int, groups: list[dict]) -> Path:
    """Write the groups of ``step`` (1-based, as in metrics.csv) atomically; returns the file."""
    path = rollout_path(run_dir, step)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for group in groups:
            fh.write(json.dumps(group, ensure_ascii=False) + "\n")
    return path


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def to_markdown(groups: list[dict]) -> str:
    """The groups as markdown: a heading per group, one line of numbers and a quoted text per completion."""
    parts = []
    for group in groups:
        parts.append(f"### {group['id']} (position {group['position']}, gold `{group['answer']}`, "
                     f"{'kept' if group['kept'] else 'not trained on'})\n\n{group['problem']}\n")
        for j, c in enumerate(group["completions"]):
            text = c["text"] if len(c["text"]) <= _PREVIEW_CHARS else c["text"][:_PREVIEW_CHARS] + " [...]"
            parts.append(f"**{j}** reward {_fmt(c['reward'])} advantage {_fmt(c['advantage'])} extracted "
                         f"`{c['extracted']}` tokens {c['tokens']}{'' if c['finished'] else ' (cut)'}\n\n"
                         + "\n".join("    " + line for line in text.splitlines() or [""]) + "\n")
    return "\n".join(parts)
