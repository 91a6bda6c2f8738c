"""UniverSeg evidence: Dice on held-out synthetic task families against the support size, with and without
support-set ensembling, against trivial baselines and a small U-Net trained from scratch on the same support
examples; and how compute, training time and memory grow with the support size.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python tools/benchmark_universeg.py train --minutes 25     # episodic training (CPU)
    OMP_NUM_THREADS=1 python tools/benchmark_universeg.py evaluate               # Dice vs S, baselines
    OMP_NUM_THREADS=1 python tools/benchmark_universeg.py cost                   # GMAC, time, memory vs S

Training uses the bundle's own components: the synthetic task generator (training families only), the
episodic dataset and the in-task and task augmentations of ``configs/train.json`` (``quick.json`` sizes), with S
drawn per batch from ``--train_support`` (the bundle's trainer keeps S fixed; see the model card). The held-out
families (:data:`custom_components.data.fewshot.HELDOUT_KINDS`) are never drawn in training.

Results go to ``benchmark_results/universeg/`` as ``<phase>.json`` and ``<phase>.md`` (with the command, date and
hardware) and ``dice_vs_support.png``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.benchmark import Timer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom_components.data.fewshot import EpisodicDataset, synthetic_tasks  # noqa: E402
from custom_components.data.synthetic.io import save_torch_atomically  # noqa: E402
from custom_components.engines.fewshot import predict_episode  # noqa: E402
from custom_components.networks.universeg import UniverSeg  # noqa: E402
from custom_components.utils import markdown_table, record_markdown, run_record  # noqa: E402

OUT = REPO / "benchmark_results" / "universeg"
BUNDLE = REPO / "bundles" / "universeg_fewshot_segmentation"
SUPPORT_SIZES = (1, 2, 4, 8, 16, 32)


def _write(name: str, payload: dict, md: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (OUT / f"{name}.md").write_text(f"# UniverSeg benchmark: {name}\n\n" + record_markdown(payload["record"]) + "\n" + md)
    print(md)


def _config(img_size: int, width: int):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "quick.json")])
    parser["img_size"] = img_size
    parser["encoder_channels"] = [width] * 4
    parser["decoder_channels"] = [width] * 3
    return parser


def train(minutes: float = 25.0, img_size: int = 48, width: int = 24, batch_size: int = 8,
          train_support: tuple = (1, 2, 4, 8), num_tasks: int = 2000, lr: float = 1e-3, seed: int = 0,
          augment: bool = True, name: str = "benchmark_model") -> str:
    """Episodic training for ``minutes`` of wall time; saves ``<name>.pt`` and ``<name>.json`` (loss log)."""
    torch.manual_seed(seed)
    parser = _config(img_size, width)
    tasks = synthetic_tasks(num_tasks, seed=seed, kinds="train", num_images=64, size=img_size)
    ds = EpisodicDataset(
        tasks, support_size=max(train_support), length=10**9,
        image_transform=parser.get_parsed_content("in_task_augmentation") if augment else None,
        task_transform=parser.get_parsed_content("task_augmentation") if augment else None, seed=seed,
    )
    net = UniverSeg([width] * 4, [width] * 3)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    from monai.losses import DiceLoss

    loss_fn = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    rng = np.random.default_rng(seed)
    log, start, step = [], time.time(), 0
    while time.time() - start < minutes * 60:
        ds.support_size = int(rng.choice(train_support))
        items = [ds[step * batch_size + i] for i in range(batch_size)]
        batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "label", "support_images", "support_labels")}
        logits = net(batch["image"], batch["support_images"], batch["support_labels"])
        loss = loss_fn(logits, batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append(float(loss))
        step += 1
        if step % 50 == 0:
            print(f"step {step} ({time.time() - start:.0f} s): loss {np.mean(log[-50:]):.3f}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    save_torch_atomically(net.state_dict(), OUT / f"{name}.pt")
    meta = {"record": run_record(), "steps": step, "seconds": round(time.time() - start), "img_size": img_size,
            "width": width, "batch_size": batch_size, "train_support": list(train_support), "num_tasks": num_tasks,
            "lr": lr, "augment": augment, "loss_per_50_steps": [round(float(np.mean(log[i:i + 50])), 4)
                                                                 for i in range(0, len(log), 50)]}
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=2))
    return str(OUT / f"{name}.pt")


def _mean_dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Mean over queries of the Dice of binary masks ``(Q, 1, H, W)`` (``monai.metrics.compute_dice``; 1 when both
    the prediction and the label of a query are empty)."""
    from monai.metrics import compute_dice

    return float(compute_dice(pred.float(), label.float(), include_background=True, ignore_empty=False).mean())


def _unet_from_scratch(images: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, steps: int, seed: int):
    """A small MONAI U-Net trained only on the S support pairs (flips and 90-degree rotations), probabilities."""
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(2, 1, 1, channels=(16, 32, 64), strides=(2, 2), num_res_units=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(sigmoid=True)
    net.train()
    for i in range(steps):
        k = i % 4
        x, y = torch.rot90(images, k, (2, 3)), torch.rot90(labels, k, (2, 3))
        if i % 8 >= 4:
            x, y = x.flip(3), y.flip(3)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return torch.sigmoid(net(queries))


def evaluate(model: str = "", img_size: int = 48, width: int = 24, num_tasks: int = 12, queries: int = 8,
             ensemble: int = 5, unet_tasks: int = 6, unet_steps: int = 150, seed: int = 0) -> None:
    """Dice on held-out families vs S (K=1 and K=``ensemble``), baselines, and a U-Net trained on the same S pairs."""
    model = model or str(OUT / "benchmark_model.pt")
    net = UniverSeg([width] * 4, [width] * 3)
    net.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
    net.eval()
    tasks = synthetic_tasks(num_tasks, seed=seed + 5000, kinds="heldout", num_images=queries + 40, size=img_size)
    data = []
    for t in tasks:
        pairs = [t.sample(j) for j in range(len(t))]
        imgs = torch.as_tensor(np.stack([p[0] for p in pairs]))[:, None]
        labs = torch.as_tensor(np.stack([p[1] for p in pairs]))[:, None]
        data.append((t.name, imgs[:queries], labs[:queries], imgs[queries:], labs[queries:]))
    rows: dict[str, dict[int, list[float]]] = {}

    def add(method: str, s: int, task_dice: float) -> None:
        rows.setdefault(method, {}).setdefault(s, []).append(task_dice)

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ti, (name, q, ql, pool_i, pool_l) in enumerate(data):
            for s in SUPPORT_SIZES:
                for k, label in ((1, "UniverSeg (K=1)"), (ensemble, f"UniverSeg ensemble (K={ensemble})")):
                    p = predict_episode(net, q, pool_i, pool_l, s, k, gen)
                    add(label, s, _mean_dice(p > 0.5, ql))
                idx = torch.randperm(len(pool_i), generator=gen)[:s]
                prior = pool_l[idx].mean(0, keepdim=True).expand_as(ql)
                add("support-label prior (mean map > 0.5)", s,
                    _mean_dice(prior > 0.5, ql))
                # another task's support: the prediction must follow the support, not the image
                other = data[(ti + 1) % len(data)]
                p_other = predict_episode(net, q, other[3], other[4], s, 1, gen)
                add("UniverSeg, support of another task (K=1)", s,
                    _mean_dice(p_other > 0.5, ql))
            add("all foreground", 0, _mean_dice(torch.ones_like(ql), ql))
            add("empty", 0, _mean_dice(torch.zeros_like(ql), ql))
            print(f"task {ti}: {name} done", flush=True)
    with torch.enable_grad():
        for ti, (name, q, ql, pool_i, pool_l) in enumerate(data[:unet_tasks]):
            for s in SUPPORT_SIZES:
                p = _unet_from_scratch(pool_i[:s], pool_l[:s], q, unet_steps, seed + ti)
                add(f"U-Net from scratch on the S pairs ({unet_steps} steps)", s,
                    _mean_dice(p > 0.5, ql))
            print(f"unet task {ti} done", flush=True)
    # UniverSeg on the same subset of tasks as the U-Net, for a like-for-like comparison
    summary = {m: {str(s): float(np.mean(v)) for s, v in d.items()} for m, d in rows.items()}
    subset = {str(s): float(np.mean(rows["UniverSeg (K=1)"][s][:unet_tasks])) for s in SUPPORT_SIZES}
    summary[f"UniverSeg (K=1), the {unet_tasks} U-Net tasks"] = subset
    payload = {"record": run_record(), "model": model, "img_size": img_size, "width": width, "tasks": [d[0] for d in data],
               "queries_per_task": queries, "dice_mean_over_tasks": summary,
               "per_task": {m: {str(s): v for s, v in d.items()} for m, d in rows.items()}}
    headers = ["method"] + [f"S={s}" for s in SUPPORT_SIZES]
    table_rows = []
    for m, d in summary.items():
        if "0" in d:
            table_rows.append([m] + [d["0"]] * len(SUPPORT_SIZES))
        else:
            table_rows.append([m] + [d.get(str(s)) for s in SUPPORT_SIZES])
    md = (f"Held-out families {sorted({n.split('/')[1] for n in payload['tasks']})}, {len(data)} tasks, "
          f"{queries} queries per task, {img_size}x{img_size}; Dice per query averaged per task, then over tasks.\n\n"
          + markdown_table(headers, table_rows))
    _write("evaluate", payload, md)
    _plot(summary)


def _plot(summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, d in summary.items():
        if "0" in d or "U-Net tasks" in m:
            continue
        ax.plot(SUPPORT_SIZES, [d[str(s)] for s in SUPPORT_SIZES], marker="o", label=m)
    for m in ("all foreground", "empty"):
        if m in summary:
            ax.axhline(summary[m]["0"], ls=":", color="grey")
            ax.text(1, summary[m]["0"] + 0.01, m, color="grey", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("support size S")
    ax.set_ylabel("Dice (held-out families)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "dice_vs_support.png", dpi=100)


def _macs(net: torch.nn.Module, *inputs) -> float:
    total = [0]

    def hook(mod, inp, out):
        total[0] += out.numel() * mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(*inputs)
    for h in handles:
        h.remove()
    return total[0] / 1e9


def _timer(fn, *args) -> Timer:
    """A ``torch.utils.benchmark.Timer`` of ``fn(*args)`` at the current number of threads (each ``timeit`` runs it
    twice untimed first)."""
    return Timer(stmt="fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads())


def cost(repeats: int = 2) -> None:
    """GMAC (official widths, 128 px, B=1), CPU forward time, and training step time and activation memory
    (bytes saved for backward, quick widths at 64 px, B=4) against S."""
    torch.manual_seed(0)
    official = UniverSeg().eval()
    quick = UniverSeg([32] * 4, [32] * 3)
    rows, payload_rows = [], []
    for s in SUPPORT_SIZES:
        q, si, sl = torch.rand(1, 1, 128, 128), torch.rand(1, s, 1, 128, 128), torch.rand(1, s, 1, 128, 128).round()
        gmac = _macs(official, q, si, sl)
        with torch.no_grad():
            fwd = _timer(official, q, si, sl).timeit(number=repeats).mean
        q, si, sl = torch.rand(4, 1, 64, 64), torch.rand(4, s, 1, 64, 64), torch.rand(4, s, 1, 64, 64).round()
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        def train_step() -> None:
            saved[0] = 0
            quick.zero_grad()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = quick(q, si, sl).mean()
            loss.backward()

        step = _timer(train_step).timeit(number=1).mean
        quick.zero_grad()
        row = {"S": s, "gmac_official_128": round(gmac, 2), "forward_s_official_128_cpu": round(fwd, 3),
               "train_step_s_quick_64_b4": round(step, 3), "activation_mib_quick_64_b4": round(saved[0] / 2**20, 1)}
        payload_rows.append(row)
        rows.append(list(row.values()))
        print(row, flush=True)
    payload = {"record": run_record(), "rows": payload_rows}
    md = ("GMAC: multiply-accumulates of every convolution of the official-width model (64 channels) at 128x128, "
          "batch 1 (the spec quotes 6.8 / 43.1 / 84.6 GMAC at S = 1 / 8 / 16). Forward time: the same model on this "
          "CPU. Training step and activation memory (tensors saved for backward): quick widths (32), 64x64, batch 4.\n\n"
          + markdown_table(["S", "GMAC (official, 128 px)", "forward s (official, CPU)", "train step s (quick, B=4)",
                            "activation MiB (quick, B=4)"], rows))
    _write("cost", payload, md)


if __name__ == "__main__":
    import fire

    fire.Fire({"train": train, "evaluate": evaluate, "cost": cost})
