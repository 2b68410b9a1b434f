"""The reward registry: the math-verify rewards, registration rules, and the checks of compute."""

import pytest

from rsgrpo.train import rewards
from rsgrpo.train.rewards import PARTIAL_FORMAT_CREDIT, REWARDS, compute, register, reward_settings

GOLDS = ["5", "5", "5", "5"]
COMPLETIONS = ["\\boxed{5}", "\\boxed{6}", "the answer is 6", "no idea"]


def inputs(completions=COMPLETIONS, answers=GOLDS):
    records = [{"id": str(i), "problem": "p", "answer": a} for i, a in enumerate(answers)]
    return dict(completions=completions, answers=answers, problems=["p"] * len(answers), records=records)


def test_math_verify_rewards():
    assert compute("binary", **inputs(), settings={"workers": 0}).values == [1.0, 0.0, 0.0, 0.0]
    assert compute("partial", **inputs(), settings={"workers": 0}).values == [1.0, PARTIAL_FORMAT_CREDIT, 0.0, 0.0]
    # the math rewards hand back what they extracted, so the trainer needs no grading code of its own
    from rsgrpo.grading import extract_answer

    assert compute("binary", **inputs(), settings={"workers": 0}).answers == [extract_answer(c) for c in COMPLETIONS]
    assert compute("binary", **inputs(), settings={"workers": 0}).answers == ["5", "6", "6", None]
    assert rewards.solved_at("binary") == rewards.solved_at("partial") == 1.0
    assert list(REWARDS)[:2] == ["binary", "partial"]
    assert reward_settings("binary") == {"workers": None, "timeout": 5.0}


def test_integer_records_make_restated_expressions_earn_nothing():
    completions = ["The answer is 5 + 8", "\\boxed{5+8}", "\\boxed{13}", "\\boxed{12}", "\\boxed{013}"]
    golds = ["13"] * len(completions)
    plain = inputs(completions, golds)
    guarded = inputs(completions, golds)
    for record in guarded["records"]:
        record["answer_format"] = "integer"
    assert compute("binary", **plain, settings={"workers": 0}).values == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert compute("binary", **guarded, settings={"workers": 0}).values == [0.0, 0.0, 1.0, 0.0, 1.0]
    # a boxed answer of the wrong format earns no format credit either
    assert compute("partial", **plain, settings={"workers": 0}).values == [1.0, 1.0, 1.0, PARTIAL_FORMAT_CREDIT, 1.0]
    assert compute("partial", **guarded, settings={"workers": 0}).values == [0.0, 0.0, 1.0, PARTIAL_FORMAT_CREDIT, 1.0]
    guarded["records"][1]["answer_format"] = "integers"
    with pytest.raises(ValueError, match="record '1': answer_format must be one of 'any', 'integer', got 'integers'"):
        compute("binary", **guarded, settings={"workers": 0})


@register("test_rewards_problem_length")
def problem_length(*, completions, answers, problems, records):
    # uses a record field beyond the standard ones: the dataset's own column reaches the reward
    return [float(len(r["extra"])) for r in records]


def test_a_registered_reward_sees_every_record_field_and_no_settings():
    args = inputs(completions=["a", "b"], answers=["1", "2"])
    for record, extra in zip(args["records"], ["xy", "xyz"]):
        record["extra"] = extra
    # grading settings are offered but this reward declares none, so it never receives them
    out = compute("test_rewards_problem_length", **args, settings={"workers": 0, "timeout": 1.0})
    assert out.values == [2.0, 3.0] and out.answers is None  # a plain list: values only, nothing extracted
    assert rewards.solved_at("test_rewards_problem_length") == 1.0  # the default meaning of "solved"


@register("test_rewards_graded_half", solved_at=0.5)
def graded_half(*, completions, answers, problems, records):
    return rewards.RewardOutput([0.5] * len(completions), [c[:1] or None for c in completions])


def test_a_reward_states_what_solved_means_and_may_return_its_answers():
    out = compute("test_rewards_graded_half", **inputs(completions=["ab", ""], answers=["1", "2"]))
    assert out == rewards.RewardOutput([0.5, 0.5], ["a", None])
    assert rewards.solved_at("test_rewards_graded_half") == 0.5
    with pytest.raises(ValueError, match="unknown reward 'dense'"):
        rewards.solved_at("dense")


def test_register_refuses_duplicates_and_bad_signatures():
    with pytest.raises(ValueError, match="'binary' is already registered"):
        register("binary")(problem_length)
    with pytest.raises(ValueError, match="keyword-only"):
        register("test_rewards_positional")(lambda completions, answers, problems, records: [])
    with pytest.raises(ValueError, match="missing \\['records'\\]"):
        register("test_rewards_no_records")(lambda *, completions, answers, problems: [])
    assert "test_rewards_positional" not in REWARDS and "test_rewards_no_records" not in REWARDS


@register("test_rewards_broken")
def broken(*, completions, answers, problems, records):
    return [float("nan")] + [0.0] * (len(completions) - 1)


@register("test_rewards_short")
def short(*, completions, answers, problems, records):
    return [1.0]


@register("test_rewards_few_answers")
def few_answers(*, completions, answers, problems, records):
    return rewards.RewardOutput([0.0] * len(completions), [None])


def test_compute_checks_what_a_reward_returns():
    with pytest.raises(ValueError, match="unknown reward 'dense'; registered rewards: \\['binary'"):
        compute("dense", **inputs())
    with pytest.raises(ValueError, match="returned nan for completion 0"):
        compute("test_rewards_broken", **inputs())
    with pytest.raises(ValueError, match="returned 1 values for 4 completions"):
        compute("test_rewards_short", **inputs())
    with pytest.raises(ValueError, match="returned 1 answers for 4 completions"):
        compute("test_rewards_few_answers", **inputs())
    with pytest.raises(ValueError, match="3 answers for 4 completions"):
        compute("binary", **{**inputs(), "answers": GOLDS[:3]})
    assert rewards.REWARD_INPUTS == ("completions", "answers", "problems", "records")


def test_overlong_penalty_is_dapos_linear_ramp_over_the_buffer():
    from rsgrpo.train.rewards import overlong_penalty

    # max 10 tokens, buffer 4: free up to 6 tokens, then -1/4 per token, -1 at the limit
    assert overlong_penalty([0, 5, 6, 7, 8, 9, 10], max_tokens=10, buffer=4) == [0.0, 0.0, 0.0, -0.25, -0.5, -0.75,
                                                                                   -1.0]
    assert overlong_penalty([1, 2], max_tokens=2, buffer=2) == [-0.5, -1.0]  # the whole range is the buffer
    for bad in (0, 11):
        with pytest.raises(ValueError, match=f"overlong buffer must be in \\[1, max_tokens=10\\], got {bad}"):
            overlong_penalty([5], max_tokens=10, buffer=bad)
