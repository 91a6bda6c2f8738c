"""Size and speed of LeViT-UNet (128s / 192 / 384) next to MONAI's BasicUNet, measured in one run.

Measures, for a ``1 x img_size x img_size`` input and 9 classes:

- parameters and MACs (conv, linear and matmul MACs, counted by ``torch.utils.flop_counter.FlopCounterMode`` as
  FLOPs / 2), next to the official-model numbers of the LeViT-UNet spec at 224;
- eval-mode ``no_grad`` forward latency at batch 1 (median over ``repeats`` runs after ``warmup`` runs, timed with
  ``torch.utils.benchmark.Timer``) of every model;
- the time of one training step (forward, cross-entropy loss, backward, SGD step) at batch 2 for LeViT-UNet-128s and
  the two BasicUNets.

All models run on the same device with the same number of threads. Writes ``results.json``, ``results.md`` and
``benchmark.png`` to ``--out``::

    python tools/benchmark_levit_unet.py run --out benchmark_results/levit_unet --repeats 20
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import fire
import torch
from monai.networks.nets import BasicUNet
from torch import nn
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from custom_components.networks import LeViTUNet  # noqa: E402
from custom_components.utils import count_macs, markdown_table, record_markdown, run_record  # noqa: E402

NUM_CLASSES = 9
# official LeViT-UNet at 1x224x224, K = 9 (spec §2): parameters, GMACs
SPEC_224 = {
    "LeViT-UNet-128s": (15_904_715, 17.56),
    "LeViT-UNet-192": (19_904_670, 18.96),
    "LeViT-UNet-384": (52_166_029, 25.64),
}
SIZE_KEYS = ("params_m", "spec_params_m", "params_diff_pct", "gmacs", "spec_gmacs", "gmacs_diff_pct")
TRAINED = ("LeViT-UNet-128s", "BasicUNet-32 (default)", "BasicUNet-64")
MAC_NOTE = (
    "MACs = FLOPs / 2 as counted by torch.utils.flop_counter.FlopCounterMode (convolutions, linear layers and matrix "
    "products; normalisation, activations, softmax and interpolation are not counted)."
)


def build_models(img_size: int) -> dict[str, Callable[[], nn.Module]]:
    """Constructors of the compared models."""
    return {
        "LeViT-UNet-128s": lambda: LeViTUNet("128s", out_channels=NUM_CLASSES, img_size=img_size),
        "LeViT-UNet-192": lambda: LeViTUNet("192", out_channels=NUM_CLASSES, img_size=img_size),
        "LeViT-UNet-384": lambda: LeViTUNet("384", out_channels=NUM_CLASSES, img_size=img_size),
        "BasicUNet-32 (default)": lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES),
        "BasicUNet-64": lambda: BasicUNet(
            spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES, features=(64, 128, 256, 512, 1024, 64)
        ),
    }


def median_ms(step: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``step`` in milliseconds over ``repeats`` runs, measured with ``torch.utils.benchmark.Timer``
    at the current number of threads (it synchronizes CUDA around each measurement, and runs ``step`` twice untimed
    before each), after ``warmup`` further untimed calls."""
    timer = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    for _ in range(warmup):
        step()
    return 1000 * statistics.median(timer.timeit(number=1).median for _ in range(repeats))


def forward_latency_ms(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    model.eval()
    with torch.no_grad():
        return median_ms(lambda: model(x), repeats, warmup)


def train_step_ms(model: nn.Module, img_size: int, repeats: int, warmup: int, device: torch.device) -> float:
    """Median time of forward + cross-entropy + backward + SGD step at batch 2 (random image and labels)."""
    model.train()
    x = torch.randn(2, 1, img_size, img_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (2, img_size, img_size), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return median_ms(step, repeats, warmup)


def pct(value: float, reference: float | None) -> float | None:
    return None if reference is None else 100 * (value - reference) / reference


def write_plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax_lat, ax_size) = plt.subplots(1, 2, figsize=(13, 4.8))
    pos = range(len(names))
    ax_lat.bar([p - 0.2 for p in pos], [results[n]["forward_ms"] for n in names], 0.4, label="forward, batch 1 (eval)")
    train = [(p, results[n]["train_step_ms"]) for p, n in zip(pos, names) if results[n]["train_step_ms"] is not None]
    ax_lat.bar([p + 0.2 for p, _ in train], [t for _, t in train], 0.4, label="training step, batch 2")
    ax_lat.set_xticks(list(pos), names, rotation=20, ha="right")
    ax_lat.set_ylabel("median time (ms)")
    ax_lat.set_title("Latency")
    ax_lat.legend()
    for n in names:
        ax_size.scatter(results[n]["gmacs"], results[n]["params_m"])
        ax_size.annotate(n, (results[n]["gmacs"], results[n]["params_m"]), textcoords="offset points", xytext=(4, 4))
    ax_size.set_xlabel("GMACs")
    ax_size.set_ylabel("parameters (M)")
    ax_size.set_title("Parameters vs MACs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    size_rows, speed_rows = [], []
    for name, r in report["models"].items():
        size_rows.append([name, *(r[k] for k in SIZE_KEYS)])
        speed_rows.append([name, r["forward_ms"], r["train_step_ms"]])
    text = (
        "# LeViT-UNet benchmark\n\n"
        + record_markdown(report["record"])
        + f"- input 1x{s['img_size']}x{s['img_size']}, {NUM_CLASSES} classes, device {s['device']}, "
        f"{s['threads']} threads, median of {s['repeats']} runs after {s['warmup']} warm-up runs\n\n"
        "## Size\n\n"
        + markdown_table(
            ["model", "params (M)", "spec params (M)", "diff (%)", "GMACs", "spec GMACs", "diff (%)"],
            size_rows,
            floatfmt=".3f",
        )
        + f"\n{MAC_NOTE} Spec numbers: official LeViT-UNet at 1x224x224, K = 9.\n\n"
        "## Speed\n\n"
        + markdown_table(["model", "forward latency, batch 1 (ms)", "training step, batch 2 (ms)"], speed_rows, ".1f")
        + "\nForward: eval mode, no_grad. Training step: forward + cross-entropy + backward + SGD (momentum 0.9).\n"
    )
    path.write_text(text)


def run(
    out: str = "benchmark_results/levit_unet",
    repeats: int = 20,
    img_size: int = 224,
    warmup: int = 3,
    threads: int | None = None,
    device: str = "cpu",
) -> None:
    """Benchmark all models and write ``results.json``, ``results.md`` and ``benchmark.png`` to ``out``."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "img_size": img_size,
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
    print(f"settings: {settings}", flush=True)
    x = torch.randn(1, 1, img_size, img_size, device=dev)
    results: dict[str, dict] = {}
    for name, build in build_models(img_size).items():
        torch.manual_seed(0)
        model = build().to(dev).eval()
        params = sum(p.numel() for p in model.parameters())
        gmacs = count_macs(model, x) / 1e9
        spec_params, spec_gmacs = SPEC_224.get(name, (None, None)) if img_size == 224 else (None, None)
        print(f"{name}: {params / 1e6:.3f} M parameters, {gmacs:.2f} GMACs; timing forward ...", flush=True)
        forward = forward_latency_ms(model, x, repeats, warmup)
        print(f"{name}: forward {forward:.1f} ms", flush=True)
        train = None
        if name in TRAINED:
            train = train_step_ms(model, img_size, repeats, warmup, dev)
            print(f"{name}: training step {train:.1f} ms", flush=True)
        results[name] = {
            "params": params,
            "params_m": params / 1e6,
            "spec_params_m": None if spec_params is None else spec_params / 1e6,
            "params_diff_pct": pct(params, spec_params),
            "gmacs": gmacs,
            "spec_gmacs": spec_gmacs,
            "gmacs_diff_pct": pct(gmacs, spec_gmacs),
            "forward_ms": forward,
            "train_step_ms": train,
        }
        del model
    report = {"record": run_record(), "settings": settings, "mac_counting": MAC_NOTE, "models": results}
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, out_dir / "results.md")
    write_plot(results, out_dir / "benchmark.png")
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}, {out_dir / 'benchmark.png'}", flush=True)


if __name__ == "__main__":
    fire.Fire({"run": run})
