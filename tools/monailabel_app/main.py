"""MONAI Label app that serves the bundles of this collection, offline.

Each bundle folder placed under the app's model folder (``<app>/model/<bundle>``, or ``--conf model_dir DIR``)
becomes one infer task and one train task named after the folder. Nothing is downloaded: a bundle named in
``--conf models`` that is not there is an error, whatever ``zoo_source`` says.

The infer task runs the bundle's own ``configs/inference.json`` (``monai.bundle.ConfigWorkflow``) on the request's
image with ``input``, ``output_dir`` and ``bundle_root`` set by the app. The train task runs ``configs/train.json``
(``python -m monai.bundle run``, built by ``custom_components.utils.bundle_command``) in a subprocess, on the
bundle's own ``dataset_dir`` (its synthetic demo data unless real data was converted there) or, with
``dataset="datastore"``, on the labeled images of the studies folder. A request sets only what the bundle declares
in its metadata's ``monailabel`` section (``infer_params``, ``train_params``; ``named_paths``: a name the server looks
up among its own folders, e.g. UniverSeg's ``support_set``); any other key of the bundle's config, every path and
every expression is refused (see ``bundle_config.py``). The weights are ``models/model.pt`` of the bundle; training
writes there, so the next inference uses them. An inference that fails on bad input answers with the message
naming the file (MONAI Label's INVALID_INPUT), and writes nothing.

Start (see docs/README.md of a bundle, "Use in MONAI Label")::

    monailabel start_server --app tools/monailabel_app --studies STUDIES \\
        --conf models universeg_fewshot_segmentation --conf zoo_source local [--conf quick true]

``--conf`` keys: ``models`` (comma separated folder names, or ``all``), ``model_dir``, ``zoo_source`` (kept for the
``monaibundle`` convention; never used to fetch), ``quick`` (``true``: add each bundle's ``configs/quick.json``
overlay to inference and training; models trained that way need it at inference too), ``skip_trainers``,
``train_timeout`` (seconds), ``seg_python`` (see below), ``dicomweb_modality`` (see below).

The hospital set-up: ``--studies http://pacs:8042/dicom-web`` serves the PACS's series over DICOMweb (MONAI Label's
own ``DICOMWebDatastore``: QIDO-RS lists the series, a request names one by its SeriesInstanceUID, WADO-RS fetches it
into the cache and MONAI Label converts it to NIfTI for the bundle). What this app changes there:

- nothing is downloaded at start-up: MONAI Label would fetch dcmqi's ``itkimage2segimage`` from GitHub, which an
  offline server cannot (and this app does not use);
- the series listed are the PACS's image series of every modality (MONAI Label lists CT only by default), leaving
  out results and documents (SEG, SR, RTSTRUCT, ...); ``--conf dicomweb_modality MR`` lists one modality only, and
  a ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` other than MONAI Label's default (CT only) is used as it is;
- a label saved as final (``PUT /datastore/label?image=<SeriesInstanceUID>&tag=final``, or an inference with
  ``save_label`` and ``label_tag: final``) is stored in the study as a DICOM SEG written by this project's writer
  (``custom_components.dicom.write_dicom_seg``, highdicom; the bundle's label names, referencing the series), and so
  is the SEG an inference returns with ``output=dicom_seg``. MONAI Label's own conversion needs dcmqi (not installed,
  not downloadable offline) or pydicom-seg, and its venv has pydicom 2 and no highdicom; the SEG is therefore written
  by ``dicom_seg.py`` in the project's own python: ``--conf seg_python /path/to/python`` (or
  ``$MONAILABEL_SEG_PYTHON``; default: the first ``python3``/``python`` on ``PATH`` that imports highdicom). The
  bundle whose names the SEG carries is the request's ``model`` (``params``) or, when the server serves one bundle,
  that one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bundle_config as bc  # noqa: E402
from custom_components.data.validation import input_error_message  # noqa: E402
from custom_components.utils import bundle_command, bundle_env  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.datastore.utils.convert import binary_to_image  # noqa: E402
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import DefaultLabelTag  # noqa: E402
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.utils.others.generic import strtobool  # noqa: E402

logger = logging.getLogger(__name__)

__version__ = "0.1.0"


def _checksum(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else bool(strtobool(str(value)))


class BundleWorkflowInferTask(InferTask):
    """Runs a bundle's ``configs/inference.json`` on the request's image; returns the label it writes."""

    _lock = threading.Lock()  # one workflow at a time: set_determinism and the network are process-wide

    def __init__(self, path: str, quick: bool = False):
        self.path = os.path.abspath(path)
        self.name = os.path.basename(self.path)
        self.files = bc.config_files(self.path, "inference", quick)
        self.meta_file = os.path.join(self.path, "configs", "metadata.json")
        self.top = bc.top_level_config(self.files)
        self.allowed = bc.request_params(self.path, "infer")
        try:
            bc.check_declaration(self.top, self.allowed, bc.named_paths(self.path), source=f"{self.name} infer")
        except ValueError as e:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR, str(e)) from e
        meta = bc.read_json(self.meta_file)
        section = meta.get(bc.METADATA_SECTION, {})
        image = next(iter(meta["network_data_format"]["inputs"].values()))
        spatial = image.get("spatial_shape") or [0, 0, 0]
        params = {k: "" for k in section.get("infer_params", {})}  # shown by clients; "" keeps the default
        super().__init__(
            type=InferType.SEGMENTATION,
            labels={v: k for k, v in bc.label_map(self.path).items() if k != 0},
            dimension=len(spatial),
            description=meta.get("name", self.name),
            config=params,
        )
        self.version = meta.get("version")

    def is_valid(self) -> bool:
        return True

    def info(self) -> Dict[str, Any]:
        i = super().info()
        i["version"] = self.version
        named = bc.named_paths(self.path)
        i["params"] = {k: (f"{d} (one of: {', '.join(named[k]['choices']) or 'none set up'})" if k in named else d)
                       for k, d in self.allowed.items()}
        return i

    def __call__(self, request):
        from monai.bundle import ConfigWorkflow

        image = request.get("image")
        if not image or not os.path.exists(str(image)):
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"{self.name}: input image not found: {image}")
        try:
            overrides = bc.request_overrides(self.top, request, self.allowed, bc.named_paths(self.path))
        except ValueError as e:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"{self.name}: {e}") from e
        out_dir = tempfile.mkdtemp(prefix=f"monailabel_{self.name}_")
        start = time.time()
        try:
            with self._lock:
                workflow = ConfigWorkflow(
                    config_file=self.files,
                    meta_file=self.meta_file,
                    logging_file=False,
                    workflow_type="inference",
                    bundle_root=self.path,
                    input=str(image),
                    output_dir=out_dir,
                    **overrides,
                )
                try:
                    workflow.initialize()
                    workflow.run()
                    workflow.finalize()
                except Exception as e:
                    message = input_error_message(e)
                    if message is None:
                        raise
                    raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"{self.name}: {message}") from e
            written = bc.find_prediction(out_dir)
            suffix = ".nii.gz" if written.endswith(".nii.gz") else os.path.splitext(written)[1]
            fd, result = tempfile.mkstemp(suffix=suffix, prefix=f"{self.name}_")
            os.close(fd)
            shutil.move(written, result)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        elapsed = round(time.time() - start, 3)
        logger.info(f"{self.name}: inference on {image} with {overrides} took {elapsed} s -> {result}")
        label_names = {v: k for k, v in bc.label_map(self.path).items()}
        return result, {"label_names": label_names, "bundle": self.name, "overrides": overrides, "latency_s": elapsed}


class BundleWorkflowTrainTask(TrainTask):
    """Runs a bundle's ``configs/train.json`` in a subprocess; the run writes ``models/model.pt`` of the bundle.

    Request keys of its own: ``quick`` (add ``configs/quick.json``), ``dataset`` (``"bundle"``: the bundle's own
    ``dataset_dir``, default; ``"datastore"``: the studies folder's labeled images as a training/validation
    datalist, for bundles whose metadata declares ``monailabel.train_datastore``). Otherwise only the keys the bundle
    declares (``monailabel.train_params``, ``named_paths``) override its train config.
    """

    OWN_KEYS = ("quick", "dataset")

    def __init__(self, path: str, quick: bool = False, timeout: float | None = None):
        super().__init__(f"Train {os.path.basename(path)} with its configs/train.json")
        self.path = os.path.abspath(path)
        self.name = os.path.basename(self.path)
        self.quick = quick
        self.timeout = timeout
        files = bc.config_files(self.path, "train", quick)  # raises when the bundle cannot train
        self.allowed = bc.request_params(self.path, "train")
        try:
            bc.check_declaration(bc.top_level_config(files), self.allowed, bc.named_paths(self.path),
                                 source=f"{self.name} train")
        except ValueError as e:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR, str(e)) from e
        self.bundle_path = None  # not a monailabel BundleTrainTask: no scripts/ folder to put on PYTHONPATH

    def config(self):
        return {"quick": self.quick, "dataset": "bundle", **{k: "" for k in self.allowed}}

    def is_valid(self) -> bool:
        return True

    def model_path(self) -> str:
        return os.path.join(self.path, "models", "model.pt")

    def __call__(self, request, datastore):
        quick = _flag(request.get("quick", self.quick))
        files = bc.config_files(self.path, "train", quick)
        top = bc.top_level_config(files)
        try:
            overrides = bc.request_overrides(top, request, self.allowed, bc.named_paths(self.path), self.OWN_KEYS)
        except ValueError as e:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"{self.name}: {e}") from e
        # the bundle's declared MONAI Label defaults, then a fresh run (each train request trains; a finished run in
        # models/ would otherwise be "resumed" and do nothing), then the request's own values
        defaults = dict(bc.monailabel_section(self.path).get("train_overrides", {}))
        if "resume" in top:
            defaults["resume"] = False
        overrides = {**defaults, **overrides, "bundle_root": self.path}
        dataset = request.get("dataset") or "bundle"
        if dataset == "datastore":
            if not bc.monailabel_section(self.path).get("train_datastore") or "dataset_dir" not in top:
                raise MONAILabelException(
                    MONAILabelError.INVALID_INPUT,
                    f"{self.name}: training on the datastore's labels is not declared by this bundle (its metadata's "
                    "monailabel.train_datastore; its train.json must read the training/validation splits of "
                    "dataset_dir/dataset.json); use dataset='bundle'",
                )
            try:
                datalist = bc.datastore_datalist(datastore.datalist())
            except ValueError as e:
                raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"{self.name}: {e}") from e
            dataset_dir = os.path.join(self.path, "data", "monailabel")
            os.makedirs(dataset_dir, exist_ok=True)
            with open(os.path.join(dataset_dir, "dataset.json"), "w") as f:
                json.dump(datalist, f, indent=2)
            overrides["dataset_dir"] = dataset_dir
        elif dataset != "bundle":
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT, f"{self.name}: dataset must be 'bundle' or 'datastore', not {dataset!r}"
            )

        before = _checksum(self.model_path())
        with tempfile.TemporaryDirectory(prefix=f"monailabel_train_{self.name}_") as tmp:
            override_file = os.path.join(tmp, "monailabel_overrides.json")
            with open(override_file, "w") as f:
                json.dump(overrides, f, indent=2)
            logging_conf = os.path.join(self.path, "configs", "logging.conf")
            args = {"meta_file": os.path.join(self.path, "configs", "metadata.json")}
            if os.path.isfile(logging_conf):
                args["logging_file"] = logging_conf
            # the values travel in a JSON file, not on the command line; they were checked to be plain values
            cmd = bundle_command(files + [override_file], args)
            logger.info(f"{self.name}: training: {' '.join(cmd)}; overrides {overrides}")
            start = time.time()
            proc = subprocess.Popen(
                cmd, cwd=self.path, env=bundle_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1,
            )
            tail: list = []
            cause: list = []
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                logger.info(f"[{self.name} train] {line}")
                tail = (tail + [line])[-20:]
                if re.match(r"^\w+(Error|Exception)\b", line):  # the exception lines of a traceback
                    cause = (cause + [line])[-3:]
                if self.timeout and time.time() - start > self.timeout:
                    proc.kill()
                    break
            rc = proc.wait()
        elapsed = round(time.time() - start, 1)
        after = _checksum(self.model_path())
        if rc != 0:
            raise MONAILabelException(
                MONAILabelError.SERVER_ERROR, f"{self.name}: training failed (exit {rc}): " + " | ".join(cause or tail[-5:])
            )
        return {
            "bundle": self.name,
            "model": self.model_path(),
            "model_changed": before != after,
            "train_time_s": elapsed,
            "overrides": {k: v for k, v in overrides.items() if k != "bundle_root"},
        }


# ---------------------------------------------------------------------------------------------------------------
# the hospital set-up: studies from a PACS over DICOMweb, final labels stored back as DICOM SEG

SEG_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dicom_seg.py")
# series of these modalities are results or documents, not images to segment
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "PR", "KO", "DOC", "REG", "RTPLAN", "RTDOSE"})
MONAILABEL_DEFAULT_SEARCH_FILTER = {"Modality": "CT"}
_HAS_HIGHDICOM = "import highdicom, pydicom; assert int(pydicom.__version__.split('.')[0]) >= 3"


class SegWriter:
    """Writes DICOM SEG files with ``dicom_seg.py`` run by the project's python (highdicom, pydicom 3).

    Args:
        bundles: served bundle name -> folder (the SEG carries the label names of the request's bundle).
        python: the interpreter; ``None``: ``$MONAILABEL_SEG_PYTHON``, else the first ``python3``/``python`` on
            ``PATH`` that imports highdicom and pydicom 3 (checked once, at the first SEG).
        timeout: seconds for one SEG.
    """

    def __init__(self, bundles: Dict[str, str], python: str | None = None, timeout: float = 600):
        self.bundles, self.configured, self.timeout = dict(bundles), python, timeout
        self._python: str | None = None

    def python(self) -> str:
        if self._python:
            return self._python
        given = self.configured or os.environ.get("MONAILABEL_SEG_PYTHON")
        candidates = [given] if given else [shutil.which(n) for n in ("python3", "python")]
        tried = []
        for candidate in filter(None, candidates):
            tried.append(candidate)
            ok = subprocess.run([candidate, "-c", _HAS_HIGHDICOM], capture_output=True, timeout=120,
                                stdin=subprocess.DEVNULL, env=bundle_env()).returncode == 0
            if ok:
                self._python = candidate
                return candidate
        raise MONAILabelException(
            MONAILabelError.SERVER_ERROR,
            f"DICOM SEG needs a python with highdicom and pydicom 3 (MONAI Label's venv has neither); tried "
            f"{tried or 'none found on PATH'}: start the server with --conf seg_python <the project's python>",
        )

    def bundle_of(self, info: Dict[str, Any] | None) -> str | None:
        """The served bundle a label comes from: the request's ``model``, else the only bundle served."""
        model = (info or {}).get("model")
        if isinstance(model, str) and model in self.bundles:
            return model
        return next(iter(self.bundles)) if len(self.bundles) == 1 else None

    @staticmethod
    def names_from_label_info(label_info: Any) -> Dict[int, str]:
        """``{value: name}`` from MONAI Label's ``label_info`` list (``name`` and ``idx``/``labelID``, else order)."""
        names = {}
        for i, item in enumerate(label_info if isinstance(label_info, list) else []):
            if isinstance(item, dict) and item.get("name"):
                names[int(item.get("idx", item.get("labelID", i + 1)))] = str(item["name"])
        return names

    def write(self, series_dir: str, label_file: str, info: Dict[str, Any] | None = None) -> str:
        """Write the SEG of ``label_file`` (on the grid of the series in ``series_dir``) to a temporary file."""
        fd, out = tempfile.mkstemp(suffix=".dcm", prefix="monailabel_seg_")
        os.close(fd)
        bundle = self.bundle_of(info)
        cmd = [self.python(), SEG_SCRIPT, "--series", series_dir, "--label", label_file, "--out", out]
        if bundle:
            cmd += ["--bundle", self.bundles[bundle]]
        else:
            cmd += ["--names", json.dumps(self.names_from_label_info((info or {}).get("label_info")))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL,
                              env=bundle_env())
        if proc.returncode != 0:
            os.unlink(out)
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise MONAILabelException(MONAILabelError.SERVER_ERROR, f"{bundle or 'label'}: {last}")
        logger.info(f"DICOM SEG of {label_file} ({bundle or 'no bundle'}) -> {out}")
        return out

    def endpoint_converter(self):
        """A stand-in for MONAI Label's ``nifti_to_dicom_seg`` in the infer endpoint (``output=dicom_seg``)."""

        def convert(series_dir, label, label_info, file_ext="*", use_itk=True) -> str:
            return self.write(series_dir, label, {"label_info": label_info})

        return convert


class BundleDICOMwebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore that lists the image series of every modality (or ``modality``) and stores a
    final label as this project's DICOM SEG (:class:`SegWriter`) in the study of its series."""

    def __init__(self, client, search_filter: Dict[str, Any], seg_writer: SegWriter, **kwargs):
        super().__init__(client=client, search_filter=search_filter, **kwargs)
        self._seg_writer = seg_writer

    def list_images(self) -> list:
        series = []
        for item in self._client.search_for_series(search_filters=self._search_filter):
            modality = (item.get("00080060", {}).get("Value") or [""])[0]
            uid = (item.get("0020000E", {}).get("Value") or [""])[0]
            if uid and str(modality).upper() not in NON_IMAGE_MODALITIES:
                series.append(str(uid))
        return series

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any],
                   label_id: str = "") -> str:
        if label_tag != DefaultLabelTag.FINAL:  # drafts stay in the server's cache, as in MONAI Label
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        image_uri = self.get_image_uri(image_id)  # fetches the series into the cache when needed
        converted = ""
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # OHIF's raw label: onto the image grid
            converted = label_filename = binary_to_image(image_uri, label_filename)
        series_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        try:
            seg_file = self._seg_writer.write(series_dir, label_filename, label_info)
            try:
                seg_series = dicom_web_upload_dcm(seg_file, self._client)
            finally:
                os.unlink(seg_file)
            image_info = self.get_image_info(image_id)
            label_info = {**label_info, "SeriesInstanceUID": seg_series, "Modality": "SEG",
                          "PatientID": image_info.get("PatientID"),
                          "StudyInstanceUID": image_info.get("StudyInstanceUID")}
            logger.info(f"stored DICOM SEG series {seg_series} for series {image_id}")
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        finally:
            if converted:
                os.unlink(converted)


class BundleCollectionApp(MONAILabelApp):
    """One infer and one train task per bundle folder under the model folder."""

    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.abspath(conf.get("model_dir") or os.path.join(app_dir, "model"))
        self.quick = _flag(conf.get("quick", "false"))
        names = [n.strip() for n in (conf.get("models") or "all").split(",") if n.strip()]
        if names == ["all"]:
            names = sorted(
                n for n in os.listdir(self.model_dir)
                if os.path.isfile(os.path.join(self.model_dir, n, "configs", "inference.json"))
            ) if os.path.isdir(self.model_dir) else []
        missing = [n for n in names if not os.path.isdir(os.path.join(self.model_dir, n))]
        if missing or not names:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"bundle folder(s) {missing or '(none)'} not found under {self.model_dir}: this app runs offline; copy "
                "the bundle folder(s) there (cp -r bundles/<name> <app>/model/) and name them with --conf models",
            )
        self.models = {n: os.path.join(self.model_dir, n) for n in names}
        self.seg_writer = SegWriter(self.models, python=conf.get("seg_python") or None)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MONAI Label - bundle collection",
            description="Segmentation bundles of this collection, run through their own bundle configs",
            version=__version__,
        )

    def _init_dicomweb_datastore(self):
        """MONAI Label's DICOMweb set-up without its dcmqi download (offline), listing the image series of every
        modality (or ``--conf dicomweb_modality``), storing final labels as this project's DICOM SEG."""
        from dicomweb_client.session_utils import create_session_from_user_pass

        logger.info(f"Using DICOMweb: {self.studies}")
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                    settings.MONAI_LABEL_DICOMWEB_PASSWORD)
        client = DICOMwebClientX(url=self.studies, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                 wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                 stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
        # MONAI Label's default filter lists CT only; MONAI Label's start_server exports every setting to the
        # environment, so only a filter other than its default counts as set by the user
        filter_set = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER or {})
        if self.conf.get("dicomweb_modality"):
            search = {"Modality": str(self.conf["dicomweb_modality"]).upper()}
        elif filter_set and filter_set != MONAILABEL_DEFAULT_SEARCH_FILTER:
            search = filter_set
        else:
            search = {}
        # the SEG an inference returns with output=dicom_seg: MONAI Label's endpoint calls its dcmqi converter by name
        import monailabel.endpoints.infer as infer_endpoint

        infer_endpoint.nifti_to_dicom_seg = self.seg_writer.endpoint_converter()
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        logger.info(f"DICOMweb series filter: {search or 'image series of every modality'}; DICOM SEG by this "
                    "project's writer (highdicom)")
        return BundleDICOMwebDatastore(client, search, self.seg_writer, cache_path=cache,
                                       fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                                       convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI)

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, path in self.models.items():
            infers[name] = BundleWorkflowInferTask(path, quick=self.quick)
            logger.info(f"+++ infer task {name} => {path}")
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        if _flag(self.conf.get("skip_trainers", "false")):
            return trainers
        timeout = float(self.conf["train_timeout"]) if self.conf.get("train_timeout") else None
        for name, path in self.models.items():
            if os.path.isfile(os.path.join(path, "configs", "train.json")):
                trainers[name] = BundleWorkflowTrainTask(path, quick=self.quick, timeout=timeout)
                logger.info(f"+++ train task {name} => {path}")
        return trainers
