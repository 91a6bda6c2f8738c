"""Forward and forward+backward time of LViT, UniverSeg and LeViT-UNet, optionally against an older implementation.

Settings (issue 18): LViT at batch 2, 224 x 224, text 10 x 768; UniverSeg at batch 2, 128 x 128 with S = 8 and
S = 64 support pairs; LeViT-UNet-128s at batch 4, 224 x 224, 9 classes. For every network, CPU thread count
(``--threads``, default 1 and 2) and, when CUDA is available, the GPU:

- ``forward``: eval mode under ``no_grad``;
- ``forward+backward``: train mode (batch-statistics BN, dropout on), ``output.sum().backward()``, gradients reset
  to ``None`` before each step.

Each time is the median over ``--rounds`` measurements by ``torch.utils.benchmark.Timer``; a round is one
``blocked_autorange(min_run_time=--min_run_time)``, which makes one untimed call and then times calls until
``min_run_time`` seconds are spent (at least one; the default 0 means exactly one, as these steps take seconds on a
CPU). ``--warmup`` adds untimed calls before the first round.

With ``--baseline_ref REF`` the networks' modules are also loaded as they are at git revision ``REF`` (``git show
REF:custom_components/networks/<file>.py`` into a temporary package), given the same state dict, and timed in
alternating rounds in the same process (old, new, old, new, ...), so a load that changes during the run affects
both alike; the ratio new / old is reported per round and as the ratio of medians. The optimisations of issue 18
came after revision ``609bd5b`` (``--baseline_ref 609bd5b`` times them against it).
``--check_numerics`` also runs one forward/backward of both implementations in float64 on the same weights and
inputs at the benchmark sizes and reports the largest relative difference of the output, the input gradients and
the parameter gradients (float32 is not used for that check: ReLU/max-pool decisions at the kink flip under float32
rounding, which moves gradients of either implementation by more than 1e-5 against float64).

``--clock cpu`` times with the process CPU time instead of the wall clock: on a machine shared with other jobs this
is the better measure of the work done at 1 thread (at more threads it sums the threads' CPU time). The load
average before and after is recorded; the results say whether the machine was loaded.

Writes ``results.json``, ``results.md`` and ``speed.png`` (new / old per setting with a baseline, else each time
relative to the slowest) into ``--out`` with the exact command, the date and the hardware::

    python tools/benchmark_speed.py run --baseline_ref 609bd5b --threads 1,2 --rounds 5
    python tools/benchmark_speed.py run --models lvit,levit_unet --threads 1 --clock cpu --check_numerics
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fire
import torch
from torch import nn
from torch.utils.benchmark import Timer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom_components.networks import levit_unet as levit_unet_module  # noqa: E402
from custom_components.networks import lvit as lvit_module  # noqa: E402
from custom_components.networks import universeg as universeg_module  # noqa: E402
from custom_components.utils import markdown_table, plot_bars, record_markdown, run_record  # noqa: E402

MODULE_FILES = ("plam", "lvit", "universeg", "levit_unet")
MODELS = ("lvit", "universeg_s8", "universeg_s64", "levit_unet")
SETTINGS = {
    "lvit": "LViT, batch 2, 224x224, text 10x768",
    "universeg_s8": "UniverSeg, batch 2, 128x128, S=8",
    "universeg_s64": "UniverSeg, batch 2, 128x128, S=64",
    "levit_unet": "LeViT-UNet-128s, batch 4, 224x224, 9 classes",
}


def load_baseline(ref: str) -> dict[str, object]:
    """The network modules as they are at git revision ``ref``, imported from a temporary package."""
    pkg = f"_speed_baseline_{abs(hash(ref))}"
    root = Path(tempfile.mkdtemp(prefix="speed_baseline_")) / pkg
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name in MODULE_FILES:
        src = subprocess.run(
            ["git", "show", f"{ref}:custom_components/networks/{name}.py"],
            cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout
        (root / f"{name}.py").write_text(src)
    sys.path.insert(0, str(root.parent))
    return {name: importlib.import_module(f"{pkg}.{name}") for name in ("lvit", "universeg", "levit_unet")}


def build(model: str, modules: dict[str, object]) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A network of one setting and its inputs (seeded, so every implementation gets the same)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if model == "lvit":
        net = modules["lvit"].LViT(in_channels=3, out_channels=1, img_size=224, text_len=10, text_dim=768)
        return net, (torch.rand(2, 3, 224, 224, generator=g), torch.randn(2, 10, 768, generator=g))
    if model.startswith("universeg_s"):
        s = int(model.removeprefix("universeg_s"))
        net = modules["universeg"].UniverSeg()
        return net, (
            torch.rand(2, 1, 128, 128, generator=g),
            torch.rand(2, s, 1, 128, 128, generator=g),
            (torch.rand(2, s, 1, 128, 128, generator=g) > 0.5).float(),
        )
    if model == "levit_unet":
        net = modules["levit_unet"].LeViTUNet("128s", in_channels=1, out_channels=9, img_size=224)
        return net, (torch.randn(4, 1, 224, 224, generator=g),)
    raise ValueError(f"unknown model {model!r}; choose from {MODELS}")


def steps(net: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, Callable[[], None]]:
    def forward() -> None:
        net.eval()
        with torch.no_grad():
            net(*inputs)

    def forward_backward() -> None:
        net.train()
        net.zero_grad(set_to_none=True)
        net(*inputs).sum().backward()

    return {"forward": forward, "forward+backward": forward_backward}


def numerics(old: nn.Module, new: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Largest relative difference ``max |new - old| / max |old|`` per tensor in float64, train mode, same weights.

    A parameter whose exact gradient is zero (a convolution bias followed by a batch-statistics BN) has a gradient of
    pure rounding noise in both; parameter gradients are therefore measured against at least 1e-6 of the largest
    parameter gradient of the network."""

    def run(net: nn.Module):
        net = copy.deepcopy(net).double().train()
        xs = [x.double().requires_grad_() for x in inputs]
        out = net(*xs)
        (out * torch.cos(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape)).sum().backward()
        return out.detach(), [x.grad for x in xs], {k: p.grad for k, p in net.named_parameters()}

    def rel(a, b, floor: float = 1e-12) -> float:
        if a is None or b is None:
            return 0.0 if a is None and b is None else float("inf")
        return float((a - b).abs().max() / b.abs().max().clamp_min(floor))

    torch.manual_seed(0)
    o_out, o_in, o_par = run(old)
    torch.manual_seed(0)
    n_out, n_in, n_par = run(new)
    floor = 1e-6 * max(float(g.abs().max()) for g in o_par.values() if g is not None)
    return {
        "output": rel(n_out, o_out),
        "input_grads": max(rel(a, b) for a, b in zip(n_in, o_in)),
        "param_grads": max(rel(n_par[k], o_par[k], floor) for k in o_par),
    }


def run(
    out: str = "benchmark_results/speed",
    models: str | tuple = MODELS,
    threads: str | int | tuple = (1, 2),
    rounds: int = 5,
    min_run_time: float = 0.0,
    warmup: int = 0,
    baseline_ref: str | None = None,
    clock: str = "wall",
    cuda: bool = True,
    check_numerics: bool = False,
) -> None:
    """Time the networks; see the module docstring. ``models`` and ``threads`` take comma-separated lists."""
    model_list = [m for m in (models.split(",") if isinstance(models, str) else models) if m]
    thread_list = [int(t) for t in (str(threads).split(",") if isinstance(threads, (str, int)) else threads)]
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    timer_fn = time.perf_counter if clock == "wall" else time.process_time
    record = run_record()
    load_before = os.getloadavg()
    new_modules = {"lvit": lvit_module, "universeg": universeg_module, "levit_unet": levit_unet_module}
    old_modules = load_baseline(baseline_ref) if baseline_ref else None
    devices = [("cpu", t) for t in thread_list]
    if cuda and torch.cuda.is_available():
        devices.append(("cuda", torch.get_num_threads()))

    rows: list[dict] = []
    for model in model_list:
        new_net, inputs = build(model, new_modules)
        impls = {"new": new_net}
        if old_modules is not None:
            old_net, _ = build(model, old_modules)
            new_net.load_state_dict(old_net.state_dict())  # same weights (the parameter names are unchanged)
            impls = {"old": old_net, "new": new_net}
        numeric = numerics(impls["old"], new_net, inputs) if old_modules is not None and check_numerics else None
        for device, n_threads in devices:
            torch.set_num_threads(n_threads)
            dev_inputs = tuple(x.to(device) for x in inputs)
            dev_impls = {k: v.to(device) for k, v in impls.items()}
            for mode in ("forward", "forward+backward"):
                timers = {
                    k: Timer("step()", globals={"step": steps(net, dev_inputs)[mode]}, num_threads=n_threads,
                             timer=timer_fn)
                    for k, net in dev_impls.items()
                }
                for k in timers:
                    for _ in range(warmup):
                        steps(dev_impls[k], dev_inputs)[mode]()
                times: dict[str, list[float]] = {k: [] for k in timers}
                for _ in range(rounds):  # alternating rounds: old, new, old, new, ...
                    for k, timer in timers.items():
                        times[k].append(timer.blocked_autorange(min_run_time=min_run_time).median)
                row = {
                    "model": model,
                    "setting": SETTINGS[model],
                    "device": device,
                    "threads": n_threads,
                    "mode": mode,
                    "new_ms": 1000 * statistics.median(times["new"]),
                    "new_rounds_ms": [1000 * t for t in times["new"]],
                }
                if "old" in times:
                    row["old_ms"] = 1000 * statistics.median(times["old"])
                    row["old_rounds_ms"] = [1000 * t for t in times["old"]]
                    row["ratio"] = row["new_ms"] / row["old_ms"]
                    row["round_ratios"] = [n / o for n, o in zip(times["new"], times["old"])]
                if numeric is not None:
                    row["float64_max_rel_diff"] = numeric
                rows.append(row)
                ratio = f", new/old {row['ratio']:.3f}" if "ratio" in row else ""
                print(f"{model} {device} x{n_threads} {mode}: new {row['new_ms']:.1f} ms{ratio}", flush=True)
            for net in dev_impls.values():
                net.to("cpu")

    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    loaded = max(load_before[0], load_after[0]) > 0.5 * cores
    load_note = (
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {cores} cores: "
        + ("the machine was LOADED by other jobs; absolute times are unreliable, the alternating-round ratios less so"
           if loaded else "the machine was not noticeably loaded")
    )
    result = {
        "record": record,
        "clock": clock,
        "rounds": rounds,
        "min_run_time_s": min_run_time,
        "warmup": warmup,
        "baseline_ref": baseline_ref,
        "load": {"before": load_before, "after": load_after, "cores": cores, "loaded": loaded, "note": load_note},
        "rows": rows,
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")

    headers = ["setting", "device", "mode", "new (ms)"]
    if baseline_ref:
        headers += [f"{baseline_ref} (ms)", "new / old", "per-round new / old"]
    table = []
    for r in rows:
        line = [r["setting"], f"{r['device']} x{r['threads']}" if r["device"] == "cpu" else r["device"], r["mode"],
                r["new_ms"]]
        if baseline_ref:
            line += [r["old_ms"], f"{r['ratio']:.3f}", " ".join(f"{x:.2f}" for x in r["round_ratios"])]
        table.append(line)
    md = f"# Network speed ({clock} clock, median of {rounds} rounds)\n\n{record_markdown(record)}"
    md += f"- {load_note}\n"
    if baseline_ref:
        md += f"- baseline: the network modules at git revision `{baseline_ref}`, same state dict, alternating rounds\n"
    md += "\n" + markdown_table(headers, table, floatfmt=".1f")
    numeric_rows = [
        [r["setting"], r["float64_max_rel_diff"]["output"], r["float64_max_rel_diff"]["input_grads"],
         r["float64_max_rel_diff"]["param_grads"]]
        for r in rows if "float64_max_rel_diff" in r and r["mode"] == "forward" and r["threads"] == thread_list[0]
    ]
    if numeric_rows:
        md += "\nFloat64 max relative difference new vs baseline (same weights and inputs, train mode):\n\n"
        md += markdown_table(["setting", "output", "input grads", "parameter grads"], numeric_rows, floatfmt=".1e")
    (out_dir / "results.md").write_text(md)

    names = [f"{r['model']} {r['device']} x{r['threads']} {r['mode']}" for r in rows]
    if baseline_ref:
        plot_bars(out_dir / "speed.png", names, [r["ratio"] for r in rows], xlabel=f"time new / {baseline_ref}")
    elif rows:
        slowest = max(r["new_ms"] for r in rows)
        plot_bars(out_dir / "speed.png", names, [r["new_ms"] / slowest for r in rows], xlabel="time / slowest row")
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}, {out_dir / 'speed.png'}", flush=True)


if __name__ == "__main__":
    fire.Fire({"run": run})
