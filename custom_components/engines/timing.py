"""Where the wall time of one inference run goes: start-up, reading, preprocessing, forward passes, postprocessing,
writing (``tools/benchmark_inference.py``, issue 18).

The instrumentation is attached by a config overlay (:func:`timing_overlay`) to an unchanged ``inference.json``, so
the run is the bundle's documented ``python -m monai.bundle run``. Everything is measured with the wall clock in the
workflow's main process; the pieces are:

- :func:`mark`: a timestamp under a label. The overlay puts one between the expressions of ``initialize`` (each
  check, the dataset and text-embedding steps of start-up is timed on its own); importing this module records one too
  (the overlay makes it the first of the config's ``imports``), and the process start comes from the environment
  variable :data:`START_ENV` (the benchmark sets it to ``time.time()`` just before starting the process) or else from
  ``/proc/self/stat``.
- :class:`TimedCompose`: runs a MONAI ``Compose`` one transform at a time (``compose(data, start=i, end=i + 1)``, the
  same calls ``Compose`` makes) and times each. The ``Compose`` and its transforms are not changed, so ``Invertd`` still
  inverts the original preprocessing. In data-loader worker processes the times are appended to one file per process
  in a spool folder, read back by the main process at the end.
- :class:`InferenceTimer`: an ignite handler on the evaluator (first of its ``handlers``, so its ``STARTED`` comes
  before the weights are loaded) that records the engine's events (getting each batch, the iteration, the end of the
  forward pass, the end of postprocessing), times every call of the network with forward hooks (synchronising CUDA
  around each call when the network is on a GPU), times ``StagedOutputDir.commit`` (the predictions moved into place)
  and writes everything as JSON (:meth:`InferenceTimer.finish`).
- :func:`split_phases`: the JSON of a run (plus the process start and end seen by the caller) as phases that add up
  to the time from the process start to the predictions in place (:data:`PHASES`), and the process's exit after
  that.

MONAI's own profilers were considered first: ``monai.utils.WorkflowProfiler`` traces every Python call with
``sys.settrace`` (its documentation warns that the times do not reflect real performance), counts nested
``Compose``/``Transform`` calls twice and is unreliable across data-loader workers; ignite's ``BasicTimeProfiler``
times data loading and the whole processing function, which holds the forward pass, postprocessing and writing
together. Neither separates the parts this benchmark needs.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["START_ENV", "PHASES", "mark", "clear_marks", "process_start_time", "TimedCompose", "InferenceTimer",
           "split_phases", "timing_overlay"]

#: environment variable holding the ``time.time()`` at which the measuring tool started the workflow process
START_ENV = "CUSTOM_COMPONENTS_TIMING_T0"

#: the phases of :func:`split_phases`, in the order of a run; they add up to the time from the process start to the
#: predictions in place
PHASES = ("startup", "loader_start", "reading", "preprocessing", "forward", "inferer_other", "postprocessing",
          "writing", "rest")

#: class-name fragments of the transforms counted as reading (preprocessing) and writing (postprocessing)
READERS = ("LoadImage",)
WRITERS = ("SaveImage",)

IMPORTED_AT = time.time()
_MARKS: list[tuple[str, float]] = []


def mark(label: str) -> None:
    """Record ``time.time()`` under ``label`` (kept in this process, in order, for :meth:`InferenceTimer.finish`)."""
    _MARKS.append((str(label), time.time()))


def clear_marks() -> None:
    """Forget the marks recorded so far (for a second run in the same process)."""
    _MARKS.clear()


def process_start_time() -> float | None:
    """``time.time()`` at which this process was started: :data:`START_ENV` when set, else the start time in
    ``/proc/self/stat`` (clock ticks after boot, to 10 ms), else ``None``."""
    value = os.environ.get(START_ENV)
    if value:
        try:
            return float(value)
        except ValueError:
            pass
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 (starttime); the first two fields precede the split
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _kind(name: str, phase: str) -> str:
    """``reading``/``writing`` for the reader/writer transforms, else the compose's phase."""
    if phase == "preprocessing" and any(r in name for r in READERS):
        return "reading"
    if phase == "postprocessing" and any(w in name for w in WRITERS):
        return "writing"
    return phase


class TimedCompose:
    """A MONAI ``Compose`` run one transform at a time, each call timed (wall clock).

    Used in place of the ``Compose`` where it is called (a dataset's ``transform``, an evaluator's
    ``postprocessing``); the ``Compose`` object itself is unchanged and stays what ``Invertd`` inverts. Running it
    step by step makes the same transform calls (a ``Compose`` with ``lazy=True`` would apply its pending operations
    after every step; no bundle uses one).

    Args:
        compose: the ``Compose`` (anything else callable is timed as one step).
        phase: ``"preprocessing"`` or ``"postprocessing"`` (the transforms named in :data:`READERS` /
            :data:`WRITERS` count as reading / writing).
        spool_dir: folder where processes other than the one that built this object (data-loader workers) append
            their times, one ``<phase>-<pid>.jsonl`` file each.
    """

    def __init__(self, compose: Callable, phase: str, spool_dir: str | os.PathLike | None = None) -> None:
        from monai.transforms import Compose

        self.compose = compose
        self.phase = str(phase)
        self.spool_dir = None if spool_dir is None else str(spool_dir)
        self.owner_pid = os.getpid()
        self.stepwise = isinstance(compose, Compose)
        steps = compose.transforms if self.stepwise else [compose]
        self.names = [f"{i}:{type(t).__name__}" for i, t in enumerate(steps)]
        self.records: list[tuple[str, float]] = []

    def __call__(self, data):
        times = []
        for i, name in enumerate(self.names):
            start = time.perf_counter()
            data = self.compose(data, start=i, end=i + 1) if self.stepwise else self.compose(data)
            times.append((name, time.perf_counter() - start))
        if os.getpid() == self.owner_pid:
            self.records.extend(times)
        elif self.spool_dir is not None:
            with open(os.path.join(self.spool_dir, f"{self.phase}-{os.getpid()}.jsonl"), "a") as f:
                f.write("".join(json.dumps({"transform": n, "seconds": s}) + "\n" for n, s in times))
        return data

    def summary(self) -> dict[str, dict]:
        """Per transform: ``calls``, ``seconds`` (summed over calls), ``kind`` (reading/preprocessing/
        postprocessing/writing) and ``process`` (``main``, ``workers``, or ``main+workers``)."""
        out: dict[str, dict] = {n: {"calls": 0, "seconds": 0.0, "kind": _kind(n, self.phase), "where": set()}
                                for n in self.names}

        def add(name: str, seconds: float, where: str) -> None:
            entry = out.setdefault(name, {"calls": 0, "seconds": 0.0, "kind": _kind(name, self.phase),
                                          "where": set()})
            entry["calls"] += 1
            entry["seconds"] += float(seconds)
            entry["where"].add(where)

        for name, seconds in self.records:
            add(name, seconds, "main")
        if self.spool_dir is not None and os.path.isdir(self.spool_dir):
            for path in sorted(Path(self.spool_dir).glob(f"{self.phase}-*.jsonl")):
                for line in path.read_text().splitlines():
                    if line.strip():
                        rec = json.loads(line)
                        add(rec["transform"], rec["seconds"], "workers")
        for entry in out.values():
            entry["process"] = "+".join(sorted(entry.pop("where"))) or None
        return out


class InferenceTimer:
    """Ignite handler recording where the time of an evaluator run goes; writes the record as JSON to ``path``.

    Attach it first among the evaluator's handlers (:func:`timing_overlay` does), wrap the dataset's and the
    evaluator's composes with :meth:`timed`, watch the staged output with :meth:`watch_commit`, and call
    :meth:`finish` after the run. What it records (wall clock, ``time.time()`` for events, ``time.perf_counter()``
    for durations):

    - marks: the process start (:func:`process_start_time`), this module's import, the :func:`mark` calls, the
      engine's ``STARTED`` (before the weights are loaded), ``EPOCH_STARTED`` (after), the first
      ``GET_BATCH_STARTED``, ``COMPLETED``, the start and end of ``StagedOutputDir.commit`` and the end of the run;
    - per iteration: the time waiting for the batch, from ``ITERATION_STARTED`` to ``FORWARD_COMPLETED`` (prepare
      batch + inferer), the network calls within it (seconds, count, items), from ``FORWARD_COMPLETED`` to
      ``MODEL_COMPLETED`` (decollate + postprocessing, writing included), the input's shape;
    - per transform of the timed composes: calls and seconds (:meth:`TimedCompose.summary`);
    - every network call: its input shape, whether gradients were enabled, inference mode, train mode.

    Args:
        path: the JSON file written by :meth:`finish`.
        network: the module the inferer calls (forward hooks time each call); ``None``: forward passes are not
            separated from the inferer.
        spool_dir: where data-loader workers leave their transform times (default ``<path>.workers``).
    """

    def __init__(self, path: str | os.PathLike, network=None, spool_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.spool_dir = Path(spool_dir) if spool_dir is not None else Path(f"{self.path}.workers")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for old in self.spool_dir.glob("*.jsonl"):
            old.unlink()
        self.network = network
        self.marks: dict[str, float] = {}
        self.composes: dict[str, TimedCompose] = {}
        self.iterations: list[dict] = []
        self.calls: list[dict] = []  # network calls outside an iteration
        self._current: dict | None = None
        self._batch_started: float | None = None
        self._last_wait: float | None = None
        self._forward_start: float | None = None
        self._cuda: bool | None = None
        self._post_seen = 0
        self.loader_workers: int | None = None
        if network is not None:
            network.register_forward_pre_hook(self._pre_forward)
            network.register_forward_hook(self._post_forward)

    # --- wiring ---------------------------------------------------------------------------------------------------
    def timed(self, compose: Callable, phase: str) -> TimedCompose:
        """``compose`` wrapped in a :class:`TimedCompose` whose times this timer reports under ``phase``."""
        wrapped = TimedCompose(compose, phase, self.spool_dir)
        self.composes[phase] = wrapped
        return wrapped

    def watch_commit(self, staged_output) -> None:
        """Time ``staged_output.commit()`` (moving the predictions into ``output_dir``) as part of writing."""
        commit = staged_output.commit

        def timed_commit(*args, **kwargs):
            self.marks.setdefault("commit_started", time.time())
            try:
                return commit(*args, **kwargs)
            finally:
                self.marks["commit_completed"] = time.time()

        staged_output.commit = timed_commit

    def attach(self, engine) -> None:
        """Register the event handlers on ``engine`` (a MONAI evaluator)."""
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(Events.STARTED, self._mark, "engine_started")
        engine.add_event_handler(Events.EPOCH_STARTED, self._mark, "epoch_started")
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._get_batch_completed)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._stamp, "forward_completed")
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self._stamp, "model_completed")
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._mark, "engine_completed")
        loader = getattr(engine, "data_loader", None)
        self.loader_workers = getattr(loader, "num_workers", None)

    # --- event handlers -------------------------------------------------------------------------------------------
    def _mark(self, engine, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def _get_batch_started(self, engine) -> None:
        self._batch_started = time.time()
        self.marks.setdefault("first_get_batch", self._batch_started)

    def _get_batch_completed(self, engine) -> None:
        if self._batch_started is not None:
            self._last_wait = time.time() - self._batch_started
        self._batch_started = None

    def _iteration_started(self, engine) -> None:
        batch = engine.state.batch
        image = batch.get("image") if isinstance(batch, Mapping) else None
        self._current = {
            "wait": self._last_wait,
            "started": time.time(),
            "shape": list(image.shape) if hasattr(image, "shape") else None,
            "calls": [],
        }
        self._last_wait = None

    def _stamp(self, engine, name: str) -> None:
        if self._current is not None:
            self._current[name] = time.time()

    def _iteration_completed(self, engine) -> None:
        it = self._current
        if it is None:
            return
        it["completed"] = time.time()
        post = self.composes.get("postprocessing")
        if post is not None:  # the postprocessing transforms of this iteration (they run in this process)
            it["post_transforms"] = [[n, s] for n, s in post.records[self._post_seen:]]
            self._post_seen = len(post.records)
        self.iterations.append(it)
        self._current = None

    # --- forward hooks --------------------------------------------------------------------------------------------
    def _synchronize(self, module) -> None:
        if self._cuda is None:
            self._cuda = any(p.is_cuda for p in module.parameters())
        if self._cuda:
            import torch

            torch.cuda.synchronize()

    def _pre_forward(self, module, args) -> None:
        self._synchronize(module)
        self._forward_start = time.perf_counter()

    def _post_forward(self, module, args, output) -> None:
        import torch

        self._synchronize(module)
        seconds = time.perf_counter() - (self._forward_start or time.perf_counter())
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        call = {
            "seconds": seconds,
            "items": int(x.shape[0]) if x is not None and x.ndim else None,
            "shape": list(x.shape) if x is not None else None,
            "grad": torch.is_grad_enabled(),
            "inference_mode": torch.is_inference_mode_enabled(),
            "train_mode": bool(module.training),
        }
        (self._current["calls"] if self._current is not None else self.calls).append(call)

    # --- result ---------------------------------------------------------------------------------------------------
    def record(self) -> dict:
        """Everything recorded so far (what :meth:`finish` writes)."""
        import torch

        marks = {"process_start": process_start_time(), "imports": IMPORTED_AT, **self.marks}
        calls = [c for it in self.iterations for c in it["calls"]] + self.calls
        flags = {k: sorted({c[k] for c in calls}) for k in ("grad", "inference_mode", "train_mode")}
        device = None
        if self.network is not None:
            p = next(self.network.parameters(), None)
            device = str(p.device) if p is not None else None
        return {
            "version": 1,
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "device": device,
            "loader_workers": self.loader_workers,
            "marks": marks,
            "initialize": [[label, t] for label, t in _MARKS],
            "iterations": self.iterations,
            "calls_outside_iterations": self.calls,
            "forward_flags": flags,
            "transforms": {phase: c.summary() for phase, c in self.composes.items()},
        }

    def finish(self) -> dict:
        """Mark the end of the run and write :meth:`record` to ``path`` (a temporary file renamed into place)."""
        self.marks["finished"] = time.time()
        rec = self.record()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        os.replace(tmp, self.path)
        return rec


# --------------------------------------------------------------------------------------------------------------------
# the split
# --------------------------------------------------------------------------------------------------------------------
def _span(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def split_phases(record: Mapping, process_start: float | None = None, process_end: float | None = None) -> dict:
    """The time of a run from the process start to its predictions in place (``total``, end to end as issue 18
    defines it), as phases (:data:`PHASES`) that add up to it, from an :class:`InferenceTimer` record.

    Args:
        record: what :meth:`InferenceTimer.finish` wrote.
        process_start: ``time.time()`` at the process start (default: the record's ``process_start`` mark; when
            neither is known the total starts at this module's import).
        process_end: ``time.time()`` when the process had exited (default: the end of the run).

    Returns:
        ``{"total", "phases", "exit", "process_total", "startup_detail", "data_wait", "forward_calls",
        "forward_items", "first_forward", "mean_forward_after_first", "after_startup",
        "after_startup_over_forward", "notes"}``, in seconds. ``total`` ends when the predictions are in place
        (``StagedOutputDir.commit`` done; the end of the run when there is none); ``exit`` is the time after that
        until the process has ended (what a caller waiting for the command also waits for), ``process_total`` the
        two together. The phases:

        - ``startup``: process start -> the first item is asked for: interpreter and imports (torch, MONAI,
          custom_components, reading the configs), the config's other imports, each ``initialize`` step, building
          the network, data loader, inferer and evaluator, loading the weights (``startup_detail`` lists them);
        - ``loader_start``: creating the data-loader iterator (starting its worker processes);
        - ``reading`` and ``preprocessing``: the time spent waiting for the batches. With the transforms in this
          process (``num_workers=0``) they are the times of the reader (``LoadImage``) and of the other transforms;
          with workers, the wait is split in proportion to the workers' reader and other transform times;
        - ``forward``: the network calls (forward hooks);
        - ``inferer_other``: the rest of the inferer (preparing the batch, sliding-window or slice cutting and
          stitching, resizing, ...);
        - ``postprocessing``: decollating and the postprocessing transforms other than the writer;
        - ``writing``: the writer transform (``SaveImage``) and moving the predictions into place;
        - ``rest``: what is left (event handlers, ending the engine and its data loader, the data loader's own
          overhead); the phases add up to ``total`` by construction, and ``rest`` is negative only if the others
          over-count.
    """
    m = dict(record["marks"])
    t0 = process_start if process_start is not None else m.get("process_start")
    end_of_run = m["finished"]
    t_end = process_end if process_end is not None else end_of_run
    origin = t0 if t0 is not None else m["imports"]
    iterations = record.get("iterations", [])
    notes: list[str] = []

    # start-up, step by step
    detail: list[list] = []
    if t0 is not None:
        detail.append(["interpreter, imports (torch, MONAI, custom_components), reading the configs",
                       _span(t0, m["imports"])])
    else:
        notes.append("process start unknown: start-up counted from the config's imports")
    inits = [(str(label), float(t)) for label, t in record.get("initialize", [])]
    inits = [(label, t) for label, t in inits if t >= m["imports"]]
    previous, previous_label = m["imports"], "the config's other imports"
    for label, t in inits:
        detail.append([previous_label, t - previous])
        previous, previous_label = t, label
    engine_started = m.get("engine_started", end_of_run)
    epoch_started = m.get("epoch_started", engine_started)
    if inits and inits[-1][0].startswith("initialize done"):
        previous_label = "building the network, data loader, inferer and evaluator"
    elif inits:
        previous_label += ", then building the network, data loader, inferer and evaluator"
    else:
        previous_label = "the config's other imports, initialize, building the network, data loader and evaluator"
    detail.append([previous_label, engine_started - previous])
    detail.append(["loading the weights (STARTED handlers: CheckpointLoader)", epoch_started - engine_started])
    startup = epoch_started - origin

    first_batch = m.get("first_get_batch", epoch_started)
    loader_start = first_batch - epoch_started

    # data: the main process's wait, split by the transform times
    wait = sum(it.get("wait") or 0.0 for it in iterations)
    pre = record.get("transforms", {}).get("preprocessing", {})
    read_s = sum(v["seconds"] for v in pre.values() if v["kind"] == "reading")
    prep_s = sum(v["seconds"] for v in pre.values() if v["kind"] == "preprocessing")
    in_workers = any("workers" in (v.get("process") or "") for v in pre.values())
    if not pre:
        reading, preprocessing = None, wait
        notes.append("preprocessing not timed per transform: the whole wait for batches is under preprocessing")
    elif in_workers and read_s + prep_s > 0:
        reading, preprocessing = wait * read_s / (read_s + prep_s), wait * prep_s / (read_s + prep_s)
        notes.append(f"transforms ran in data-loader workers ({read_s + prep_s:.3f} s of work); the main process "
                     f"waited {wait:.3f} s, split in proportion")
    else:
        reading, preprocessing = read_s, prep_s

    # the network and the inferer
    calls = [c for it in iterations for c in it.get("calls", [])]
    forward = sum(c["seconds"] for c in calls)
    inferer_total = sum(_span(it.get("started"), it.get("forward_completed")) or 0.0 for it in iterations)
    inferer_other = inferer_total - forward

    # postprocessing and writing
    post_total = sum(_span(it.get("forward_completed"), it.get("model_completed")) or 0.0 for it in iterations)
    post = record.get("transforms", {}).get("postprocessing", {})
    write_s = sum(v["seconds"] for v in post.values() if v["kind"] == "writing")
    commit = _span(m.get("commit_started"), m.get("commit_completed")) or 0.0
    postprocessing = post_total - write_s
    writing = write_s + commit
    if "commit_started" not in m:
        notes.append("moving the predictions into place was not timed (no StagedOutputDir watched)")

    files_in_place = m.get("commit_completed", end_of_run)
    total = files_in_place - origin
    phases = {"startup": startup, "loader_start": loader_start, "reading": reading, "preprocessing": preprocessing,
              "forward": forward, "inferer_other": inferer_other, "postprocessing": postprocessing,
              "writing": writing}
    phases["rest"] = total - sum(v for v in phases.values() if v is not None)
    after = total - startup
    first = calls[0]["seconds"] if calls else None
    return {
        "total": total,
        "phases": phases,
        "exit": t_end - files_in_place,
        "process_total": t_end - origin,
        "startup_detail": detail,
        "data_wait": wait,
        "forward_calls": len(calls),
        "forward_items": sum(c.get("items") or 0 for c in calls),
        "first_forward": first,
        "mean_forward_after_first": (forward - first) / (len(calls) - 1) if len(calls) > 1 else None,
        "after_startup": after,
        "after_startup_over_forward": after / forward if forward > 0 else None,
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------------------------------
# the overlay
# --------------------------------------------------------------------------------------------------------------------
def _step_name(expression: str) -> str:
    """A short name for an ``initialize`` expression: the function it calls (``check_datalist``, ...)."""
    text = str(expression).lstrip("$").strip()
    head = text.split("(", 1)[0]
    name = re.split(r"[.@]", head)[-1].strip()
    return name or text[:40]


def timing_overlay(config: Mapping, path: str | os.PathLike) -> dict:
    """A config overlay that times an inference workflow without changing what it does.

    Given the merged config of the run (``inference.json`` and whatever comes before the overlay), the overlay:

    - imports this module first of the config's ``imports``;
    - adds ``inference_timer`` (an :class:`InferenceTimer` writing ``path``, hooked on ``@network``) as the first of
      ``handlers``;
    - runs ``dataset#transform`` (``@preprocessing``) and ``evaluator#postprocessing`` (``@postprocessing``)
      through :meth:`InferenceTimer.timed` (the composes themselves are unchanged: ``Invertd`` is unaffected);
    - puts a :func:`mark` before every ``initialize`` expression and after the last;
    - watches ``@staged_output``'s commit before ``run`` and calls :meth:`InferenceTimer.finish` after it.

    Args:
        config: the merged config (a dict as ``ConfigParser.load_config_files`` returns).
        path: the JSON the timer writes.

    Raises:
        KeyError: the config lacks what the overlay hooks into (``handlers``, ``run``, ``dataset``, ``evaluator``,
            ``preprocessing``, ``postprocessing``, ``network``).
    """
    missing = [k for k in ("handlers", "run", "dataset", "evaluator", "preprocessing", "postprocessing", "network")
               if k not in config]
    if missing:
        raise KeyError(f"cannot time this workflow: the config has no {', '.join(missing)}")
    alias = "_inference_timing"
    initialize: list[str] = []
    for i, expression in enumerate(config.get("initialize", [])):
        initialize += [f"${alias}.mark({f'initialize {i}: {_step_name(expression)}'!r})", expression]
    initialize.append(f"${alias}.mark('initialize done')")
    overlay: dict = {
        "imports": [f"$import custom_components.engines.timing as {alias}", *config.get("imports", [])],
        "inference_timer": {"_target_": "custom_components.engines.timing.InferenceTimer", "path": str(path),
                            "network": "@network"},
        "dataset#transform": "$@inference_timer.timed(@preprocessing, 'preprocessing')",
        "evaluator#postprocessing": "$@inference_timer.timed(@postprocessing, 'postprocessing')",
        "handlers": ["@inference_timer", *config["handlers"]],
        "initialize": initialize,
        "run": [*(["$@inference_timer.watch_commit(@staged_output)"] if "staged_output" in config else []),
                *_as_list(config["run"]), "$@inference_timer.finish()"],
    }
    return overlay


def _as_list(value) -> list:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
