"""End-to-end time of each bundle's documented inference command, split into phases (issue 18, section 2: measure).

For every bundle the tool prepares a typical job in a work folder, runs the bundle's own inference workflow as a user
does (``python -m monai.bundle run --config_file "['bundles/<name>/configs/inference.json']" --input ...``, through
:func:`custom_components.utils.run_bundle_workflow`) and splits its wall time end to end, from the process start to
the predictions in place in ``output_dir``, into phases that add up to it
(:func:`custom_components.engines.timing.split_phases`):

- ``startup``: interpreter and imports, reading the configs, each ``initialize`` step (dataset and datalist checks,
  the weights' intensity record, LViT's text embeddings, UniverSeg's support folder, ...), building the network,
  data loader, inferer and evaluator, loading the weights: everything before the first item is asked for (the
  results list the steps);
- ``loader_start`` (the data loader's iterator and its workers), ``reading`` (``LoadImaged``), ``preprocessing``
  (the other transforms of the dataset), ``forward`` (the network calls, timed by forward hooks),
  ``inferer_other`` (the rest of the inferer: sliding-window or slice cutting and stitching, resizing, support
  sets), ``postprocessing`` (decollating and the postprocessing transforms other than ``SaveImaged``), ``writing``
  (``SaveImaged`` and moving the predictions into ``output_dir``) and ``rest`` (what is left: event handlers, the
  engine's own bookkeeping, ending the data loader).

``exit``, the time from the predictions in place until the process has ended (interpreter and library teardown,
which a caller waiting for the command also waits for), is reported beside the total, not in it.

The measurement is attached by a config overlay written into the work folder (``timing_overlay.json``, see
:func:`custom_components.engines.timing.timing_overlay`): it adds a timing handler and times the dataset's and the
evaluator's composes step by step without changing any transform, the network, the inferer or the data loader.
Also reported: the time after start-up divided by the forward passes (the issue's target is at most 1.5), the number
of network calls and items (windows, slices, images), the first call against the mean of the others, and whether
the forward passes ran with gradients enabled, in inference mode or in train mode.

Typical jobs (synthetic data written by each bundle's own generator; random weights of the bundle's network, saved
where ``inference.json`` loads them with the intensity record training writes, unless ``--weights`` names trained
ones):

- ``levit_unet_synapse_segmentation``, ``voco_btcv_segmentation``: one abdominal CT volume of 512 x 512 x 96 voxels,
  0.75 x 0.75 x 2.5 mm (the scanners' usual grid, the phantom's 384 x 384 x 240 mm field of view), int16 NIfTI;
- ``bcp_acdc_segmentation``: one short-axis cine-MRI volume of 216 x 256 x 10 voxels (ACDC's usual size), NIfTI;
- ``lvit_qata_covid19_segmentation``: a datalist of 20 chest X-ray PNGs of 224 x 224 with their report sentences
  (LViT embeds new sentences at start-up: each run has an empty text-embedding cache, as a job with new reports);
- ``universeg_fewshot_segmentation``: a folder of 20 images of 128 x 128 and a support folder of 64 labelled
  examples (``support_size`` 64: no example is drawn twice).

Every bundle runs at the full-size network of ``inference.json``; ``--quick`` adds ``quick.json`` and shrinks the jobs
(CT 96 x 96 x 48 at 4 x 4 x 5 mm, MRI 128 x 128 x 8, 4 images): a smoke run of the tool, not a measurement.
``--repeats N`` runs each job N times (fresh output folder and text cache each time) and reports the median of
each phase. Writes ``results.json``, ``results.md`` and ``inference.png`` (forward passes / time after start-up per
bundle) into ``--out``; the jobs, weights, logs and the timing record of every run stay under ``--work`` (default
``<out>/runs``, not committed)::

    python tools/benchmark_inference.py run                          # all five, full setting
    python tools/benchmark_inference.py run --bundles voco_btcv_segmentation --repeats 3
    python tools/benchmark_inference.py run --quick --out /tmp/inference_smoke

Benchmarks are evidence for the model cards, not tests: no time is asserted anywhere.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom_components.engines.timing import PHASES, START_ENV, split_phases, timing_overlay  # noqa: E402
from custom_components.utils import (  # noqa: E402
    bundle_env,
    markdown_table,
    plot_bars,
    record_markdown,
    run_bundle_workflow,
    run_record,
)

BUNDLES = ("bcp_acdc_segmentation", "levit_unet_synapse_segmentation", "lvit_qata_covid19_segmentation",
           "universeg_fewshot_segmentation", "voco_btcv_segmentation")

#: the typical job of each setting (``--quick``: a smoke run)
JOBS = {
    "full": {"ct_shape": [512, 512, 96], "ct_spacing": [0.75, 0.75, 2.5], "mr_shape": [216, 256, 10],
             "num_images": 20, "xray_size": 224, "fewshot_size": 128},
    "quick": {"ct_shape": [96, 96, 48], "ct_spacing": [4.0, 4.0, 5.0], "mr_shape": [128, 128, 8],
              "num_images": 4, "xray_size": 128, "fewshot_size": 64},
}

PHASE_TITLES = {
    "startup": "start-up", "loader_start": "loader start", "reading": "reading", "preprocessing": "preprocessing",
    "forward": "forward", "inferer_other": "inferer other", "postprocessing": "postprocessing",
    "writing": "writing", "rest": "rest",
}


# ----------------------------------------------------------------------------------------------------------------
# jobs
# ----------------------------------------------------------------------------------------------------------------
def _ct(shape, spacing) -> str:
    return (f"one abdominal CT volume {' x '.join(map(str, shape))} voxels, "
            f"{' x '.join(f'{s:g}' for s in spacing)} mm, int16 NIfTI")


def _job_synapse(data_dir: Path, job: Mapping, config: Mapping) -> tuple[dict, str, int]:
    from custom_components.data import generate_synapse_synthetic

    path = generate_synapse_synthetic(data_dir, num_training=1, num_validation=0, num_test=1,
                                      shape=job["ct_shape"], spacing=job["ct_spacing"])
    return {"dataset_dir": str(data_dir), "input": path}, _ct(job["ct_shape"], job["ct_spacing"]), 1


def _job_btcv(data_dir: Path, job: Mapping, config: Mapping) -> tuple[dict, str, int]:
    from custom_components.data.btcv import generate_btcv_synthetic

    path = generate_btcv_synthetic(data_dir, num_training=1, num_validation=0, num_test=1, num_unlabeled=0,
                                   shape=job["ct_shape"], spacing=job["ct_spacing"])
    return {"dataset_dir": str(data_dir), "input": path}, _ct(job["ct_shape"], job["ct_spacing"]), 1


def _job_acdc(data_dir: Path, job: Mapping, config: Mapping) -> tuple[dict, str, int]:
    from custom_components.data.acdc import generate_acdc_synthetic

    path = generate_acdc_synthetic(data_dir, num_labeled=1, num_unlabeled=0, num_validation=0, num_test=1,
                                   shape=job["mr_shape"])
    shape = " x ".join(map(str, job["mr_shape"]))
    return {"dataset_dir": str(data_dir), "input": path}, f"one short-axis cine-MRI volume {shape} voxels, NIfTI", 1


def _job_qata(data_dir: Path, job: Mapping, config: Mapping) -> tuple[dict, str, int]:
    from custom_components.data.qata import generate_qata_synthetic

    n, size = job["num_images"], job["xray_size"]
    path = generate_qata_synthetic(data_dir, num_training=1, num_validation=1, num_test=n, size=size)
    return ({"dataset_dir": str(data_dir), "input": path},
            f"a datalist of {n} chest X-ray PNGs {size} x {size} with their report sentences", n)


def _job_fewshot(data_dir: Path, job: Mapping, config: Mapping) -> tuple[dict, str, int]:
    from custom_components.data.fewshot import generate_fewshot_synthetic

    n, size, support = job["num_images"], job["fewshot_size"], int(config["support_size"])
    generate_fewshot_synthetic(data_dir, num_heldout_tasks=0, num_inference_targets=n,
                               num_inference_support=support, size=size)
    overrides = {"dataset_dir": str(data_dir), "input": str(data_dir / "inference" / "images"),
                 "support_dir": str(data_dir / "inference" / "support")}
    return overrides, f"a folder of {n} images {size} x {size}, a support folder of {support} labelled images", n


PREPARE = {
    "bcp_acdc_segmentation": _job_acdc,
    "levit_unet_synapse_segmentation": _job_synapse,
    "lvit_qata_covid19_segmentation": _job_qata,
    "universeg_fewshot_segmentation": _job_fewshot,
    "voco_btcv_segmentation": _job_btcv,
}


def config_files(bundle: str, quick: bool) -> list[Path]:
    """The bundle's inference configs: ``inference.json`` (+ ``quick.json`` for a smoke run)."""
    cfg = REPO / "bundles" / bundle / "configs"
    return [cfg / "inference.json"] + ([cfg / "quick.json"] if quick else [])


def merged_config(configs: Sequence[str | os.PathLike]) -> dict:
    """The configs merged as ``monai.bundle run`` merges them (later files override earlier keys)."""
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_files([str(c) for c in configs])


def prepare_job(bundle: str, root: Path, quick: bool, job: Mapping) -> dict:
    """Write the job's data under ``root/job`` (reused when it was written for the same job) and return
    ``{"overrides", "description", "items"}``."""
    config = merged_config(config_files(bundle, quick))
    data_dir = root / "job"
    key = {"bundle": bundle, "job": dict(job), "support_size": config.get("support_size")}
    stamp = data_dir / "job.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == key):
        shutil.rmtree(data_dir, ignore_errors=True)
    overrides, description, items = PREPARE[bundle](data_dir, job, config)
    stamp.write_text(json.dumps(key, indent=1) + "\n")
    return {"overrides": overrides, "description": description, "items": items}


def write_weights(bundle: str, root: Path, quick: bool, weights: str = "random", seed: int = 0) -> str:
    """Put the weights ``inference.json`` loads at ``root/models/model.pt`` with their intensity record.

    Args:
        weights: ``"random"`` (the seeded initial weights of the bundle's ``network_def``, as the configs build it:
            the forward passes cost the same as trained weights'), or a path where ``{bundle}`` is replaced by the
            bundle's name (a trained ``model.pt``; its ``model.pt.json`` record is copied when it exists).
    """
    import torch
    from monai.bundle import ConfigParser

    from custom_components.transforms import write_intensity_record

    parser = ConfigParser()
    parser.read_config([str(c) for c in config_files(bundle, quick)])
    parser["bundle_root"] = str(root)
    ckpt = Path(parser.get_parsed_content("ckpt_path"))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    record = ckpt.with_name(ckpt.name + ".json")
    if weights == "random":
        torch.manual_seed(seed)
        torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), ckpt)
        source = f"random initial weights (seed {seed})"
    else:
        src = Path(weights.format(bundle=bundle))
        shutil.copyfile(src, ckpt)
        source = str(src)
        if Path(f"{src}.json").is_file():
            shutil.copyfile(f"{src}.json", record)
            return source
    window = parser.get_parsed_content("hu_window") if "hu_window" in parser else None
    write_intensity_record(ckpt, parser.get_parsed_content("intensity"), window)
    return source


# ----------------------------------------------------------------------------------------------------------------
# one run
# ----------------------------------------------------------------------------------------------------------------
def display_command(configs: Sequence[Path], overrides: Mapping) -> str:
    """The documented command line of a run as a user types it (config paths relative to the repository)."""
    files = [str(c.relative_to(REPO)) if c.is_relative_to(REPO) else str(c) for c in configs]
    args = " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in overrides.items())
    return f"python -m monai.bundle run --config_file \"{files!r}\" {args}"


def measure_once(bundle: str, root: Path, run_dir: Path, quick: bool, overrides: Mapping,
                 threads: int | None = None, timeout: float | None = None, keep_outputs: bool = False) -> dict:
    """Run the bundle's inference once with the timing overlay; return the split, the record path and the output
    count. The process start is ``time.time()`` just before the process is started (passed to it in
    :data:`~custom_components.engines.timing.START_ENV`), its end ``time.time()`` once it has exited."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    configs = config_files(bundle, quick)
    record_path = run_dir / "timing.json"
    overlay = run_dir / "timing_overlay.json"
    overlay.write_text(json.dumps(timing_overlay(merged_config(configs), record_path), indent=1) + "\n")
    out_dir = run_dir / "predictions"
    args = {"bundle_root": str(root), **overrides, "output_dir": str(out_dir)}
    if bundle == "lvit_qata_covid19_segmentation":
        args["text_cache_dir"] = str(run_dir / "text_cache")  # new reports: embedded in this run
    env = bundle_env(threads=threads)
    start = time.time()
    env[START_ENV] = repr(start)
    proc = run_bundle_workflow([*configs, overlay], args, env=env, log=run_dir / "workflow.log", timeout=timeout)
    end = time.time()
    record = json.loads(record_path.read_text())
    outputs = sorted(p.name for p in out_dir.rglob("*") if p.is_file()) if out_dir.is_dir() else []
    if not keep_outputs:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(run_dir / "text_cache", ignore_errors=True)
    split = split_phases(record, process_start=start, process_end=end)
    return {
        "split": split,
        "process_seconds": proc.seconds,
        "outputs": len(outputs),
        "record": str(record_path),
        "log": str(run_dir / "workflow.log"),
        "torch_threads": record.get("torch_threads"),
        "device": record.get("device"),
        "loader_workers": record.get("loader_workers"),
        "forward_flags": record.get("forward_flags"),
        "transforms": record.get("transforms"),
        "items_read": len(record.get("iterations", [])),
        "input_shapes": [it.get("shape") for it in record.get("iterations", [])],
    }


def measure_bundle(bundle: str, work: str | os.PathLike, quick: bool = False, repeats: int = 1,
                   threads: int | None = None, timeout: float | None = None, weights: str = "random",
                   job: Mapping | None = None, keep_outputs: bool = False) -> dict:
    """Prepare ``bundle``'s job and weights under ``work/<bundle>/<setting>`` and time ``repeats`` runs.

    Returns:
        ``{"bundle", "setting", "job", "items", "weights", "command", "runs": [...], "median": {...}}``; ``median``
        holds the median over the runs of the total, each phase, the time after start-up and its ratio to the
        forward passes.

    Raises:
        RuntimeError: a run failed, or wrote another number of predictions than the job has items.
    """
    setting = "quick" if quick else "full"
    job = dict(job or JOBS[setting])
    root = Path(work).resolve() / bundle / setting
    root.mkdir(parents=True, exist_ok=True)
    prepared = prepare_job(bundle, root, quick, job)
    source = write_weights(bundle, root, quick, weights)
    runs = []
    for k in range(int(repeats)):
        result = measure_once(bundle, root, root / f"run{k}", quick, prepared["overrides"], threads, timeout,
                              keep_outputs)
        if result["outputs"] != prepared["items"]:
            raise RuntimeError(f"{bundle}: {result['outputs']} prediction file(s) written for {prepared['items']} "
                               f"item(s); see {result['log']}")
        runs.append(result)
    splits = [r["split"] for r in runs]

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    median = {
        "total": med([s["total"] for s in splits]),
        "phases": {p: med([s["phases"].get(p) for s in splits]) for p in PHASES},
        "after_startup": med([s["after_startup"] for s in splits]),
        "after_startup_over_forward": med([s["after_startup_over_forward"] for s in splits]),
        "exit": med([s["exit"] for s in splits]),
        "process_total": med([s["process_total"] for s in splits]),
    }
    documented = display_command(config_files(bundle, quick), {"bundle_root": str(root), **prepared["overrides"]})
    return {
        "bundle": bundle,
        "setting": setting,
        "job": prepared["description"],
        "job_parameters": job,
        "items": prepared["items"],
        "weights": source,
        "command": documented,
        "overlay": "timing_overlay.json (written per run next to its timing.json)",
        "runs": runs,
        "median": median,
    }


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------
def _fmt(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report_markdown(result: Mapping) -> str:
    """``results.md``: provenance, one row of phases per bundle, then each bundle's start-up steps, transforms and
    forward-pass facts."""
    rec = result["record"]
    md = "# Inference time per bundle, end to end (wall clock, seconds)\n\n" + record_markdown(rec)
    md += f"- {result['load']['note']}\n"
    md += (f"- setting: **{result['setting']}** ("
           + ("inference.json + quick.json and small jobs: a smoke run of the tool, not a measurement"
              if result["setting"] == "quick" else "inference.json, the full-size networks") + f"); "
           f"{result['repeats']} run(s) per bundle, median shown; weights: {result['weights']}\n")
    md += ("- total = process start to the predictions in place; the phases add up to it: start-up = process start "
           "to the first item asked for (imports, configs, initialize checks, building, loading the weights); "
           "reading = LoadImaged; forward = the network calls; inferer other = the rest of the inferer "
           "(windows/slices, stitching, resizing); writing = SaveImaged + moving the predictions into place; exit "
           "(not in the total) = predictions in place to the end of the process; target (issue 18): time after "
           "start-up <= 1.5 x forward\n\n")
    headers = ["bundle", "job", "total", *[PHASE_TITLES[p] for p in PHASES], "exit", "forward calls (items)",
               "after start-up / forward"]
    rows = []
    for b in result["bundles"]:
        med, first = b["median"], b["runs"][0]["split"]
        rows.append([b["bundle"], b["job"], _fmt(med["total"]), *[_fmt(med["phases"][p]) for p in PHASES],
                     _fmt(med["exit"]), f"{first['forward_calls']} ({first['forward_items']})",
                     _fmt(med["after_startup_over_forward"])])
    md += markdown_table(headers, rows)
    for b in result["bundles"]:
        run0 = b["runs"][0]
        split = run0["split"]
        flags = run0.get("forward_flags") or {}
        md += f"\n## {b['bundle']}\n\n"
        md += f"- job: {b['job']}; weights: {b['weights']}\n"
        md += f"- command (plus the timing overlay): `{b['command']}`\n"
        md += (f"- device {run0['device']}, {run0['torch_threads']} torch threads, data-loader workers "
               f"{run0['loader_workers']}; items read {run0['items_read']}, input shape(s) to the inferer "
               f"{_shapes(run0['input_shapes'])}; predictions written {run0['outputs']}\n")
        md += (f"- forward: {split['forward_calls']} call(s), {split['forward_items']} item(s); first call "
               f"{_fmt(split['first_forward'], 3)} s, mean of the others {_fmt(split['mean_forward_after_first'], 3)}"
               f" s; gradients enabled {flags.get('grad')}, inference mode {flags.get('inference_mode')}, "
               f"train mode {flags.get('train_mode')}\n")
        md += (f"- predictions in place {_fmt(split['total'])} s after the process start; the process ended "
               f"{_fmt(split['process_total'])} s after it\n")
        for note in split["notes"]:
            md += f"- {note}\n"
        md += "\nStart-up, step by step (first run):\n\n"
        md += markdown_table(["step", "seconds"], [[step, s] for step, s in split["startup_detail"]])
        trows = [[phase, name, v["kind"], v.get("process"), v["calls"], v["seconds"]]
                 for phase, items in (run0.get("transforms") or {}).items() for name, v in items.items()]
        if trows:
            md += "\nTransforms (first run; summed over items, in the process that ran them):\n\n"
            md += markdown_table(["compose", "transform", "counted as", "process", "calls", "seconds"], trows)
    return md


def _shapes(shapes: Sequence) -> str:
    unique = []
    for s in shapes:
        if s not in unique:
            unique.append(s)
    text = ", ".join("x".join(map(str, s)) if s else "-" for s in unique[:3])
    return text + (f" (+{len(unique) - 3} more)" if len(unique) > 3 else "")


def run(
    out: str = "benchmark_results/inference",
    bundles: str | Sequence[str] = BUNDLES,
    quick: bool = False,
    repeats: int = 1,
    threads: int | None = None,
    work: str | None = None,
    weights: str = "random",
    timeout: float | None = None,
    keep_outputs: bool = False,
) -> None:
    """Time every bundle's inference; see the module docstring.

    Args:
        out: folder of ``results.json``, ``results.md`` and ``inference.png``.
        bundles: comma-separated names (default: all five).
        quick: add ``quick.json`` and use the small jobs (a smoke run).
        repeats: runs per bundle (the median of each phase is reported).
        threads: ``OMP_NUM_THREADS`` of the workflow processes (default: inherited, i.e. torch's default of one per
            core when unset).
        work: folder of the jobs, weights and per-run records (default ``<out>/runs``).
        weights: ``"random"`` or a path with ``{bundle}`` naming trained weights (see :func:`write_weights`).
        timeout: seconds allowed to one run.
        keep_outputs: keep each run's predictions (and LViT's text cache) under ``work``.
    """
    names = [b for b in (bundles.split(",") if isinstance(bundles, str) else bundles) if b]
    unknown = sorted(set(names) - set(BUNDLES))
    if unknown:
        raise ValueError(f"unknown bundle(s) {unknown}; choose from {list(BUNDLES)}")
    out_dir = Path(out)
    work_dir = Path(work) if work else out_dir / "runs"
    record = run_record()
    load_before = os.getloadavg()
    results = []
    for name in names:
        print(f"{name}: preparing the job and timing {repeats} run(s) ...", flush=True)
        res = measure_bundle(name, work_dir, quick=quick, repeats=repeats, threads=threads, timeout=timeout,
                             weights=weights, keep_outputs=keep_outputs)
        med = res["median"]
        phases = ", ".join(f"{PHASE_TITLES[p]} {_fmt(med['phases'][p])}" for p in PHASES)
        print(f"{name}: total {_fmt(med['total'])} s ({phases}); exit after it {_fmt(med['exit'])} s; after "
              f"start-up / forward {_fmt(med['after_startup_over_forward'])}", flush=True)
        results.append(res)
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    # only the value before the runs tells about other jobs: the one after includes this tool's own runs
    loaded = load_before[0] > 0.5 * cores
    note = (f"load average (1 min) {load_before[0]:.2f} before the runs, {load_after[0]:.2f} after them (that one "
            f"includes these runs), on {cores} cores: "
            + ("the machine was LOADED by other jobs; the times are unreliable" if loaded
               else "the machine was not noticeably loaded when the runs started"))
    result = {"record": record, "setting": "quick" if quick else "full", "repeats": int(repeats), "weights": weights,
              "load": {"before": load_before, "after": load_after, "cores": cores, "loaded": loaded, "note": note},
              "phases": list(PHASES), "bundles": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "results.md").write_text(report_markdown(result))
    shares = [(r["bundle"], r["median"]["phases"]["forward"] / r["median"]["after_startup"])
              for r in results if r["median"]["after_startup"]]
    if shares:
        plot_bars(out_dir / "inference.png", [n for n, _ in shares], [min(v, 1.0) for _, v in shares],
                  xlabel="forward passes / time after start-up (issue 18 target: >= 0.67)")
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}, {out_dir / 'inference.png'}", flush=True)


if __name__ == "__main__":
    fire.Fire({"run": run})
