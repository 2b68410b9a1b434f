"""Configuration of ``python -m rsgrpo train``: one flat, documented dataclass loaded from YAML.

Why flat: YAML keys map 1:1 to fields, ``--set key=value`` overrides work without a path syntax,
and the config hash that guards resume covers every field. The paper (arXiv 2509.24261) trained
with verl and does not publish its full recipe; the defaults follow a public recipe of the same
family (DeepMath-Zero: lr 1e-6, weight decay 0.1, grad clip 1.0, 512 prompts x 16 samples,
temperature 1.0, clip 0.2/0.28, token-mean loss, no KL, dynamic sampling) and the paper's
recommended RS-GRPO beta = 2. Values the paper does not publish are marked UNKNOWN next to the field.

Every problem found while loading raises ``ValueError`` naming the file, the key and the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsgrpo.prepare.prompts import PROMPT_TEMPLATES
from rsgrpo.train import config_lora, config_losses
from rsgrpo.train.config_values import coerce, config_error

__all__ = ["TrainConfig", "load_config", "apply_overrides", "validate", "config_hash", "compute_dtype", "FIELD_DOCS",
           "PRECISIONS"]

# Field name -> one-line documentation (also written as comments into config/train_defaults.yaml).
FIELD_DOCS: dict[str, str] = {}


def _f(default, doc: str, *, kind: str):
    """A dataclass field with its documentation and its accepted YAML kind (for type checks)."""
    meta = {"doc": doc, "kind": kind}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """All settings of one RL training run (see FIELD_DOCS / config/train_defaults.yaml)."""

    # --- inputs ---------------------------------------------------------------------------------
    model_dir: str | None = _f(None, "prepared HF checkpoint directory of the initial policy (required)", kind="str?")
    train_data: Any = _f(None, kind="str|dict?",
                         doc="training set: path to a JSONL of {id, problem, answer} records, or a data spec mapping "
                             "for rsgrpo.prepare data sources (required)")
    prompt_template: str = _f("chat", "prompt template of rsgrpo.prepare prompts: chat | plain | raw", kind="str")
    # --- objective ------------------------------------------------------------------------------
    estimator: str = _f("rs_grpo", "advantage estimator, a name in rsgrpo.estimators.ESTIMATORS", kind="str")
    estimator_params: dict | None = _f(None, kind="dict?",
                                    doc="keyword parameters of the estimator; null = its defaults (rs_grpo: {beta: "
                                        "2.0}, the paper's recommendation)")
    beta_schedule: str = _f("constant", kind="str",
                            doc="beta over training (estimators that take one): constant (estimator_params.beta) "
                                "| linear | cosine (beta_start -> beta_end)")
    beta_start: float | None = _f(None, "first-step beta of a linear/cosine schedule", kind="float?")
    beta_end: float | None = _f(None, "beta reached at the end of the ramp of a linear/cosine schedule", kind="float?")
    beta_ramp_steps: int = _f(0, kind="int",
                              doc="length of the beta ramp in steps (0 = the whole run); beta stays at beta_end "
                                  "afterwards")
    policy_loss: str = _f("ppo_clip", kind="str",
                          doc="policy loss, a name in rsgrpo.train.policy_losses.POLICY_LOSSES: ppo_clip (PPO's "
                              "clipped token ratio, verl's vanilla) | gspo (one clipped sequence-level ratio per "
                              "completion, arXiv 2507.18071; needs loss_agg seq-mean-token-mean) | cispo (REINFORCE "
                              "weighted by the clipped, detached token ratio, MiniMax-M1 arXiv 2506.13585)")
    loss_agg: str = _f("token-mean", kind="str",
                       doc="how the token losses make the step's loss (verl's loss_agg_mode), over the whole step "
                           "(every micro-batch and rank): token-mean (sum / the step's tokens; DAPO) | "
                           "seq-mean-token-mean (each completion's token mean, averaged over completions; GRPO, "
                           "GSPO) | seq-mean-token-sum-norm (each completion's token sum / max_new_tokens, averaged "
                           "over completions; Dr.GRPO)")
    clip_low: float | None = _f(None, kind="float?",
                                doc="ratio clip below: ratio >= 1 - clip_low (verl's clip_ratio_low); null = the "
                                    "policy loss's default: ppo_clip 0.2 (DAPO clip-higher recipe), gspo 3e-4 (GSPO "
                                    "paper), cispo 10 (>= 1: no lower bound, verl's CISPO example)")
    clip_high: float | None = _f(None, kind="float?",
                                 doc="ratio clip above: ratio <= 1 + clip_high (verl's clip_ratio_high); null = the "
                                     "policy loss's default: ppo_clip 0.28 (clip-higher), gspo 4e-4, cispo 0.2")
    clip_ratio_c: float | None = _f(None, kind="float?",
                                    doc="ppo_clip's dual clip (verl's clip_ratio_c, arXiv 1912.09729): the loss of a "
                                        "negative-advantage token is capped at -A * clip_ratio_c (> 1); null = off "
                                        "(verl's default is 3.0)")
    kl_coef: float = _f(0.0, kind="float",
                        doc="weight of the k3 KL estimate to the frozen initial policy; 0 = off (the reference model "
                            "is then never loaded)")
    dynamic_sampling: bool = _f(True, kind="bool",
                                doc="drop groups whose rewards are all equal (zero advantage) and refill the step with "
                                    "the next prompts of the data order until prompts_per_step groups with signal "
                                    "are collected (verl's DAPO recipe)")
    max_gen_rounds: int = _f(8, kind="int",
                             doc="dynamic sampling: most rounds of prompts_per_step prompts generated per step; after "
                                 "them the step trains on the groups it has (1 = no refill)")
    overlong: str = _f("none", kind="str",
                       doc="completions cut at max_new_tokens: none (trained like the others) | mask (left out of the "
                           "loss) | penalty (DAPO's linear length penalty over the last overlong_buffer tokens)")
    overlong_buffer: int = _f(0, kind="int",
                              doc="overlong penalty: tokens before max_new_tokens where the reward penalty ramps from 0"
                                  " to -1 (a cut completion gets -1)")
    reward_kind: str = _f("binary", kind="str",
                          doc="reward, a name in rsgrpo.train.rewards.REWARDS: binary (math-verify, the paper's) | "
                              "partial (0.1 for a wrong boxed answer) | any registered reward")
    # --- rollouts -------------------------------------------------------------------------------
    steps: int = _f(100, "number of RL steps (one rollout batch + update each); UNKNOWN in the paper", kind="int")
    prompts_per_step: int = _f(512, "prompts (groups) per step", kind="int")
    samples_per_prompt: int = _f(16, "completions sampled per prompt (group size N)", kind="int")
    max_new_tokens: int = _f(2048, kind="int",
                             doc="max completion tokens; the paper is bounded by the model context (4k for "
                                 "Qwen2.5-Math); UNKNOWN")
    temperature: float = _f(1.0, kind="float",
                            doc="rollout sampling temperature (also divides the trainer's logits, so ratios are taken "
                                "under the sampling policy)")
    top_p: float = _f(1.0, "rollout nucleus sampling mass: 1.0 (the trainer's log-probs are of the whole "
                           "distribution)", kind="float")
    engine: str = _f("auto", "rollout engine: auto (vLLM on GPU, else transformers) | hf | vllm", kind="str")
    hf_batch_size: int = _f(64, kind="int",
                            doc="sequences per batch of the transformers engine (vLLM's scheduler sizes "
                                "its own batches)")
    engine_options: dict = _f({}, kind="dict",
                              doc="extra keyword options of rsgrpo.train.engines.make_engine "
                                  "(e.g. kv_cache_memory_bytes)")
    grading_workers: int | None = _f(None, kind="int?",
                                     doc="grading processes (null = this rank's share of the CPUs the job was given, "
                                         "0 = in-process)")
    grading_timeout: float = _f(5.0, "seconds per answer verification", kind="float")
    # --- optimisation ---------------------------------------------------------------------------
    lr: float = _f(1e-6, "AdamW learning rate", kind="float")
    weight_decay: float = _f(0.1, "AdamW weight decay", kind="float")
    adam_beta1: float = _f(0.9, "AdamW beta1", kind="float")
    adam_beta2: float = _f(0.999, "AdamW beta2", kind="float")
    adam_eps: float = _f(1e-8, "AdamW epsilon", kind="float")
    warmup_steps: int = _f(0, "linear lr warm-up steps (lr constant afterwards)", kind="int")
    grad_clip: float = _f(1.0, "max global gradient norm (0 = no clipping)", kind="float")
    ppo_epochs: int = _f(1, kind="int",
                         doc="optimizer steps per rollout batch, each over the whole batch (1 = on-policy; clipping "
                             "acts from the 2nd)")
    micro_batch_size: int = _f(8, kind="int",
                               doc="sequences per forward/backward pass (gradient accumulation over the batch)")
    micro_batch_tokens: int | None = _f(None, kind="int?",
                                        doc="token budget of a forward/backward pass: null = contiguous chunks of "
                                            "micro_batch_size sequences; a number = the sequences sorted by length and "
                                            "packed so that sequences x the longest (prompt + completion) stays "
                                            "within it (micro_batch_size still caps the sequences; one longer "
                                            "sequence runs alone): less padding when lengths vary")
    zero_stage: int = _f(0, kind="int",
                         doc="DeepSpeed ZeRO stage 0 | 1 | 2 | 3 (3 partitions the weights too: for models that do not"
                             " fit one device)")
    offload_optimizer: bool = _f(False, kind="bool",
                                 doc="ZeRO 1-3: keep the optimizer state (AdamW moments, fp32 master weights) in host "
                                     "memory")
    precision: str = _f("fp32", kind="str",
                        doc="fp32 | bf16-mixed (bf16 compute, fp32 master weights, gradients and AdamW state: "
                            "DeepSpeed's bf16 mode, needs zero_stage 1-3); pure bf16 cannot learn at small lr")
    gradient_checkpointing: bool = _f(False, kind="bool",
                                      doc="recompute each layer's activations in the backward pass instead of "
                                          "keeping them (transformers' gradient checkpointing)")
    lora: dict | None = _f(None, kind="dict?",
                           doc="null = full fine-tuning; {rank, alpha, dropout, target_modules: all-linear | [names]} "
                               "= LoRA adapters (PEFT) with the base frozen (rsgrpo/train/config_lora.py; lr about "
                               "10x full fine-tuning's, docs/training.md)")
    logprob_chunk_tokens: int = _f(1024, kind="int",
                                   doc="completion tokens per chunk of the output layer and log-softmax: bounds the "
                                       "float32 [tokens, vocab] logits held at once")
    rollout_correction: str = _f("none", kind="str",
                                 doc="correction for the rollout engine's sampling distribution differing from the "
                                     "trainer's (bf16 kernels): none | tis (token-level truncated importance weights "
                                     "min(pi_train / pi_rollout, rollout_correction_cap)) | mis (sequences whose "
                                     "ratio leaves [1 / cap, cap] masked out of the loss)")
    rollout_correction_cap: float = _f(2.0, kind="float",
                                       doc="tis: the weight cap; mis: the sequence ratio's upper bound (lower bound "
                                           "1 / cap)")
    mismatch_max_k3: float = _f(0.05, kind="float",
                                doc="fail fast: stop the run when the mean k3 KL estimate between the rollout "
                                    "engine's and the trainer's token log-probs exceeds this (stale weights, dtype or "
                                    "sampling settings); 0 = never stop, the mismatch is still logged")
    mismatch_check_every: int = _f(1, kind="int",
                                   doc="check mismatch_max_k3 every this many steps (and always at steps 0 and 1, "
                                       "before and after the first weight push)")
    seed: int = _f(0, "seed of data order, rollouts and torch RNG", kind="int")
    collective_timeout_minutes: float = _f(180.0, kind="float",
                                           doc="how long a rank waits in a collective (NCCL/gloo) before the job "
                                               "fails: long enough for other ranks' generation, grading and rank "
                                               "0's checkpoint write")
    # --- bookkeeping ----------------------------------------------------------------------------
    run_dir: str | None = _f(None, kind="str?",
                             doc="run directory holding checkpoints/, metrics.csv, manifest.json (required; --run-dir "
                                 "overrides)")
    checkpoint_every: int = _f(50, kind="int",
                               doc="write a checkpoint every this many steps (0 = only at the end; the last step is "
                                   "always saved)")
    checkpoint_every_minutes: float = _f(0.0, kind="float",
                                         doc="also write a checkpoint after the first step that ends this many "
                                             "minutes after the last one (0 = off); for steps of hours, size it so "
                                             "each job writes several (the plan prints minutes per step)")
    keep_last: int = _f(3, "complete checkpoints kept on disk (0 = keep all)", kind="int")
    keep_resumable: int = _f(1, kind="int",
                             doc="newest checkpoints that keep the optimizer state (and bf16-mixed fp32 masters) "
                                 "for resume; older kept ones hold the HF weights only (0 = all keep it)")
    logging: list = _f(["tensorboard"], kind="list",
                       doc="metric sinks besides run_dir/metrics.csv (always written): tensorboard (in "
                           "run_dir/tensorboard) | wandb | mlflow (pip install 'rsgrpo[wandb]' / 'rsgrpo[mlflow]')")
    rollout_log_every: int = _f(10, kind="int",
                                doc="every this many steps write rollout_log_groups groups (prompt, completions, "
                                    "answers, rewards, advantages) to run_dir/rollouts/step-NNNNNN.jsonl and the "
                                    "sinks (0 = never)")
    rollout_log_groups: int = _f(4, "groups of the step (the first in data order) each rollout log holds", kind="int")
    progress: bool = _f(True, "tqdm progress bar on stderr", kind="bool")


for _fld in dataclasses.fields(TrainConfig):
    FIELD_DOCS[_fld.name] = _fld.metadata["doc"]

# Fields that do not influence the trajectory of a run (may change between a run and its resume).
NON_TRAJECTORY_FIELDS = ("run_dir", "checkpoint_every", "checkpoint_every_minutes", "keep_last", "keep_resumable",
                         "logging", "rollout_log_every", "rollout_log_groups", "progress",
                         "grading_workers", "engine", "hf_batch_size", "engine_options", "zero_stage",
                         "offload_optimizer", "micro_batch_size", "micro_batch_tokens", "gradient_checkpointing",
                         "logprob_chunk_tokens", "mismatch_max_k3", "mismatch_check_every",
                         "collective_timeout_minutes")
PRECISIONS = ("fp32", "bf16-mixed")
OVERLONG_MODES = ("none", "mask", "penalty")
ROLLOUT_CORRECTIONS = ("none", "tis", "mis")
# What pure-bf16 training is asked for as; refused with the reason (PURE_BF16_REASON).
PURE_BF16 = ("bf16", "bfloat16", "pure-bf16")
PURE_BF16_REASON = ("pure bf16 training cannot learn at RL learning rates: bf16 keeps about 3 significant digits, "
                    "so an update of 1e-6 relative size rounds back to the old weight (most weights never move); "
                    "use bf16-mixed, which computes in bf16 and keeps fp32 master weights and optimizer state")

_CHOICES = {
    "prompt_template": PROMPT_TEMPLATES,
    "beta_schedule": ("constant", "linear", "cosine"),
    "engine": ("auto", "hf", "vllm"),
    "precision": PRECISIONS,
    "overlong": OVERLONG_MODES,
    "rollout_correction": ROLLOUT_CORRECTIONS,
}


# Keys of earlier versions: a config that still uses one gets told what replaced it.
RENAMED = {
    "dtype": "replaced by 'precision' (fp32 | bf16-mixed); dtype: bfloat16 trained in pure bf16, which "
             "cannot learn at RL learning rates",
    "engine_batch_size": "replaced by 'hf_batch_size' (the transformers engine's batch; vLLM sizes its own)",
    "method": "renamed 'estimator' in rsgrpo 0.2.0 (the advantage estimator's name in rsgrpo.estimators.ESTIMATORS)",
    "method_params": "renamed 'estimator_params' in rsgrpo 0.2.0 (the advantage estimator's keyword parameters)",
    "tensorboard": "replaced by 'logging', a list of metric sinks (tensorboard | wandb | mlflow; metrics.csv is "
                   "always written), e.g. logging: [tensorboard]",
}


def compute_dtype(cfg: TrainConfig) -> str:
    """The dtype the model computes in (and rollout engines and saved HF weights use)."""
    return "bfloat16" if cfg.precision == "bf16-mixed" else "float32"


def validate(cfg: TrainConfig, source: str = "<config>") -> TrainConfig:
    """Type- and range-check every field; resolve ``estimator_params``. Returns ``cfg`` (modified).

    Why so strict: a typo in a YAML grid silently training the wrong thing for hours is the costliest
    failure of an RL pipeline; every field is checked before any model is loaded.
    """
    import torch

    from rsgrpo import estimators
    from rsgrpo.train import rewards, sinks

    for fld in dataclasses.fields(cfg):
        setattr(cfg, fld.name, coerce(source, fld.name, getattr(cfg, fld.name), fld.metadata["kind"]))
    if cfg.precision in PURE_BF16:
        raise config_error(source, "precision", cfg.precision, PURE_BF16_REASON)
    for key, allowed in _CHOICES.items():
        v = getattr(cfg, key)
        if v not in allowed:
            raise config_error(source, key, v, f"must be one of {list(allowed)}")

    def need(key, ok, problem):
        if not ok:
            raise config_error(source, key, getattr(cfg, key), problem)

    need("lr", cfg.lr > 0, "must be > 0")
    need("weight_decay", cfg.weight_decay >= 0, "must be >= 0")
    need("adam_beta1", 0 <= cfg.adam_beta1 < 1, "must be in [0, 1)")
    need("adam_beta2", 0 <= cfg.adam_beta2 < 1, "must be in [0, 1)")
    need("adam_eps", cfg.adam_eps > 0, "must be > 0")
    need("warmup_steps", cfg.warmup_steps >= 0, "must be >= 0")
    need("grad_clip", cfg.grad_clip >= 0, "must be >= 0 (0 = off)")
    need("kl_coef", cfg.kl_coef >= 0, "must be >= 0 (0 = off)")
    need("steps", cfg.steps >= 1, "must be >= 1")
    need("prompts_per_step", cfg.prompts_per_step >= 1, "must be >= 1")
    need("samples_per_prompt", cfg.samples_per_prompt >= 1, "must be >= 1")
    need("max_new_tokens", cfg.max_new_tokens >= 1, "must be >= 1")
    need("temperature", cfg.temperature > 0, "must be > 0 (RL needs sampled rollouts)")
    need("top_p", cfg.top_p == 1.0,
         "must be 1.0 in training: the trainer's log-probs (the PPO ratio, the KL, the on-policy assumption) are "
         "those of the whole distribution at the temperature, not of a nucleus-truncated one; evaluation may "
         "sample with top_p < 1 (the workflow's evaluation.top_p)")
    tp = cfg.engine_options.get("tensor_parallel_size", 1)
    if tp != 1:
        raise config_error(source, "engine_options.tensor_parallel_size", tp,
                           "tensor parallelism is not supported in training: every vLLM engine of a tensor-parallel "
                           "group must be given the same prompts, while each training rank generates its own block of "
                           "the step's prompts")
    need("hf_batch_size", cfg.hf_batch_size >= 1, "must be >= 1")
    need("logprob_chunk_tokens", cfg.logprob_chunk_tokens >= 1, "must be >= 1")
    need("grading_workers", cfg.grading_workers is None or cfg.grading_workers >= 0, "must be >= 0 or null")
    need("grading_timeout", cfg.grading_timeout > 0, "must be > 0")
    need("ppo_epochs", cfg.ppo_epochs >= 1, "must be >= 1")
    need("micro_batch_size", cfg.micro_batch_size >= 1, "must be >= 1")
    need("micro_batch_tokens", cfg.micro_batch_tokens is None or cfg.micro_batch_tokens >= 1, "must be >= 1 or null")
    need("zero_stage", cfg.zero_stage in (0, 1, 2, 3), "must be 0, 1, 2 or 3")
    need("offload_optimizer", not cfg.offload_optimizer or cfg.zero_stage > 0, "needs zero_stage 1, 2 or 3")
    need("zero_stage", cfg.precision != "bf16-mixed" or cfg.zero_stage > 0,
         "precision bf16-mixed needs zero_stage 1, 2 or 3 (DeepSpeed's optimizers for those stages keep fp32 master "
         "weights and accumulate gradients in fp32; stage 1 on one rank partitions nothing)")
    need("checkpoint_every", cfg.checkpoint_every >= 0, "must be >= 0 (0 = only at the end)")
    need("checkpoint_every_minutes", cfg.checkpoint_every_minutes >= 0, "must be >= 0 (0 = off)")
    need("collective_timeout_minutes", cfg.collective_timeout_minutes > 0, "must be > 0")
    need("rollout_correction_cap", cfg.rollout_correction_cap > 1, "must be > 1")
    config_losses.check(cfg, source)  # policy_loss, loss_agg and the clip ranges (resolves clip null)
    config_lora.check(cfg, source)  # fills in the lora block's defaults
    need("mismatch_max_k3", cfg.mismatch_max_k3 >= 0, "must be >= 0 (0 = never stop)")
    need("mismatch_check_every", cfg.mismatch_check_every >= 1, "must be >= 1")
    need("keep_last", cfg.keep_last >= 0, "must be >= 0 (0 = keep all)")
    need("keep_resumable", cfg.keep_resumable >= 0, "must be >= 0 (0 = every kept checkpoint stays resumable)")
    need("beta_ramp_steps", cfg.beta_ramp_steps >= 0, "must be >= 0 (0 = the whole run)")
    need("max_gen_rounds", cfg.max_gen_rounds >= 1, "must be >= 1 (1 = no refill)")
    if cfg.overlong == "penalty":
        need("overlong_buffer", 1 <= cfg.overlong_buffer <= cfg.max_new_tokens,
             f"overlong: penalty needs 1 <= overlong_buffer <= max_new_tokens ({cfg.max_new_tokens})")
    else:
        need("overlong_buffer", cfg.overlong_buffer == 0,
             "only used by overlong: penalty; set overlong: penalty or remove it")
    need("rollout_log_every", cfg.rollout_log_every >= 0, "must be >= 0 (0 = never)")
    need("rollout_log_groups", cfg.rollout_log_groups >= 1, "must be >= 1")
    unknown_sinks = [name for name in cfg.logging if not isinstance(name, str) or name not in sinks.SINKS]
    need("logging", not unknown_sinks, f"unknown sink(s) {unknown_sinks}; allowed: {sorted(sinks.SINKS)} "
                                       "(metrics.csv is always written)")
    need("logging", len(set(cfg.logging)) == len(cfg.logging), "names a sink twice")
    if isinstance(cfg.train_data, dict):
        need("train_data", "source" in cfg.train_data, "a data spec mapping needs a 'source' key")

    if cfg.reward_kind not in rewards.REWARDS:
        raise config_error(source, "reward_kind", cfg.reward_kind,
                           f"unknown reward; registered: {sorted(rewards.REWARDS)}")
    if cfg.estimator not in estimators.ESTIMATORS:
        raise config_error(source, "estimator", cfg.estimator,
                           f"unknown advantage estimator; allowed: {sorted(estimators.ESTIMATORS)}")
    if cfg.dynamic_sampling and estimators.equal_rewards_carry_signal(cfg.estimator):
        raise config_error(source, "dynamic_sampling", True,
                           f"estimator {cfg.estimator!r} has no group baseline: a group of equal rewards carries "
                           "signal (all wrong: -1 each), and dynamic sampling would drop it; "
                           "set dynamic_sampling: false")
    accepted = estimators.estimator_params(cfg.estimator)
    takes_beta = estimators.takes_beta(cfg.estimator)
    if cfg.estimator_params is None:
        # a constant beta is written into the params (so the config hash names the beta trained with)
        default_beta = takes_beta and cfg.beta_schedule == "constant"
        cfg.estimator_params = {"beta": estimators.default_params(cfg.estimator)["beta"]} if default_beta else {}
    params = dict(cfg.estimator_params)
    for k in params:
        if k not in accepted:
            raise config_error(source, f"estimator_params.{k}", params[k],
                               f"not a parameter of estimator {cfg.estimator!r}; allowed: {sorted(accepted)}")
    if cfg.beta_schedule != "constant":
        if not takes_beta:
            raise config_error(source, "beta_schedule", cfg.beta_schedule,
                               f"a beta schedule needs an estimator with a beta parameter; {cfg.estimator!r} has none")
        for key in ("beta_start", "beta_end"):
            v = getattr(cfg, key)
            need(key, v is not None and v >= 0, f"must be a number >= 0 for beta_schedule {cfg.beta_schedule!r}")
        if "beta" in params:
            raise config_error(source, "estimator_params.beta", params["beta"],
                               "give either estimator_params.beta (constant schedule) or beta_start/beta_end, not both")
        params["beta"] = cfg.beta_start
    else:
        for key in ("beta_start", "beta_end"):
            need(key, getattr(cfg, key) is None,
                 "only used by a linear/cosine beta_schedule; set beta_schedule or remove it")
    # Let the estimator itself judge parameter values (k range, variant names, beta >= 0, ...).
    n = cfg.samples_per_prompt
    probe = torch.zeros(2, n)
    probe[0, 0] = 1.0
    try:
        estimators.compute(cfg.estimator, probe, **params)
    except ValueError as exc:
        raise ValueError(f"{source}: key 'estimator_params': {exc} (got {cfg.estimator_params!r})") from None
    if cfg.overlong == "penalty":  # the penalty makes rewards non-binary: the estimator must accept that
        probe[1, 0] = -0.5
        try:
            estimators.compute(cfg.estimator, probe, **params)
        except ValueError as exc:
            raise config_error(source, "overlong", cfg.overlong,
                               f"the penalty makes rewards non-binary, which estimator {cfg.estimator!r} refuses "
                               f"({exc}); use overlong: mask") from None
    return cfg


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``key=value`` strings (value parsed as YAML) to a raw config mapping."""
    import yaml

    out = dict(data)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"{source}: expected key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        out[key] = yaml.safe_load(text) if text.strip() else None
    return out


def from_dict(data: dict, source: str = "<config>") -> TrainConfig:
    """Build and validate a config from a mapping; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the config must be a mapping of keys to values, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in data.items():
        if key in RENAMED:
            raise config_error(source, str(key), value, RENAMED[key])
        if key not in names:
            raise config_error(source, str(key), value, f"unknown key; allowed keys: {sorted(names)}")
    return validate(TrainConfig(**data), source)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (``None`` = all defaults), apply ``--set`` overrides, validate."""
    import yaml

    data: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"{source}: cannot read the config file: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{source}: the config must be a mapping of keys to values, got {type(loaded).__name__}")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (with --set {' '.join(overrides)})"
    return from_dict(data, source)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg: TrainConfig) -> str:
    """SHA-256 of the trajectory-relevant fields; resume refuses a checkpoint with another hash.

    ``steps`` is left out unless it shapes the beta schedule (a ramp over the whole run), so a
    finished run can be extended by rerunning it with a larger ``steps``.
    """
    skip = set(NON_TRAJECTORY_FIELDS)
    if cfg.beta_schedule == "constant" or cfg.beta_ramp_steps > 0:
        skip.add("steps")
    if cfg.rollout_correction == "none":  # off trains as before the option existed: earlier runs still resume
        skip.update(("rollout_correction", "rollout_correction_cap"))
    skip.update(config_losses.hash_skips(cfg))
    skip.update(config_lora.hash_skips(cfg))
    d = {k: v for k, v in to_dict(cfg).items() if k not in skip}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def defaults_yaml() -> str:
    """The text of config/train_defaults.yaml: every key, its default, its one-line documentation."""
    import yaml

    lines = ["# Defaults of `python -m rsgrpo train` (rsgrpo/train/config.py:TrainConfig).",
             "# Generated by `python -m rsgrpo.train.config > config/train_defaults.yaml`; every key maps",
             "# 1:1 to a TrainConfig field. UNKNOWN = not published in the paper (arXiv 2509.24261).", ""]
    for fld in dataclasses.fields(TrainConfig):
        value = getattr(TrainConfig(), fld.name)
        dumped = yaml.safe_dump({fld.name: value}, default_flow_style=True, width=10**6).strip()
        if dumped.startswith("{") and dumped.endswith("}"):
            dumped = dumped[1:-1]
        lines.append(f"# {fld.metadata['doc']}")
        lines.append(dumped)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(defaults_yaml(), end="")
