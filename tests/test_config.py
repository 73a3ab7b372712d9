"""The config: defaults <- YAML <- dotted overrides, type checks, one-line errors, round trips.

Also checks that every file in configs/ is a config that `vqa-grpo train --config FILE` accepts,
and that the seed's settings (section 4.1) are what the Phi-3-vision config says.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vqa_grpo import config as C
from vqa_grpo.config import Config, ConfigError, field_docs, save_config
from vqa_grpo.config_load import load_config
from vqa_grpo.data.benchmarks import resolve as resolve_benchmark

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml"))
SECTIONS = {
    "model": C.ModelConfig,
    "data": C.DataConfig,
    "train": C.TrainConfig,
    "grpo": C.GRPOConfig,
    "reward": C.RewardConfig,
    "eval": C.EvalConfig,
}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def config_error(*overrides: str, path: Path | None = None) -> str:
    """The message of the ConfigError that loading raises; it must be a single line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ---- defaults and precedence -----------------------------------------------------------------


def test_no_file_no_overrides_gives_the_dataclass_defaults():
    cfg = load_config()
    assert cfg == Config()
    # The GRPO and reward keys, with the seed's values where the seed gives one.
    assert cfg.grpo.num_generations == 4
    assert cfg.grpo.temperatures == [0.7, 0.8, 0.9, 1.0]
    assert cfg.grpo.top_ps == [0.9, 0.85, 0.95, 0.8]
    assert cfg.reward.components is None and cfg.reward.weights is None  # the benchmark's metric, 1.0 each
    resolved = resolve_benchmark(cfg)  # no benchmark: the seed's composite, vqa_accuracy for best/, 16 tokens
    assert (resolved.reward.components, resolved.train.eval_metric, resolved.eval.max_new_tokens) == (
        ["composite"],
        "vqa_accuracy",
        16,
    )
    assert resolved.eval.vqa_convention == "official" and cfg.eval.vqa_convention is None
    assert cfg.reward.composite_weights == {
        "bleu1": 0.2,
        "exact_match": 0.3,
        "substring": 0.2,
        "jaccard": 0.1,
        "extractable": 0.2,
    }
    assert cfg.data.eval_fraction == 0.1
    assert cfg.model.trust_remote_code is False  # off unless the user opts in


def test_yaml_overrides_defaults_and_command_line_overrides_yaml(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 7\n  learning_rate: 0.01\ngrpo:\n  beta: 0.1\n")
    cfg = load_config(path, ["train.max_steps=3"])
    assert cfg.train.max_steps == 3  # the override wins over the file
    assert cfg.train.learning_rate == 0.01  # the file wins over the default
    assert cfg.grpo.beta == 0.1
    assert cfg.train.per_device_batch_size == C.TrainConfig().per_device_batch_size  # default kept


def test_override_adds_a_section_the_file_does_not_have(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 7\n")
    assert load_config(path, ["model.name_or_path=some/model"]).model.name_or_path == "some/model"


def test_empty_yaml_file_means_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing set\n")) == Config()


def test_nested_override_of_a_column_name(tmp_path):
    cfg = load_config(None, ["data.columns.image=img"])
    assert cfg.data.columns.image == "img"
    assert cfg.data.columns.question == "question"  # the rest of the mapping keeps its defaults
    path = write(tmp_path, "data:\n  columns:\n    answer: label\n")
    cfg = load_config(path, ["data.columns.image=img"])
    assert (cfg.data.columns.image, cfg.data.columns.answer) == ("img", "label")


def test_list_values_parse_as_yaml():
    cfg = load_config(
        None, ["grpo.temperatures=[0.7,1.0]", "reward.components=[vqa_accuracy,format]", "reward.weights=[0.75,0.25]"]
    )
    assert cfg.grpo.temperatures == [0.7, 1.0]
    assert cfg.reward.components == ["vqa_accuracy", "format"]
    assert cfg.reward.weights == [0.75, 0.25]


def test_a_single_value_for_a_list_key_becomes_a_one_element_list():
    assert load_config(None, ["grpo.temperatures=0.9"]).grpo.temperatures == [0.9]
    assert load_config(None, ["model.lora_target_modules=qkv_proj"]).model.lora_target_modules == ["qkv_proj"]


def test_exponent_without_a_dot_is_a_float(tmp_path):
    # YAML 1.1 reads "5e-4" (no dot) as a string; the config must still read a number.
    cfg = load_config(None, ["train.learning_rate=5e-4"])
    assert cfg.train.learning_rate == 5e-4 and isinstance(cfg.train.learning_rate, float)
    cfg = load_config(write(tmp_path, "train:\n  learning_rate: 5e-4\n"))
    assert cfg.train.learning_rate == 5e-4 and isinstance(cfg.train.learning_rate, float)


def test_an_int_is_accepted_where_a_float_is_expected():
    cfg = load_config(None, ["train.learning_rate=1"])
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)


def test_null_sets_an_optional_key_and_a_value_sets_it_back(tmp_path):
    path = write(tmp_path, "data:\n  max_train_samples: 20\n")
    assert load_config(path).data.max_train_samples == 20
    assert load_config(path, ["data.max_train_samples=null"]).data.max_train_samples is None


# ---- errors: unknown keys, wrong types, impossible values ------------------------------------


def test_unknown_key_names_the_key_and_the_allowed_keys():
    msg = config_error("model.foo=1")
    assert "model.foo" in msg
    for f in dataclasses.fields(C.ModelConfig):
        assert f"model.{f.name}" in msg


def test_unknown_section_names_it_and_the_sections():
    msg = config_error("modle.name_or_path=x")
    assert "modle" in msg
    for section in SECTIONS:
        assert section in msg


def test_unknown_nested_key_names_the_full_dotted_key():
    msg = config_error("data.columns.picture=img")
    assert "data.columns.picture" in msg and "data.columns.image" in msg


def test_unknown_key_in_the_yaml_file_is_caught_too(tmp_path):
    msg = config_error(path=write(tmp_path, "train:\n  max_step: 10\n"))
    assert "train.max_step" in msg and "train.max_steps" in msg


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_steps=abc", "train.max_steps"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("train.learning_rate=fast", "train.learning_rate"),
        ("model.lora=maybe", "model.lora"),
        ("grpo.temperatures=[0.7,hot]", "grpo.temperatures"),
        ("model.dtype=fp64", "model.dtype"),
        ("grpo.loss_type=ppo", "grpo.loss_type"),
        ("data.columns=img", "data.columns"),
    ],
)
def test_wrong_type_names_the_key(override, key):
    assert key in config_error(override)


def test_wrong_choice_lists_the_allowed_values():
    msg = config_error("model.dtype=fp64")
    for choice in ("fp32", "bf16", "fp16"):
        assert choice in msg


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["grpo.num_generations=1"], "grpo.num_generations"),
        (["grpo.num_generations=0"], "grpo.num_generations"),
        (["reward.components=[composite,format]", "reward.weights=[1.2,-0.2]"], "reward.weights"),
        (["reward.components=[composite,format]", "reward.weights=[1.0]"], "reward.weights"),
        (["reward.components=[composite,bleu]", "reward.weights=[0.5,0.5]"], "reward.components"),
        (["reward.components=[]", "reward.weights=[]"], "reward.components"),
        (["data.eval_fraction=1.5"], "data.eval_fraction"),
        (["data.eval_fraction=-0.1"], "data.eval_fraction"),
        (["grpo.temperatures=[0.7,0]"], "grpo.temperatures"),
        (["grpo.top_ps=[1.5]"], "grpo.top_ps"),
        (["grpo.beta=-1"], "grpo.beta"),
        (["train.max_steps=0"], "train.max_steps"),
        (["train.per_device_batch_size=0"], "train.per_device_batch_size"),
        (["data.max_train_samples=0"], "data.max_train_samples"),
        (["reward.composite_weights={bleu1: 1.0}"], "reward.composite_weights"),
    ],
)
def test_impossible_values_raise_a_one_line_error_naming_the_key(overrides, key):
    assert key in config_error(*overrides)


def test_the_error_says_what_is_allowed():
    assert ">= 2" in config_error("grpo.num_generations=1")
    assert "one weight each, or null for 1.0 each" in config_error(
        "reward.components=[composite,format]", "reward.weights=[1]"
    )
    assert load_config(None, ["reward.components=[composite,format]", "reward.weights=[0.5,0.4]"])  # no sum to 1
    assert "composite" in config_error("reward.components=[bleu]")  # lists the known components


# Values nothing downstream can use: unchecked, each would fail after the model has loaded (and
# for eval.batch_size after the whole run) with a traceback; validate() (config_checks.py) refuses them.
@pytest.mark.parametrize(
    "override, key",
    [
        ("model.lora_r=0", "model.lora_r"),
        ("model.lora_dropout=1.5", "model.lora_dropout"),
        ("model.attn_implementation=bogus", "model.attn_implementation"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.max_new_tokens=0", "eval.max_new_tokens"),
        ("eval.top_p=0", "eval.top_p"),
    ],
)
def test_more_impossible_values_name_the_key(override, key):
    assert key in config_error(override)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    assert "not found" in config_error(path=tmp_path / "nope.yaml")
    assert "line 2" in config_error(path=write(tmp_path, "train:\n\tmax_steps: 1\n"))  # a tab
    assert "mapping" in config_error(path=write(tmp_path, "- a\n- b\n"))


def test_override_without_equals_sign_is_an_error():
    assert "train.max_steps" in config_error("train.max_steps")


# ---- round trip and docs ---------------------------------------------------------------------


def test_save_then_load_gives_an_equal_config(tmp_path):
    cfg = load_config(
        None,
        [
            "model.name_or_path=some/model",
            "model.lora=true",
            "model.lora_target_modules=[qkv_proj,o_proj]",
            "data.columns.image=img",
            "data.max_train_samples=20",
            "data.image_root=/images",
            "train.learning_rate=2e-7",
            "train.resume=auto",
            "train.mixed_precision=bf16",
            "grpo.temperatures=[0.7,1.0]",
            "grpo.epsilon_high=0.28",
            "grpo.loss_type=dr_grpo",
            "reward.components=[vqa_accuracy,composite]",
            "reward.weights=[0.5,0.5]",
            "eval.do_sample=true",
        ],
    )
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    save_config(Config(), tmp_path / "default.yaml")
    assert load_config(tmp_path / "default.yaml") == Config()


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_field_of_every_section_has_a_docstring(section):
    cls = SECTIONS[section]
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        assert docs.get(f.name, "").strip(), f"{section}.{f.name} has no docstring"


def test_every_column_field_has_a_docstring():
    docs = field_docs(C.ColumnsConfig)
    for f in dataclasses.fields(C.ColumnsConfig):
        assert docs.get(f.name, "").strip(), f"data.columns.{f.name} has no docstring"


# ---- the shipped configs ---------------------------------------------------------------------


def test_the_expected_configs_are_shipped():
    names = {p.name for p in CONFIG_FILES}
    assert {
        "tiny_cpu.yaml",
        "phi3_vision.yaml",
        "phi3_5_vision.yaml",
        "qwen2_5_vl_3b_lora.yaml",
        "smolvlm_lora.yaml",
        "llava_1_5_7b_lora.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert cfg.model.name_or_path and cfg.data.path and cfg.train.output_dir
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_every_shipped_config_is_commented(path):
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    comments = sum(line.startswith("#") for line in lines)
    assert lines[0].startswith("#"), "a config opens with what it is for"
    assert comments >= 0.4 * len(lines)


def test_tiny_cpu_config_points_at_the_cli_outputs():
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml")
    assert cfg.model.name_or_path == "runs/tiny-model"  # vqa-grpo model tiny --out runs/tiny-model
    assert cfg.data.path == "runs/synth"  # vqa-grpo data synth --out runs/synth
    assert cfg.train.device == "cpu" and cfg.train.cpu_threads == 1
    assert cfg.model.dtype == "fp32" and not cfg.model.trust_remote_code


@pytest.mark.parametrize(
    "name, hub_id",
    [
        ("phi3_vision.yaml", "microsoft/Phi-3-vision-128k-instruct"),
        ("phi3_5_vision.yaml", "microsoft/Phi-3.5-vision-instruct"),
    ],
)
def test_phi3_configs_have_the_seed_settings(name, hub_id):
    cfg = load_config(REPO / "configs" / name)
    m, t, g, r = cfg.model, cfg.train, cfg.grpo, cfg.reward
    assert m.name_or_path == hub_id
    assert (m.dtype, m.gradient_checkpointing, m.trust_remote_code) == ("bf16", True, False)
    assert m.attn_implementation == "flash_attention_2" and not m.lora
    assert (t.per_device_batch_size, t.gradient_accumulation_steps) == (1, 2)
    assert t.learning_rate == 2e-7 and isinstance(t.learning_rate, float)
    assert t.weight_decay == 0.01 and t.mixed_precision == "bf16"
    assert g.num_generations == 4
    assert g.temperatures == [0.7, 0.8, 0.9, 1.0] and g.top_ps == [0.9, 0.85, 0.95, 0.8]
    assert (r.components, r.weights) == (["composite"], [1.0])
    assert r.composite_weights == {
        "bleu1": 0.2,
        "exact_match": 0.3,
        "substring": 0.2,
        "jaccard": 0.1,
        "extractable": 0.2,
    }
    assert cfg.data.eval_fraction == 0.1
    # The cookbook's LoRA targets are shown, commented out, for those who switch LoRA on.
    text = (REPO / "configs" / name).read_text()
    assert "[qkv_proj, o_proj, gate_up_proj, down_proj]" in text


@pytest.mark.parametrize(
    "name, hub_id",
    [
        ("qwen2_5_vl_3b_lora.yaml", "Qwen/Qwen2.5-VL-3B-Instruct"),
        ("smolvlm_lora.yaml", "HuggingFaceTB/SmolVLM-256M-Instruct"),
        ("llava_1_5_7b_lora.yaml", "llava-hf/llava-1.5-7b-hf"),
    ],
)
def test_lora_configs(name, hub_id):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.model.name_or_path == hub_id
    assert cfg.model.lora and cfg.model.dtype == "bf16" and not cfg.model.trust_remote_code
    assert 1e-5 <= cfg.train.learning_rate <= 5e-5


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.eval_metric=accuracy"], "train.eval_metric"),
        (["grpo.num_iterations=2", "train.save_steps=3"], "train.save_steps"),
        (["train.mixed_precision=fp16"], "train.mixed_precision"),
    ],
)
def test_values_the_loop_cannot_honour_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


def test_the_seed_reports_loss_is_named_for_the_report_and_its_old_name_still_loads(tmp_path):
    # "seed" alone means a random seed; the report's loss is "seed_report". A config.yaml written
    # before the rename (grpo.loss_type: seed) reads as the new name.
    assert load_config(None, ["grpo.loss_type=seed_report"]).grpo.loss_type == "seed_report"
    old = tmp_path / "config.yaml"
    old.write_text("grpo:\n  loss_type: seed\n")
    assert load_config(old).grpo.loss_type == "seed_report"
    with pytest.raises(ConfigError, match="grpo.loss_type='seeds' is not allowed; choose one of grpo, bnpo, dapo"):
        load_config(None, ["grpo.loss_type=seeds"])
