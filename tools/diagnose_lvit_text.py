"""Why does LViT not use the sentence on the synthetic decoy task? Measurements, not guesses.

On the decoy task (``generate_qata_synthetic(max_decoys=2)``: lesion-like opacities that are not infection, in zones
the sentence does not name; only the sentence tells them apart) this trains LViT through the bundle
(``train.json + quick.json``, ``text_len`` 20) with text and without text for ``--iterations`` optimizer steps per
seed, then measures on the test images, for the model at initialisation and the trained model:

1. **separation of the sentences** along the text path: for every pair of test sentences naming different zone sets,
   ``||f(s_i) - f(s_j)|| / mean ||f(s)||`` after the MiniLM encoder (the token vectors the bundle feeds), after the
   text chain (``t1``), and after CTBN3 (the term added to the first ViT embedding);
2. **size of the text term** beside the image: ``||CTBN3(t1)|| / ||e1||`` and the between-sentence part
   ``||CTBN3(t1(s)) - CTBN3(t1(s'))|| / ||e1||`` (``e1``: the first ViT patch embedding of the same image);
3. **reach of the ViT path**: mean |change of the probability map| when the ViT's reconstructions added onto the CNN
   skips are zeroed (the text enters the network only through the ViT);
4. **use of the sentence**: test Dice with each image's own sentence, with the sentence of another image (rotation by
   one), with no text, and with the ViT reconstructions zeroed (own sentence); the mean |change of the probability map|
   between own and swapped sentence;
5. **gradient reaching the text branch**: RMS gradient per parameter of the text chain + CTBN3, of the first patch
   embedding and of the CNN encoder, averaged over training batches.

Writes ``results.json`` and ``results.md`` (with ``run_record()`` provenance) into ``--out``::

    OMP_NUM_THREADS=1 nice -n 10 python tools/diagnose_lvit_text.py --out benchmark_results/lvit/decoy_diagnosis
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom_components.utils import (  # noqa: E402
    as_list, format_mean_sd, markdown_table, mean_sd, record_markdown, run_bundle_workflow, run_record,
)

CFG = REPO / "bundles" / "lvit_qata_covid19_segmentation" / "configs"


def _parser(root: Path, overrides: dict, evaluate: bool = False):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    names = ["train.json", "evaluate.json", "quick.json"] if evaluate else ["train.json", "quick.json"]
    parser.read_config([str(CFG / n) for n in names])
    parser.update({"bundle_root": str(root), "device": "$torch.device('cpu')",
                   **{k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()}})
    return parser


def _rel_pair_distance(feats, groups) -> float:
    """Mean over pairs with different groups of ``||f_i - f_j|| / mean_k ||f_k||`` (``feats``: [N, ...])."""
    import torch

    flat = feats.reshape(len(feats), -1).double()
    scale = flat.norm(dim=1).mean()
    vals = [float((flat[i] - flat[j]).norm() / scale) for i in range(len(flat)) for j in range(i + 1, len(flat))
            if groups[i] != groups[j]]
    return float(torch.tensor(vals).mean()) if vals else float("nan")


def _text_terms(net, text):
    """(t1, CTBN3(t1)) of a batch of token vectors; eval mode."""
    t1 = net._text_features(text)[0]
    return t1, net.text_to_tokens[0](t1)


def measure(net, batch: dict) -> dict:
    """Measurements 1-4 on one batch of test items (``image``, ``label``, ``text_emb``, ``text``)."""
    import torch

    def dice(pred, gt):  # per image, mean over images with infection in the truth or the prediction
        inter, total = (pred * gt).flatten(1).sum(1), (pred + gt).flatten(1).sum(1)
        keep = total > 0
        return float((2 * inter[keep] / total[keep]).mean()) if keep.any() else float("nan")

    net.eval()
    image, label, text = batch["image"].float(), batch["label"].float(), batch["text_emb"].float()
    groups = list(batch["text"])
    swapped = torch.roll(text, 1, dims=0)
    out: dict = {}
    with torch.no_grad():
        out["sep_encoder"] = _rel_pair_distance(text, groups)
        t1, term = _text_terms(net, text)
        out["sep_t1"] = _rel_pair_distance(t1, groups)
        out["sep_ctbn3"] = _rel_pair_distance(term, groups)
        e1 = net.embed[0](net.inc(image))
        e1_norm = e1.flatten(1).norm(dim=1)
        out["text_term_over_e1"] = float((term.flatten(1).norm(dim=1) / e1_norm).mean())
        _, term_sw = _text_terms(net, swapped)
        out["text_diff_over_e1"] = float(((term - term_sw).flatten(1).norm(dim=1) / e1_norm).mean())

        def prob(txt):
            return torch.sigmoid(net(image, txt))

        p_own, p_swap = prob(text), prob(swapped)
        p_none = prob(None) if net.use_text else p_own
        hooks = [m.register_forward_hook(lambda mod, inp, o: torch.zeros_like(o)) for m in net.reconstruct]
        try:
            p_novit = prob(text)
        finally:
            for h in hooks:
                h.remove()
        out["prob_change_swapped_text"] = float((p_own - p_swap).abs().mean())
        out["prob_change_no_vit"] = float((p_own - p_novit).abs().mean())
        for name, p in (("dice_own_text", p_own), ("dice_swapped_text", p_swap), ("dice_no_text", p_none),
                        ("dice_no_vit", p_novit)):
            out[name] = dice((p > 0.5).float(), (label > 0.5).float())
    return out


def grad_rms(net, loss_fn, batches) -> dict:
    """RMS gradient per parameter of the text branch, the first patch embedding and the CNN encoder (train mode)."""
    import torch

    groups = {"text_branch": [net.text4, net.text3, net.text2, net.text1, net.text_to_tokens[0]],
              "patch_embed_1": [net.embed[0]], "cnn_encoder": [net.inc, net.down1, net.down2, net.down3, net.down4]}
    sums = {k: 0.0 for k in groups}
    net.train()
    for b in batches:
        net.zero_grad()
        loss_fn(net(b["image"].float(), b["text_emb"].float()), b["label"].float()).backward()
        for k, mods in groups.items():
            gs = [p.grad.flatten() for m in mods for p in m.parameters() if p.grad is not None]
            sums[k] += float(torch.cat(gs).pow(2).mean().sqrt()) if gs else 0.0  # no gradient: the path is unused
    net.zero_grad()
    return {k: v / max(len(batches), 1) for k, v in sums.items()}


def main(
    out: str = "benchmark_results/lvit/decoy_diagnosis",
    work: str = "/tmp/lvit_decoy_diagnosis",
    seeds: str | tuple = (0, 1, 2),
    iterations: int = 3000,
    num_train: int = 64,
    num_val: int = 8,
    num_test: int = 40,
    data_size: int = 128,
    max_decoys: int = 2,
    fresh: bool = False,
) -> int:
    """Train text / no-text LViT on the decoy task per seed and write the measurements (module docstring)."""
    import torch

    from custom_components.data.qata import generate_qata_synthetic

    seed_list = as_list(seeds, int)
    work_dir, out_dir = Path(work), Path(out)
    if fresh:
        shutil.rmtree(work_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = work_dir / "data"
    if not (data / "dataset.json").is_file():
        generate_qata_synthetic(data, num_train, num_val, num_test, size=data_size, seed=0, max_decoys=max_decoys)
    epoch_length = 20
    epochs = max(iterations // epoch_length, 1)
    common = {"dataset_dir": data, "text_len": 20, "epoch_length": epoch_length, "max_epochs": epochs,
              "val_interval": max(epochs // 10, 1), "early_stop_patience": 0, "text_cache_dir": work_dir / "text_cache"}
    settings = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "data_size": data_size,
                "max_decoys": max_decoys, "iterations": epochs * epoch_length, "seeds": seed_list,
                "network": "quick.json LViT (img 64, base_channels 16), text_len 20, text at ViT level 1"}
    record = run_record()
    runs = []
    for seed in seed_list:
        for arm, use_text in (("text", True), ("notext", False)):
            root = work_dir / f"{arm}_seed{seed}"
            over = {**common, "seed": 666 + seed, "use_text": use_text}
            if not (root / "models" / "model.pt").is_file():
                (root / "logs").mkdir(parents=True, exist_ok=True)
                run_bundle_workflow([CFG / "train.json", CFG / "quick.json"], {**over, "bundle_root": root},
                                    log=root / "logs" / "train.log")
            parser = _parser(root, over, evaluate=True)
            test = [parser.get_parsed_content("validate#dataset")[i] for i in range(num_test)]
            batch = {k: (torch.stack([torch.as_tensor(t[k]) for t in test]) if k != "text" else [t[k] for t in test])
                     for k in ("image", "label", "text_emb", "text")}
            net = parser.get_parsed_content("network_def")
            state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
            rec = {"arm": arm, "seed": seed}
            if use_text:  # the text model at initialisation (a fresh network of the same seed) and its gradients
                torch.manual_seed(666 + seed)
                init = _parser(root, over).get_parsed_content("network_def")
                loss_fn = parser.get_parsed_content("loss")
                batches = [{k: batch[k][i:i + 2] for k in ("image", "label", "text_emb")} for i in range(0, 8, 2)]
                rec["grad_rms_init"] = grad_rms(init, loss_fn, batches)
                rec["init"] = measure(init, batch)
                net.load_state_dict(state)
                rec["grad_rms_trained"] = grad_rms(net, loss_fn, batches)
            net.load_state_dict(state)  # (again after grad_rms, whose train-mode BN moved the running statistics)
            rec["trained"] = measure(net, batch)
            runs.append(rec)
            print(arm, seed, json.dumps(rec["trained"]), flush=True)
            _write(out_dir, record, settings, runs)
    return 0


def _write(out_dir: Path, record: dict, settings: dict, runs: list) -> None:
    (out_dir / "results.json").write_text(json.dumps({"record": record, "settings": settings, "runs": runs},
                                                     indent=2) + "\n")
    rows = []
    keys = ["dice_own_text", "dice_swapped_text", "dice_no_text", "dice_no_vit", "prob_change_swapped_text",
            "prob_change_no_vit",
            "sep_encoder", "sep_t1", "sep_ctbn3", "text_term_over_e1", "text_diff_over_e1"]
    for arm in ("text", "notext"):
        for when in ("init", "trained"):
            rs = [r[when] for r in runs if r["arm"] == arm and when in r]
            if rs:
                rows.append([f"{arm} ({when})", len(rs), *(format_mean_sd(mean_sd([r[k] for r in rs])) for k in keys)])
    grad_rows = []
    for when in ("grad_rms_init", "grad_rms_trained"):
        rs = [r[when] for r in runs if when in r and r["arm"] == "text"]
        if rs:
            grad_rows.append([when.replace("grad_rms_", ""), len(rs),
                              *(format_mean_sd(mean_sd([r[k] for r in rs]), 5)
                                for k in ("text_branch", "patch_embed_1", "cnn_encoder"))])
    md = ["# Does LViT's text path carry information? (synthetic decoy task)\n\n", record_markdown(record),
          f"- settings: {json.dumps(settings)}\n",
          "- mean ± sample sd over seeds; definitions in tools/diagnose_lvit_text.py. Dice: on the test images with "
          "each image's own sentence, another image's sentence (rotation by one), no text. sep_*: mean distance "
          "between sentences naming different zones relative to the mean feature norm, after the encoder, after the "
          "text chain (t1), after CTBN3. *_over_e1: the text term (and its between-sentence difference) relative to "
          "the first ViT patch embedding. prob_change: mean |change| of the probability map\n\n",
          markdown_table(["model", "seeds", "Dice own text", "Dice swapped text", "Dice no text", "Dice ViT off",
                          "prob change swapped", "prob change ViT off", "sep encoder", "sep t1", "sep CTBN3",
                          "text / e1", "text diff / e1"], rows),
          "\nRMS gradient per parameter on 4 test batches of 2 (text model):\n\n",
          markdown_table(["model", "seeds", "text branch", "patch embedding 1", "CNN encoder"], grad_rows)]
    (out_dir / "results.md").write_text("".join(md))


if __name__ == "__main__":
    sys.exit(fire.Fire(main))
