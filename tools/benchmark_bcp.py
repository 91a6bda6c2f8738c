"""Evidence for the BCP bundle: labeled-only vs plain mean teacher vs BCP vs fully supervised, several seeds per arm,
on held-out synthetic cardiac patients.

One synthetic ACDC-like dataset (``--num_train`` training patients, ``--num_val`` validation and ``--num_test`` test
patients, generated once, fixed for every run) is re-split by patient order with the bundle's ``num_labeled`` option
(``--labeled 2`` of 40 = 5 %). Every run is the bundle's own workflows through ``python -m monai.bundle run``
(``train.json`` + ``quick.json``, U-Net at ``--img_size``) with the same iteration budget
(``pretrain_iters + selftrain_iters``) and one of the ``--seeds`` (training seed: initial weights, batches,
augmentation, boxes; the data stay the same):

- ``labeled`` (labeled-only k): stage 1 alone (``--stage pretrain``: copy-paste supervised training on the k labeled
  patients) for the whole budget;
- ``mt`` (mean teacher k): the recipe (``train.json``, stage 1 then stage 2) with ``copy_paste=false``: stage 2 sees
  the labeled images with their labels and the unlabeled ones with the teacher's pseudo labels (weight alpha), no
  mixing; the baseline the authors compare with;
- ``bcp`` (BCP k): the recipe, stage 1 for ``pretrain_iters`` then bidirectional self-training for
  ``selftrain_iters``;
- ``full`` (fully supervised): the labeled-only recipe with every training patient labeled.

Model selection uses the validation patients only; the test patients are scored once per run with
``evaluate.json`` (Dice, IoU, HD95/ASD in voxels and mm, mean over RV, Myo, LV). Per arm: mean ± sample sd over the
seeds, and the share of the labeled-only -> fully supervised gap (mean Dice) that the arm closes:
``(arm - labeled-only) / (full - labeled-only)``. Writes ``results.json`` (every run and the aggregates),
``results.md`` and ``bcp_benchmark.png`` with ``run_record()`` provenance into ``--out``.

Runs are kept under ``--work``: a run whose test metrics exist is not redone (an interrupted benchmark continues
where it stopped; an interrupted training resumes from its checkpoint); ``--fresh`` starts over::

    OMP_NUM_THREADS=1 nice -n 10 python tools/benchmark_bcp.py --out benchmark_results/bcp      # hours on a CPU
    python tools/benchmark_bcp.py --seeds 1337,1338,1339,1340,1341 --arms labeled,bcp
    python tools/benchmark_bcp.py --smoke          # tiny data and budgets: checks the tool, in minutes
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom_components.utils import (  # noqa: E402
    as_list, format_mean_sd, markdown_table, mean_sd, plot_bars, record_markdown, run_bundle_workflow, run_record,
)

CFG = REPO / "bundles" / "bcp_acdc_segmentation" / "configs"
ARMS = ("labeled", "mt", "bcp", "full")
ARM_NAMES = {"labeled": "labeled-only", "mt": "mean teacher", "bcp": "BCP", "full": "fully supervised"}
METRICS = ("dice", "iou", "hd95", "asd", "hd95_mm", "asd_mm")
#: what --smoke changes: a tiny dataset and budget that exercise every arm, seed and aggregate in minutes.
SMOKE = {"num_train": 6, "num_val": 1, "num_test": 2, "shape": (32, 32, 4), "img_size": 32, "epoch_length": 2,
         "pretrain_iters": 2, "selftrain_iters": 2, "labeled": (2,), "val_interval": 1}


def gap_closed(arm_dice: float, labeled_dice: float, full_dice: float) -> float:
    """Share of the labeled-only -> fully supervised Dice gap closed by an arm (NaN when there is no gap)."""
    gap = full_dice - labeled_dice
    return (arm_dice - labeled_dice) / gap if gap and math.isfinite(gap) else math.nan


def plan_runs(arms: list[str], labeled: list[int], seeds: list[int], num_train: int) -> list[dict]:
    """One entry per (arm, labeled count, seed): ``arm``, ``k`` (labeled patients), ``seed``, ``name``."""
    runs = []
    for arm in arms:
        for k in ([num_train] if arm == "full" else labeled):
            for seed in seeds:
                runs.append({"arm": arm, "k": k, "seed": seed, "name": f"{arm}_{k}of{num_train}_seed{seed}"})
    return runs


def _run_one(run: dict, root: Path, common: dict, budget: dict) -> dict:
    """Train (unless its test metrics exist) and evaluate one run; returns its record."""
    metrics_file = root / "eval_test" / "metrics.json"
    timing_file = root / "train_seconds.json"
    base = {**common, "bundle_root": root, "num_labeled": run["k"], "seed": run["seed"]}
    if not metrics_file.is_file():
        (root / "logs").mkdir(parents=True, exist_ok=True)
        if run["arm"] in ("labeled", "full"):
            overrides = {**base, "stage": "pretrain", "pretrain_epochs": budget["total_epochs"]}
            ckpt = root / "models" / "pretrain" / "model.pt"
        else:
            overrides = {**base, "pretrain_epochs": budget["pretrain_epochs"],
                         "selftrain_epochs": budget["selftrain_epochs"], "copy_paste": run["arm"] == "bcp"}
            ckpt = root / "models" / "model.pt"
        seconds = run_bundle_workflow([CFG / "train.json", CFG / "quick.json"], overrides, run_id="training",
                                      log=root / "logs" / "train.log").seconds
        timing_file.write_text(json.dumps({"train_seconds": seconds}))
        run_bundle_workflow([CFG / "train.json", CFG / "evaluate.json", CFG / "quick.json"],
                            {**base, "ckpt_path": ckpt, "output_dir": root / "eval_test"},
                            log=root / "logs" / "evaluate.log")
    report = json.loads(metrics_file.read_text())
    seconds = json.loads(timing_file.read_text())["train_seconds"] if timing_file.is_file() else math.nan
    per_class = {c: {m: v["mean"] for m, v in e.items() if isinstance(v, dict)}
                 for c, e in report["summary"]["classes"].items()}
    return {**run, "mean": report["summary"]["mean"], "per_class": per_class, "train_seconds": round(seconds, 1)}


def aggregate(records: list[dict]) -> list[dict]:
    """Per (arm, k): mean ± sd of every metric over the seeds, and the share of the labeled-only -> full gap."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["arm"], r["k"]), []).append(r)
    rows = []
    for (arm, k), recs in groups.items():
        stats = {m: mean_sd([r["mean"].get(m) for r in recs]) for m in METRICS}
        stats["train_seconds"] = mean_sd([r["train_seconds"] for r in recs])
        rows.append({"arm": arm, "k": k, "seeds": [r["seed"] for r in recs], **stats})
    full = next((r for r in rows if r["arm"] == "full"), None)
    for row in rows:
        lab = next((r for r in rows if r["arm"] == "labeled" and r["k"] == row["k"]), None)
        row["gap_closed"] = (gap_closed(row["dice"]["mean"], lab["dice"]["mean"], full["dice"]["mean"])
                             if lab and full and row["arm"] != "full" else math.nan)
    order = {a: i for i, a in enumerate(ARMS)}
    return sorted(rows, key=lambda r: (r["arm"] == "full", r["k"], order[r["arm"]]))


def main(
    out: str | None = None,
    work: str = "/tmp/bcp_benchmark",
    seeds: str | tuple = "1337,1338,1339",
    arms: str | tuple = "labeled,mt,bcp,full",
    labeled: str | tuple = (2,),
    num_train: int = 40,
    num_val: int = 4,
    num_test: int = 10,
    shape: tuple = (128, 128, 8),
    img_size: int = 96,
    epoch_length: int = 25,
    pretrain_iters: int = 300,
    selftrain_iters: int = 600,
    val_interval: int = 2,
    smoke: bool = False,
    fresh: bool = False,
) -> int:
    """Run every (arm, seed) and write the results (see the module docstring).

    Args:
        out: results folder (default ``benchmark_results/bcp``; with ``--smoke``, ``<work>/results``).
        work: runs and the dataset (kept: a finished run is not redone).
        seeds: training seeds, comma-separated (at least 3 for an sd worth reading).
        arms: among ``labeled,mt,bcp,full``.
        labeled: labeled patients of the semi-supervised arms (2 of 40 = 5 %).
        val_interval: epochs between validations (model selection); each stage must validate at least once.
        smoke: tiny data and budgets (``SMOKE``), to check the tool end to end.
        fresh: delete ``work`` first.
    """
    if smoke:
        num_train, num_val, num_test, shape = SMOKE["num_train"], SMOKE["num_val"], SMOKE["num_test"], SMOKE["shape"]
        img_size, epoch_length = SMOKE["img_size"], SMOKE["epoch_length"]
        pretrain_iters, selftrain_iters, labeled = SMOKE["pretrain_iters"], SMOKE["selftrain_iters"], SMOKE["labeled"]
        val_interval = SMOKE["val_interval"]
        work = work.rstrip("/") + "_smoke" if work == "/tmp/bcp_benchmark" else work
    seed_list, arm_list, labeled_list = as_list(seeds, int), as_list(arms), as_list(labeled, int)
    unknown = set(arm_list) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; arms are {','.join(ARMS)}")
    if pretrain_iters % epoch_length or selftrain_iters % epoch_length:
        raise SystemExit(f"pretrain_iters and selftrain_iters must be multiples of epoch_length {epoch_length}")
    if min(pretrain_iters, selftrain_iters) // epoch_length < val_interval:
        raise SystemExit(f"each stage needs at least one validation: val_interval {val_interval} is more epochs than "
                         f"a stage has")
    work_dir = Path(work)
    out_dir = Path(out) if out else (work_dir / "results" if smoke else REPO / "benchmark_results" / "bcp")
    if fresh:
        shutil.rmtree(work_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "dataset_dir": work_dir / "data", "img_size": img_size, "epoch_length": epoch_length, "val_interval": val_interval,
        "synthetic_data#num_labeled": 2, "synthetic_data#num_unlabeled": num_train - 2,
        "synthetic_data#num_validation": num_val, "synthetic_data#num_test": num_test,
        "synthetic_data#shape": list(shape), "synthetic_data#seed": 0,
    }
    budget = {"total_epochs": (pretrain_iters + selftrain_iters) // epoch_length,
              "pretrain_epochs": pretrain_iters // epoch_length, "selftrain_epochs": selftrain_iters // epoch_length}
    settings = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "shape": list(shape),
                "img_size": img_size, "epoch_length": epoch_length, "pretrain_iters": pretrain_iters,
                "selftrain_iters": selftrain_iters, "val_interval": val_interval, "labeled": labeled_list, "seeds": seed_list, "arms": arm_list,
                "smoke": smoke}
    record = run_record()
    records = []
    for run in plan_runs(arm_list, labeled_list, seed_list, num_train):
        rec = _run_one(run, work_dir / run["name"], common, budget)
        records.append(rec)
        print(run["name"], {m: rec["mean"].get(m) for m in ("dice", "hd95")}, f"{rec['train_seconds']}s", flush=True)
        _write(out_dir, record, settings, records)
    return 0


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj if isinstance(obj, (int, float, str, bool)) or obj is None else str(obj)


def _write(out_dir: Path, record: dict, settings: dict, records: list[dict]) -> None:
    rows = aggregate(records)
    payload = {"record": record, "settings": settings, "aggregates": rows, "runs": records}
    (out_dir / "results.json").write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
    n = settings["num_train"]
    headers = ["arm", "labeled patients", "seeds", "Dice", "IoU", "HD95 (vox)", "ASD (vox)", "HD95 (mm)",
               "ASD (mm)", "gap closed", "train s"]
    table = [[ARM_NAMES[r["arm"]], f"{r['k']} / {n}", len(r["seeds"]),
              *(format_mean_sd(r[m], 3 if m in ("dice", "iou") else 2) for m in METRICS),
              "-" if math.isnan(r["gap_closed"]) else f"{100 * r['gap_closed']:.0f} %",
              format_mean_sd(r["train_seconds"], 0)] for r in rows]
    md = ["# BCP benchmark (synthetic cardiac MRI, held-out test patients)\n\n", record_markdown(record),
          f"- settings: {json.dumps(_json_safe(settings))}\n",
          "- metrics: mean over RV, Myo, LV of the test patients (evaluate.json), then mean ± sample sd over seeds;\n"
          "  gap closed = (arm - labeled-only) / (fully supervised - labeled-only), mean Dice\n\n",
          markdown_table(headers, table)]
    (out_dir / "results.md").write_text("".join(md))
    names = [f"{ARM_NAMES[r['arm']]} {r['k']}/{n}" for r in rows]
    colors = {"labeled": "tab:gray", "mt": "tab:orange", "bcp": "tab:blue", "full": "tab:green"}
    plot_bars(out_dir / "bcp_benchmark.png", names, [r["dice"]["mean"] if r["dice"]["n"] else 0.0 for r in rows],
              "test Dice (mean RV/Myo/LV), mean ± sd over seeds",
              errors=[0.0 if not r["dice"]["n"] or math.isnan(r["dice"]["sd"]) else r["dice"]["sd"] for r in rows],
              colors=[colors[r["arm"]] for r in rows])


if __name__ == "__main__":
    sys.exit(fire.Fire(main))
