"""The collection's demo: quick training, evaluation and inference of every bundle on its synthetic data.

For each bundle in ``bundles/`` (or those named) it runs, through ``python -m monai.bundle run`` as a user would:

1. training with ``configs/train.json`` + ``configs/quick.json``;
2. evaluation on the held-out synthetic test split (``train.json`` + ``evaluate.json`` + ``quick.json``), which
   writes per-class metrics and overlay PNGs;
3. inference (``inference.json`` + ``quick.json``), which writes 3D/2D label maps.

Each bundle works in ``<out>/<bundle>/`` (passed as ``--bundle_root``), so the repository stays clean. The report
``<out>/report.md`` (and ``report.json``) has one row per bundle: mean Dice, time of each step, and the paths of the
predictions and overlays. Logs of each step are in ``<out>/<bundle>/logs/``.

Usage::

    python tools/demo.py                      # every bundle
    python tools/demo.py --bundles levit_unet_synapse_segmentation --out demo_results
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom_components.utils import (  # noqa: E402
    bundle_env, markdown_table, record_markdown, run_bundle_workflow, run_record,
)


@dataclass(frozen=True)
class Step:
    """One workflow run: a name, the config files (in merge order) and extra ``--key value`` overrides."""

    name: str
    configs: tuple[str, ...]
    overrides: tuple[tuple[str, str], ...] = ()


STANDARD_STEPS = (
    Step("train", ("train.json", "quick.json")),
    Step("evaluate", ("train.json", "evaluate.json", "quick.json")),
    Step("infer", ("inference.json", "quick.json")),
)
# Bundles with extra stages list their own steps here (BCP's train.json runs both of its stages in one command).
BUNDLE_STEPS: dict[str, tuple[Step, ...]] = {
    "voco_btcv_segmentation": (
        Step("pretrain", ("pretrain.json", "quick.json")),
        Step("train", ("train.json", "quick.json"), (("pretrained_ckpt", "$@ckpt_dir + '/pretrain/backbone.pt'"),)),
        Step("evaluate", ("train.json", "evaluate.json", "quick.json")),
        Step("infer", ("inference.json", "quick.json")),
    ),
}


def bundle_names(bundles: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The bundles to run: those named (comma-separated or a list), else every folder of ``bundles/``."""
    available = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
    if not bundles:
        return available
    names = bundles.split(",") if isinstance(bundles, str) else list(bundles)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown bundle(s): {unknown}; available: {available}")
    return names


def run_step(bundle: str, step: Step, workdir: Path) -> dict:
    """Run one workflow in a subprocess (:func:`custom_components.utils.run_bundle_workflow`), logging the command and
    its output to ``workdir/logs/<step>.log``; return its status and time."""
    configs = [REPO / "bundles" / bundle / "configs" / c for c in step.configs]
    log = workdir / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{bundle}] {step.name}: running (log: {log.relative_to(REPO) if log.is_relative_to(REPO) else log})", flush=True)
    run = run_bundle_workflow(configs, {"bundle_root": workdir, **dict(step.overrides)}, log=log, check=False,
                              env={**bundle_env(), "PYTHONUNBUFFERED": "1"})
    ok = run.returncode == 0
    print(f"[{bundle}] {step.name}: {'done' if ok else 'FAILED'} in {run.seconds:.0f} s", flush=True)
    if not ok:
        print("".join(log.read_text().splitlines(keepends=True)[-25:]), flush=True)
    return {"step": step.name, "ok": ok, "seconds": round(run.seconds, 1), "log": str(log),
            "command": shlex.join(run.args)}


def summarise(bundle: str, workdir: Path, steps: list[dict]) -> dict:
    """Collect the bundle's name, metrics and output paths after its steps ran."""
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    metrics_file = workdir / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    predictions = workdir / "eval" / "predictions"
    overlays = workdir / "eval" / "overlays"
    return {
        "bundle": bundle,
        "name": meta.get("name", bundle),
        "version": meta.get("version"),
        "steps": steps,
        "mean_dice": metrics.get("summary", {}).get("mean", {}).get("dice"),
        "metrics_file": str(metrics_file) if metrics_file.is_file() else None,
        "predictions": sorted(str(p) for p in predictions.glob("*")) if predictions.is_dir() else [],
        "overlays": sorted(str(p) for p in overlays.glob("*.png")) if overlays.is_dir() else [],
    }


def _rel(path: str | None, base: Path) -> str:
    if not path:
        return "-"
    p = Path(path)
    return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)


def write_report(results: list[dict], out: Path, record: dict) -> Path:
    """Write ``report.json`` and ``report.md`` (one row per bundle) in ``out``."""
    (out / "report.json").write_text(json.dumps({"record": record, "bundles": results}, indent=2))
    rows = []
    for r in results:
        times = {s["step"]: (f"{s['seconds']:.0f}" if s["ok"] else "FAILED") for s in r["steps"]}
        rows.append(
            [
                r["bundle"],
                r["name"],
                r["mean_dice"],
                ", ".join(f"{k} {v} s" for k, v in times.items()),
                f"{len(r['predictions'])} in `{_rel(str(Path(r['predictions'][0]).parent), out)}`" if r["predictions"] else "-",
                f"`{_rel(str(Path(r['overlays'][0]).parent), out)}`" if r["overlays"] else "-",
                f"`{_rel(r['metrics_file'], out)}`" if r["metrics_file"] else "-",
            ]
        )
    md = (
        "# Demo report\n\nQuick recipes (`configs/quick.json`) on each bundle's embedded synthetic data. Dice is the "
        "mean over foreground classes on the held-out synthetic test split.\n\n"
        + record_markdown(record)
        + "\n"
        + markdown_table(
            ["bundle", "method", "mean Dice (test)", "time per step", "predictions", "overlays", "per-class metrics"], rows
        )
    )
    (out / "report.md").write_text(md)
    return out / "report.md"


def main(bundles: str | list[str] | None = None, out: str = "demo_results", keep: bool = False) -> int:
    """Run the demo.

    Args:
        bundles: names of bundles to run (comma-separated); default every bundle.
        out: output folder (relative paths are taken from the repository root).
        keep: keep the trained models of a previous demo run (default: start each bundle's training afresh; the
            generated synthetic data is always reused).
    """
    out_dir = Path(out) if Path(out).is_absolute() else REPO / out
    out_dir.mkdir(parents=True, exist_ok=True)
    record = run_record()
    results = []
    for bundle in bundle_names(bundles):
        workdir = out_dir / bundle
        if not keep:
            for sub in ("models", "eval", "logs"):
                shutil.rmtree(workdir / sub, ignore_errors=True)
        steps: list[dict] = []
        for step in BUNDLE_STEPS.get(bundle, STANDARD_STEPS):
            steps.append(run_step(bundle, step, workdir))
            if not steps[-1]["ok"]:
                break
        results.append(summarise(bundle, workdir, steps))
        write_report(results, out_dir, record)
    report = write_report(results, out_dir, record)
    print(f"\nreport: {report}\n")
    print(report.read_text())
    return 0 if all(s["ok"] for r in results for s in r["steps"]) else 1


if __name__ == "__main__":
    import fire

    sys.exit(fire.Fire(main))
