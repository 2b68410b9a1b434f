"""Memory arithmetic of a job (rsgrpo.capacity): model states equal DeepSpeed's own estimators, the
update's predicted peak is within 25% of the measured one on CPU, the colocated vLLM engine's share is
the largest that fits, and checkpoints, the reference model and grading workers are priced."""

from __future__ import annotations

import json

import pytest
from peak_memory import peak_mb

from rsgrpo import capacity
from rsgrpo.capacity import Shape, TrainJob
from rsgrpo.capacity_lora import Lora

SHAPE = Shape(params=7_615_616_512, largest_layer=545_001_472, layers=28, hidden=3584, intermediate=18944, heads=28,
              kv_heads=4, head_dim=128, vocab=152064)


def _job(**kw) -> TrainJob:
    base = dict(precision="bf16-mixed", zero_stage=1, ranks=1, offload_optimizer=False, micro_batch=4, sequence=4096,
                completion=3072, gradient_checkpointing=True, logprob_chunk=1024)
    return TrainJob(**{**base, **kw})


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_bf16_mixed_model_states_equal_deepspeeds_estimators(ranks, offload):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p, big = SHAPE.params, SHAPE.largest_layer
    _, zero2 = estimate_zero2_model_states_mem_needs(p, num_gpus_per_node=ranks, cpu_offload=offload)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(p, big, num_gpus_per_node=ranks, cpu_offload=offload,
                                                        cpu_offload_params=False)
    for stage, expected in ((1, zero2), (2, zero2), (3, zero3)):
        states = capacity.model_states(SHAPE, _job(zero_stage=stage, ranks=ranks, offload_optimizer=offload))
        assert sum(states.values()) == pytest.approx(expected, abs=2), (stage, states)


def test_fp32_model_states_and_refusals():
    p = SHAPE.params
    assert sum(capacity.model_states(SHAPE, _job(precision="fp32", zero_stage=0)).values()) == 16 * p
    states = capacity.model_states(SHAPE, _job(precision="fp32", zero_stage=2, ranks=4))
    assert states == {"weights": 4 * p, "gradients": p, "master_weights": 0.0, "optimizer": 2 * p}
    with pytest.raises(ValueError, match="zero_stage"):
        capacity.model_states(SHAPE, _job(zero_stage=0))
    with pytest.raises(ValueError, match="precision"):
        capacity.model_states(SHAPE, _job(precision="bf16"))


def test_checkpointing_and_chunks_shrink_the_update():
    plain = capacity.update_memory(SHAPE, _job(gradient_checkpointing=False))
    ckpt = capacity.update_memory(SHAPE, _job())
    assert sum(ckpt.values()) < sum(plain.values()) / 8
    small = capacity.logprob_chunk(SHAPE, _job(logprob_chunk=256))
    assert small * 4 == capacity.logprob_chunk(SHAPE, _job(logprob_chunk=1024)) == 2 * 4 * 1024 * SHAPE.vocab
    # the engine's phase and the update's phase are never resident at once
    mem = capacity.train_memory(SHAPE, _job(), engine_bytes=24e9)
    assert mem["rollout_engine"] == 24e9 and mem["activations"] == mem["logprob_chunk"] == 0
    assert mem["total"] == pytest.approx(sum(capacity.model_states(SHAPE, _job()).values()) + 24e9)


def test_a_token_budget_bounds_the_micro_batch_the_update_is_priced_at():
    """tokens = max(sequence, min(micro_batch x sequence, micro_batch_tokens)): activations and the rebuilt
    layer scale with those tokens, the output layer's chunk with the completion tokens bounded alike."""
    per_token = {}
    for checkpointing in (False, True):
        full = _job(gradient_checkpointing=checkpointing, logprob_chunk=10**6)  # 4 x 4096 tokens
        per_token[checkpointing] = capacity.kept_activations(SHAPE, full) / (4 * 4096)
        for budget, tokens, completion in ((10_000, 10_000, 10_000), (1000, 4096, 3072), (10**6, 4 * 4096, 4 * 3072)):
            job = _job(gradient_checkpointing=checkpointing, logprob_chunk=10**6, micro_batch_tokens=budget)
            assert job.batch_tokens == tokens
            assert capacity.kept_activations(SHAPE, job) == pytest.approx(tokens * per_token[checkpointing])
            assert capacity.recompute(SHAPE, job) == pytest.approx(
                checkpointing * tokens * capacity.layer_activation_elements(SHAPE) * 2)
            assert capacity.logprob_chunk(SHAPE, job) == 2 * 4 * completion * SHAPE.vocab
    # a budget of 10,000 tokens keeps 10,000 / 16,384 of the activations of 4 full-length sequences
    budget = capacity.update_memory(SHAPE, _job(micro_batch_tokens=10_000))["activations"]
    full = capacity.update_memory(SHAPE, _job())["activations"]
    assert budget == pytest.approx(full * 10_000 / (4 * 4096))
    assert _job(micro_batch_tokens=None).batch_tokens == 4 * 4096


def test_decode_time_is_the_slower_of_bandwidth_and_flops():
    kw = dict(sequences=64, prompt=512, completion=100, peak_flops=1e15, bandwidth=1e12, efficiency=1.0)
    one = capacity.decode_seconds(SHAPE, concurrent=1, **kw)
    assert one == pytest.approx(64 * 100 * (2 * SHAPE.params + 562 * SHAPE.kv_bytes_per_token()) / 1e12)
    # all 64 at once: one weight read per step serves every sequence (and the step turns FLOP-bound)
    many = capacity.decode_seconds(SHAPE, concurrent=64, **kw)
    assert many < one / 20


MODELS = {
    "tiny": {"model_type": "qwen2", "vocab_size": 103, "hidden_size": 256, "intermediate_size": 512,
             "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 64,
             "tie_word_embeddings": True, "max_position_embeddings": 4096},
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny", "smollm2"])
def test_predicted_update_peak_within_25_percent_of_the_measured_one(name):
    """One micro-batch's forward and backward through the trainer's log-probs (2 sequences, with and
    without checkpointing, fp32): measured peak above the built model vs
    prediction. At that moment the gradients exist only as far as the backward has come: the output
    layer's (chunk phase) or all of them (rebuilt-layer phase)."""
    from rsgrpo.capacity import model_shape
    from rsgrpo.prepare.loading import shipped_config_path

    config = MODELS[name]
    if isinstance(config, str):
        config = json.loads(shipped_config_path(config).read_text())
    shape = model_shape(config)
    # two lengths on the tiny model (the prediction's length dependence); SmolLM2 (its real shape) at one
    lengths = ((64, 448), (64, 960)) if name == "tiny" else ((64, 448),)
    for prompt, completion in lengths:
        for ckpt in (False, True):
            setup = f"""
import json
from transformers import AutoConfig, AutoModelForCausalLM
from rsgrpo.train.loss import build_batch, token_logprobs
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.loads({json.dumps(json.dumps(config))})))
if {ckpt}:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={{"use_reentrant": False}})
model.train()
gen = torch.Generator().manual_seed(0)
V = model.config.vocab_size
pairs = [(torch.randint(1, V, ({prompt},), generator=gen).tolist(),
          torch.randint(1, V, ({completion},), generator=gen).tolist()) for _ in range(2)]
batch = build_batch(pairs, pad_id=0)
mask = batch.completion_mask[:, 1:]
"""
            measured = peak_mb(setup, """
logp, _ = token_logprobs(model, batch, chunk_tokens=1024)
(-(logp * mask).sum() / mask.sum()).backward()
""", timeout=900)
            job = TrainJob(precision="fp32", zero_stage=0, ranks=1, offload_optimizer=False, micro_batch=2,
                           sequence=prompt + completion, completion=completion, gradient_checkpointing=ckpt,
                           logprob_chunk=1024)
            kept = capacity.kept_activations(shape, job)
            head = kept + capacity.logprob_chunk(shape, job) + 4 * shape.vocab * shape.hidden
            layer = kept + capacity.recompute(shape, job) + 4 * shape.params
            predicted = max(head, layer) / 2**20
            assert 0.75 <= predicted / measured <= 1.25, (name, prompt + completion, ckpt, predicted, measured)


def test_engine_memory_counts_the_sequences_its_kv_room_holds():
    per_sequence = 4096 * SHAPE.kv_bytes_per_token()  # 2 x 28 layers x 512 x 2 bytes per token
    overhead = sum(capacity.vllm_overhead(SHAPE).values())
    share = capacity.engine_memory(SHAPE, sequences=2048, sequence=4096, gpu_bytes=80e9, utilization=0.3)
    assert share["kv_room"] == 24e9 - 2 * SHAPE.params - overhead
    assert share["concurrent"] == int((24e9 - 2 * SHAPE.params - overhead) // per_sequence) == 13 and share["kv_fits"]
    own = capacity.engine_memory(SHAPE, sequences=64, sequence=4096, gpu_bytes=80e9, utilization=None)
    assert own["concurrent"] == 64 and own["reserved"] == 2 * SHAPE.params + 64 * per_sequence
    cramped = capacity.engine_memory(SHAPE, sequences=8, sequence=4096, gpu_bytes=80e9, utilization=0.15)
    assert cramped["concurrent"] == 1 and not cramped["kv_fits"]


def test_vllm_overhead_is_the_profile_run_the_sampler_and_cuda_graphs():
    over = capacity.vllm_overhead(SHAPE)
    assert over["activations"] == 16384 * (3 * 18944 + 4 * 3584) * 2  # max_num_batched_tokens x widest layer
    assert over["sampler"] == 3 * 4 * 1024 * 152064                     # float32 [max_num_seqs, vocab] x 3
    assert over["cuda_graphs"] == capacity.VLLM_CUDA_GRAPH_BYTES > 0


def _fits(share: float, resident: float, gpu: float = 80e9) -> bool:
    return share * gpu + resident + capacity.MARGIN_BYTES <= gpu


def test_colocated_share_is_the_largest_that_fits_beside_the_resident_states():
    """Qwen2.5-Math-7B on 4 x 80 GB, ZeRO-3, bf16-mixed: every share on a 0.001 grid is tried."""
    job = _job(zero_stage=3, ranks=4)
    out = capacity.colocated_engine_share(SHAPE, job, 80e9, kl_reference=False)
    resident = sum(capacity.model_states(SHAPE, job).values())
    assert out["resident_bytes"] == resident and out["margin_bytes"] == capacity.MARGIN_BYTES >= 4e9
    grid = [i / 1000 for i in range(50, 951)]
    assert out["share"] == max(s for s in grid if _fits(s, resident)) and out["fits"]
    assert _fits(out["share"], resident) and not _fits(out["share"] + 0.001, resident)
    assert 0.4 < out["share"] < 0.5  # vs the 0.3 the trainer used to take
    assert out["engine_bytes"] == out["share"] * 80e9
    overhead = sum(capacity.vllm_overhead(SHAPE, 2).values())
    assert out["overhead_bytes"] == overhead and out["weights_bytes"] == 2 * SHAPE.params
    assert out["kv_room_bytes"] == pytest.approx(out["share"] * 80e9 - 2 * SHAPE.params - overhead, abs=1)
    # the engine the plan prices at that share leaves the same KV room
    engine = capacity.engine_memory(SHAPE, sequences=512, sequence=4096, gpu_bytes=80e9, utilization=out["share"])
    assert engine["kv_room"] == pytest.approx(out["kv_room_bytes"], abs=1)
    # the reference model (kl_coef > 0) stays resident too: the share shrinks by its 2 bytes per parameter
    kl = capacity.colocated_engine_share(SHAPE, job, 80e9, kl_reference=True)
    assert kl["resident_bytes"] == resident + 2 * SHAPE.params
    with_reference = resident + 2 * SHAPE.params
    assert _fits(kl["share"], with_reference) and not _fits(kl["share"] + 0.001, with_reference)


def test_colocated_share_is_clamped_and_says_when_even_the_smallest_does_not_fit():
    crowded = capacity.colocated_engine_share(SHAPE, _job(ranks=1), 80e9, kl_reference=False)  # ZeRO-1: 122 GB
    assert crowded["share"] == capacity.MIN_ENGINE_SHARE and not crowded["fits"]
    roomy = capacity.colocated_engine_share(SHAPE, _job(zero_stage=3, ranks=1, offload_optimizer=True), 1000e9,
                                            kl_reference=False)
    assert roomy["share"] == capacity.MAX_ENGINE_SHARE and roomy["fits"]


def test_train_job_reads_a_train_config():
    from rsgrpo.train.config import TrainConfig

    cfg = TrainConfig(precision="bf16-mixed", zero_stage=3, micro_batch_size=4, max_new_tokens=3072,
                      gradient_checkpointing=True, logprob_chunk_tokens=512, offload_optimizer=True)
    assert capacity.train_job(cfg, ranks=4, prompt_tokens=1024) == TrainJob(
        precision="bf16-mixed", zero_stage=3, ranks=4, offload_optimizer=True, micro_batch=4, sequence=4096,
        completion=3072, gradient_checkpointing=True, logprob_chunk=512)
    cfg.micro_batch_tokens = 8192
    assert capacity.train_job(cfg, ranks=4, prompt_tokens=1024).micro_batch_tokens == 8192


def test_the_reference_model_is_a_full_replica_in_the_compute_dtype():
    for precision, stage, size in (("bf16-mixed", 3, 2), ("fp32", 0, 4)):
        job = _job(precision=precision, zero_stage=stage, ranks=4)
        without = capacity.train_memory(SHAPE, job, engine_bytes=30e9)
        kl = capacity.train_memory(SHAPE, job, engine_bytes=30e9, kl_reference=True)
        assert without["reference_model"] == 0 and kl["reference_model"] == size * SHAPE.params
        assert kl["total"] == pytest.approx(without["total"] + size * SHAPE.params)
    # and it is built on the host first
    job = _job(zero_stage=3, ranks=4)
    assert (capacity.host_memory(SHAPE, job, ranks_per_node=4, kl_reference=True)
            - capacity.host_memory(SHAPE, job, ranks_per_node=4)) == 4 * 2 * SHAPE.params


def test_host_memory_grows_with_the_grading_workers():
    job = _job(zero_stage=3, ranks=4)
    none = capacity.host_memory(SHAPE, job, ranks_per_node=4, grading_workers=0)
    eight = capacity.host_memory(SHAPE, job, ranks_per_node=4, grading_workers=8)
    assert none == 4 * 2 * SHAPE.params
    assert eight - none == pytest.approx(4 * 8 * capacity.GRADING_WORKER_BYTES)
    assert capacity.GRADING_WORKER_BYTES >= 84e6  # the measured peak of one worker


def test_a_checkpoint_holds_the_weights_masters_and_moments():
    assert capacity.checkpoint_bytes(SHAPE, "bf16-mixed") == (2 + 4 + 8) * SHAPE.params
    assert capacity.checkpoint_bytes(SHAPE, "fp32") == (4 + 8) * SHAPE.params


def _simulate(job_minutes, minutes_per_step, write_minutes, every_steps, every_minutes):
    """The trainer's rule, step by step: a checkpoint every ``every_steps`` steps and after the first step
    that ends ``every_minutes`` after the last one; checkpoints completed within the job."""
    t, step, last, written = 0.0, 0, 0.0, 0
    while True:
        t += minutes_per_step
        step += 1
        if t > job_minutes:
            return written
        if (every_steps and step % every_steps == 0) or (every_minutes and t - last >= every_minutes):
            t += write_minutes
            if t > job_minutes:
                return written
            written, last = written + 1, t


@pytest.mark.parametrize("steps, minutes", [(100, 0), (0, 720), (100, 720), (7, 100), (0, 0), (30, 50)])
@pytest.mark.parametrize("per_step", [24.26, 37.7, 3.0])
def test_checkpoints_per_job_is_a_lower_bound_of_the_trainers_rule(steps, minutes, per_step):
    kw = dict(job_minutes=10080, minutes_per_step=per_step, write_minutes=1.8, every_steps=steps, every_minutes=minutes)
    count = capacity.checkpoints_per_job(**kw)
    simulated = _simulate(10080, per_step, 1.8, steps, minutes)
    assert count <= simulated
    if not (steps and minutes):  # one rule alone: exact
        assert count == simulated
    if steps == 100 and minutes == 0 and per_step == 24.26:
        assert count == 4  # 100 steps = 2428 min a checkpoint
    if steps == 0 and minutes == 720 and per_step == 24.26:
        assert count == 13  # 30 steps = 729.6 min a checkpoint


# ------------------------------------------------------------------------------------------------
# LoRA: a frozen base, adapters trained (rsgrpo.capacity_lora)
# ------------------------------------------------------------------------------------------------
R16 = Lora(rank=16)  # config_lora.DEFAULTS: rank 16, all-linear, dropout 0
# SHAPE's decoder layer: q, k, v, o, gate, up, down as rank x (in + out) with q = 28 x 128 = 3584 and
# kv = 4 x 128 = 512: (h + q) + 2 (h + kv) + (q + h) + 2 (h + inter) + (inter + h)
ADAPTERS_R16 = 16 * 28 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584) + 3 * (3584 + 18944))
LARGEST_ADAPTER_R16 = 16 * 18944  # lora_B of gate/up, lora_A of down: [18944, 16] / [16, 18944]


def _peft_trainable(config: dict, **lora) -> int:
    """Trainable parameters of PEFT's LoRA model built on the meta device from a config.json dict."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
        peft_model = get_peft_model(model, LoraConfig(bias="none", task_type="CAUSAL_LM", **lora))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def _lora_configs() -> dict[str, dict]:
    """The tiny test model and every config.json the plan knows (the grid's models, SmolLM2)."""
    from rsgrpo.prepare.loading import MODEL_CONFIGS
    from rsgrpo.prepare.tiny import tiny_config

    configs = {"tiny": MODELS["tiny"], "tiny-prepare": tiny_config().to_dict()}
    configs.update({p.stem: json.loads(p.read_text()) for p in sorted(MODEL_CONFIGS.glob("*.json"))})
    return configs


@pytest.mark.parametrize("name", sorted(_lora_configs()))
def test_the_closed_form_adapter_count_is_pefts(name):
    from rsgrpo.capacity import model_shape
    from rsgrpo.capacity_lora import adapter_params

    config = _lora_configs()[name]
    shape = model_shape(config)
    for rank, targets in ((16, "all-linear"), (3, ["q_proj", "v_proj"]), (8, ["mlp.down_proj", "o_proj"]),
                          (2, ["layers.1.self_attn.k_proj"])):
        lora = Lora(rank=rank, targets=targets if isinstance(targets, str) else tuple(targets))
        assert adapter_params(shape, lora) == _peft_trainable(config, r=rank, lora_alpha=32,
                                                              target_modules=targets), (rank, targets)


def test_all_linear_is_config_loras():
    from rsgrpo import capacity_lora
    from rsgrpo.train import config_lora

    assert capacity_lora.ALL_LINEAR == config_lora.ALL_LINEAR == config_lora.DEFAULTS["target_modules"]
    assert capacity_lora.lora_of(config_lora.DEFAULTS) == R16 and capacity_lora.lora_of(None) is None


def test_a_target_no_layer_has_is_named():
    with pytest.raises(ValueError, match=r"lora\.target_modules: 'c_attn' matches no linear layer"):
        capacity.model_states(SHAPE, _job(lora=Lora(rank=4, targets=("q_proj", "c_attn"))))


def test_lora_model_states_by_hand_are_below_full_fine_tuning_at_every_stage():
    """SHAPE (Qwen2.5-Math-7B) on 4 ranks, rank 16 all-linear: the bf16 base (partitioned by ZeRO-3),
    the adapters' bf16 weights, fp32 gradients, masters and moments as full fine-tuning's formulas give
    them for ADAPTERS_R16 parameters."""
    from rsgrpo.capacity_lora import adapter_params, largest_adapter

    assert adapter_params(SHAPE, R16) == ADAPTERS_R16 == 40_370_176
    assert largest_adapter(SHAPE, R16) == LARGEST_ADAPTER_R16
    p, a, big, n, top = SHAPE.params, ADAPTERS_R16, SHAPE.largest_layer, 4, LARGEST_ADAPTER_R16
    by_hand = {  # (precision, stage, offload) -> (weights, gradients, master_weights, optimizer)
        ("bf16-mixed", 1, False): (2 * (p + a), 6 * a / n, 4 * a / n, 8 * a / n),
        ("bf16-mixed", 2, False): (2 * (p + a), 6 * a / n, 4 * a / n, 8 * a / n),
        ("bf16-mixed", 3, False): (2 * big + 2 * (p + a) / n, 2 * top + 4 * a / n, 4 * a / n, 8 * a / n),
        ("bf16-mixed", 3, True): (2 * big + 2 * (p + a) / n, 2 * top, 0, 0),
        ("fp32", 0, False): (4 * (p + a), 4 * a, 0, 8 * a),
        ("fp32", 1, False): (4 * (p + a), 4 * a, 0, 8 * a / n),
        ("fp32", 2, False): (4 * (p + a), 4 * a / n, 0, 8 * a / n),
        ("fp32", 3, False): (4 * big + 4 * (p + a) / n, 4 * top + 4 * a / n, 0, 8 * a / n),
    }
    for (precision, stage, offload), expected in by_hand.items():
        kw = dict(precision=precision, zero_stage=stage, ranks=n, offload_optimizer=offload)
        lora = capacity.model_states(SHAPE, _job(lora=R16, **kw))
        full = capacity.model_states(SHAPE, _job(**kw))
        assert tuple(lora[k] for k in ("weights", "gradients", "master_weights", "optimizer")) == pytest.approx(
            expected), (precision, stage, offload)
        assert sum(lora.values()) < sum(full.values()), (precision, stage, offload)
    # the numbers: bf16-mixed ZeRO-1 on one GPU, 20 bytes per parameter against the bf16 base + 20 per adapter
    one = sum(capacity.model_states(SHAPE, _job(lora=R16)).values())
    assert one == pytest.approx(2 * p + 20 * a) and one / 1e9 == pytest.approx(16.04, abs=0.01)
    assert sum(capacity.model_states(SHAPE, _job()).values()) / 1e9 == pytest.approx(152.31, abs=0.01)


def test_lora_null_is_full_fine_tuning():
    """A train config with lora null makes a job without LoRA, priced as before the key existed."""
    from rsgrpo.train.config import TrainConfig

    cfg = TrainConfig(precision="bf16-mixed", zero_stage=3, micro_batch_size=4, max_new_tokens=3072,
                      gradient_checkpointing=True, logprob_chunk_tokens=1024, lora=None)
    job = capacity.train_job(cfg, ranks=4, prompt_tokens=1024)
    assert job.lora is None and job == _job(zero_stage=3, ranks=4)
    p, big = SHAPE.params, SHAPE.largest_layer
    assert capacity.model_states(SHAPE, job) == {"weights": 2 * big + 2 * p / 4, "gradients": 2 * big + 4 * p / 4,
                                                 "master_weights": 4 * p / 4, "optimizer": 8 * p / 4}
    assert capacity.checkpoint_bytes(SHAPE, "bf16-mixed", None) == 14 * p
    assert capacity.trainable(SHAPE, job) == (p, p, big)


def test_train_job_reads_the_lora_block():
    from rsgrpo.train.config import TrainConfig, validate

    cfg = validate(TrainConfig(lora={"rank": 8, "target_modules": ["q_proj", "v_proj"]}))
    job = capacity.train_job(cfg, ranks=1, prompt_tokens=1024)
    assert job.lora == Lora(rank=8, targets=("q_proj", "v_proj"), dropout=0.0)


def test_lora_adds_rank_wide_activations_and_dropouts_copies():
    """Without checkpointing every layer keeps each adapter's rank-wide lora_A output (7 adapters per
    layer under all-linear); with checkpointing only the rebuilt layer does. Dropout adds each
    adapter's dropped-out input and its bool mask."""
    tokens = 4 * 4096
    for checkpointing in (False, True):
        full, lora = _job(gradient_checkpointing=checkpointing), _job(gradient_checkpointing=checkpointing, lora=R16)
        kept = capacity.kept_activations(SHAPE, lora) - capacity.kept_activations(SHAPE, full)
        rebuilt = capacity.recompute(SHAPE, lora) - capacity.recompute(SHAPE, full)
        per_layer = 7 * 16 * 2  # bytes per token: 7 adapters, rank 16, bf16
        assert kept == pytest.approx(0 if checkpointing else tokens * 28 * per_layer)
        assert rebuilt == pytest.approx(tokens * per_layer if checkpointing else 0)
    dropout = _job(gradient_checkpointing=False, lora=Lora(rank=16, targets=("q_proj",), dropout=0.1))
    plain = _job(gradient_checkpointing=False)
    extra = capacity.kept_activations(SHAPE, dropout) - capacity.kept_activations(SHAPE, plain)
    assert extra == pytest.approx(tokens * 28 * (16 * 2 + 3584 * (2 + 1)))
    # a small share of the kept activations (under 1% at rank 16): LoRA's saving is in the model states
    adapters = capacity.kept_activations(SHAPE, _job(gradient_checkpointing=False, lora=R16))
    assert 0 < adapters - capacity.kept_activations(SHAPE, plain) < 0.01 * capacity.kept_activations(SHAPE, plain)


def test_lora_checkpoints_hold_the_merged_weights_and_the_adapters_state():
    a = ADAPTERS_R16
    assert capacity.checkpoint_bytes(SHAPE, "bf16-mixed", R16) == 2 * SHAPE.params + (4 + 8) * a
    assert capacity.checkpoint_bytes(SHAPE, "fp32", R16) == 4 * SHAPE.params + (4 + 8) * a
    assert capacity.checkpoint_bytes(SHAPE, "bf16-mixed", R16) < capacity.checkpoint_bytes(SHAPE, "bf16-mixed") / 6


def test_lora_offloads_and_colocates_only_the_adapters_states():
    job = _job(zero_stage=3, ranks=4, lora=R16)
    offloaded = _job(zero_stage=3, ranks=4, lora=R16, offload_optimizer=True)
    host = capacity.host_memory(SHAPE, offloaded, ranks_per_node=4) - capacity.host_memory(SHAPE, job, ranks_per_node=4)
    assert host == pytest.approx(4 * 16 * ADAPTERS_R16 / 4)  # 4 ranks: a quarter of the fp32 grads, masters, moments
    lora = capacity.colocated_engine_share(SHAPE, job, 80e9, kl_reference=False)
    full = capacity.colocated_engine_share(SHAPE, _job(zero_stage=3, ranks=4), 80e9, kl_reference=False)
    assert lora["resident_bytes"] == sum(capacity.model_states(SHAPE, job).values())
    assert lora["share"] > full["share"] and lora["weights_bytes"] == full["weights_bytes"]  # vLLM: merged weights


def test_lora_update_skips_the_bases_weight_gradients():
    kw = dict(sequences=64, prompt=1024, completion=3072, gradient_checkpointing=True)
    full = capacity.train_step_flops(SHAPE, **kw)
    lora = capacity.train_step_flops(SHAPE, adapter_params=ADAPTERS_R16, **kw)
    tokens, p, a = 64 * 4096, SHAPE.params, ADAPTERS_R16
    attention = 4 * 28 * 2048 * 28 * 128  # per token at the mean context of the update
    forward = tokens * (2 * (p + a) + attention)
    assert lora["update"] == pytest.approx(2 * forward + tokens * (2 * p + 4 * a + 2 * attention))
    assert lora["generate"] == full["generate"] and 0.7 < lora["update"] / full["update"] < 0.8
