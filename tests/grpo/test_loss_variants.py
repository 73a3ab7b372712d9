"""The policy-loss variants (GSPO, CISPO, SAPO, top-entropy tokens): hand-computed values, TRL's
values on the same tensors (tests/grpo/data/trl_losses.json), and one training run through the CLI."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from vqa_grpo.cli import main
from vqa_grpo.config_load import load_config
from vqa_grpo.demo.base import BASE_DIR
from vqa_grpo.grpo.math import high_entropy_mask, importance_weights, policy_loss

LN2 = math.log(2.0)
FIXTURE = Path(__file__).parent / "data" / "trl_losses.json"
_SCRIPT = Path(__file__).parents[2] / "scripts" / "check_losses_against_trl.py"  # imports TRL only when run
_spec = importlib.util.spec_from_file_location("check_losses_against_trl", _SCRIPT)
CHECK = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(CHECK)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def loss_and_grad(logprobs, old, adv, mask, **kw):
    logp = torch.tensor(logprobs, dtype=torch.float64, requires_grad=True)
    loss, stats = policy_loss(
        logp,
        torch.tensor(old, dtype=torch.float64),
        torch.tensor(adv, dtype=torch.float64),
        torch.tensor(mask, dtype=torch.bool),
        **kw,
    )
    loss.backward()
    return loss.item(), logp.grad, stats


# ----------------------------------------------------------------------------------------------
# CISPO: -sg(min(r, cap)) A log pi, token mean

# old log-probs 0, so ratio = exp(logprobs) and log pi = log ratio. Cap 1.5.
#   row 0, A = +1: ratio 2 -> w 1.5, loss -1.5 ln 2 (capped: counted in clip_fraction)
#                  ratio 1/2 -> w 0.5, loss -0.5 x (-ln 2) = +0.5 ln 2
#   row 1, A = -1: ratio 1/2 -> w 0.5, loss -0.5 x (-1) x (-ln 2) = -0.5 ln 2; second token masked
#   token mean over 3: (-1.5 + 0.5 - 0.5) ln 2 / 3 = -0.5 ln 2
#   gradient -w A / 3: [-0.5, -1/6], [+1/6, 0]: the capped token keeps its gradient (PPO's has none).
CISPO_LOGP = [[LN2, -LN2], [-LN2, 0.0]]
ZEROS = [[0.0, 0.0], [0.0, 0.0]]
ADV = [1.0, -1.0]
MASK = [[True, True], [True, False]]


def test_cispo_caps_and_detaches_the_weight():
    loss, grad, stats = loss_and_grad(CISPO_LOGP, ZEROS, ADV, MASK, loss_type="cispo", epsilon_high=1.5)
    assert loss == pytest.approx(-0.5 * LN2, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1 / 6], [1 / 6, 0.0]], dtype=torch.float64))
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)


def test_cispo_cap_defaults_to_five():
    # Cap 5: the ratio-2 token keeps w = 2: (-2 + 0.5 - 0.5) ln 2 / 3.
    loss, _, stats = loss_and_grad(CISPO_LOGP, ZEROS, ADV, MASK, loss_type="cispo")
    assert loss == pytest.approx(-2 * LN2 / 3, abs=1e-12)
    assert stats["clip_fraction"].item() == 0.0


# ----------------------------------------------------------------------------------------------
# SAPO: -(4 / tau) sigmoid(tau (r - 1)) A, per-sequence mean then mean (as grpo)


def test_sapo_gates_the_ratio_softly_with_two_temperatures():
    # row 0, A = +1, tau_pos 1: ratio 1 -> 4 sigmoid(0) = 2; ratio 2 -> 4 sigmoid(1); mean of the two
    # row 1, A = -1, tau_neg 1.05: ratio 1/2 -> loss +(4 / 1.05) sigmoid(-0.525)
    logp = [[0.0, LN2], [-LN2, 0.0]]
    loss, grad, stats = loss_and_grad(logp, ZEROS, ADV, MASK, loss_type="sapo")
    row0 = -(2 + 4 * sigmoid(1.0)) / 2
    row1 = 4 / 1.05 * sigmoid(-0.525)
    assert loss == pytest.approx((row0 + row1) / 2, abs=1e-12)
    # d/d log pi at ratio 1: 4 sigma (1 - sigma) r A = 1 x A, as PPO's, / 2 tokens / 2 rows.
    assert grad[0, 0].item() == pytest.approx(-0.25, abs=1e-12)
    # ratio 2: 4 sigmoid(1) (1 - sigmoid(1)) x 2 / 4; smaller than PPO's unclipped 2 / 4.
    assert grad[0, 1].item() == pytest.approx(-4 * sigmoid(1.0) * (1 - sigmoid(1.0)) * 2 / 4, abs=1e-12)
    assert stats["clip_fraction"].item() == 0.0


def test_sapo_temperatures_are_read():
    logp = [[0.0, LN2], [-LN2, 0.0]]
    loss, _, _ = loss_and_grad(logp, ZEROS, ADV, MASK, loss_type="sapo", sapo_temperature_neg=2.0)
    expected = (-(2 + 4 * sigmoid(1.0)) / 2 + 4 / 2.0 * sigmoid(-1.0)) / 2
    assert loss == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# GSPO: one ratio per sequence, exp(mean_t log r_it)


def test_sequence_ratio_is_the_geometric_mean_of_the_token_ratios():
    logp = torch.tensor([[LN2, 0.0], [0.1, -0.3]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    s = importance_weights(logp, torch.zeros_like(logp), mask, "sequence")
    torch.testing.assert_close(s, torch.tensor([[math.sqrt(2)], [math.exp(0.1)]], dtype=torch.float64))
    with pytest.raises(ValueError, match="importance_sampling_level='seq'"):
        importance_weights(logp, logp, mask, "seq")


def test_gspo_clips_whole_sequences():
    # row 0, A = +1: s = sqrt 2 > 1.2 -> every token's loss is -1.2, no gradient on either token
    # row 1, A = +1: log ratios 0.1, -0.1 -> s = 1 -> loss -1 per token; d(-s)/d log pi_t = -s / 2
    #   (token level would clip nothing in row 1 and leave token 2 of row 0 its gradient)
    # loss: mean of the rows' token means = (-1.2 - 1) / 2 = -1.1; gradient -0.5 / 2 rows = -0.25
    logp = [[LN2, 0.0], [0.1, -0.1]]
    loss, grad, stats = loss_and_grad(
        logp, ZEROS, [1.0, 1.0], [[True, True], [True, True]], importance_sampling_level="sequence"
    )
    assert loss == pytest.approx(-1.1, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0], [-0.25, -0.25]], dtype=torch.float64))
    assert stats["clip_fraction"].item() == 0.5  # the two tokens of row 0
    assert stats["ratio_mean"].item() == pytest.approx((2 * math.sqrt(2) + 2) / 4)


# ----------------------------------------------------------------------------------------------
# Top-entropy tokens

# Five tokens (the sixth is padding): sorted entropies 0.1, 0.3, 0.5, 0.7, 0.9.
ENTROPY = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.3, 5.0]], dtype=torch.float64)
EMASK = torch.tensor([[True, True, True], [True, True, False]])


def test_high_entropy_mask_keeps_the_top_quantile():
    # q = 0.4: threshold = the 0.6 quantile = 0.5 + 0.4 x (0.7 - 0.5) = 0.58 -> 0.9 and 0.7 kept
    kept = high_entropy_mask(ENTROPY, EMASK, 0.4)
    assert kept.tolist() == [[False, True, False], [True, False, False]]  # the padding's 5.0 never
    assert high_entropy_mask(ENTROPY, EMASK, 1.0).equal(EMASK)
    assert high_entropy_mask(ENTROPY, EMASK, 0.0).tolist() == [[False, True, False], [False, False, False]]
    ties = torch.full((2, 3), 0.5)
    assert high_entropy_mask(ties, EMASK, 0.2).equal(EMASK)  # ties at the threshold are all kept
    assert not high_entropy_mask(ENTROPY, torch.zeros_like(EMASK), 0.4).any()


def test_tokens_left_out_by_entropy_still_count_in_the_normaliser():
    # ratio 1, A = +1: each token's surrogate is -1; bnpo keeps 2 of 5 -> -2 / 5; the KL term
    # (k3 of ln 2: 2 - ln 2 - 1 = 1 - ln 2 on the first token of each row) is kept on every token.
    logp = torch.zeros(2, 3, dtype=torch.float64)
    ref = torch.tensor([[LN2, 0.0, 0.0], [LN2, 0.0, 0.0]], dtype=torch.float64)
    keep = high_entropy_mask(ENTROPY, EMASK, 0.4)
    adv = torch.ones(2, dtype=torch.float64)
    loss, _ = policy_loss(logp, logp, adv, EMASK, loss_type="bnpo", entropy_mask=keep, ref_logprobs=ref, beta=0.5)
    assert loss.item() == pytest.approx(-2 / 5 + 0.5 * 2 * (1 - LN2) / 5, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# TRL's GRPOTrainer._compute_loss on the same tensors (values recorded by the fixture's command)

TRL = json.loads(FIXTURE.read_text())


def test_fixture_says_where_it_came_from():
    assert TRL["trl_version"] == "1.16.0"
    assert TRL["command"].startswith("PYTHONPATH=/tmp/trlpkg .venv/bin/python scripts/check_losses_against_trl.py")
    cases = {(c["loss_type"], c["importance_sampling_level"]) for c in TRL["cases"]}
    assert cases == {
        (lt, lv) for lt in ("grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo") for lv in ("token", "sequence")
    }


@pytest.mark.parametrize(
    "case", TRL["cases"], ids=lambda c: f"{c['loss_type']}-{c['importance_sampling_level']}-{c['setting']}"
)
def test_equal_to_trl(case):
    """Loss and gradient within 1e-6 in float64, vqa-grpo's side computed as the script that made the
    fixture computes it (``ours``). SAPO differs by about 3e-8: TRL's temperatures pass through
    float32 (torch.where of Python floats), so its 1.05 is 1.0499999523."""
    loss, grad = CHECK.ours(TRL["inputs"], case)
    assert abs(loss - case["trl_loss"]) <= 1e-6
    assert (
        torch.tensor(grad, dtype=torch.float64) - torch.tensor(case["trl_grad"], dtype=torch.float64)
    ).abs().max().item() <= 1e-6


# ----------------------------------------------------------------------------------------------
# Through the CLI


def test_cli_trains_with_cispo_gspo_and_top_entropy(synth_dir, tmp_path, capsys):
    """Two steps on one rollout (num_iterations 2) from the demo's SFT base, which answers some
    questions right, so the groups have advantages and the second step has ratios away from 1."""
    run_dir = tmp_path / "run"
    common = [
        "train",
        f"model.name_or_path={BASE_DIR}",
        f"data.path={synth_dir}",
        "train.max_steps=2",
        "train.per_device_batch_size=4",
        "train.learning_rate=1e-4",
        "train.save_steps=0",
        "train.progress=false",
        "train.report_to=none",
        "train.device=cpu",
        "data.max_train_samples=8",
        "data.max_eval_samples=1",
        "grpo.num_generations=4",
        "grpo.temperatures=[1.0]",
        "grpo.num_iterations=2",
        "grpo.max_completion_length=4",
    ]
    variants = [
        "grpo.loss_type=cispo",
        "grpo.importance_sampling_level=sequence",
        "grpo.top_entropy_quantile=0.5",
        "grpo.beta=0.04",
    ]
    assert main([*common, f"train.output_dir={run_dir}", *variants]) == 0
    saved = load_config(run_dir / "config.yaml").grpo
    assert (saved.loss_type, saved.importance_sampling_level, saved.top_entropy_quantile) == ("cispo", "sequence", 0.5)
    first, second = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][:2]
    assert first["advantage_abs_mean"] > 0 and first["loss"] != 0
    assert first["ratio_mean"] == 1.0 and first["kl"] == 0.0  # on-policy, at the reference
    assert second["ratio_mean"] != 1.0 and second["kl"] > 0  # the first step moved the policy
    assert all(math.isfinite(s[k]) for s in (first, second) for k in ("loss", "kl", "ratio_mean", "grad_norm"))

    for bad, named in [
        ("grpo.loss_type=ppo", "grpo.loss_type"),
        ("grpo.importance_sampling_level=seq", "grpo.importance_sampling_level"),
        ("grpo.top_entropy_quantile=1.5", "grpo.top_entropy_quantile"),
    ]:
        out = tmp_path / bad.split("=")[0]
        capsys.readouterr()
        assert main([*common, f"train.output_dir={out}", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.strip().count("\n") == 0 and named in err, err
        assert not out.exists()
