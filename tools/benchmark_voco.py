"""Evidence for the VoCo bundle on synthetic abdomen CT, CPU-sized.

1. **Pre-training** (the bundle's ``pretrain.json`` + ``quick.json`` objects: preprocessing, VoCoHead, VoCoLoss in the
   official-code form with the EMA teacher, AdamW-amsgrad, warmup-cosine, ``VoCoTrainer``, a MONAI
   ``SupervisedTrainer``) on the unlabeled pool, with a ``--grid`` x ``--grid`` base grid: loss terms per iteration and
   position-prediction accuracy (arg-max logit == arg-max label; chance 1/grid²) on held-out volumes (never used in
   pre-training) every ``--eval_every`` iterations.
2. **Fine-tuning from VoCo vs from random initialisation** (the bundle's ``train.json`` + ``quick.json``
   preprocessing with ``train.json``'s augmentation, SwinUNETR(v2), DiceCE, AdamW, warmup-cosine) on
   ``--num_labeled`` labeled volumes, same iterations, data and seeds for both arms (``--seeds``): per-organ Dice on
   held-out labeled volumes (sliding window, inverted to the original space) at the iterations in ``--dice_at``,
   and the wall time of each run (the CPU is shared, so iterations, not seconds, are the budget).
3. **Sliding-window inference time** of one volume on CPU: the quick setting (fs 12, the quick ROI/overlap) and the
   full setting (fs 48, ROI 96³, overlap 0.75, 1.5 mm spacing): windows are counted exactly; the full setting's time is
   the measured time per window times the number of windows when ``--full_windows`` is smaller than that number (it
   says so in the table).

Writes ``results.json``, ``results.md``, ``pretrain.png`` and ``finetune.png`` with ``run_record()`` provenance::

    OMP_NUM_THREADS=1 nice -n 10 python tools/benchmark_voco.py --out benchmark_results/voco

4. **Quick recipe, Dice vs time** (mode ``quick_recipe``): trains the bundle's own ``train.json`` + ``quick.json``
   objects (SupervisedTrainer, preprocessing, loss, optimiser, schedule: nothing re-implemented) with extra overrides
   per named setting on the bundle's default synthetic data (the demo's data), and measures per-organ Dice on the test
   split (the ``evaluate.json`` split; sliding window, inverted to the original space) at ``--dice_at`` iterations,
   with the training time so far: wall seconds and CPU seconds of this process (evaluation excluded). On a shared
   machine the CPU seconds (1 torch thread) are the budget that means something; wall time is recorded too. With
   ``--confirm`` it then runs the quick recipe as ``tools/demo.py`` does (its VoCo steps: pre-training, fine-tuning
   from that backbone, evaluation, inference; each a ``python -m monai.bundle run``) and records their wall and CPU
   times and ``eval/metrics.json``. Results are merged by setting name into
   ``quick_recipe.json`` / ``quick_recipe.md`` / ``quick_recipe.png``, so settings can be run one command each::

    OMP_NUM_THREADS=1 nice -n 5 python tools/benchmark_voco.py quick_recipe --settings '["quick"]' --confirm
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import fire
import numpy as np
import torch
from torch.utils.benchmark import Timer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom_components.utils import markdown_table, record_markdown, run_record  # noqa: E402

CFG = REPO / "bundles" / "voco_btcv_segmentation" / "configs"
ORGANS = ["spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior_vena_cava", "portal_and_splenic_veins", "pancreas", "right_adrenal_gland", "left_adrenal_gland"]


def _parser(configs: list[str], overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CFG / c) for c in configs])
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _pretrain(root: Path, items: list, heldout: list, args: dict, log) -> tuple[dict, list, list]:
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.utils import set_determinism

    from custom_components.engines.voco import evaluate_position_accuracy
    from custom_components.networks.voco import save_voco_backbone

    set_determinism(seed=args["seed"])
    parser = _parser(["pretrain.json", "quick.json"], {
        "bundle_root": str(root), "dataset_dir": str(root / "data"), "train#datalist": items,
        "voco_grid": args["grid"], "voco_roi": args["roi"], "voco_depth": args["depth"],
        "voco_crop_size": [args["roi"], args["roi"], args["depth"]], "pretrain_batch_size": 1,
        "pretrain_lr": args["lr"], "pretrain_warmup_iters": args["warmup"], "pretrain_total_iters": args["iters"],
        "pretrain_epoch_length": args["eval_every"], "cache_rate": 1.0, "num_workers": 0,
    })
    trainer = parser.get_parsed_content("train#trainer")
    network, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    held_pre = copy.deepcopy(parser.get_parsed_content("train#preprocessing"))
    held_pre.transforms[-1].num_random = args["heldout_random"]  # more random crops per held-out volume
    held_ds = Dataset(heldout, held_pre)
    curve, accuracy = [], []

    def held_out(engine=None):
        state = torch.get_rng_state()
        held_pre.set_random_state(seed=12345)  # the same crops every time
        torch.manual_seed(0)
        res = evaluate_position_accuracy(network, DataLoader(held_ds, batch_size=1), loss)
        torch.set_rng_state(state)
        it = engine.state.iteration if engine is not None else 0
        accuracy.append({"iteration": it, **res})
        log(f"pretrain it {it}: held-out position accuracy {res['accuracy']:.3f} (chance {1 / args['grid'] ** 2:.3f})")

    def record(engine):
        out = {k: float(v) for k, v in engine.state.output.items()}  # detached scalar tensors
        curve.append({"iteration": engine.state.iteration, "time_s": time.perf_counter() - start, **out})
        log(f"pretrain it {engine.state.iteration}: " + " ".join(f"{k} {v:.4f}" for k, v in out.items()))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, held_out)
    held_out()
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    path = save_voco_backbone(network, root / "backbone.pt")
    return {"seconds": seconds, "backbone": str(path)}, curve, accuracy


def _dice_per_organ(network, parser, items: list) -> dict:
    from monai.data import DataLoader, Dataset, decollate_batch
    from monai.metrics import DiceMetric

    pre = parser.get_parsed_content("validate#preprocessing")
    post = parser.get_parsed_content("validate#postprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    network.eval()
    with torch.no_grad():
        for batch in DataLoader(Dataset(items, pre), batch_size=1):
            batch["pred"] = inferer(batch["image"], network)
            for d in decollate_batch(batch):
                d = post(d)
                metric(d["pred"][None], d["label"][None])
    per_case = metric.aggregate().cpu().numpy()  # (cases, 13), nan where the organ is absent
    metric.reset()
    network.train()
    organ = {name: float(np.nanmean(per_case[:, i])) if np.isfinite(per_case[:, i]).any() else None
             for i, name in enumerate(ORGANS)}
    return {"mean": float(np.nanmean(per_case)), "organs": organ}


def _finetune(root: Path, train_items: list, test_items: list, backbone: str | None, seed: int, args: dict,
              log) -> dict:
    from monai.data import DataLoader
    from monai.utils import set_determinism

    from custom_components.networks.voco import load_voco_checkpoint

    set_determinism(seed=seed)
    parser = _parser(["train.json", "quick.json"], {
        "bundle_root": str(root), "dataset_dir": str(root / "data"), "train#datalist": train_items,
        "validate#datalist": test_items, "num_samples": args["num_samples"], "learning_rate": args["lr"],
        "warmup_iters": args["warmup"], "total_iters": args["iters"], "num_workers": 0, "cache_rate": 1.0,
        "spacing": args["spacing"], "roi": args["roi"], "augment": True,  # the full recipe's augmentation
    })
    network = parser.get_parsed_content("network")
    report = load_voco_checkpoint(network, backbone) if backbone else None
    optimizer = parser.get_parsed_content("optimizer")
    scheduler = parser.get_parsed_content("lr_scheduler")
    loss_fn = parser.get_parsed_content("loss")
    dataset = parser.get_parsed_content("train#dataset")
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=0)
    history, it, train_seconds = [], 0, 0.0
    if 0 in args["dice_at"]:
        history.append({"iteration": 0, "train_seconds": 0.0, **_dice_per_organ(network, parser, test_items)})
    network.train()
    while it < args["iters"]:
        for batch in loader:
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            scheduler.step()
            train_seconds += time.perf_counter() - start
            it += 1
            if it in args["dice_at"]:
                dice = _dice_per_organ(network, parser, test_items)
                history.append({"iteration": it, "train_seconds": train_seconds, "loss": loss.item(), **dice})
                log(f"finetune {'voco' if backbone else 'random'} seed {seed} it {it}: loss {loss.item():.3f} "
                    f"mean Dice {dice['mean']:.3f} ({train_seconds:.0f} s)")
            if it >= args["iters"]:
                break
    return {"seed": seed, "init": "voco" if backbone else "random", "history": history,
            "train_seconds": train_seconds, "loader": None if report is None else
            {k: len(v) for k, v in report.items()}}


def _inference_time(volume: str, feature_size: int, roi, overlap: float, spacing, max_windows: int | None) -> dict:
    """Time the sliding window of one volume (preprocessing excluded; ``torch.utils.benchmark.Timer``, after its two
    untimed runs); extrapolate from ``max_windows`` single windows when there are more."""
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import SwinUNETR

    parser = _parser(["inference.json"], {"spacing": spacing, "roi": roi, "input": volume,
                                          "dataset_dir": str(Path(volume).parent)})
    image = parser.get_parsed_content("preprocessing")({"image": volume})["image"][None]
    shape = [max(s, r) for s, r in zip(image.shape[2:], roi)]
    windows = 1
    for size, r in zip(shape, roi):  # MONAI's scan: stride int(roi * (1 - overlap)), last window flush with the end
        windows *= 1 if size == r else math.ceil((size - r) / max(int(r * (1 - overlap)), 1)) + 1
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=feature_size, use_v2=True).eval()
    threads = torch.get_num_threads()
    with torch.no_grad():  # Timer runs the statement in this thread, so no_grad applies
        if max_windows is None or windows <= max_windows:
            inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=overlap)
            timer = Timer("inferer(image, net)", globals={"inferer": inferer, "image": image, "net": net},
                          num_threads=threads)
            seconds, measured = timer.timeit(number=1).mean, windows
        else:
            timer = Timer("net(x)", globals={"net": net, "x": torch.rand(1, 1, *roi)}, num_threads=threads)
            seconds, measured = timer.timeit(number=max_windows).mean * windows, max_windows
    return {"feature_size": feature_size, "roi": list(roi), "overlap": overlap, "spacing": list(spacing),
            "image_shape": list(image.shape[2:]), "windows": windows, "windows_measured": measured,
            "seconds": seconds, "extrapolated": measured < windows}


def _plot(out: Path, curve: list, accuracy: list, finetune: list, grid: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    its = [c["iteration"] for c in curve]
    for key in ("loss", "loss_pos", "loss_neg", "loss_reg"):
        ax[0].plot(its, [c[key] for c in curve], label=key)
    ax[0].set_xlabel("iteration")
    ax[0].set_title("VoCo pre-training loss (train crops)")
    ax[0].legend()
    ax[1].plot([a["iteration"] for a in accuracy], [a["accuracy"] for a in accuracy], "o-", label="held-out")
    ax[1].axhline(1 / grid**2, color="gray", ls="--", label="chance")
    ax[1].set_xlabel("iteration")
    ax[1].set_title("position-prediction accuracy")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "pretrain.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for init, color in (("voco", "C0"), ("random", "C1")):
        runs = [r for r in finetune if r["init"] == init]
        for r in runs:
            ax.plot([h["iteration"] for h in r["history"]], [h["mean"] for h in r["history"]], color=color, alpha=0.3)
        mean = np.mean([[h["mean"] for h in r["history"]] for r in runs], axis=0)
        ax.plot([h["iteration"] for h in runs[0]["history"]], mean, color=color, lw=2, label=f"{init} init (mean)")
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel("mean Dice, 13 organs (held-out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "finetune.png", dpi=100)
    plt.close(fig)


def main(
    out: str = "benchmark_results/voco",
    num_unlabeled: int = 12,
    num_heldout: int = 3,
    num_labeled: int = 3,
    num_test: int = 2,
    shape: tuple = (64, 64, 32),
    spacing: tuple = (6.0, 6.0, 7.5),
    grid: int = 3,
    pretrain_roi: int = 32,
    pretrain_depth: int = 64,
    heldout_random: int = 8,
    pretrain_iters: int = 24,
    pretrain_lr: float = 5e-4,
    eval_every: int = 8,
    finetune_iters: int = 20,
    finetune_lr: float = 1e-3,
    finetune_roi: tuple = (64, 64, 32),
    dice_at: tuple = (0, 10, 20),
    seeds: tuple = (0, 1, 2),
    full_windows: int = 2,
    skip_inference: bool = False,
    reuse_pretrain: bool = False,
) -> None:
    from custom_components.data.btcv import generate_btcv_synthetic
    from custom_components.data.datalist import load_items

    torch.set_num_threads(1)
    record = run_record()
    out_dir = (REPO / out) if not Path(out).is_absolute() else Path(out)
    work = out_dir / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    datalist = generate_btcv_synthetic(work / "data", num_training=num_labeled, num_validation=0, num_test=num_test,
                                       num_unlabeled=num_unlabeled + num_heldout, shape=shape, spacing=spacing,
                                       seed=7)
    unlabeled = load_items(datalist, "unlabeled")
    pool, heldout = unlabeled[:num_unlabeled], unlabeled[num_unlabeled:]
    train_items, test_items = load_items(datalist, "training"), load_items(datalist, "test")

    previous = json.loads((out_dir / "results.json").read_text()) if reuse_pretrain else None
    pre_args = {"seed": 0, "grid": grid, "roi": pretrain_roi, "depth": pretrain_depth, "lr": pretrain_lr,
                "warmup": max(1, pretrain_iters // 10), "iters": pretrain_iters, "eval_every": eval_every,
                "heldout_random": heldout_random}
    if previous is not None:  # the pre-training (and timing) of an earlier run of this tool, same folder
        pre_args = previous["settings"]["pretrain"]
        pre = {k: v for k, v in previous["pretrain"].items() if k not in ("curve", "heldout_accuracy")}
        pre["reused_from"] = previous["record"]
        curve, accuracy = previous["pretrain"]["curve"], previous["pretrain"]["heldout_accuracy"]
        log(f"pre-training reused from {previous['record']['date']}: {pre['backbone']}")
    else:
        pre, curve, accuracy = _pretrain(work / "pretrain", pool, heldout, pre_args, log)

    ft_args = {"num_samples": 1, "lr": finetune_lr, "warmup": max(1, finetune_iters // 10), "iters": finetune_iters,
               "spacing": list(spacing), "roi": list(finetune_roi), "dice_at": set(dice_at)}
    finetune = []
    for seed in seeds:
        for backbone in (pre["backbone"], None):
            finetune.append(_finetune(work / "finetune", train_items, test_items, backbone, seed, ft_args, log))

    timing = previous["inference_time"] if previous is not None else []
    if not skip_inference and previous is None:
        volume = test_items[0]["image"]
        quick = json.loads((CFG / "quick.json").read_text())
        big = generate_btcv_synthetic(work / "data_timing", num_training=1, num_validation=0, num_test=0,
                                      num_unlabeled=0, seed=11)  # default synthetic grid: 96x96x48, 4x4x5 mm
        volume = load_items(big, "training")[0]["image"]
        timing.append({"setting": "quick", **_inference_time(volume, quick["feature_size"], quick["roi"],
                                                             quick["sw_overlap"], quick["spacing"], None)})
        log(f"inference quick: {timing[-1]}")
        timing.append({"setting": "full", **_inference_time(volume, 48, [96, 96, 96], 0.75, [1.5, 1.5, 1.5],
                                                            full_windows)})
        log(f"inference full: {timing[-1]}")

    results = {
        "record": record,
        "settings": {"pretrain": {**pre_args, "num_unlabeled": num_unlabeled, "num_heldout": num_heldout,
                                  "crops_per_volume": grid * grid + 2},
                     "finetune": {**ft_args, "dice_at": sorted(dice_at), "num_labeled": num_labeled,
                                  "num_test": num_test, "seeds": list(seeds)},
                     "data": {"shape": list(shape), "spacing": list(spacing)}},
        "pretrain": {**pre, "curve": curve, "heldout_accuracy": accuracy},
        "finetune": finetune,
        "inference_time": timing,
        "log": lines,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    _plot(out_dir, curve, accuracy, finetune, grid)
    (out_dir / "results.md").write_text(render_markdown(results))
    print(render_markdown(results))


def render_markdown(results: dict) -> str:
    s = results["settings"]
    grid = s["pretrain"]["grid"]
    md = ["# VoCo benchmark (synthetic abdomen CT, CPU)\n", record_markdown(results["record"])]
    reused = results["pretrain"].get("reused_from")
    if reused:
        md.append(f"- pre-training and inference timing reused from the earlier run `{reused['command']}` of "
                  f"{reused['date']} (same data, seed and folder)\n")
    md.append(f"\n## Pre-training ({grid}x{grid} grid, {s['pretrain']['crops_per_volume']} crops of "
              f"{s['pretrain']['roi']}x{s['pretrain']['roi']}x{s['pretrain']['depth']} per volume, "
              f"{s['pretrain']['num_unlabeled']} unlabeled volumes, {s['pretrain']['iters']} iterations of 1 volume, "
              f"{results['pretrain']['seconds']:.0f} s)\n\n")
    rows = [[a["iteration"], a["accuracy"], a["loss"], a["pos"], a["neg"], a["reg"]]
            for a in results["pretrain"]["heldout_accuracy"]]
    md.append(f"Held-out volumes ({s['pretrain']['num_heldout']}, never pre-trained on; "
              f"{s['pretrain']['heldout_random']} random crops each, the same crops at every evaluation); chance "
              f"accuracy {1 / grid**2:.3f}.\n\n")
    md.append(markdown_table(["iteration", "position accuracy", "loss", "L_pos", "L_neg", "L_reg"], rows))
    curve = results["pretrain"]["curve"]
    if curve:
        k = max(1, len(curve) // 3)
        first, last = curve[:k], curve[-k:]
        mean = lambda xs, key: float(np.mean([x[key] for x in xs]))  # noqa: E731
        md.append(f"\nTraining crops, mean of the first vs the last {k} iterations: "
                  + ", ".join(f"{key} {mean(first, key):.3f} -> {mean(last, key):.3f}"
                              for key in ("loss", "loss_pos", "loss_neg", "loss_reg", "accuracy")) + ".\n")
    ft = results["finetune"]
    md.append(f"\n## Fine-tuning: VoCo init vs random init ({s['finetune']['num_labeled']} labeled volumes, "
              f"{s['finetune']['iters']} iterations, seeds {s['finetune']['seeds']}, held-out Dice on "
              f"{s['finetune']['num_test']} volumes in the original space)\n\n")
    rows = []
    for it in s["finetune"]["dice_at"]:
        for init in ("voco", "random"):
            vals = [h["mean"] for r in ft if r["init"] == init for h in r["history"] if h["iteration"] == it]
            secs = [h["train_seconds"] for r in ft if r["init"] == init for h in r["history"] if h["iteration"] == it]
            rows.append([it, init, float(np.mean(vals)), float(np.std(vals)), float(np.mean(secs))])
    md.append(markdown_table(["iteration", "init", "mean Dice (13 organs)", "std over seeds", "train wall s"], rows))
    last = max(s["finetune"]["dice_at"])
    md.append(f"\nPer organ at iteration {last} (mean over seeds; '-' = organ absent or never predicted):\n\n")
    rows = []
    for organ in ORGANS:
        row = [organ]
        for init in ("voco", "random"):
            vals = [h["organs"][organ] for r in ft if r["init"] == init for h in r["history"]
                    if h["iteration"] == last and h["organs"][organ] is not None]
            row.append(float(np.mean(vals)) if vals else None)
        rows.append(row)
    md.append(markdown_table(["organ", "VoCo init", "random init"], rows))
    loaders = [r["loader"] for r in ft if r["loader"]]
    if loaders:
        md.append(f"\nLoader report of the VoCo arm: {loaders[0]} (matched / missing = decoder and output / "
                  "unexpected / shape-mismatched keys).\n")
    if results["inference_time"]:
        md.append("\n## Sliding-window inference time, one volume, CPU (1 thread, shared machine)\n\n")
        rows = [[t["setting"], t["feature_size"], "x".join(map(str, t["roi"])), t["overlap"],
                 "x".join(map(str, t["spacing"])), "x".join(map(str, t["image_shape"])), t["windows"],
                 t["seconds"], f"extrapolated from {t['windows_measured']} windows" if t["extrapolated"]
                 else "measured"]
                for t in results["inference_time"]]
        md.append(markdown_table(["setting", "fs", "ROI", "overlap", "spacing mm", "resampled shape", "windows",
                                  "seconds", "how"], rows, floatfmt=".2f"))
    return "".join(md)


# Named settings of the quick-recipe curve: overrides on top of train.json + quick.json (fine-tuning keys only).
QUICK_SETTINGS: dict[str, dict] = {
    "quick": {},  # quick.json as it is
    "smoke": {"max_epochs": 1, "epoch_length": 2, "num_samples": 1},  # a check that the mode runs
    "lr1e-2_noaug_300": {"learning_rate": 0.01, "warmup_iters": 10, "max_epochs": 1, "epoch_length": 300,
                         "num_samples": 1, "__noaug__": True},
    "lr2e-2_noaug_300": {"learning_rate": 0.02, "warmup_iters": 10, "max_epochs": 1, "epoch_length": 300,
                         "num_samples": 1, "__noaug__": True},
    "lr4e-2_noaug_300": {"learning_rate": 0.04, "warmup_iters": 10, "max_epochs": 1, "epoch_length": 300,
                         "num_samples": 1, "augment": False},
    "lr1e-2_noaug_300_z7.5": {"learning_rate": 0.01, "warmup_iters": 10, "max_epochs": 1, "epoch_length": 300,
                              "num_samples": 1, "spacing": [4.0, 4.0, 7.5], "__noaug__": True},
}
LARGE_ORGANS = ("liver", "spleen", "right_kidney", "left_kidney")


def _quick_parser(configs: list[str], overrides: dict):
    """``configs`` with ``overrides``; ``__noaug__`` drops the random flips, rotations and intensity changes of the
    training preprocessing (the random crop stays): the same transforms as train.json's ``augment: false``, which
    the first curves were run without."""
    overrides = dict(overrides)
    noaug = overrides.pop("__noaug__", False)
    parser = _parser(configs, overrides)
    if noaug:
        parser["train#preprocessing#transforms"] = [
            t for t in parser["train#preprocessing#transforms"]
            if not str(t["_target_"]).startswith("Rand") or str(t["_target_"]).startswith("RandCrop")]
    return parser


def _quick_curve(name: str, overrides: dict, root: Path, dice_at: list | None, seed: int, log) -> dict:
    """Train one setting with the bundle's trainer; per-organ test Dice at the iterations ``dice_at`` (default: every
    quarter of the run and its end)."""
    from ignite.engine import Events

    from custom_components.data import load_items

    parser = _quick_parser(["train.json", "quick.json"], {
        **overrides, "bundle_root": str(root / name), "dataset_dir": str(root / "data"), "resume": False,
        "seed": seed, "pretrained_ckpt": ""})
    parser["train#handlers"] = [h for h in parser["train#handlers"] if h["_target_"] == "LrScheduleHandler"]
    parser.get_parsed_content("initialize")  # the bundle's own: seed, synthetic data, datalist check, random init
    trainer, network = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("network")
    total = trainer.state.max_epochs * trainer.state.epoch_length
    at = sorted(set(dice_at or [round(total * k / 4) for k in (1, 2, 3, 4)]) | {total})
    test = load_items(str(root / "data" / "dataset.json"), "test")
    # evaluate.json's split and objects: validate#preprocessing / inferer / postprocessing on the test cases
    history: list[dict] = []
    clock = {"eval": 0.0, "cpu_eval": 0.0}

    @trainer.on(Events.STARTED)
    def _start(engine):
        clock["wall0"], clock["cpu0"] = time.perf_counter(), time.process_time()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _maybe_eval(engine):
        it = engine.state.iteration
        if it not in at:
            return
        wall, cpu = time.perf_counter() - clock["wall0"], time.process_time() - clock["cpu0"]
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        dice = _dice_per_organ(network, parser, test)
        eval_wall, eval_cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
        train_wall, train_cpu = wall - clock["eval"], cpu - clock["cpu_eval"]
        clock["eval"] += eval_wall
        clock["cpu_eval"] += eval_cpu
        large = float(np.mean([dice["organs"][o] for o in LARGE_ORGANS]))
        loss = engine.state.output[0]["loss"] if isinstance(engine.state.output, list) else engine.state.output["loss"]
        history.append({"iteration": it, "train_wall_s": train_wall, "train_cpu_s": train_cpu,
                        "eval_wall_s": eval_wall, "loss": float(loss), "large_organs_mean": large, **dice})
        log(f"quick {name} it {it}: loss {float(loss):.3f} mean Dice {dice['mean']:.3f}, large organs {large:.3f} "
            f"(train {train_cpu:.0f} CPU s, {train_wall:.0f} wall s)")

    trainer.run()
    return {"name": name, "overrides": overrides, "total_iters": total, "history": history}


def _user_command(configs, overrides) -> str:
    """A workflow command as a user types it from the repository root (``<tmp>``: the bundle_root)."""
    files = ",".join(f"'bundles/voco_btcv_segmentation/configs/{c}'" for c in configs)
    extra = "".join(' --{} "{}"'.format(k, v.replace("$", "\\$")) for k, v in overrides)
    return f'python -m monai.bundle run --config_file "[{files}]" --bundle_root <tmp>{extra}'


def _quick_confirm(root: Path, threads: int, log) -> dict:
    """The quick recipe as the demo runs it (``tools/demo.py``'s VoCo steps: pre-training, fine-tuning from its
    backbone, evaluation, inference), each a ``python -m monai.bundle run`` in a fresh bundle_root."""
    import resource

    from demo import BUNDLE_STEPS  # tools/demo.py, next to this file

    from custom_components.utils import bundle_env, run_bundle_workflow

    bundle_root = root / "confirm"
    out = {"bundle_root": str(bundle_root), "threads": threads, "steps": {},
           "quick_json": json.loads((CFG / "quick.json").read_text())}
    for step in BUNDLE_STEPS["voco_btcv_segmentation"]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = run_bundle_workflow([CFG / c for c in step.configs], {"bundle_root": str(bundle_root),
                                                                     **dict(step.overrides)},
                                  log=root / f"confirm_{step.name}.log", env=bundle_env(threads=threads))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out["steps"][step.name] = {"command": _user_command(step.configs, step.overrides), "wall_s": run.seconds,
                                   "cpu_s": cpu}
        log(f"confirm {step.name}: {run.seconds:.0f} wall s, {cpu:.0f} CPU s")
    metrics = json.loads((bundle_root / "eval" / "metrics.json").read_text())["summary"]
    out["dice"] = {name: c["dice"]["mean"] for name, c in metrics["classes"].items()}
    out["mean"] = metrics["mean"]["dice"]
    out["large_organs_mean"] = float(np.mean([out["dice"][o] for o in LARGE_ORGANS]))
    log(f"confirm: mean Dice {out['mean']:.3f}, large organs {out['large_organs_mean']:.3f}")
    return out


def quick_recipe(
    out: str = "benchmark_results/voco",
    settings: tuple = ("quick",),
    dice_at: tuple | None = None,
    seed: int = 1234,
    threads: int = 1,
    confirm: bool = False,
    work: str | None = None,
) -> None:
    """Dice-vs-time curves of quick fine-tuning settings (``QUICK_SETTINGS`` names, or ``name=JSON overrides``) and,
    with ``confirm``, the demo's quick VoCo commands (pre-train, fine-tune, evaluate, infer). Merged by name into
    ``quick_recipe.json``."""
    import shutil
    import tempfile

    torch.set_num_threads(threads)
    out_dir = (REPO / out) if not Path(out).is_absolute() else Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(work) if work else Path(tempfile.mkdtemp(prefix="voco_quick_"))
    record = run_record()
    path = out_dir / "quick_recipe.json"

    def save(key: str, name: str | None, value: dict) -> dict:  # re-read first: other settings may run in parallel
        results = json.loads(path.read_text()) if path.is_file() else {"curves": {}, "confirm": None}
        if name is None:
            results[key] = value
        else:
            results[key][name] = value
        path.write_text(json.dumps(results, indent=2))
        return results

    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    try:
        for entry in ([settings] if isinstance(settings, str) else settings):
            name, _, spec = str(entry).partition("=")
            overrides = json.loads(spec) if spec else QUICK_SETTINGS[name]
            curve = _quick_curve(name, overrides, root, list(dice_at) if dice_at else None, seed, log)
            save("curves", name, {**curve, "record": record, "threads": threads, "seed": seed})
        if confirm:
            save("confirm", None, {**_quick_confirm(root, threads, log), "record": record})
    finally:
        if not work:
            shutil.rmtree(root, ignore_errors=True)
    results = json.loads(path.read_text())
    (out_dir / "quick_recipe.md").write_text(render_quick_markdown(results))
    _plot_quick(out_dir / "quick_recipe.png", results)
    print(render_quick_markdown(results))


def _plot_quick(path: Path, results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for i, (name, c) in enumerate(results["curves"].items()):
            xs = [0] + [h["train_cpu_s"] for h in c["history"]]
            ax[0].plot(xs, [0] + [h["mean"] for h in c["history"]], "o-", color=f"C{i}", label=name)
            ax[1].plot(xs, [0] + [h["large_organs_mean"] for h in c["history"]], "o-", color=f"C{i}", label=name)
        for j, c in enumerate((results.get("exploratory") or {}).get("runs", [])):
            xs = [0] + [h["train_cpu_s"] for h in c["history"]]
            for a, key in ((ax[0], "mean"), (ax[1], "large_organs_mean")):
                a.plot(xs, [0] + [h[key] for h in c["history"]], "x--", color="gray", alpha=0.3 + 0.1 * (j % 4),
                       label=f"exploratory {c['name']}" if a is ax[0] else None)
        for a, title, target in ((ax[0], "mean Dice, 13 organs", 0.5),
                                 (ax[1], "mean Dice, liver, spleen, kidneys", 0.7)):
            a.axhline(target, color="gray", ls="--")
            a.axvline(600, color="gray", ls=":")
            a.set_xlabel("training CPU seconds (1 thread)")
            a.set_title(title)
            a.set_ylim(0, 1)
        ax[0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    except Exception as e:  # pragma: no cover - the plot is optional
        print(f"plot skipped: {e}")


def render_quick_markdown(results: dict) -> str:
    md = ["# VoCo quick recipe: Dice vs training time (synthetic abdomen CT, CPU)\n\n",
          "Each setting trains the bundle's `train.json` + `quick.json` objects with the overrides shown, from "
          "random weights, on the bundle's default synthetic data (6 training volumes, 96×96×48 at 4×4×5 mm); Dice "
          "on the 2 test volumes (the `evaluate.json` split, sliding window, inverted to the original space). Times"
          " exclude evaluation. The machine (2 cores) was **shared with other jobs**: wall times are inflated and "
          "noisy; the CPU seconds of the 1-thread process are the comparable budget (≈ wall time on an idle core). "
          "Within a run the points lie on one warmup-cosine schedule, so an intermediate point under-estimates what"
          " a run scheduled to end there reaches. Every command ran as `OMP_NUM_THREADS=1 nice -n 5 <command>`.\n\n"]
    md.append("`quick` is `quick.json` as it is (no overrides); the last section runs it as the demo does. Settings "
              "named `*_noaug*` drop train.json's augmentation (`__noaug__`, the same transforms as `augment: false`)."
              "\n\n")
    for name, c in results["curves"].items():
        md.append(f"## `{name}`: {json.dumps(c['overrides'])}\n\n" + record_markdown(c["record"]) + "\n")
        rows = [[h["iteration"], round(h["train_cpu_s"]), round(h["train_wall_s"]), h["loss"], h["mean"],
                 h["large_organs_mean"],
                 *(h["organs"][o] for o in LARGE_ORGANS)] for h in c["history"]]
        md.append(markdown_table(["iteration", "train CPU s", "train wall s", "loss", "mean Dice (13)",
                                  "mean (4 large)", *LARGE_ORGANS], rows, floatfmt=".3f") + "\n")
    explore = results.get("exploratory")
    if explore:
        md.append("## Exploratory runs\n\n" + explore["note"] + "\n\n")
        rows = [[c["name"], json.dumps(c["overrides"]), h["iteration"], round(h["train_cpu_s"]), h["mean"],
                 h["large_organs_mean"], *(h["organs"][o] for o in LARGE_ORGANS)]
                for c in explore["runs"] for h in c["history"]]
        md.append(markdown_table(["run", "overrides", "iteration", "train CPU s", "mean Dice (13)", "mean (4 large)",
                                  *LARGE_ORGANS], rows, floatfmt=".3f") + "\n")
    if results["curves"]:
        md.append("## Per organ at the end of each setting\n\n")
        names = list(results["curves"])
        rows = [[o, *(results["curves"][n]["history"][-1]["organs"][o] for n in names)] for o in ORGANS]
        rows.append(["**mean**", *(results["curves"][n]["history"][-1]["mean"] for n in names)])
        rows.append(["train CPU s", *(round(results["curves"][n]["history"][-1]["train_cpu_s"]) for n in names)])
        md.append(markdown_table(["organ", *names], rows, floatfmt=".3f") + "\n")
    conf = results.get("confirm")
    if conf:
        md.append("## The quick recipe as the demo runs it (tools/demo.py's VoCo steps)\n\n"
                  + record_markdown(conf["record"]) + f"\nOMP_NUM_THREADS={conf['threads']}, `--bundle_root` a fresh "
                  "temporary folder (`<tmp>`); times include start-up and, in the first step, writing the synthetic "
                  "data.\n\n")
        md.append(f"quick.json: `{json.dumps(conf['quick_json'])}`\n\n")
        rows = [[name, f"`{s['command']}`", s["wall_s"], s["cpu_s"]] for name, s in conf["steps"].items()]
        md.append(markdown_table(["step", "command", "wall s", "CPU s"], rows, floatfmt=".0f") + "\n")
        rows = [[o, conf["dice"][o]] for o in ORGANS] + [["**mean (13 organs)**", conf["mean"]],
                                                          ["mean (liver, spleen, kidneys)", conf["large_organs_mean"]]]
        md.append(markdown_table(["organ", "test Dice (eval/metrics.json)"], rows) + "\n")
    return "".join(md)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "quick_recipe":
        fire.Fire(quick_recipe, command=sys.argv[2:])
    else:
        fire.Fire(main)
