"""Evidence for the LViT bundle on real data: MoNuSeg H&E nuclei with the LViT authors' report sentences.

The shared MoNuSeg folder (``--root``, default ``<repo>/../shared/data/monuseg``: ``Train_Folder`` 24 images,
``Val_Folder`` 6, one sentence per image) is only read: the converter writes the datalist under ``--work``. The
fixed split of the evidence: 20 training images, 4 of the training images (seeded choice, listed in the results) for
checkpoint selection, the 6 ``Val_Folder`` images as the test set, scored once per run. Every arm runs the bundle's
own workflows through ``python -m monai.bundle run`` (``train.json`` + ``monuseg.json``, then ``evaluate.json``) at
the same iteration budget (``epochs x 10`` optimizer steps of batch 2, lr 1e-3 as the paper), for each seed:

- ``text``: LViT with the sentences;
- ``notext``: LViT with ``use_text`` false (the paper's "without text" variant);
- ``shuffled``: LViT with every sentence replaced by that of another image of the same split (rotation by one);
- ``unet``: a plain MONAI ``UNet`` (channels 64-128-256-512-512, two residual units per level: 14.83 M parameters,
  the closest MONAI gets to the paper's 14.8 M U-Net baseline), the same data, loss, optimizer and budget, no text.

What shrinks for a 2-core CPU (said in the results): LViT's width (``--base_channels``, 64 in the paper: 29.7 M
parameters; 32 here: 7.5 M), the number of iterations (paper: up to 2000 epochs with early stopping; here a fixed
budget, no early stopping, best validation Dice kept). The image size stays the paper's 224 x 224.

Writes ``results.json`` (every run, the split, the aggregates), ``results.md`` and ``monuseg_benchmark.png`` with
``run_record()`` provenance into ``--out``. The paper's numbers (another test set: the 14-image official test folder,
not shared) are printed beside ours for orientation only. A run whose test metrics exist is not redone::

    OMP_NUM_THREADS=1 nice -n 10 python tools/benchmark_lvit_monuseg.py --out benchmark_results/lvit/monuseg
    python tools/benchmark_lvit_monuseg.py --smoke      # tiny budget and sizes: checks the tool in minutes
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from benchmark_lvit import _shuffled_datalist  # noqa: E402
from custom_components.utils import (  # noqa: E402
    as_list, format_mean_sd, markdown_table, mean_sd, plot_bars, record_markdown, run_bundle_workflow, run_record,
)

CFG = REPO / "bundles" / "lvit_qata_covid19_segmentation" / "configs"
MONUSEG = REPO.parent / "shared" / "data" / "monuseg"
ARMS = {"text": "LViT, text", "notext": "LViT, no text", "shuffled": "LViT, shuffled text",
        "unet": "MONAI U-Net (14.83 M)"}
#: the LViT paper on the MoNuSeg test folder (14 images, not shared here), Dice / IoU in %: orientation only
PAPER = {"text": (80.36, 67.31), "unet": (76.45, 62.86)}
#: the U-Net baseline: MONAI's UNet, no text (the default prepare_batch passes the image only)
UNET_OVERLAY = {
    "network_def": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": "@in_channels",
                    "out_channels": "@out_channels", "channels": [64, 128, 256, 512, 512], "strides": [2, 2, 2, 2],
                    "num_res_units": 2},
    "prepare_batch": {"_target_": "monai.engines.PrepareBatchDefault"},
}
SMOKE = {"img_size": 64, "base_channels": 8, "epochs": 2, "val_every": 1, "seeds": (0,)}


def _configs(arm: str, work: Path, *extra: str) -> list[Path]:
    configs = [CFG / "train.json", *(CFG / e for e in extra), CFG / "monuseg.json"]
    if arm == "unet":
        overlay = work / "unet_baseline.json"
        overlay.write_text(json.dumps(UNET_OVERLAY, indent=2))
        configs.append(overlay)
    return configs


def main(
    out: str = "benchmark_results/lvit/monuseg",
    root: str = str(MONUSEG),
    work: str = "/tmp/lvit_monuseg_benchmark",
    arms: str | tuple = "text,notext,shuffled,unet",
    seeds: str | tuple = (0, 1, 2),
    img_size: int = 224,
    base_channels: int = 32,
    epochs: int = 40,
    val_every: int = 2,
    smoke: bool = False,
    fresh: bool = False,
) -> int:
    """Run every (arm, seed) and write the results (see the module docstring).

    Args:
        out: results folder (with ``--smoke``: ``<work>/results``).
        root: the MoNuSeg folder in the LViT layout (only read).
        work: datalist, text cache and runs (kept: a finished run is not redone; ``--fresh`` deletes it first).
        arms: among ``text,notext,shuffled,unet``.
        seeds: training seeds (weights, batches, augmentation; the split stays fixed).
        img_size: network input (the paper's 224).
        base_channels: LViT width (64 in the paper).
        epochs: of 10 iterations (20 training images, batch 2).
        val_every: epochs between validations on the 4 held-out training images (checkpoint selection).
        smoke: tiny sizes and budget, one seed (checks the tool end to end).
    """
    from custom_components.data.qata import convert_qata

    if smoke:
        img_size, base_channels, epochs, val_every, seeds = (SMOKE[k] for k in
                                                             ("img_size", "base_channels", "epochs", "val_every",
                                                              "seeds"))
        work = work.rstrip("/") + "_smoke"
    wanted = as_list(arms)
    unknown = set(wanted) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; arms are {','.join(ARMS)}")
    seed_list = as_list(seeds, int)
    if not (Path(root) / "Train_Folder").is_dir():
        raise SystemExit(f"{root} has no Train_Folder: pass --root <MoNuSeg in the LViT layout>")
    work_dir = Path(work)
    out_dir = work_dir / "results" if smoke else Path(out)
    if fresh:
        shutil.rmtree(work_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    datalist = Path(convert_qata(root, work_dir / "data", val_images=4, val_folder_split="test", seed=0))
    split = json.loads(datalist.read_text())
    split_info = {**split.get("split_info", {}),
                  **{f"n_{k}": len(v) for k, v in split.items() if isinstance(v, list)}}
    shuffled = _shuffled_datalist(datalist, work_dir / "dataset_shuffled.json")
    common = {"dataset_dir": work_dir / "data", "img_size": img_size, "base_channels": base_channels,
              "max_epochs": epochs, "val_interval": val_every, "early_stop_patience": 0, "num_workers": 0,
              "text_cache_dir": work_dir / "text_cache"}
    settings = {"train_images": split_info.get("n_training"), "selection_images": split_info.get("n_validation"),
                "test_images": split_info.get("n_test"), "img_size": img_size, "lvit_base_channels": base_channels,
                "epochs": epochs, "iterations": epochs * 10, "batch_size": 2, "learning_rate": 1e-3,
                "val_every_epochs": val_every, "early_stopping": "off (best validation Dice kept)",
                "seeds": seed_list, "smoke": smoke,
                "shrunk_for_cpu": f"LViT base_channels {base_channels} (paper 64), {epochs * 10} iterations "
                                  f"(paper: up to 2000 epochs, early stopping)"}
    record = run_record()
    results = []
    for seed in seed_list:
        for arm in wanted:
            run_dir = work_dir / f"{arm}_seed{seed}"
            metrics_file = run_dir / "eval_test" / "metrics.json"
            over = {**common, "bundle_root": run_dir, "seed": 666 + seed,
                    **({"use_text": False} if arm == "notext" else {}),
                    **({"datalist_file": shuffled} if arm == "shuffled" else {})}
            seconds = None
            if not metrics_file.is_file():
                (run_dir / "logs").mkdir(parents=True, exist_ok=True)
                seconds = run_bundle_workflow(_configs(arm, work_dir), over, log=run_dir / "logs" / "train.log").seconds
                run_bundle_workflow(_configs(arm, work_dir, "evaluate.json"),
                                    {**over, "output_dir": run_dir / "eval_test"}, log=run_dir / "logs" / "evaluate.log")
                (run_dir / "train_seconds.json").write_text(json.dumps(seconds))
            elif (run_dir / "train_seconds.json").is_file():
                seconds = json.loads((run_dir / "train_seconds.json").read_text())
            summary = json.loads(metrics_file.read_text())["summary"]
            m = summary["mean"]
            results.append({"arm": arm, "seed": seed, "dice": m.get("dice"), "iou": m.get("iou"),
                            "n_cases": summary.get("n_cases"), "train_seconds": seconds})
            print(f"{ARMS[arm]} seed {seed}: Dice {m.get('dice'):.3f} IoU {m.get('iou'):.3f} "
                  f"({seconds or 0:.0f}s)", flush=True)
            _write(out_dir, record, settings, split_info, results, wanted)
    return 0


def _write(out_dir: Path, record: dict, settings: dict, split_info: dict, results: list, wanted: list) -> None:
    rows, aggregates = [], {}
    for arm in wanted:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        dice, iou = mean_sd([r["dice"] for r in rs]), mean_sd([r["iou"] for r in rs])
        secs = mean_sd([r["train_seconds"] for r in rs])
        aggregates[arm] = {"dice": dice, "iou": iou, "train_seconds": secs, "seeds": [r["seed"] for r in rs]}
        paper = PAPER.get(arm)
        rows.append([ARMS[arm], len(rs), format_mean_sd(dice), format_mean_sd(iou),
                     " / ".join(f"{r['dice']:.3f}" for r in rs), format_mean_sd(secs, 0),
                     f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "-"])
    (out_dir / "results.json").write_text(json.dumps(
        {"record": record, "settings": settings, "split": split_info, "aggregates": aggregates, "runs": results},
        indent=2, default=str) + "\n")
    headers = ["arm", "seeds", "test Dice", "test IoU", "Dice per seed", "train s",
               "paper Dice / IoU % (other test set)"]
    md = ["# LViT on MoNuSeg (real H&E nuclei with the LViT report sentences)\n\n", record_markdown(record),
          f"- settings: {json.dumps(settings)}\n",
          f"- split: {json.dumps(split_info)}\n",
          "- metrics: per-image Dice / IoU of the nucleus class on the 6 Val_Folder images (evaluate.json, best "
          "validation checkpoint), mean ± sample sd over seeds. The paper's numbers are on the official 14-image test "
          "folder with full-size LViT-T and its own budget: orientation only, not comparable\n\n",
          markdown_table(headers, rows)]
    (out_dir / "results.md").write_text("".join(md))
    plot_bars(out_dir / "monuseg_benchmark.png", [r[0] for r in rows],
              [aggregates[a]["dice"]["mean"] for a in aggregates], "test Dice (mean ± sd over seeds)",
              errors=[0.0 if aggregates[a]["dice"]["n"] < 2 else aggregates[a]["dice"]["sd"] for a in aggregates])


if __name__ == "__main__":
    sys.exit(fire.Fire(main))
