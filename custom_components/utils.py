"""Small helpers used by bundle configs."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "bundle_root", "count_macs", "hardware_info", "run_record", "markdown_table", "record_markdown", "plot_bars",
    "bundle_env", "bundle_command", "run_bundle_workflow", "WorkflowRun", "refuse_expression",
]

REPO = Path(__file__).resolve().parents[1]


def _root_from_config_path(config_file: str | os.PathLike) -> str:
    parent = Path(config_file).resolve().parent
    return str(parent.parent if parent.name == "configs" else parent)


def _config_files_from_argv(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        value = value.strip()
        if value.startswith("["):
            try:
                return [str(v) for v in ast.literal_eval(value)]
            except (ValueError, SyntaxError):
                return [v.strip(" '\"") for v in value.strip("[]").split(",") if v.strip()]
        return [value]
    return []


def bundle_root(default: str = ".") -> str:
    """Return the folder of the bundle whose configs are being run.

    Configs set ``"bundle_root": "$custom_components.bundle_root()"`` so that the same bundle runs
    from the repository root (``--config_file bundles/<name>/configs/train.json``), from inside the
    bundle folder, and from an unpacked zip. The root is found, in this order:

    1. the ``config_root_path`` of a :class:`monai.bundle.ConfigWorkflow` on the call stack (the
       folder of the first config file; its parent when that folder is ``configs``);
    2. the ``--config_file`` argument on the command line (``python -m monai.bundle run ...``,
       ``ckpt_export``, ``verify_net_in_out``, also under ``torchrun``);
    3. ``default`` (the current directory), as in model-zoo bundles.

    An explicit ``--bundle_root`` override (as MONAI Label passes) replaces this expression entirely.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            # only workflow objects: others (e.g. ConfigParser) may raise on unknown attributes
            if type(owner).__name__.endswith("Workflow") and "config_root_path" in vars(owner):
                root = Path(owner.config_root_path).resolve()
                return str(root.parent if root.name == "configs" else root)
            frame = frame.f_back
    finally:
        del frame
    files = _config_files_from_argv(sys.argv)
    if files:
        return _root_from_config_path(files[0])
    return default


def hardware_info() -> dict:
    """Describe the machine a measurement ran on (CPU model, cores, threads, GPU, versions)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def run_record(command: str | None = None) -> dict:
    """What a results file must say about how it was made: the exact command, date (UTC) and hardware."""
    import datetime
    import shlex

    if command is None:
        command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": hardware_info(),
    }


def markdown_table(headers: list[str], rows: list[list], floatfmt: str = ".3f") -> str:
    """Render rows as a GitHub markdown table; floats use ``floatfmt``, ``None``/NaN print as ``-``."""

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return "-" if v != v else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def as_list(value, cast=str) -> list:
    """A command-line list as a list: ``"1,2,3"`` (fire passes a string), a list or tuple, or one value; each item
    passed through ``cast``."""
    if isinstance(value, str):
        return [cast(v) for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [cast(v) for v in value]
    return [cast(value)]


def mean_sd(values) -> dict:
    """Mean, sample sd (n - 1; NaN for one value) and n of the finite ``values`` (``None``/NaN/inf are left out):
    the statistics every benchmark reports over seeds."""
    import math

    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return {"mean": mean, "sd": sd, "n": len(vals)}


def format_mean_sd(stat: dict, digits: int = 3) -> str:
    """``"mean ± sd"`` of a :func:`mean_sd` result (the mean alone for one value, ``-`` for none)."""
    if not stat["n"]:
        return "-"
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['sd']:.{digits}f}" if stat["n"] > 1 else "")


def record_markdown(record: dict) -> str:
    """The provenance lines (command, date, hardware) for the top of a markdown results file."""
    hw = record.get("hardware", {})
    return (
        f"- command: `{record.get('command')}`\n- date: {record.get('date')}\n"
        f"- hardware: {hw.get('cpu')} ({hw.get('cpu_count')} cores, {hw.get('torch_threads')} torch threads), "
        f"GPU: {hw.get('gpu') or 'none'}; torch {hw.get('torch')}, MONAI {hw.get('monai')}\n"
    )


def count_macs(model, *inputs) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2 of ``torch.utils.flop_counter.FlopCounterMode``:
    convolutions, linear layers and matrix products; normalisation, activations and resampling are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() // 2


def plot_bars(path: str | os.PathLike, names: list[str], values: list[float], xlabel: str,
              errors: list[float] | None = None, colors: list[str] | str = "tab:blue") -> None:
    """A horizontal bar chart of benchmark scores in [0, 1] (one bar per arm, value printed beside it) as a PNG.

    Plots are optional evidence: a failure (no matplotlib, no display backend) is printed, not raised."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
        ax.barh(names, values, xerr=errors, color=colors)
        for i, v in enumerate(values):
            ax.text(v + 0.02, i, f"{v:.3f}", va="center")
        ax.set_xlim(0, 1)
        ax.set_xlabel(xlabel)
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    except Exception as e:  # pragma: no cover - the plot is optional
        print(f"plot skipped: {e}")


class WorkflowRun(subprocess.CompletedProcess):
    """A finished ``python -m monai.bundle run`` process (``args``, ``returncode``, ``stdout``, ``stderr``) and its
    wall time in seconds (``seconds``). ``stdout`` holds the merged output unless it went to a log file."""

    def __init__(self, proc: subprocess.CompletedProcess, seconds: float) -> None:
        super().__init__(proc.args, proc.returncode, proc.stdout, proc.stderr)
        self.seconds = seconds

    @property
    def output(self) -> str:
        return (self.stdout or "") + (self.stderr or "")


def refuse_expression(key: str, value) -> None:
    """Raise ``ValueError`` when a value given by a user or a remote request would be evaluated by MONAI's parser.

    MONAI's config parser treats a string starting with ``$`` (Python expression), ``@`` (reference) or ``%`` (macro)
    as code, and has no escape for it: such a value can only reach a config through a file the config reads.
    """
    if isinstance(value, str) and value.lstrip()[:1] in ("$", "@", "%"):
        raise ValueError(
            f"--{key}: a value starting with '{value.lstrip()[0]}' would be evaluated by MONAI's config parser as code;"
            " refused (pass such text through a file instead)"
        )
    if isinstance(value, (list, tuple)):
        for v in value:
            refuse_expression(key, v)
    if isinstance(value, dict):
        for v in value.values():
            refuse_expression(key, v)


def bundle_env(threads: int | None = None, extra_path: str | os.PathLike | None = None) -> dict:
    """The environment of a workflow subprocess: this repository (or ``extra_path``) first on ``PYTHONPATH``, no
    stdin prompts; ``threads`` sets ``OMP_NUM_THREADS`` (else it is inherited)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path or REPO), env.get("PYTHONPATH")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def bundle_command(configs: Sequence[str | os.PathLike], overrides: Mapping | None = None, run_id: str | None = None,
                   python: str | None = None, launcher: Sequence[str] | None = None) -> list[str]:
    """The argument list of ``python -m monai.bundle run [run_id] --config_file [...] --key value ...``.

    Args:
        configs: config files, merged in order.
        overrides: ``--key value`` pairs; a value that is not a string is written with ``str`` (lists and booleans
            as MONAI's command line reads them).
        run_id: the workflow to run (``None``: MONAI's default, ``run``).
        python: the interpreter (default: this one).
        launcher: arguments between the interpreter and ``-m monai.bundle`` (e.g. ``torch.distributed.run``'s
            ``["-m", "torch.distributed.run", "--nproc_per_node=2"]``).
    """
    cmd = [python or sys.executable, *(launcher or []), "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", repr([str(c) for c in configs])]
    for k, v in (overrides or {}).items():
        cmd += [f"--{k}", v if isinstance(v, str) else str(v)]
    return cmd


def run_bundle_workflow(configs: Sequence[str | os.PathLike], overrides: Mapping | None = None, *,
                        run_id: str | None = None, cwd: str | os.PathLike | None = None, env: Mapping | None = None,
                        log: str | os.PathLike | None = None, timeout: float | None = None, check: bool = True,
                        python: str | None = None, launcher: Sequence[str] | None = None) -> WorkflowRun:
    """Run ``python -m monai.bundle run`` as a user does (the command of :func:`bundle_command`), with no stdin.

    The one place that builds and runs a bundle workflow for the demo, the benchmarks, the PACS client, the MONAI
    Label app and the tests.

    Args:
        configs, overrides, run_id, python, launcher: as :func:`bundle_command`.
        cwd: working folder (default: the repository root).
        env: environment (default: :func:`bundle_env`).
        log: a file that receives the command line, then stdout and stderr together; ``None``: both are captured
            as text.
        timeout: seconds (``subprocess.TimeoutExpired`` past it).
        check: raise on a non-zero exit.

    Returns:
        the finished process with its wall time (``seconds``).

    Raises:
        RuntimeError: ``check`` and the workflow failed (the message gives the command, then the log file or the
            end of the output).
    """
    import shlex
    import time

    cmd = bundle_command(configs, overrides, run_id, python, launcher)
    kwargs = dict(cwd=str(cwd or REPO), env=dict(env) if env is not None else bundle_env(), stdin=subprocess.DEVNULL,
                  timeout=timeout, text=True)
    start = time.perf_counter()
    if log is not None:
        with open(log, "w") as f:
            f.write(shlex.join(cmd) + "\n\n")  # the log says what made it
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kwargs)
    else:
        proc = subprocess.run(cmd, capture_output=True, **kwargs)
    run = WorkflowRun(proc, time.perf_counter() - start)
    if check and run.returncode != 0:
        where = f"see {log}" if log is not None else run.output[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {run.returncode}): {where}")
    return run
