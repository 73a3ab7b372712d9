"""The native Phi-3-vision against Microsoft's own code: expected values the official code gave.

The official processor and model (the hub's processing/image_processing/modeling/
image_embedding_phi3_v.py, from the public copies named in scripts/phi3_v_reference.py) ran
under transformers 4.40.2 in a throwaway venv on the inputs of phi3_v_reference_inputs.py:
noise images of 8 sizes, the seed's prompt, the official tokenizer, and random weights in the
official layout (values set by name, independent of any init code), with CLIP ViT-L/14-336 at
its real width and 2 of its 24 layers (the remote code's CLIP config constant, the only change)
and a reduced text model (hidden 192, 2 heads of 96, 2 layers, the real vocabulary and RoPE).
The values below are that run's, from
    /tmp/ref-venv/bin/python scripts/phi3_v_reference.py --code /tmp/ref/phi3v \
        --out /tmp/ref/reference_L2.json --vision-layers 2
(docs/models.md: how to set it up; the 24-layer run and the elementwise comparison there too).
"""

from __future__ import annotations

import json

import pytest
import torch
from phi3_v_reference_inputs import (
    IMAGE_SIZES,
    PROMPT,
    REDUCED_TEXT,
    SHARED,
    fill_weights,
    make_image,
    reference_labels,
)

from vqa_grpo.models.phi3_v import Phi3VConfig, Phi3VForCausalLM
from vqa_grpo.models.phi3_v.configuration import CLIP_VIT_L14_336
from vqa_grpo.models.phi3_v.processing import Phi3VProcessor

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models/phi-3-vision-128k-instruct is absent")

# The prompt's text tokens, as the official processor wrote them (each chunk starts with <s>).
TEXT_IDS = [
    1,
    32010,
    29871,
    13,
    1,
    29871,
    13,
    5618,
    2927,
    338,
    278,
    8607,
    29973,
    673,
    411,
    263,
    2323,
    1734,
    470,
    3273,
    16549,
    29889,
    32007,
    29871,
    13,
    32001,
]

# "{num_crops}_{width}x{height}": image tokens, image_sizes, and pixel_values' sum, sum of |x|, sum of x^2 (float64).
PROCESSOR = {
    "1_200x120": (313, [336, 336], 634207.1841131661, 808417.1007211164, 1375829.4972084453),
    "1_120x200": (313, [336, 336], 630755.467857992, 808504.6018286042, 1375741.7699380931),
    "1_336x336": (313, [336, 336], 128010.1050172227, 642787.1316592905, 824316.9823996341),
    "1_500x375": (313, [336, 336], 441509.0376452666, 565161.6527443628, 855627.433608049),
    "1_1000x200": (313, [336, 336], 1137337.272297746, 1147643.740271809, 2298617.977102586),
    "1_64x64": (313, [336, 336], 112743.36563062645, 415606.88078714465, 378066.47840022534),
    "1_1280x720": (313, [336, 336], 679150.5691905436, 697160.1529381606, 1279925.5227736295),
    "1_37x411": (313, [336, 336], 1276324.5716415036, 1295887.897355526, 2622216.2695261925),
    "4_200x120": (757, [672, 672], 1581027.0096661202, 2019632.8294319867, 3433201.3622416398),
    "4_120x200": (757, [672, 672], 1572314.207142374, 2020080.2385530858, 3432807.802954114),
    "4_336x336": (757, [672, 672], 326187.40726336313, 1038462.8849476372, 914457.5452996492),
    "4_500x375": (757, [672, 672], 1103877.449197833, 1644719.6458828235, 2487584.2446993776),
    "4_1000x200": (745, [336, 1344], 956900.244674271, 1534810.7628199877, 2202872.7565950737),
    "4_64x64": (757, [672, 672], 281882.98842043907, 1039667.9328886957, 946382.2460968241),
    "4_1280x720": (757, [672, 672], 1697872.2050072853, 1846244.0180194464, 3292210.4309358005),
    "4_37x411": (781, [1344, 336], 2346646.791144001, 2608814.5151143307, 4932713.289424009),
    "16_200x120": (2353, [1008, 1680], 1020496.793035707, 3347435.5483065024, 3065490.865801191),
    "16_120x200": (2377, [1680, 1008], 973716.4452199676, 3349430.4704227145, 3062228.146190366),
    "16_336x336": (2509, [1344, 1344], 1098537.7809135574, 3600198.688856432, 3311677.3768748157),
    "16_500x375": (1921, [1008, 1344], 817493.106335231, 2721177.3566992, 2488713.906747629),
    "16_1000x200": (2485, [672, 2688], 3237252.420056313, 5224754.99508763, 7488792.621286731),
    "16_64x64": (2509, [1344, 1344], 956413.7512201589, 3537579.100341524, 3224035.1126051457),
    "16_1280x720": (2353, [1008, 1680], 1649392.6335824635, 3835136.1117378213, 4299468.197652264),
    "16_37x411": (1873, [3696, 336], 859748.3624259372, 2595394.1502151387, 2502522.870824644),
}

# case: (loss with labels, logits' float64 sum, the last position's top-5 ids and logits, 8 greedy tokens).
MODEL = {
    "4_200x120": (
        13.922821998596191,
        693073.9901730604,
        [2014, 19398, 13117, 4831, 24944],
        [12.396271705627441, 11.521519660949707, 11.502309799194336, 11.269709587097168, 10.787446022033691],
        [2014, 13117, 4831, 2014, 13117, 4831, 2014, 13117],
    ),
    "1_336x336": (
        14.254262924194336,
        149690.48519333737,
        [19398, 13117, 27012, 4831, 22834],
        [11.79133415222168, 11.322891235351562, 11.206076622009277, 10.831721305847168, 10.666254997253418],
        [19398, 13117, 4831, 12381, 13117, 4831, 12381, 13117],
    ),
    "16_500x375": (
        14.164813995361328,
        1229502.1057312626,
        [19398, 27012, 4831, 2014, 13117],
        [11.91047477722168, 11.621129989624023, 11.252678871154785, 11.037428855895996, 10.989911079406738],
        [19398, 4831, 12381, 4831, 12381, 4831, 12381, 4831],
    ),
}


def encode(key: str):
    crops, size = key.split("_")
    width, height = map(int, size.split("x"))
    return Phi3VProcessor.from_pretrained(SHARED, num_crops=int(crops))(PROMPT, [make_image(width, height)])


def test_every_image_size_is_covered():
    assert {k.split("_")[1] for k in PROCESSOR} == {f"{w}x{h}" for w, h in IMAGE_SIZES}
    assert {k.split("_")[0] for k in PROCESSOR} == {"1", "4", "16"}


@pytest.mark.parametrize("key", PROCESSOR)
def test_the_processor_gives_the_official_ids_pixels_and_sizes(key):
    tokens, sizes, total, abs_total, sq_total = PROCESSOR[key]
    enc = encode(key)
    ids = enc["input_ids"][0]
    assert int((ids == -1).sum()) == tokens and int((ids < 0).sum()) == tokens
    assert ids[ids != -1].tolist() == TEXT_IDS
    assert ids[4 : 4 + tokens].eq(-1).all()  # the image right after "<s><|user|>\n"
    assert enc["attention_mask"].eq(1).all()
    assert enc["image_sizes"].tolist() == [sizes]
    crops = int(key.split("_")[0])
    pix = enc["pixel_values"].double()
    assert pix.shape == (1, crops + 1, 3, 336, 336)
    assert float(pix.sum()) == pytest.approx(total, rel=1e-9, abs=1e-6)
    assert float(pix.abs().sum()) == pytest.approx(abs_total, rel=1e-9)
    assert float((pix * pix).sum()) == pytest.approx(sq_total, rel=1e-9)


@pytest.fixture(scope="module")
def model():
    # The hub's config.json as it is (flash_attention_2, bfloat16), the sizes reduced in memory as
    # reference_config() reduces them for the official code; eager attention set in code.
    cfg = {**json.loads((SHARED / "config.json").read_text()), **REDUCED_TEXT}
    cfg["img_processor"] = dict(cfg["img_processor"], vision_config=dict(CLIP_VIT_L14_336, num_hidden_layers=2))
    config = Phi3VConfig(**cfg)
    assert config._attn_implementation == "flash_attention_2"
    config._attn_implementation = "eager"
    m = Phi3VForCausalLM(config).eval()
    m.load_state_dict(fill_weights(dict(m.state_dict())), strict=True)
    assert sum(p.numel() for p in m.parameters()) == 40_125_760  # the official model.num_parameters()
    return m


@pytest.mark.parametrize("key", MODEL)
def test_logits_loss_and_greedy_tokens_equal_the_official_model(model, key):
    loss, total, top_ids, top_values, greedy = MODEL[key]
    enc = encode(key)
    with torch.no_grad():
        out = model(**enc, labels=reference_labels(enc["input_ids"]))
        assert float(out.loss) == pytest.approx(loss, abs=1e-5)
        top = out.logits[0, -1].topk(5)
        assert top.indices.tolist() == top_ids
        assert (top.values - torch.tensor(top_values)).abs().max() < 1e-4
        assert float(out.logits.double().sum()) == pytest.approx(total, abs=0.05)  # of ~1e8 summed |logits|
        new = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert new[0, enc["input_ids"].shape[1] :].tolist() == greedy
