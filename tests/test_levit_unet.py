"""Tests of LeViT-UNet against the official model's sizes, state-dict layout and behaviour (spec LEVIT_UNET.md)."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch import nn

from custom_components.networks import LeViTUNet, load_levit_imagenet, load_official_state_dict
from custom_components.networks.levit_unet import Attention, AttentionSubsample, attention_bias_index

# variant -> (total parameters, stem + transformer, decoder + head, stem width n) at 1x224x224, K = 9 (spec §2)
SPEC_SIZES = {
    "128s": (15_904_715, 7_005_234, 8_899_481, 128),
    "192": (19_904_670, 10_175_101, 9_729_569, 192),
    "384": (52_166_029, 37_586_900, 14_579_129, 384),
}
# global LeViT block indices kept under block_1/2/3 (spec §2)
SPEC_RANGES = {"128s": (range(0, 4), range(4, 12), range(12, 22)), "192": (range(0, 8), range(8, 18), range(18, 28))}
SPEC_RANGES["384"] = SPEC_RANGES["192"]
SMALL = {"decoder_channels": (16, 8, 8)}


@functools.cache
def full_model(variant: str) -> LeViTUNet:
    """Official-size model (read-only use)."""
    return LeViTUNet(variant).eval()


def n_params(model: nn.Module, prefixes: tuple[str, ...] = ("",)) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefixes))


@pytest.mark.parametrize("variant", list(SPEC_SIZES))
def test_parameter_counts_and_block_names(variant):
    total, encoder, decoder, _ = SPEC_SIZES[variant]
    model = full_model(variant)
    assert n_params(model) == total
    assert n_params(model, ("cnn_b", "block_")) == encoder
    assert n_params(model, ("decoderBlock_", "segmentation_head")) == decoder
    for stage, expected in zip((model.block_1, model.block_2, model.block_3), SPEC_RANGES[variant]):
        assert list(stage._modules) == [str(k) for k in expected]


def test_head_formula_for_other_class_count():
    total9, _, _, n = SPEC_SIZES["192"]
    model = LeViTUNet("192", out_channels=4)
    head = lambda k: (n // 8 + 128) * 9 * k + k  # noqa: E731
    assert n_params(model, ("segmentation_head",)) == head(4)
    assert n_params(model) == total9 - head(9) + head(4)


def test_output_shape_224():
    with torch.no_grad():
        out = full_model("128s")(torch.randn(2, 1, 224, 224))
    assert out.shape == (2, 9, 224, 224)


def test_bias_index_buffer_shapes():
    model = full_model("128s")
    stage = [tuple(m.attention_bias_idxs.shape) for m in model.modules() if isinstance(m, Attention)]
    sub = [tuple(m.attention_bias_idxs.shape) for m in model.modules() if isinstance(m, AttentionSubsample)]
    assert stage == [(196, 196)] * 2 + [(49, 49)] * 3 + [(16, 16)] * 4
    assert sub == [(49, 196), (16, 49)]
    assert model.get_submodule("block_1.0.m").attention_biases.shape == (4, 196)
    assert model.get_submodule("block_2.4").attention_biases.shape == (8, 196)
    assert "block_1.0.m.attention_bias_idxs" in model.state_dict()  # persistent buffer, official key


@pytest.mark.parametrize("q_res,k_res,stride", [(14, 14, 1), (7, 7, 1), (4, 4, 1), (7, 14, 2), (4, 7, 2), (3, 5, 2)])
def test_bias_index_matches_first_seen_enumeration(q_res, k_res, stride):
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for (qr, qc), (kr, kc) in itertools.product(
        itertools.product(range(q_res), range(q_res)), itertools.product(range(k_res), range(k_res))
    ):
        idxs.append(offsets.setdefault((abs(stride * qr - kr), abs(stride * qc - kc)), len(offsets)))
    expected = torch.tensor(idxs).view(q_res * q_res, k_res * k_res)
    assert torch.equal(attention_bias_index(q_res, k_res, stride), expected)


@pytest.mark.parametrize("img_size,res", [(96, [6, 3, 2]), (128, [8, 4, 2]), (256, [16, 8, 4])])
def test_other_image_sizes(img_size, res):
    model = LeViTUNet("128s", out_channels=3, img_size=img_size, **SMALL).eval()
    assert model.res == res
    assert model.get_submodule("block_3.14.m").attention_bias_idxs.shape == (res[2] ** 2, res[2] ** 2)
    with torch.no_grad():
        assert model(torch.randn(1, 1, img_size, img_size)).shape == (1, 3, img_size, img_size)


@pytest.mark.parametrize("img_size", [100, 230, 0])
def test_img_size_must_be_multiple_of_16(img_size):
    with pytest.raises(ValueError, match="multiple of 16"):
        LeViTUNet(img_size=img_size)


def random_like(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Random floats of the same shapes; integer buffers (bias indices, BN counters) are kept."""
    return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in state_dict.items()}


def test_official_state_dict_loads_every_key(tmp_path):
    reference = LeViTUNet("192")
    official = random_like(reference.state_dict())
    for key in (  # key names of the official code (spec §2)
        "cnn_b4.0.bn.running_var",
        "block_1.0.m.qkv.c.weight",
        "block_1.0.m.proj.1.bn.weight",
        "block_1.0.m.attention_biases",
        "block_1.0.m.attention_bias_idxs",
        "block_1.1.m.2.c.weight",
        "block_2.8.kv.bn.bias",
        "block_2.8.q.1.c.weight",
        "block_2.8.proj.1.c.weight",
        "block_3.18.attention_bias_idxs",
        "decoderBlock_1.conv1.0.weight",
        "decoderBlock_3.conv2.1.running_mean",
        "segmentation_head.0.bias",
    ):
        assert key in official
    duplicates = {f"blocks.{k.split('.', 1)[1]}": v for k, v in official.items() if k.startswith("block_")}
    checkpoint = {"state_dict": {f"module.{k}": v for k, v in {**official, **duplicates}.items()}}
    torch.save(checkpoint, tmp_path / "levit_unet_192.pth")

    model = LeViTUNet("192")
    report = load_official_state_dict(model, tmp_path / "levit_unet_192.pth")
    assert report == {"loaded": len(official), "dropped_duplicates": len(duplicates)}
    assert all(torch.equal(v, official[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError):
        load_official_state_dict(LeViTUNet("192"), {k: v for k, v in official.items() if "decoderBlock_3" not in k})


def levit_imagenet_state_dict(model: LeViTUNet) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A synthetic LeViT classifier state dict for ``model``'s variant at 224, and its expected LeViT-UNet keys."""
    n = model.cnn_b4[0].c.out_channels
    stem = {"cnn_b2.0": "patch_embed.2", "cnn_b3.0": "patch_embed.4", "cnn_b4.0": "patch_embed.6"}
    sd: dict[str, torch.Tensor] = {}
    expected: dict[str, str] = {}
    for key, value in random_like(model.state_dict()).items():
        prefix, rest = key[:8], key[9:]
        if prefix in stem:
            source = f"{stem[prefix]}.{rest}"
        elif key.startswith("block_"):
            source = f"blocks.{key.split('.', 1)[1]}"
        else:
            continue
        sd[source] = value
        expected[key] = source
    sd |= {"patch_embed.0.c.weight": torch.randn(n // 8, 3, 3, 3), "patch_embed.0.bn.weight": torch.randn(n // 8)}
    sd |= {"head.l.weight": torch.randn(1000, 384), "head_dist.l.bias": torch.randn(1000)}
    return sd, expected


def test_imagenet_remap_fills_every_encoder_key():
    model = LeViTUNet("128s")
    source, expected = levit_imagenet_state_dict(model)
    assert {k.split(".")[0] for k in expected} == {"cnn_b2", "cnn_b3", "cnn_b4", "block_1", "block_2", "block_3"}
    cnn_b1 = model.cnn_b1[0].c.weight.clone()

    assert load_levit_imagenet(model, {"model": source}) == len(expected)
    state = model.state_dict()
    assert all(torch.equal(state[k], source[s]) for k, s in expected.items())
    assert torch.equal(model.cnn_b1[0].c.weight, cnn_b1)

    # at another size the attention biases and their index tables do not fit and are skipped
    small = LeViTUNet("128s", img_size=96, **SMALL)
    n_bias = sum(1 for k in expected if "attention_bias" in k)
    assert load_levit_imagenet(small, {"model": source}) == len(expected) - n_bias


@pytest.mark.filterwarnings("ignore:.*torch.jit")
@pytest.mark.parametrize("export", [torch.jit.script, lambda m: torch.jit.trace(m, torch.randn(1, 1, 64, 64))])
def test_torchscript_export_roundtrip(export, tmp_path):
    model = LeViTUNet("128s", out_channels=3, img_size=64, **SMALL).eval()
    for p in model.parameters():  # non-trivial biases and BN weights
        nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 64, 64)
    torch.jit.save(export(model), tmp_path / "model.ts")
    loaded = torch.jit.load(tmp_path / "model.ts")
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_drop_path_only_in_training():
    assert {m.drop_prob for m in full_model("384").modules() if hasattr(m, "drop_prob")} == {0.1}
    assert {m.drop_prob for m in full_model("128s").modules() if hasattr(m, "drop_prob")} == {0.0}
    x = torch.randn(2, 1, 64, 64)

    def two_runs(drop_path: float, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = LeViTUNet("128s", img_size=64, drop_path=drop_path, **SMALL).train(train)
        for m in model.modules():  # residual branches start at zero (BN weight 0); make them count
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
        with torch.no_grad():
            return model(x), model(x)

    assert torch.equal(*two_runs(0.5, train=False))
    assert torch.equal(*two_runs(0.0, train=True))
    assert not torch.allclose(*two_runs(0.5, train=True))
