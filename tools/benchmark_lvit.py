"""Evidence for the LViT bundle on held-out synthetic chest X-rays with QaTa-style report sentences.

One synthetic dataset (``--num_train`` training, ``--num_val`` validation, ``--num_test`` test images, generated once
by the bundle's generator) is used by every arm. Each arm runs the bundle's own workflows through
``python -m monai.bundle run`` with the quick overlay (LViT at ``img_size`` with ``base_channels``) and the same
iteration budget (``epochs x epoch_length`` optimizer steps of batch 2), for each seed:

- ``LViT, text``: ``train.json``, all training labels;
- ``LViT, no text``: the same with ``use_text=false`` (the paper's "without text" variant: CTBN3(t1) is not added);
- ``LViT, shuffled text``: the same as ``LViT, text`` but every training/validation/test sentence is replaced by the
  sentence of another image (a fixed derangement), so the text no longer describes the mask;
- ``supervised 1/4``: ``train.json`` with ``labeled_fraction=0.25``;
- ``semi 1/4 (EPI + LV)``: ``train.json + train_semi.json`` with ``labeled_fraction=0.25``: the first half of the
  budget on the labeled images only, then pseudo labels, EPI (beta 0.99) and the LV loss (weight 0.1).
  Its semi-supervised iterations also forward a batch of unlabeled images, so its wall time is larger;
- ``semi 1/4 labels (EPI, no LV loss)`` (``--arms semi14_nolv``): the semi-supervised arm with ``lv_weight=0``;
- ``decoys: LViT, text`` / ``decoys: LViT, no text`` (``--arms text_decoy,notext_decoy``): a second synthetic dataset
  with up to ``max_decoys`` lesion-like opacities per image that are *not* infection, in zones the sentence does not
  name; only the text can tell them apart (20 text tokens, so that every named zone is inside the text window);
  ``text_decoy_all`` adds the text at every ViT level (``text_levels=[1,2,3,4]``).

Model selection uses the validation images (best validation Dice, checked every ``val_every`` epochs); the test images
are scored with ``evaluate.json`` for that checkpoint and for the model at the end of the budget (last interval
checkpoint) (per-image Dice and IoU, mean over images with infection in the ground truth
or the prediction). Writes ``results.json``, ``results.md`` and ``lvit_benchmark.png`` with ``run_record()``
provenance into ``--out``::

    OMP_NUM_THREADS=1 nice -n 10 python tools/benchmark_lvit.py --out benchmark_results/lvit
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
    markdown_table, plot_bars, record_markdown, run_bundle_workflow, run_record,
)

CFG = REPO / "bundles" / "lvit_qata_covid19_segmentation" / "configs"

ARMS = {
    "text": ("LViT, text (all labels)", ["train.json", "quick.json"], {}),
    "notext": ("LViT, no text (all labels)", ["train.json", "quick.json"], {"use_text": False}),
    "shuffled": ("LViT, shuffled text (all labels)", ["train.json", "quick.json"], {}),
    "sup14": ("supervised 1/4 labels", ["train.json", "quick.json"], {"labeled_fraction": 0.25}),
    "semi14": ("semi 1/4 labels (EPI + LV)", ["train.json", "train_semi.json", "quick.json"], {"labeled_fraction": 0.25}),
    "semi14_nolv": ("semi 1/4 labels (EPI, no LV loss)", ["train.json", "train_semi.json", "quick.json"],
                    {"labeled_fraction": 0.25, "lv_weight": 0.0}),
    # decoy task: lesion-like opacities outside the mask in zones the sentence does not name; 20 text tokens so that
    # every named zone is inside the text window
    "text_decoy": ("decoys: LViT, text (20 tokens)", ["train.json", "quick.json"], {"text_len": 20, "_decoys": True}),
    "text_decoy_all": ("decoys: LViT, text at every ViT level (20 tokens)", ["train.json", "quick.json"],
                       {"text_len": 20, "text_levels": "[1,2,3,4]", "_decoys": True}),
    "notext_decoy": ("decoys: LViT, no text", ["train.json", "quick.json"],
                     {"text_len": 20, "use_text": False, "_decoys": True}),
}


def _run(configs: list[str], root: Path, overrides: dict, log: Path) -> float:
    return run_bundle_workflow([CFG / c for c in configs], {"bundle_root": root, **overrides}, log=log).seconds


def _shuffled_datalist(datalist: Path, out: Path) -> Path:
    """A copy of the datalist (absolute paths) whose sentences are rotated by one within each split."""
    data = json.loads(datalist.read_text())
    for split, items in data.items():
        if not isinstance(items, list):
            continue
        texts = [it.get("text") for it in items]
        for i, it in enumerate(items):
            for key in ("image", "label"):
                if key in it:
                    it[key] = str((datalist.parent / it[key]).resolve())
            if len(items) > 1:
                it["text"] = texts[(i + 1) % len(items)]
    out.write_text(json.dumps(data, indent=2))
    return out


def main(
    out: str = "benchmark_results/lvit",
    work: str = "/tmp/lvit_benchmark",
    arms: str = "text,notext,shuffled,sup14,semi14,semi14_nolv,text_decoy,text_decoy_all,notext_decoy",
    seeds: tuple = (0, 1),
    num_train: int = 64,
    num_val: int = 8,
    num_test: int = 40,
    data_size: int = 128,
    img_size: int = 64,
    base_channels: int = 16,
    epochs: int = 30,
    epoch_length: int = 20,
    val_every: int = 5,
    max_decoys: int = 2,
    keep: bool = False,
) -> int:
    """Run every arm for every seed and write the results (see the module docstring)."""
    out_dir, work_dir = Path(out), Path(work)
    wanted = [a for a in (arms.split(",") if isinstance(arms, str) else arms)]
    seeds = [int(s) for s in (seeds if isinstance(seeds, (list, tuple)) else [seeds])]
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    data = work_dir / "data"
    record = run_record()
    settings = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "data_size": data_size,
                "img_size": img_size, "base_channels": base_channels, "epochs": epochs, "epoch_length": epoch_length,
                "iterations": epochs * epoch_length, "batch_size": 2, "val_every": val_every, "seeds": seeds,
                "max_decoys (decoy arms)": max_decoys}
    common = {
        "dataset_dir": data, "img_size": img_size, "base_channels": base_channels, "epoch_length": epoch_length,
        "max_epochs": epochs, "labeled_epochs": epochs // 2, "val_interval": val_every, "early_stop_patience": 0,
        "text_cache_dir": work_dir / "text_cache", "synthetic_data#num_training": num_train,
        "synthetic_data#num_validation": num_val, "synthetic_data#num_test": num_test,
        "synthetic_data#size": data_size,
    }
    results = []
    shuffled_list = None
    for seed in seeds:
        for arm in wanted:
            name, configs, extra = ARMS[arm]
            root = work_dir / f"{arm}_seed{seed}"
            (root / "logs").mkdir(parents=True, exist_ok=True)
            over = {**common, **{k: v for k, v in extra.items() if not k.startswith("_")}, "seed": 666 + seed,
                    "split_seed": 0}
            if extra.get("_decoys"):
                over.update({"dataset_dir": work_dir / "data_decoy", "synthetic_data#max_decoys": max_decoys})
            if arm == "shuffled":
                if shuffled_list is None:  # the dataset exists after the first arm
                    if not (data / "dataset.json").is_file():
                        from custom_components.data.qata import generate_qata_synthetic

                        generate_qata_synthetic(data, num_train, num_val, num_test, size=data_size, seed=0)
                    shuffled_list = _shuffled_datalist(data / "dataset.json", work_dir / "dataset_shuffled.json")
                over["datalist_file"] = shuffled_list
            seconds = _run(configs, root, over, root / "logs" / "train.log")
            _run(["train.json", "evaluate.json", "quick.json"], root, {**over, "output_dir": root / "eval_test"},
                 root / "logs" / "evaluate.log")
            summary = json.loads((root / "eval_test" / "metrics.json").read_text())["summary"]
            m = summary["mean"]
            # the model at the end of the budget (last interval checkpoint), scored the same way
            from custom_components.engines import latest_checkpoint

            _run(["train.json", "evaluate.json", "quick.json"], root,
                 {**over, "output_dir": root / "eval_last", "ckpt_path": latest_checkpoint(root / "models")},
                 root / "logs" / "evaluate_last.log")
            last = json.loads((root / "eval_last" / "metrics.json").read_text())["summary"]["mean"]
            results.append({"arm": arm, "name": name, "seed": seed, "dice": m.get("dice"), "iou": m.get("iou"),
                            "dice_last": last.get("dice"), "iou_last": last.get("iou"),
                            "train_seconds": round(seconds, 1), "n_cases": summary.get("n_cases"),
                            "classes": summary.get("classes")})
            print(f"{name} seed {seed}: Dice {m.get('dice'):.3f} IoU {m.get('iou'):.3f}, last Dice "
                  f"{last.get('dice'):.3f} ({seconds:.0f}s)", flush=True)
            _write(out_dir, record, settings, results, wanted)
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def _write(out_dir: Path, record: dict, settings: dict, results: list, wanted: list) -> None:
    import numpy as np

    (out_dir / "results.json").write_text(json.dumps({"record": record, "settings": settings, "results": results},
                                                     indent=2, default=str) + "\n")
    rows = []
    for arm in wanted:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        dice = [r["dice"] for r in rs]
        iou = [r["iou"] for r in rs]
        last = [r["dice_last"] for r in rs]
        rows.append([ARMS[arm][0], len(rs), float(np.mean(dice)), float(np.std(dice)), float(np.mean(iou)),
                     " / ".join(f"{d:.3f}" for d in dice), float(np.mean(last)),
                     float(np.mean([r["iou_last"] for r in rs])), " / ".join(f"{d:.3f}" for d in last),
                     round(float(np.mean([r["train_seconds"] for r in rs])))])
    headers = ["arm", "seeds", "Dice", "Dice std", "IoU", "Dice per seed", "Dice (last)", "IoU (last)",
               "Dice (last) per seed", "train s (mean)"]
    md = ["# LViT benchmark (synthetic chest X-rays with QaTa-style sentences, held-out test images)\n\n",
          record_markdown(record), f"- settings: {json.dumps(settings)}\n",
          "- metrics: per-image Dice/IoU of the infection class on the test images (evaluate.json), mean over "
          "images; Dice/IoU: the best-validation checkpoint (models/model.pt); (last): the model at the end of the "
          "budget; arms share the dataset, the iteration budget and the seeds\n\n", markdown_table(headers, rows)]
    (out_dir / "results.md").write_text("".join(md))
    plot_bars(out_dir / "lvit_benchmark.png", [r[0] for r in rows], [r[2] for r in rows],
              "test Dice (mean over seeds; bar: std)", errors=[r[3] for r in rows])


if __name__ == "__main__":
    sys.exit(fire.Fire(main))
