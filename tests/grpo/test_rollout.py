"""A rollout (grpo/rollout.py make_rollout_and_prefill) on the tiny Qwen2-VL: shapes, row order,
stop and truncation masks, suppressed tokens, per-row temperatures, and the rewards and
advantages that go with each row.

No mocks: the real tiny model (random weights) samples from the synthetic questions. Where a
property only shows when the model does something unlikely (stop early, try an image token), the
test makes it likely and first checks that it did happen, so the assertion can fail.

Shapes: B questions, G completions each, R = B*G rows, C completion tokens, V vocabulary.
"""

import plans
import pytest
import torch

from vqa_grpo.config import DataConfig, GRPOConfig, ModelConfig, RewardConfig
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.grpo import group_advantages
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.plan import PLAIN
from vqa_grpo.models.scoring import completion_logits
from vqa_grpo.rewards import clean_answer, compute_rewards

CPU = torch.device("cpu")
B, G = 2, 4


@pytest.fixture(scope="module")
def data(synth_dir):
    return load_vqa(DataConfig(path=str(synth_dir)), seed=0)


@pytest.fixture
def lm(tiny_model_dir):
    """A fresh copy of the tiny model for each test (some tests change its generation config)."""
    return load_model(ModelConfig(name_or_path=str(tiny_model_dir)), CPU)


def two_questions(data):
    """Two questions of different lengths, so the prompts are left-padded differently."""
    short = next(e for e in data.train if e.question == "How many objects are there?")
    long = next(e for e in data.train if "left or right" in e.question)
    examples = [short, long]
    return examples, [e.load_image() for e in examples]


def rollout(lm, data, seed=0, reward=None, **grpo):
    grpo = GRPOConfig(**{"num_generations": G, "max_completion_length": 4, **grpo})
    examples, images = two_questions(data)
    torch.manual_seed(seed)
    ro = plans.rollout(lm.model, lm.adapter, lm.processor, examples, images, grpo, reward or RewardConfig(), CPU)
    return ro, grpo


def sampler_logprobs(lm, ro, prompts, temperatures):  # -> [R, C]
    """log p of each completion token under the distribution generate sampled it from, rebuilt
    from one teacher-forced forward pass: the row's logits / its temperature, with the
    suppressed (image and vision) tokens at -inf as generate's suppress_tokens leaves them."""
    with torch.no_grad():
        logits = completion_logits(
            lm.model, lm.adapter, prompts, ro.completion_ids, ro.completion_mask, PLAIN
        )  # [R, C, V]
    logits = logits.double() / temperatures.double()[:, None, None]
    logits[..., lm.adapter.suppressed_token_ids(lm.processor)] = -float("inf")
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ro.completion_ids.unsqueeze(-1)).squeeze(-1)  # [R, C]
    return logp * ro.completion_mask


def test_rows_are_group_after_group_and_sampled_at_their_own_temperature(lm, data):
    # Three temperatures for G = 4 samples: sample g gets temperatures[g % 3], so the cycle
    # restarts inside each group: [0.5, 1.0, 2.0, 0.5] for both questions. top_p = 1 (no
    # nucleus) so the sampled distribution is exactly the tempered one.
    ro, grpo = rollout(lm, data, temperatures=[0.5, 1.0, 2.0], top_ps=[1.0])
    R = B * G
    C = ro.completion_ids.shape[1]
    assert 1 <= C <= grpo.max_completion_length
    assert ro.completion_ids.shape == ro.completion_mask.shape == ro.sampling_logprobs.shape == (R, C)
    assert ro.rewards.shape == ro.advantages.shape == ro.truncated.shape == ro.temperatures.shape == (R,)
    assert len(ro.answers) == R and ro.group_size == G and ro.examples == two_questions(data)[0]
    assert ro.temperatures.tolist() == [0.5, 1.0, 2.0, 0.5] * B

    # The prompts are stored once per question; repeated, row r is question r // G.
    rep = ro.repeated_prompts(lm.adapter)
    assert ro.prompts.input_ids.shape[0] == B and rep.input_ids.shape[0] == R
    for r in range(R):
        assert torch.equal(rep.input_ids[r], ro.prompts.input_ids[r // G])

    # The sampling log-probs that generate recorded equal the model's log-probs of the same
    # tokens given question r // G's prompt (and image) at temperature temperatures[r]: row r
    # was sampled from that question, at that temperature.
    expected = sampler_logprobs(lm, ro, rep, ro.temperatures)
    assert torch.allclose(ro.sampling_logprobs.double(), expected, atol=1e-4)
    # Controls, to show the comparison can fail: the other question's prompt, or the next
    # sample's temperature, gives other log-probs.
    swapped = lm.adapter.repeat(
        lm.adapter.encode_prompts(
            lm.processor, [e.load_image() for e in ro.examples[::-1]], [e.question for e in ro.examples[::-1]]
        ),
        G,
    )
    assert (sampler_logprobs(lm, ro, swapped, ro.temperatures) - expected).abs().max() > 1e-2
    rolled = ro.temperatures.view(B, G).roll(1, dims=1).reshape(R)
    assert (sampler_logprobs(lm, ro, rep, rolled) - expected).abs().max() > 1e-2

    # Answers are the decoded completions, cleaned as the rewards clean them.
    tok = lm.processor.tokenizer
    for r in range(R):
        n = int(ro.completion_mask[r].sum())
        assert ro.answers[r] == clean_answer(tok.decode(ro.completion_ids[r, :n].tolist(), skip_special_tokens=True))


def test_completion_mask_stops_at_the_first_stop_token_and_flags_truncated_rows(lm, data):
    # A random tiny model rarely emits its EOS in 4 tokens. Declaring a third of the word tokens
    # as extra EOS ids (generation_config.eos_token_id may be a list, and the adapter's stop ids
    # are read from it) makes rows stop at different positions, and some not at all.
    tok = lm.processor.tokenizer
    words = sorted(i for t, i in tok.get_vocab().items() if t.isalpha())
    stop_ids = [tok.eos_token_id, *words[::3]]
    lm.model.generation_config.eos_token_id = stop_ids
    assert set(lm.adapter.stop_token_ids(lm.processor, lm.model)) == set(stop_ids)
    pad = tok.pad_token_id
    assert pad not in stop_ids

    ro, grpo = rollout(lm, data, seed=1, num_generations=8, temperatures=[1.0], top_ps=[1.0])
    ids, mask = ro.completion_ids, ro.completion_mask  # [R, C]
    is_stop = torch.isin(ids, torch.tensor(stop_ids))  # [R, C]
    first_stop = [int(row.nonzero()[0]) if row.any() else None for row in is_stop]
    # The case this test is about happened: some rows stopped before the last position, some
    # ran to max_completion_length without a stop token.
    assert any(k is not None and k < ids.shape[1] - 1 for k in first_stop)
    assert any(k is None for k in first_stop)

    for r, k in enumerate(first_stop):
        if k is None:  # truncated: flagged, every token kept (mask_truncated_completions is off)
            assert ro.truncated[r] and mask[r].tolist() == [1] * ids.shape[1]
        else:  # the stop token is the last kept token; after it, padding and mask 0
            assert not ro.truncated[r]
            assert mask[r, : k + 1].tolist() == [1] * (k + 1)
            assert mask[r, k + 1 :].sum() == 0 and (ids[r, k + 1 :] == pad).all()
            assert ro.sampling_logprobs[r, k + 1 :].abs().sum() == 0

    # Same seed with mask_truncated_completions: same samples, truncated rows dropped whole.
    ro_m, _ = rollout(
        lm, data, seed=1, num_generations=8, temperatures=[1.0], top_ps=[1.0], mask_truncated_completions=True
    )
    assert torch.equal(ro_m.completion_ids, ids) and torch.equal(ro_m.truncated, ro.truncated)
    assert ro_m.completion_mask[ro.truncated].sum() == 0
    assert torch.equal(ro_m.completion_mask[~ro.truncated], mask[~ro.truncated])


def test_image_and_vision_tokens_are_never_sampled(lm, data):
    # Temperature 2 flattens the tiny model's distribution, so the suppressed tokens would be
    # sampled often if generate did not suppress them; the control below measures how often.
    ro, _ = rollout(lm, data, num_generations=8, max_completion_length=8, temperatures=[2.0], top_ps=[1.0])
    suppressed = lm.adapter.suppressed_token_ids(lm.processor)
    tok = lm.processor.tokenizer
    vision = ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
    assert {tok.convert_tokens_to_ids(t) for t in vision} <= set(suppressed)
    assert not torch.isin(ro.completion_ids, torch.tensor(suppressed)).any()

    # Control: the model's own tempered distribution, at the positions that were sampled, puts
    # enough mass on those tokens that more than 3 of them would be expected without suppression.
    with torch.no_grad():
        logits = completion_logits(
            lm.model, lm.adapter, ro.repeated_prompts(lm.adapter), ro.completion_ids, ro.completion_mask, PLAIN
        )  # [R, C, V]
    p_suppressed = torch.softmax(logits / 2.0, dim=-1)[..., suppressed].sum(-1)  # [R, C]
    assert float((p_suppressed * ro.completion_mask).sum()) > 3.0


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_rewards_score_each_row_against_its_own_question_and_advantages_are_group_relative(lm, data, scale):
    # A random model earns a reward only now and then; sample until some group's rewards vary
    # (a few seeds at most), so the advantages are not trivially zero.
    for seed in range(30):
        ro, grpo = rollout(lm, data, seed=seed, temperatures=[1.0], top_ps=[1.0], scale_rewards=scale)
        if (ro.rewards.view(B, G).std(dim=1) > 0).any():
            break
    else:
        pytest.fail("no seed in 0..29 gave a group with varied rewards")

    # Row r is scored against question r // G's answers, on its raw decoded completion.
    tok = lm.processor.tokenizer
    texts = [
        tok.decode(row[: int(m.sum())].tolist(), skip_special_tokens=True)
        for row, m in zip(ro.completion_ids, ro.completion_mask)
    ]
    rows = [ro.examples[r // G] for r in range(B * G)]
    scored = compute_rewards(texts, [e.answers for e in rows], [e.answer_type for e in rows], RewardConfig())
    assert torch.equal(ro.rewards, torch.as_tensor(scored.total, dtype=torch.float32))
    assert set(ro.reward_parts) == set(scored.parts)

    assert torch.equal(ro.advantages, group_advantages(ro.rewards, G, scale=scale))
    flat = ro.rewards.view(B, G).std(dim=1) == 0  # [B]
    assert (ro.advantages.view(B, G)[flat] == 0).all()
    assert (ro.advantages.view(B, G)[~flat] != 0).any()
