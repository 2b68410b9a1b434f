"""Prompt templates: the text a model is given for a problem.

Why one module: the trainer's rollouts and the sampler must render a problem identically, or a
trained policy would be evaluated on prompts it never saw; both call :func:`build_prompt`, and the
workflow schema offers exactly :data:`PROMPT_TEMPLATES` (tests/test_schema_enums.py).
"""

from __future__ import annotations

__all__ = ["PROMPT_TEMPLATES", "BOXED_INSTRUCTION", "build_prompt"]

PROMPT_TEMPLATES = ("chat", "plain", "raw")
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def build_prompt(problem: str, *, template: str = "chat", tokenizer=None, system: str | None = None) -> str:
    """The text a model is given for ``problem``; ``chat`` and ``plain`` ask for the answer in ``\\boxed{}``.

    ``raw``: the problem text as it is, for a model pretrained on the task's own format
    (:mod:`rsgrpo.prepare.synthetic`); ``system`` is not allowed there.
    ``plain``: ``[system + blank line] + problem + blank line + instruction``, for base models.
    ``chat``: one user turn (problem + instruction), optional system turn, rendered with
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)``.
    """
    if template == "raw":
        if system:
            raise ValueError("prompt template 'raw' takes no system prompt")
        return problem
    user = f"{problem.strip()}\n\n{BOXED_INSTRUCTION}"
    if template == "plain":
        return f"{system.strip()}\n\n{user}" if system else user
    if template == "chat":
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError("prompt template 'chat' needs a tokenizer with apply_chat_template "
                             f"(got {type(tokenizer).__name__}); use template 'plain' without one")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    raise ValueError(f"unknown prompt template {template!r}; allowed templates: {', '.join(PROMPT_TEMPLATES)}")
