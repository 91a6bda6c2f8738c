"""Evidence for the BCP bundle: labeled-only vs BCP vs fully supervised on held-out synthetic cardiac patients.

One synthetic ACDC-like dataset (``--num_train`` training patients, ``--num_val`` validation and ``--num_test`` test
patients, generated once) is re-split by patient order with the bundle's ``num_labeled`` option. Every arm runs the
bundle's own workflows through ``python -m monai.bundle run`` with the same quick overlay (U-Net at
``img_size``), the same seed and the same iteration budget (``pretrain_iters + selftrain_iters``):

- ``labeled-only k``: copy-paste supervised training on the k labeled patients (the pre-training stage of
  ``pretrain.json``) for the whole budget;
- ``BCP k``: the same pre-training for ``pretrain_iters``, then bidirectional self-training with the EMA teacher for
  ``selftrain_iters`` (``train.json``) from its best checkpoint;
- ``fully supervised``: the labeled-only recipe with every training patient labeled;
- ``mean teacher k`` (``--arms`` includes ``mt``): the BCP pipeline with ``copy_paste=false`` (labeled images with
  their labels, unlabeled images with the teacher's pseudo labels of weight alpha, no mixing), the baseline the
  authors compare with.

``--arms`` picks arms (``labeled,bcp,full,mt``); ``--append`` adds the new arms to an existing ``results.json``.

Model selection uses the validation patients only; the test patients are scored once with ``evaluate.json``
(Dice, IoU, HD95/ASD in voxels and mm). Writes ``results.json``, ``results.md`` and ``bcp_benchmark.png`` with
``run_record()`` provenance into ``--out``::

    OMP_NUM_THREADS=1 nice -n 10 python tools/benchmark_bcp.py --out benchmark_results/bcp
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

CFG = REPO / "bundles" / "bcp_acdc_segmentation" / "configs"


def _run(configs: list[str], root: Path, overrides: dict, log: Path) -> float:
    return run_bundle_workflow([CFG / c for c in configs], {"bundle_root": root, **overrides}, log=log).seconds


def _summary(report: dict) -> dict:
    s = report["summary"]
    per_class = {c: {k: v["mean"] for k, v in m.items() if isinstance(v, dict)} for c, m in s["classes"].items()}
    return {"per_class": per_class, "mean": s["mean"]}


def main(
    out: str = "benchmark_results/bcp",
    work: str = "/tmp/bcp_benchmark",
    labeled: tuple = (2, 4),
    num_train: int = 40,
    num_val: int = 4,
    num_test: int = 10,
    img_size: int = 96,
    epoch_length: int = 25,
    pretrain_iters: int = 300,
    selftrain_iters: int = 600,
    seed: int = 1337,
    arms: str = "labeled,bcp,full",
    append: bool = False,
    keep: bool = False,
) -> int:
    """Run every arm and write the results (see the module docstring)."""
    out_dir, work_dir = Path(out), Path(work)
    wanted = set(arms.split(",") if isinstance(arms, str) else arms)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    data = work_dir / "data"
    record = run_record()
    common = {
        "dataset_dir": data, "img_size": img_size, "epoch_length": epoch_length, "seed": seed, "val_interval": 2,
        "synthetic_data#num_labeled": 2, "synthetic_data#num_unlabeled": num_train - 2,
        "synthetic_data#num_validation": num_val, "synthetic_data#num_test": num_test,
    }
    total_epochs = (pretrain_iters + selftrain_iters) // epoch_length
    plan: list[tuple[str, int, str]] = []
    for k in labeled:
        plan += [(f"labeled-only {k}/{num_train}", k, "labeled"), (f"mean teacher {k}/{num_train}", k, "mt"),
                 (f"BCP {k}/{num_train}", k, "bcp")]
    plan.append((f"fully supervised {num_train}/{num_train}", num_train, "full"))
    plan = [a for a in plan if a[2] in wanted]
    rows, results = [], []
    if append and (out_dir / "results.json").is_file():
        previous = json.loads((out_dir / "results.json").read_text())
        results = previous["results"]
        rows = [r.get("row") or [r["arm"], r["labeled_patients"], *(r["mean"].get(k) for k in
                ("dice", "iou", "hd95", "asd", "hd95_mm", "asd_mm")), round(r["train_seconds"])] for r in results]
        record = {**previous["record"], "appended": record}
    for name, k, kind in plan:
        root = work_dir / name.replace(" ", "_").replace("/", "of")
        (root / "logs").mkdir(parents=True, exist_ok=True)
        base = {**common, "num_labeled": k}
        seconds = 0.0
        if kind in ("labeled", "full"):
            seconds += _run(["train.json", "pretrain.json", "quick.json"], root,
                            {**base, "pretrain_epochs": total_epochs, "ckpt_dir": root / "models"}, root / "logs" / "train.log")
        else:
            seconds += _run(["train.json", "pretrain.json", "quick.json"], root,
                            {**base, "pretrain_epochs": pretrain_iters // epoch_length}, root / "logs" / "pretrain.log")
            extra = {"copy_paste": False} if kind == "mt" else {}
            seconds += _run(["train.json", "quick.json"], root,
                            {**base, **extra, "selftrain_epochs": selftrain_iters // epoch_length},
                            root / "logs" / "selftrain.log")
        _run(["train.json", "evaluate.json", "quick.json"], root, {**base, "output_dir": root / "eval_test"},
             root / "logs" / "evaluate.log")
        report = json.loads((root / "eval_test" / "metrics.json").read_text())
        summ = _summary(report)
        m = summ["mean"]
        row = [name, k, m.get("dice"), m.get("iou"), m.get("hd95"), m.get("asd"), m.get("hd95_mm"), m.get("asd_mm"),
               round(seconds)]
        results.append({"arm": name, "labeled_patients": k, "kind": kind, "train_seconds": round(seconds, 1), **summ,
                        "row": row})
        rows.append(row)
        print(name, m, f"{seconds:.0f}s", flush=True)
        _write(out_dir, record, results, rows, locals_for_md={"num_train": num_train, "num_test": num_test,
                                                             "pretrain_iters": pretrain_iters,
                                                             "selftrain_iters": selftrain_iters, "img_size": img_size})
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def _write(out_dir: Path, record: dict, results: list, rows: list, locals_for_md: dict) -> None:
    payload = {"record": record, "settings": locals_for_md, "results": results}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    headers = ["arm", "labeled patients", "Dice", "IoU", "HD95 (vox)", "ASD (vox)", "HD95 (mm)", "ASD (mm)", "train s"]
    md = ["# BCP benchmark (synthetic cardiac MRI, held-out test patients)\n", record_markdown(record),
          *([record_markdown(record["appended"])] if "appended" in record else []),
          f"- settings: {json.dumps(locals_for_md)}\n",
          "- metrics: mean over RV, Myo, LV of the test patients (evaluate.json)\n\n",
          markdown_table(headers, rows)]
    (out_dir / "results.md").write_text("".join(md))
    names = [r[0] for r in rows]
    colors = ["tab:gray" if "labeled-only" in n else "tab:blue" if "BCP" in n else "tab:orange" if "teacher" in n
              else "tab:green" for n in names]
    plot_bars(out_dir / "bcp_benchmark.png", names, [r[2] or 0.0 for r in rows], "test Dice (mean RV/Myo/LV)",
              colors=colors)


if __name__ == "__main__":
    sys.exit(fire.Fire(main))
