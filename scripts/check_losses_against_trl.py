"""Compare vqa-grpo's policy losses (grpo/math.py) with TRL's GRPOTrainer._compute_loss on the same tensors.

TRL is the ``bench`` extra and never a runtime dependency; install it apart, without its
dependencies (torch, transformers and accelerate come from the project's venv):

    .venv/bin/pip install --target /tmp/trlpkg trl==1.16.0 --no-deps
    PYTHONPATH=/tmp/trlpkg .venv/bin/python scripts/check_losses_against_trl.py \
        [--fixture tests/grpo/data/trl_losses.json]

TRL's loss method runs unchanged on a stand-in for the trainer: its attributes are the config
values the method reads, and its model pass returns the given per-token log-probs (a float64 leaf,
so the gradient can be compared too) and entropies. Every case is one loss_type shared by both
(grpo, bnpo, dapo, dr_grpo, cispo, sapo) x importance_sampling_level (token, sequence) x settings
(plain; KL with beta 0.04, top_entropy_quantile 0.5 and vLLM-style importance weights). It prints
the largest difference of the loss and of its gradient per case; ``--fixture`` writes the inputs
and TRL's outputs for tests/grpo/test_loss_variants.py, which checks them without TRL.
"""

import argparse
import json
import sys
from collections import defaultdict
from types import SimpleNamespace

import torch

from vqa_grpo.grpo.math import high_entropy_mask, policy_loss

COMMAND = (
    "PYTHONPATH=/tmp/trlpkg .venv/bin/python scripts/check_losses_against_trl.py "
    "--fixture tests/grpo/data/trl_losses.json"
)
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo")
LEVELS = ("token", "sequence")
SETTINGS = {
    "plain": {"beta": 0.0, "top_entropy_quantile": 1.0, "is_weights": False},
    "kl_entropy_is": {"beta": 0.04, "top_entropy_quantile": 0.5, "is_weights": True},
}
EPSILON = 0.2
EPSILON_HIGH = {"cispo": 1.2}  # CISPO's cap of the weight; the others' upper clip range (DAPO's clip-higher)
EPSILON_HIGH_PPO = 0.28


def make_inputs(seed: int = 0) -> dict[str, list]:
    """Two groups of three completions, up to six tokens, float64; ratios spread over [0.55, 1.65]
    so that both clip bounds, the CISPO cap and the SAPO gates are reached. Entropies are multiples
    of 1/16 (exact in float32, where TRL takes its quantile)."""
    g = torch.Generator().manual_seed(seed)
    R, C = 6, 6
    lengths = torch.tensor([6, 4, 1, 5, 3, 6])
    mask = (torch.arange(C)[None, :] < lengths[:, None]).double()
    logp = -torch.rand(R, C, generator=g, dtype=torch.float64) * 3
    old = logp - torch.log(0.55 + 1.1 * torch.rand(R, C, generator=g, dtype=torch.float64))
    ref = logp + 0.3 * torch.randn(R, C, generator=g, dtype=torch.float64)
    entropy = torch.randint(0, 48, (R, C), generator=g).double() / 16
    is_weights = 0.5 + 1.5 * torch.rand(R, C, generator=g, dtype=torch.float64)
    advantages = torch.tensor([1.1547, -0.5774, -0.5774, 0.0, 0.7071, -0.7071], dtype=torch.float64)
    tensors = {
        "logprobs": logp,
        "old_logprobs": old,
        "ref_logprobs": ref,
        "entropy": entropy,
        "is_weights": is_weights,
        "mask": mask,
        "advantages": advantages,
    }
    return {k: v.tolist() for k, v in tensors.items()}


def cases() -> list[dict]:
    return [
        {
            "loss_type": lt,
            "importance_sampling_level": level,
            "setting": name,
            "epsilon": EPSILON,
            "epsilon_high": EPSILON_HIGH.get(lt, EPSILON_HIGH_PPO),
            "sapo_temperature_pos": 1.0,
            "sapo_temperature_neg": 1.05,
            **setting,
        }
        for lt in LOSS_TYPES
        for level in LEVELS
        for name, setting in SETTINGS.items()
    ]


def ours(inputs: dict[str, list], case: dict) -> tuple[float, list]:
    """vqa-grpo's loss and d loss / d logprobs for one case."""
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    logp = t["logprobs"].clone().requires_grad_(True)
    mask = t["mask"].bool()
    q = case["top_entropy_quantile"]
    loss, _ = policy_loss(
        logp,
        t["old_logprobs"],
        t["advantages"],
        mask,
        ref_logprobs=t["ref_logprobs"],
        beta=case["beta"],
        epsilon=case["epsilon"],
        epsilon_high=case["epsilon_high"],
        loss_type=case["loss_type"],
        max_completion_length=mask.shape[1],
        token_weights=t["is_weights"] if case["is_weights"] else None,
        importance_sampling_level=case["importance_sampling_level"],
        sapo_temperature_pos=case["sapo_temperature_pos"],
        sapo_temperature_neg=case["sapo_temperature_neg"],
        entropy_mask=high_entropy_mask(t["entropy"], mask, q) if q < 1 else None,
    )
    loss.backward()
    return loss.item(), logp.grad.tolist()


def trl_loss(inputs: dict[str, list], case: dict) -> tuple[float, list]:
    """TRL's loss and d loss / d logprobs for one case, through GRPOTrainer._compute_loss."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    logp = t["logprobs"].clone().requires_grad_(True)
    R, C = logp.shape
    accelerator = SimpleNamespace(
        num_processes=1,
        pad_across_processes=lambda x, dim=0, pad_index=0: x,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
    )
    args = SimpleNamespace(
        use_bias_correction_kl=False,
        delta=None,
        sapo_temperature_pos=case["sapo_temperature_pos"],
        sapo_temperature_neg=case["sapo_temperature_neg"],
        steps_per_generation=1,
    )
    stub = SimpleNamespace(
        args=args,
        accelerator=accelerator,
        model=SimpleNamespace(training=True),
        loss_type=case["loss_type"],
        importance_sampling_level=case["importance_sampling_level"],
        top_entropy_quantile=case["top_entropy_quantile"],
        beta=case["beta"],
        epsilon_low=case["epsilon"],
        epsilon_high=case["epsilon_high"],
        max_completion_length=C,
        off_policy_mask_threshold=None,
        use_vllm=case["is_weights"],
        vllm_importance_sampling_correction=case["is_weights"],
        current_gradient_accumulation_steps=1,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, t["entropy"], None),
    )
    stub.get_high_entropy_mask = lambda e, m, threshold: GRPOTrainer.get_high_entropy_mask(stub, e, m, threshold)
    batch = {
        "prompt_ids": torch.zeros(R, 1, dtype=torch.long),
        "prompt_mask": torch.ones(R, 1, dtype=torch.long),
        "completion_ids": torch.zeros(R, C, dtype=torch.long),
        "completion_mask": t["mask"],
        "advantages": t["advantages"],
        "old_per_token_logps": t["old_logprobs"],
        "ref_per_token_logps": t["ref_logprobs"],
        "num_items_in_batch": t["mask"].sum(),
    }
    if case["is_weights"]:
        batch["importance_sampling_ratio"] = t["is_weights"]
    loss = GRPOTrainer._compute_loss(stub, None, batch)
    loss.backward()
    return loss.item(), logp.grad.tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", help="write the inputs and TRL's outputs to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import trl
    except ImportError:
        print("TRL is not importable: install it as the docstring says", file=sys.stderr)
        return 2
    inputs = make_inputs(args.seed)
    rows, worst = [], 0.0
    print(f"TRL {trl.__version__}, torch {torch.__version__}, float64")
    print(f"{'loss_type':9} {'level':9} {'setting':14} {'TRL loss':>12} {'|d loss|':>9} {'max |d grad|':>12}")
    for case in cases():
        ref_loss, ref_grad = trl_loss(inputs, case)
        our_loss, our_grad = ours(inputs, case)
        d_loss = abs(ref_loss - our_loss)
        d_grad = (torch.tensor(ref_grad) - torch.tensor(our_grad)).abs().max().item()
        worst = max(worst, d_loss, d_grad)
        print(
            f"{case['loss_type']:9} {case['importance_sampling_level']:9} {case['setting']:14} "
            f"{ref_loss:12.8f} {d_loss:9.1e} {d_grad:12.1e}"
        )
        rows.append({**case, "trl_loss": ref_loss, "trl_grad": ref_grad})
    print(f"largest difference: {worst:.1e}")
    if args.fixture:
        with open(args.fixture, "w") as f:
            json.dump(
                {"trl_version": trl.__version__, "command": COMMAND, "inputs": inputs, "cases": rows}, f, indent=1
            )
            f.write("\n")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
