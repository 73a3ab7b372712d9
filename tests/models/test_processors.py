"""The row-wise sampler: one batched generate call, each row sampled as its own generate call would.

A tiny Qwen2 causal LM built from a config (random weights, seeded, no download) generates
B prompts x G samples with ``RowwiseTemperatureTopP``. For every row and step, a separate
``generate`` call on that row's prefix, with the row's temperature and top-p passed the ordinary
way (transformers' own TemperatureLogitsWarper and TopPLogitsWarper), must give the same processed
scores: the same tokens kept, the same values. A control checks that the comparison fails when a
row is given another row's parameters.
"""

import pytest
import torch
from transformers import LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from vqa_grpo.models.processors import RowwiseTemperatureTopP, row_sampling_params, sampling_logprobs

B, G, P, T, V = 2, 4, 5, 5, 50  # prompts, samples per prompt, prompt length, new tokens, vocabulary
TEMPS = [0.5, 0.8, 1.0, 1.6]
TOP_PS = [0.9, 0.6, 1.0, 0.75]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_row_sampling_params_cycle_within_each_group():
    # rows are prompt r // G, sample r % G; sample g takes the lists' entry g % len
    temps, ps = row_sampling_params(2, 3, [0.7, 1.0], [0.9])
    assert temps.tolist() == [0.7, 1.0, 0.7, 0.7, 1.0, 0.7]
    assert ps.tolist() == [0.9] * 6
    with pytest.raises(ValueError, match="top_ps"):
        row_sampling_params(2, 3, [0.7], [0.0])


def _reference(scores, temperature, top_p):  # [1, V] -> [1, V], generate's own warpers
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


@pytest.mark.parametrize("device", DEVICES)
def test_processor_equals_transformers_warpers_row_by_row(device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B * G, V, generator=g) * 3  # [R, V]
    # Row 0: four equal logits -> probabilities exactly 1/4 each; with top_p 0.5 the cumulative
    # sums (ascending) are 0.25, 0.5, 0.75, 1: those <= 1 - 0.5 = 0.5 go, so exactly 2 stay
    # (their mass equals top_p: the boundary token is dropped, as in TopPLogitsWarper).
    logits[0] = -1e4
    logits[0, :4] = 0.0
    temps, ps = row_sampling_params(B, G, TEMPS, TOP_PS)
    ps[0], temps[0] = 0.5, 1.0
    ps[5] = 1e-9  # keeps only the most probable token
    logits = logits.to(device)
    out = RowwiseTemperatureTopP(temps, ps)(None, logits)  # [R, V]
    for r in range(B * G):
        ref = _reference(logits[r : r + 1], float(temps[r]), float(ps[r]))[0]
        if device == "cpu":
            assert torch.equal(out[r], ref), r
        else:  # CUDA divides by a Python scalar as a multiply by its reciprocal: 1-ulp differences
            assert _same_distribution(out[r], ref), r
    assert torch.isfinite(out[0]).sum() == 2
    assert torch.isfinite(out[5]).sum() == 1 and out[5].argmax() == logits[5].argmax()
    # top_p 1.0 (rows 2 and 6): tempered only, nothing removed
    assert torch.isfinite(out[2]).all() and torch.isfinite(out[6]).all()
    with pytest.raises(ValueError, match="rows"):
        RowwiseTemperatureTopP(temps, ps)(None, logits[:4])


@pytest.fixture(scope="module", params=DEVICES)
def tiny_lm(request):
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,  # peaked next-token distributions, so top-p cuts and temperature matters
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return Qwen2ForCausalLM(config).eval().to(request.param)


def _generate(model, input_ids, **kwargs):
    return model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=True,
        top_k=0,
        return_dict_in_generate=True,
        output_scores=True,
        **kwargs,
    )


def _same_distribution(a, b):  # [V], [V] processed scores
    kept = torch.isfinite(a)
    return torch.equal(kept, torch.isfinite(b)) and torch.allclose(a[kept], b[kept], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_batched_generate_gives_each_row_its_own_generate_distribution(tiny_lm):
    torch.manual_seed(1)
    prompts = torch.randint(1, V, (B, P)).to(tiny_lm.device)  # [B, P]
    temps, ps = row_sampling_params(B, G, TEMPS, TOP_PS)
    out = _generate(
        tiny_lm,
        prompts,
        num_return_sequences=G,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=T,
        logits_processor=LogitsProcessorList([RowwiseTemperatureTopP(temps, ps)]),
    )
    seqs = out.sequences  # [R, P + T]
    assert seqs.shape == (B * G, P + T) and len(out.scores) == T
    assert torch.equal(seqs[:, :P], prompts.repeat_interleave(G, dim=0))  # row r is prompt r // G

    completion = seqs[:, P:]  # [R, C]
    logps = sampling_logprobs(out.scores, completion)  # [R, C]
    truncated_steps = 0
    for r in range(B * G):
        other = r - r % G + (r + 1) % G  # the next sample of the same group: other (t, p)
        for s in range(T):
            prefix = seqs[r : r + 1, : P + s]  # the prompt and the row's first s tokens
            own = _generate(tiny_lm, prefix, max_new_tokens=1, temperature=float(temps[r]), top_p=float(ps[r]))
            ref = own.scores[0][0]  # [V]
            assert _same_distribution(out.scores[s][r], ref), (r, s)
            # the sampled token came from the nucleus, with the log-probability of that distribution
            torch.testing.assert_close(logps[r, s], torch.log_softmax(ref, -1)[completion[r, s]])
            truncated_steps += int((~torch.isfinite(ref)).any())
            # control: the same prefix with the next row's parameters is a different distribution
            wrong = _generate(
                tiny_lm, prefix, max_new_tokens=1, temperature=float(temps[other]), top_p=float(ps[other])
            )
            assert not _same_distribution(out.scores[s][r], wrong.scores[0][0]), (r, s)
    assert torch.isfinite(logps).all()
    # top-p really truncated: every step of the six rows with top_p < 1
    assert truncated_steps == 6 * T


def test_sampling_logprobs_of_padding_after_eos_is_zero_not_minus_inf():
    step = torch.tensor([[0.0, -float("inf"), 0.0], [1.0, 2.0, 3.0]])  # [R=2, V=3]
    ids = torch.tensor([[1, 0], [2, 2]])  # row 0 step 0: a token outside the support (padding)
    logps = sampling_logprobs((step, step), ids)
    assert logps[0, 0].item() == 0.0
    torch.testing.assert_close(logps[0, 1], torch.tensor(-0.6931471805599453))  # log 1/2
    torch.testing.assert_close(logps[1], torch.log_softmax(step[1], -1)[2].repeat(2))
    with pytest.raises(ValueError, match="score steps"):
        sampling_logprobs((step,), ids)
