"""Hand-computed checks of the GRPO math (vqa_grpo.grpo.math); the arithmetic is in the comments."""

import math

import pytest
import torch
import torch.nn.functional as F

from vqa_grpo.grpo import group_advantages, policy_loss, seed_report_loss
from vqa_grpo.grpo.math import kl_k3, masked_mean
from vqa_grpo.models.scoring import token_entropy, token_logprobs

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------
# group_advantages

# Three groups of G = 3:
#   [1, 2, 3]: mean 2, centred [-1, 0, 1], unbiased std sqrt((1 + 0 + 1) / 2) = 1
#   [5, 5, 5]: all equal -> exactly 0
#   [0, 0, 3]: mean 1, centred [-1, -1, 2], unbiased std sqrt((1 + 1 + 4) / 2) = sqrt(3)
REWARDS = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 0.0, 3.0], dtype=torch.float64)
CENTRED = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 2.0], dtype=torch.float64)


def test_group_scale_divides_by_the_groups_unbiased_std():
    eps = 1e-4
    expected = torch.cat(
        [
            torch.tensor([-1.0, 0.0, 1.0]) / (1.0 + eps),
            torch.zeros(3),
            torch.tensor([-1.0, -1.0, 2.0]) / (math.sqrt(3.0) + eps),
        ]
    ).double()
    torch.testing.assert_close(group_advantages(REWARDS, 3), expected)


def test_batch_scale_centres_per_group_but_divides_by_the_batch_std():
    # Batch mean 24 / 9 = 8/3; deviations x3: -5, -2, 1, 7, 7, 7, -8, -8, 1;
    # squares 25 + 4 + 1 + 3 * 49 + 2 * 64 + 1 = 306, / 9 = 34; unbiased variance 34 / 8 = 4.25.
    expected = CENTRED / (math.sqrt(4.25) + 1e-4)
    torch.testing.assert_close(group_advantages(REWARDS, 3, scale="batch"), expected)


def test_none_scale_only_centres():
    torch.testing.assert_close(group_advantages(REWARDS, 3, scale="none"), CENTRED)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_group_is_exactly_zero(scale):
    # In float32 the mean of three copies of v = 0.49009341 is v + 2.98e-8, so the naive
    # (r - mean) / (std + eps) gives 2.98e-8 / 1e-4 = 3e-4, not 0. The result must be exactly 0.
    v = 0.4900934100151062
    rewards = torch.tensor([v, v, v, 0.0, 1.0, 0.3], dtype=torch.float32)
    naive = (rewards[:3] - rewards[:3].mean()) / (rewards[:3].std() + 1e-4)
    assert (naive != 0).all()  # the trap is real
    adv = group_advantages(rewards, 3, scale=scale)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert (adv[3:] != 0).all()


def test_group_of_one_is_zero_not_nan():
    # torch.std of one value is nan; a group of one sample has nothing to compare with.
    assert torch.equal(group_advantages(torch.tensor([0.3, 0.9]), 1), torch.zeros(2))


def test_length_not_a_multiple_of_group_size_is_an_error():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")


# ----------------------------------------------------------------------------------------------
# policy_loss

# Two completions, T = 3, epsilon 0.2 (clip range [0.8, 1.2]); old log-probs 0, so ratio = exp(logprobs).
#   row 0, A = +2: ratio 1.5 -> min(3.0, 1.2 * 2 = 2.4) = 2.4, clipped above
#                  ratio 0.5 -> min(1.0, 0.8 * 2 = 1.6) = 1.0, unclipped (below the range, A > 0)
#                  ratio 1.0 -> 2.0
#   row 1, A = -1: ratio 0.7 -> min(-0.7, 0.8 * -1 = -0.8) = -0.8, clipped below
#                  ratio 1.1 -> -1.1
#                  ratio 5.0 -> padding (mask 0), must not count
# per-token loss l = -min(...): row 0 [-2.4, -1.0, -2.0], row 1 [0.8, 1.1, pad]
RATIOS = torch.tensor([[1.5, 0.5, 1.0], [0.7, 1.1, 5.0]], dtype=torch.float64)
LOGPROBS = RATIOS.log()
OLD = torch.zeros_like(LOGPROBS)
ADV = torch.tensor([2.0, -1.0], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        # row means: -5.4 / 3 = -1.8 and 1.9 / 2 = 0.95; mean of rows (-1.8 + 0.95) / 2 = -0.425
        ("grpo", -0.425),
        # all tokens: (-5.4 + 1.9) / 5 = -3.5 / 5 = -0.7
        ("bnpo", -0.7),
        ("dapo", -0.7),
        # constant normaliser N x L = 2 x 4: -3.5 / 8 = -0.4375
        ("dr_grpo", -0.4375),
    ],
)
def test_every_loss_type_by_hand(loss_type, expected):
    loss, stats = policy_loss(LOGPROBS, OLD, ADV, MASK, loss_type=loss_type, max_completion_length=4)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    # clipped tokens: (0, 0) above with A > 0 and (1, 0) below with A < 0 -> 2 of 5 tokens
    torch.testing.assert_close(stats["clip_fraction"], torch.tensor(0.4, dtype=torch.float64))
    # (1.5 + 0.5 + 1.0 + 0.7 + 1.1) / 5 = 4.8 / 5 = 0.96
    torch.testing.assert_close(stats["ratio_mean"], torch.tensor(0.96, dtype=torch.float64))
    assert stats["kl"].item() == 0.0
    assert not any(v.requires_grad for v in stats.values())


def test_float_mask_equals_bool_mask():
    for loss_type in ("grpo", "bnpo", "dr_grpo"):
        a, _ = policy_loss(LOGPROBS, OLD, ADV, MASK, loss_type=loss_type, max_completion_length=4)
        b, _ = policy_loss(LOGPROBS, OLD, ADV, MASK.double(), loss_type=loss_type, max_completion_length=4)
        assert torch.equal(a, b)


def test_epsilon_high_widens_only_the_upper_clip():
    # clip range [0.8, 1.6]: row 0 ratio 1.5 is no longer clipped -> min(3.0, 3.0) = 3.0, l = -3.0;
    # row 1 ratio 0.7 < 0.8 is still clipped below -> l = 0.8.
    # grpo: row 0 (-3.0 - 1.0 - 2.0) / 3 = -2.0; row 1 0.95; (-2.0 + 0.95) / 2 = -0.525; clipped 1 of 5.
    loss, stats = policy_loss(LOGPROBS, OLD, ADV, MASK, epsilon_high=0.6)
    torch.testing.assert_close(loss, torch.tensor(-0.525, dtype=torch.float64))
    torch.testing.assert_close(stats["clip_fraction"], torch.tensor(0.2, dtype=torch.float64))


def test_kl_term_with_beta():
    # ref - logp = d per token; k3 = exp(d) - d - 1:
    #   d = ln 2 -> 2 - ln 2 - 1 = 1 - ln 2;  d = 0 -> 0;  d = -ln 2 -> 1/2 + ln 2 - 1 = ln 2 - 1/2
    d = torch.tensor([[LN2, 0.0, -LN2], [0.0, LN2, 123.0]], dtype=torch.float64)  # 123: padding
    ref = LOGPROBS + d
    # token mean of k3: (1 - ln 2) + 0 + (ln 2 - 1/2) + 0 + (1 - ln 2) = 1.5 - ln 2, over 5 tokens
    # beta 0.1: row 0 sum -5.4 + 0.1 * 0.5 = -5.35 -> / 3; row 1 sum 1.9 + 0.1 * (1 - ln 2) -> / 2
    row0 = -5.35 / 3
    row1 = (1.9 + 0.1 * (1 - LN2)) / 2
    loss, stats = policy_loss(LOGPROBS, OLD, ADV, MASK, ref_logprobs=ref, beta=0.1)
    torch.testing.assert_close(loss, torch.tensor((row0 + row1) / 2, dtype=torch.float64))
    torch.testing.assert_close(stats["kl"], torch.tensor((1.5 - LN2) / 5, dtype=torch.float64))
    # k3 itself
    torch.testing.assert_close(
        kl_k3(torch.zeros(3, dtype=torch.float64), torch.tensor([LN2, 0.0, -LN2], dtype=torch.float64)),
        torch.tensor([1 - LN2, 0.0, LN2 - 0.5], dtype=torch.float64),
    )


def test_fully_masked_sequence_is_left_out_of_the_grpo_mean():
    # A third completion with no tokens (e.g. a masked-out truncated one): grpo averages over the
    # two sequences that have tokens (still -0.425), bnpo over tokens (still -0.7), dr_grpo keeps
    # its constant N x L = 3 x 4: -3.5 / 12.
    logprobs = torch.cat([LOGPROBS, torch.full((1, 3), -0.3, dtype=torch.float64)])
    old = torch.zeros_like(logprobs)
    adv = torch.cat([ADV, torch.tensor([4.0], dtype=torch.float64)])
    mask = torch.cat([MASK, torch.zeros(1, 3, dtype=torch.bool)])
    for loss_type, expected in [("grpo", -0.425), ("bnpo", -0.7), ("dr_grpo", -3.5 / 12)]:
        loss, _ = policy_loss(logprobs, old, adv, mask, loss_type=loss_type, max_completion_length=4)
        torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    # No token at all: loss 0, finite, and still differentiable.
    lp = LOGPROBS.clone().requires_grad_()
    loss, stats = policy_loss(lp, OLD, ADV, torch.zeros_like(MASK))
    assert loss.item() == 0.0 and stats["ratio_mean"].item() == 0.0
    loss.backward()
    assert torch.equal(lp.grad, torch.zeros_like(lp))


def test_gradient_on_policy_is_minus_advantage_weighted_logprob_gradient():
    # At ratio 1 nothing is clipped and d l_it / d logp_it = -A_i; grpo divides by |o_i| and by N.
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(lp, lp.detach(), ADV, MASK)
    loss.backward()
    # row 0: -2 / 3 / 2 = -1/3 per token; row 1: +1 / 2 / 2 = 0.25 per token, padding 0
    expected = torch.tensor([[-1 / 3, -1 / 3, -1 / 3], [0.25, 0.25, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(lp.grad, expected)


def test_policy_loss_errors():
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(LOGPROBS, OLD, ADV, MASK, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(LOGPROBS, OLD, ADV, MASK, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="seed_report_loss"):
        policy_loss(LOGPROBS, OLD, ADV, MASK, loss_type="seed_report")
    with pytest.raises(ValueError, match="shapes"):
        policy_loss(LOGPROBS, OLD, ADV[:1], MASK)


# ----------------------------------------------------------------------------------------------
# Helpers


def test_masked_mean_counts_only_true_positions():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(masked_mean(x, m), torch.tensor(7.0 / 3))  # (1 + 2 + 4) / 3
    torch.testing.assert_close(masked_mean(x, m, dim=1), torch.tensor([1.5, 4.0]))


def test_token_logprobs_and_entropy_match_the_full_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=g)
    ids = torch.randint(7, (3, 4), generator=g)
    temps = torch.tensor([0.5, 1.0, 2.0])
    full = torch.log_softmax(logits / temps[:, None, None], dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, ids, temps), full)
    plain = torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, ids), plain)
    torch.testing.assert_close(token_entropy(logits), torch.distributions.Categorical(logits=logits).entropy())


# ----------------------------------------------------------------------------------------------
# The seed's formula is degenerate


def test_seed_report_loss_gradient_vanishes_where_grpo_does_not():
    # A tiny "model": a linear map from features to logits over a vocabulary of 12. The same
    # module gives the completion log-probs (GRPO) and the prompt's LM loss (seed).
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 12)
    params = list(model.parameters())
    feats = torch.randn(4, 5, 8)  # [N, T, H], one group of G = 4 completions
    ids = torch.randint(12, (4, 5))  # [R, C]
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    prompt_feats, prompt_ids = torch.randn(6, 8), torch.randint(12, (6,))

    for rewards in ([0.9, 0.1, 0.35, 0.72], [1.0, 0.0, 0.0, 0.0], torch.rand(4).tolist()):
        rewards = torch.tensor(rewards)
        logprobs = token_logprobs(model(feats), ids)
        grpo, _ = policy_loss(logprobs, logprobs.detach(), group_advantages(rewards, 4), mask)
        grpo_grad = torch.cat([g.flatten() for g in torch.autograd.grad(grpo, params)])

        lm_loss = F.cross_entropy(model(prompt_feats), prompt_ids)
        seed = seed_report_loss(rewards, lm_loss)
        seed_grad = torch.cat([g.flatten() for g in torch.autograd.grad(seed, params)])

        assert grpo_grad.norm() > 1e-2
        assert seed_grad.norm() < 1e-6 * grpo_grad.norm()
        assert abs(seed.item()) < 1e-6 * lm_loss.item()
