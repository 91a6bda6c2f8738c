"""Check that the bundles of this collection follow the bundle conventions.

Usage (from anywhere; the repository root is found from this file)::

    python tools/check_bundle.py                      # every folder in bundles/
    python tools/check_bundle.py bundles/<name> ...   # selected bundles
    python tools/check_bundle.py --skip export,verify # leave out slow rules

Every rule has a name (see :data:`RULES`); each problem is printed as
``<bundle name>: [<rule>] <message>`` followed by a summary, and the exit code is 1 when any
problem was found. Rules run independently: an exception inside one rule becomes a problem of
that rule and the other rules still run.

From Python::

    problems = check_bundle("bundles/<name>", skip=("ckpt-export",))
    report = run_checks("bundles/<name>")   # problems plus informational notes (export mode)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
SUBPROCESS_TIMEOUT_S = 1800

REQUIRED_FILES = (
    "LICENSE",
    "configs/metadata.json",
    "configs/inference.json",
    "configs/train.json",
    "configs/quick.json",
    "docs/README.md",
    "large_files.yml",
)

# metadata field -> name of the package pinned in requirements.txt
VERSION_FIELDS = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}

# config ids that point to folders a workflow writes to; redirected to a temporary folder when
# the workflow properties are checked, so that checking never writes into the bundle
REDIRECTED_DIRS = ("dataset_dir", "output_dir", "ckpt_dir", "log_dir")

SKIP_ALIASES = {
    "export": "ckpt-export",
    "verify": "verify-net-in-out",
    "properties": "workflow-properties",
    "schema": "metadata-schema",
}


# the MONAI meta schema (2024-07-25) kept in the repository: given to monai.bundle.verify_metadata as the
# schema file, which it then reads instead of downloading the metadata's `schema` URL
META_SCHEMA = REPO_ROOT / "tools" / "schema" / "meta_schema_20240725.json"
# its hash: the file stands for one published schema version and must not drift (update both together)
META_SCHEMA_SHA256 = "3df854b12e5ed83ef6c2906c174f13bf42f463c44461ba5f2cf8315cbeccce31"


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """One finding of one rule for one bundle; ``skipped`` marks a documented opt-out, not a failure."""

    bundle: str
    rule: str
    message: str
    skipped: bool = False

    def __str__(self) -> str:
        prefix = "skipped: " if self.skipped else ""
        return f"{self.bundle}: [{self.rule}] {prefix}{self.message}"


@dataclass
class BundleReport:
    """Everything :func:`run_checks` found for one bundle: problems (and skips) plus notes."""

    bundle: str
    problems: list[Problem] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[Problem]:
        """Problems that are not opt-outs."""
        return [p for p in self.problems if not p.skipped]


class RuleSkipped(Exception):
    """Raised by a rule when the bundle opts out of it; the message is the reason."""


class BundleContext:
    """Paths and lazily loaded files of one bundle, shared by the rules."""

    def __init__(self, path: str | os.PathLike, requirements: str | os.PathLike = REQUIREMENTS) -> None:
        self.path = Path(path).resolve()
        self.name = self.path.name
        self.requirements = Path(requirements)
        self.notes: dict[str, str] = {}

    def config(self, name: str) -> Path:
        """Path of ``configs/<name>`` of this bundle."""
        return self.path / "configs" / name

    @cached_property
    def metadata(self) -> dict:
        """Content of ``configs/metadata.json``."""
        with open(self.config("metadata.json")) as f:
            return json.load(f)

    @cached_property
    def pins(self) -> dict[str, str]:
        """``name==version`` pins of the repository's requirements.txt (normalized names)."""
        return read_pins(self.requirements)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def normalize_name(name: str) -> str:
    """Normalize a package name the way pip compares names (case, ``_`` and ``.`` as ``-``)."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def read_pins(path: str | os.PathLike) -> dict[str, str]:
    """Read the exact pins (``name==version``) of a requirements file."""
    pins: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if match:
            pins[normalize_name(match.group(1))] = match.group(2)
    return pins


def ensure_repo_on_path() -> None:
    """Make ``custom_components`` importable in this process (configs import it)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def subprocess_env() -> dict[str, str]:
    """Environment for ``python -m monai.bundle`` subprocesses: repository root on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def error_summary(output: str, limit: int = 400) -> str:
    """The last exception line of a traceback in ``output`` (or its last lines), shortened."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", line)]
    text = errors[-1] if errors else " | ".join(lines[-3:])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_exception(e: BaseException, limit: int = 400) -> str:
    """``Type: message`` of an exception on one line, with its root cause when it was chained."""

    def one_line(x: BaseException) -> str:
        text = f"{type(x).__name__}: " + " | ".join(s.strip() for s in str(x).splitlines() if s.strip())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    root, seen = e, {id(e)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        root = nxt
        seen.add(id(nxt))
    return one_line(e) if root is e else f"{one_line(e)} (caused by {one_line(root)})"


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of the named loggers to ``level`` for the duration of the block."""
    loggers = [logging.getLogger(name) for name in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, old in zip(loggers, before):
            lg.setLevel(old)


def run_monai_bundle(args: Sequence[str]) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def eval_dim(expr: str, n: int = 1, p: int = 1) -> int:
    """Evaluate a spatial-shape expression such as ``"16*n"`` or ``"2**p"`` without ``eval``."""
    operators: dict[type, Callable[[int, int], int]] = {
        ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b,
        ast.Pow: lambda a, b: a**b,
        ast.FloorDiv: lambda a, b: a // b,
    }

    def visit(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in ("n", "p"):
            return n if node.id == "n" else p
        if isinstance(node, ast.BinOp) and type(node.op) in operators:
            return operators[type(node.op)](visit(node.left), visit(node.right))
        raise ValueError(f"unsupported spatial_shape expression: {expr!r}")

    return visit(ast.parse(expr.strip(), mode="eval"))


def concrete_spatial_shape(
    spatial_shape: Sequence[int | str], accepts: Callable[[tuple[int, ...]], bool] | None = None
) -> tuple[int, ...]:
    """Smallest concrete shape for a metadata ``spatial_shape``.

    Integers stay, expressions in ``n``/``p`` use ``n = p = 1`` (their smallest valid size) and
    ``"*"`` entries take the smallest of 1, 2, 4, ..., 512 for which ``accepts(shape)`` is true.
    """
    dims: list[int | None] = [
        None if d == "*" else (d if isinstance(d, int) else eval_dim(str(d))) for d in spatial_shape
    ]
    if None not in dims:
        return tuple(int(d) for d in dims)  # type: ignore[arg-type]
    for size in (2**i for i in range(10)):
        shape = tuple(size if d is None else int(d) for d in dims)
        if accepts is None or accepts(shape):
            return shape
    raise ValueError(f"no size in 1..512 works for the '*' entries of spatial_shape {list(spatial_shape)}")


def flatten_outputs(out: Any) -> list:
    """Tensors of a network output (tensor, sequence or mapping), in a fixed order."""
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in flatten_outputs(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in flatten_outputs(item)]
    return [out]


def load_network(ctx: BundleContext) -> Any:
    """Instantiate ``network_def`` of ``inference.json`` (with the metadata as ``_meta_``), in eval mode."""
    ensure_repo_on_path()
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=str(ctx.config("inference.json")))
    parser.read_meta(f=str(ctx.config("metadata.json")))
    return parser.get_parsed_content("network_def").eval()


# --------------------------------------------------------------------------------------------
# rules: each takes the bundle context and returns a list of problem messages
# --------------------------------------------------------------------------------------------
def rule_files(ctx: BundleContext) -> list[str]:
    """The files every bundle needs (``LICENSE`` with that exact name)."""
    missing = []
    for rel in REQUIRED_FILES:
        parent, name = (ctx.path / rel).parent, Path(rel).name
        if not (parent.is_dir() and name in os.listdir(parent) and (parent / name).is_file()):
            missing.append(f"missing file {rel}")
    return missing


def rule_metadata_schema(ctx: BundleContext) -> list[str]:
    """``metadata.json`` against the MONAI meta schema (2024-07-25) with ``monai.bundle.verify_metadata``.

    The schema file is the one kept in ``tools/schema/``; it must exist, as ``verify_metadata`` downloads the
    metadata's ``schema`` URL to a missing file. ``verify_metadata`` stops at the first (best matching) error.
    """
    import jsonschema
    from monai.bundle import verify_metadata

    schema_url = ctx.metadata.get("schema")  # also makes a missing or unreadable metadata.json this rule's problem
    if not META_SCHEMA.is_file():
        raise FileNotFoundError(f"the kept meta schema {META_SCHEMA} is missing (checking never downloads it)")
    problems = []
    if isinstance(schema_url, str) and schema_url.rsplit("/", 1)[-1] != META_SCHEMA.name:
        problems.append(f"schema: {schema_url!r} is not the meta schema checked here ({META_SCHEMA.name})")
    try:
        with quiet_loggers("monai.bundle.scripts", "monai.apps"):  # its argument summary and "verified" lines
            verify_metadata(meta_file=str(ctx.config("metadata.json")), filepath=str(META_SCHEMA), create_dir=False,
                            hash_val=META_SCHEMA_SHA256, hash_type="sha256")
    except ValueError as e:
        error = e.__cause__
        if isinstance(error, jsonschema.ValidationError):
            problems.append(f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}")
        else:  # e.g. no `schema` field at all
            problems.append(str(e))
    return problems


def rule_changelog(ctx: BundleContext) -> list[str]:
    """``changelog`` exists and has an entry for the current ``version``."""
    meta = ctx.metadata
    changelog, version = meta.get("changelog"), meta.get("version")
    if not isinstance(changelog, dict):
        return ["metadata has no 'changelog' object"]
    if version not in changelog:
        return [f"changelog has no entry for the current version {version!r}"]
    return []


def rule_data_format(ctx: BundleContext) -> list[str]:
    """``network_data_format.inputs.image`` and ``outputs.pred`` exist with a ``channel_def``."""
    fmt = ctx.metadata.get("network_data_format") or {}
    problems = []
    for side, key in (("inputs", "image"), ("outputs", "pred")):
        entry = (fmt.get(side) or {}).get(key)
        if not isinstance(entry, dict):
            problems.append(f"network_data_format.{side}.{key} is missing")
        elif not isinstance(entry.get("channel_def"), dict):
            problems.append(f"network_data_format.{side}.{key} has no channel_def")
    return problems


def rule_versions(ctx: BundleContext) -> list[str]:
    """Versions named in the metadata equal the pins of the repository's requirements.txt."""
    meta, pins = ctx.metadata, ctx.pins
    named = [(f, meta.get(f), pkg) for f, pkg in VERSION_FIELDS.items()]
    named += [
        (f"required_packages_version.{pkg}", version, pkg)
        for pkg, version in (meta.get("required_packages_version") or {}).items()
    ]
    return [
        f"{field_name} is {value!r} but requirements.txt pins {pkg}=={pins[normalize_name(pkg)]}"
        for field_name, value, pkg in named
        if normalize_name(pkg) in pins and str(value) != pins[normalize_name(pkg)]
    ]


def rule_verify_net_in_out(ctx: BundleContext) -> list[str]:
    """``python -m monai.bundle verify_net_in_out network_def`` succeeds."""
    result = run_monai_bundle(
        [
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            str(ctx.config("metadata.json")),
            "--config_file",
            str(ctx.config("inference.json")),
        ]
    )
    if result.returncode != 0:
        return [f"verify_net_in_out failed: {error_summary(result.stderr + result.stdout)}"]
    return []


def _checkpoint(ctx: BundleContext, workdir: Path) -> Path:
    """``models/model.pt`` of the bundle, or the random weights of ``network_def`` saved in ``workdir``."""
    import torch

    ckpt = ctx.path / "models" / "model.pt"
    if ckpt.is_file():
        return ckpt
    ckpt = workdir / "model.pt"
    torch.save(load_network(ctx).state_dict(), ckpt)
    return ckpt


def _export_input_shape(ctx: BundleContext, net: Any) -> list[int]:
    """``[1, C, *spatial]`` for tracing, from ``network_data_format.inputs.image``."""
    import torch

    image = ctx.metadata["network_data_format"]["inputs"]["image"]
    channels = int(image["num_channels"])

    def accepts(shape: tuple[int, ...]) -> bool:
        try:
            with torch.no_grad():
                net(torch.rand(1, channels, *shape))
            return True
        except Exception:
            return False

    return [1, channels, *concrete_spatial_shape(image["spatial_shape"], accepts)]


def _compare_torchscript(ts_file: Path, net: Any, input_shape: list[int]) -> str | None:
    """Run the exported and the eager network on one random input; a message when they differ."""
    import torch

    ts_net = torch.jit.load(str(ts_file), map_location="cpu").eval()
    x = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = flatten_outputs(net(x)), flatten_outputs(ts_net(x))
    if len(expected) != len(got):
        return f"TorchScript returns {len(got)} tensors, the eager network {len(expected)}"
    for i, (a, b) in enumerate(zip(expected, got)):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            diff = (a - b).abs().max().item() if a.shape == b.shape else f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
            return f"TorchScript output {i} differs from the eager network ({diff})"
    return None


def _try_export(ctx: BundleContext, ckpt: Path, out: Path, mode: str, input_shape: list[int]) -> str | None:
    """Export with ``ckpt_export`` in ``mode`` ("script" or "trace"); a message when it fails."""
    args = [
        "ckpt_export",
        "network_def",
        "--filepath",
        str(out),
        "--ckpt_file",
        str(ckpt),
        "--meta_file",
        str(ctx.config("metadata.json")),
        "--config_file",
        str(ctx.config("inference.json")),
    ]
    if mode == "trace":
        args += ["--use_trace", "True", "--input_shape", json.dumps(input_shape)]
    result = run_monai_bundle(args)
    if result.returncode != 0 or not out.is_file():
        return f"ckpt_export failed: {error_summary(result.stderr + result.stdout)}"
    return None


def rule_ckpt_export(ctx: BundleContext) -> list[str]:
    """TorchScript export with ``ckpt_export`` (scripting, then tracing) reproduces the eager network."""
    import torch

    export = ctx.metadata.get("export") or {}
    if export.get("torchscript") is False:
        raise RuleSkipped(export.get("reason") or "metadata 'export.torchscript' is false (no reason given)")
    with tempfile.TemporaryDirectory(prefix=f"check_{ctx.name}_") as tmp:
        workdir = Path(tmp)
        ckpt = _checkpoint(ctx, workdir)
        net = load_network(ctx)
        net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        input_shape = _export_input_shape(ctx, net)
        failures = []
        for mode in ("script", "trace"):
            out = workdir / f"model_{mode}.ts"
            try:
                error = _try_export(ctx, ckpt, out, mode, input_shape) or _compare_torchscript(out, net, input_shape)
            except Exception as e:  # a failure of one mode must not hide the other
                error = describe_exception(e)
            if error is None:
                ctx.notes["ckpt-export"] = f"torchscript export works with {mode} (input {input_shape})"
                return []
            failures.append(f"{mode}: {error}")
    return ["TorchScript export failed with every mode; " + "; ".join(failures)]


def _provide_weights(workflow: Any) -> None:
    """An inference workflow's ``initialize`` may insist on trained weights (``ckpt_path``, in the redirected
    ``ckpt_dir``): give it the random weights of its own ``network_def`` there, so properties can be checked."""
    import torch

    if "ckpt_path" not in workflow.parser or "network_def" not in workflow.parser:
        return
    ckpt = Path(workflow.parser.get_parsed_content("ckpt_path"))
    if ckpt.exists() or not ckpt.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve()):
        return  # only ever write inside the checker's temporary folder
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(workflow.parser.get_parsed_content("network_def", instantiate=True).state_dict(), ckpt)


def _workflow_check(ctx: BundleContext, config: Path, workflow_type: str, workdir: Path) -> list[str]:
    """Missing/wrong properties of one config for one workflow type (empty when it is fine)."""
    ensure_repo_on_path()
    from monai.bundle import ConfigParser, ConfigWorkflow
    from monai.utils import BundleProperty, BundlePropertyConfig

    content = ConfigParser.load_config_file(str(config))
    overrides = {k: str(workdir / workflow_type / k) for k in REDIRECTED_DIRS if k in content}
    workflow = ConfigWorkflow(
        config_file=str(config),
        meta_file=str(ctx.config("metadata.json")),
        logging_file=False,
        workflow_type=workflow_type,
        **overrides,
    )
    # check_properties() raises KeyError on the first required id absent from the config, so
    # list all of them first; it also needs an initialized workflow (it parses every property)
    missing = [
        name
        for name, prop in workflow.properties.items()
        if prop.get(BundleProperty.REQUIRED, False) and prop[BundlePropertyConfig.ID] not in workflow.parser
    ]
    if missing:
        return [f"{config.name} ({workflow_type}): required properties missing: {missing}"]
    _provide_weights(workflow)
    workflow.initialize()
    wrong = workflow.check_properties()
    if wrong:
        return [f"{config.name} ({workflow_type}): check_properties() returned {wrong}"]
    return []


def rule_workflow_properties(ctx: BundleContext) -> list[str]:
    """``ConfigWorkflow(...).check_properties()`` is empty for train.json (train) and inference.json (infer)."""
    problems = []
    with tempfile.TemporaryDirectory(prefix=f"check_{ctx.name}_") as tmp:
        for config_name, workflow_type in (("train.json", "train"), ("inference.json", "infer")):
            try:
                problems += _workflow_check(ctx, ctx.config(config_name), workflow_type, Path(tmp))
            except Exception as e:  # one workflow failing must not hide the other
                problems.append(f"{config_name} ({workflow_type}): {describe_exception(e)}")
    return problems


RULES: dict[str, Callable[[BundleContext], list[str]]] = {
    "files": rule_files,
    "metadata-schema": rule_metadata_schema,
    "changelog": rule_changelog,
    "data-format": rule_data_format,
    "versions": rule_versions,
    "verify-net-in-out": rule_verify_net_in_out,
    "ckpt-export": rule_ckpt_export,
    "workflow-properties": rule_workflow_properties,
}


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------
def resolve_skip(skip: Iterable[str]) -> set[str]:
    """Rule names from ``skip`` entries (comma-separated lists and short aliases allowed)."""
    names = {SKIP_ALIASES.get(s.strip(), s.strip()) for item in skip for s in item.split(",") if s.strip()}
    unknown = names - set(RULES)
    if unknown:
        raise ValueError(f"unknown rule(s) {sorted(unknown)}; rules are {list(RULES)}")
    return names


def run_checks(
    path: str | os.PathLike, skip: Iterable[str] = (), requirements: str | os.PathLike = REQUIREMENTS
) -> BundleReport:
    """Run every rule not in ``skip`` on the bundle at ``path``; problems, skips and notes."""
    ctx = BundleContext(path, requirements)
    report = BundleReport(bundle=ctx.name)
    skipped = resolve_skip(skip)
    for rule, check in RULES.items():
        if rule in skipped:
            continue
        try:
            messages = check(ctx)
        except RuleSkipped as e:
            report.problems.append(Problem(ctx.name, rule, str(e), skipped=True))
            continue
        except Exception as e:
            messages = [f"could not run the check: {describe_exception(e)}"]
        report.problems += [Problem(ctx.name, rule, m) for m in messages]
    report.notes = dict(ctx.notes)
    return report


def check_bundle(path: str | os.PathLike, skip: Iterable[str] = ()) -> list[Problem]:
    """Problems of the bundle at ``path`` (opt-outs included, with ``skipped=True``)."""
    return run_checks(path, skip).problems


def default_bundles() -> list[Path]:
    """Every bundle folder in ``bundles/``."""
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p for p in BUNDLES_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit code (1 when any bundle has a problem)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="*", help="bundle folders (default: every folder in bundles/)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help=f"rule(s) to leave out, repeatable or comma-separated: {', '.join(RULES)} "
        f"(aliases: {', '.join(SKIP_ALIASES)})",
    )
    args = parser.parse_args(argv)
    try:
        resolve_skip(args.skip)
    except ValueError as e:
        parser.error(str(e))
    paths = [Path(b) for b in args.bundles] or default_bundles()
    failures = skips = 0
    for path in paths:
        report = run_checks(path, args.skip)
        for rule, note in report.notes.items():
            print(f"{report.bundle}: [{rule}] ok: {note}")
        for problem in report.problems:
            print(problem)
        failures += len(report.failures)
        skips += len(report.problems) - len(report.failures)
    print(f"checked {len(paths)} bundle(s): {failures} problem(s), {skips} skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
