"""Segment a study from a DICOM server with a bundle and store the result back as a DICOM SEG.

The hospital path: query the server for the study, retrieve its image series, run the bundle's own inference
workflow on the series folder (``python -m monai.bundle run`` with the bundle's ``configs/inference.json``),
turn the prediction into a DICOM Segmentation object that references the series
(``custom_components.dicom.write_dicom_seg``: one coded segment per label of the bundle) and store it in the
same study. Two ways to talk to the server:

- DICOMweb (``--server http://host:8042/dicom-web``, Orthanc's DICOMweb plugin): QIDO-RS, WADO-RS, STOW-RS;
- DIMSE (``--server dimse://ORTHANC@host:4242``, pynetdicom): C-ECHO, C-FIND and C-GET (study root), C-STORE;
  this tool calls with the AE title ``--aet`` (default ``MONAIBUNDLE``), which the server must accept.

Usage::

    python tools/pacs.py write_series image.nii.gz series_folder --modality CT   # a demo series from NIfTI
    python tools/pacs.py studies --server http://localhost:8042/dicom-web
    python tools/pacs.py store   --server ... path/to/series_folder          # load files (a demo series)
    python tools/pacs.py retrieve --server ... --study 1.2.3 --output_dir series/
    python tools/pacs.py run --server ... --study 1.2.3 --bundle bundles/levit_unet_synapse_segmentation \\
        [--series 1.2.3.4] [--config_file configs/quick.json] [--ckpt_path model.pt] [--workdir out/] \\
        [--store True] [--<config key> <value> ...]

``run`` overrides ``input`` (the retrieved series folder) and ``output_dir``; other ``--key value`` pairs
go to the bundle as config overrides (for example ``--text "..."`` for a bundle that reads a report sentence,
``--support_dir`` for a few-shot one). Such a value is a value, never code: one starting with ``$``, ``@`` or ``%``
(which MONAI's config parser would evaluate) is refused; a sentence that must start with one of them is given in a
file (``--text_file report.txt``). Nothing is stored unless every step succeeded; the retrieved series
and the SEG are written to temporary names and renamed when complete. Errors (server unreachable, study not
found, no image series, an invalid UID, a retrieve that returns other instances than the series has, inference
failure) end with exit status 1 and one line naming the cause.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# series of these modalities are results or documents, not images to segment
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "PR", "KO", "DOC", "REG", "RTPLAN", "RTDOSE"}


class PacsError(RuntimeError):
    """A failure of the PACS workflow with a message for the user (the CLI prints it and exits with 1)."""


def _log(message: str) -> None:
    print(f"[pacs {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _value(item: dict, tag: str, default=None):
    """First value of a DICOM JSON attribute (QIDO result) ``tag`` (8 hex digits)."""
    values = item.get(tag, {}).get("Value")
    return values[0] if values else default


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_uid(what: str, uid) -> str:
    """``uid`` as a string when it is a valid DICOM UID (digits and dots, no leading zeros, at most 64 characters).

    Raises:
        PacsError: it is not.
    """
    text = str(uid).strip()
    if not _UID.match(text) or len(text) > 64:
        raise PacsError(f"--{what} {uid!r}: not a valid DICOM UID (digits and dots, no leading zeros, at most 64 "
                        "characters)")
    return text


def _series_record(uid, modality, count) -> dict:
    return {"SeriesInstanceUID": str(uid), "Modality": str(modality or ""), "NumberOfSeriesRelatedInstances":
            int(count) if str(count or "").strip().isdigit() else 0}


class DicomWebServer:
    """A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS), e.g. Orthanc's DICOMweb plugin at ``http://host:8042/dicom-web``."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.name, self.url = url, url.rstrip("/")
        self.client = DICOMwebClient(url=self.url, timeout=timeout)
        try:  # one plain request first: the client retries failed connections with back-off for half a minute
            requests.get(f"{self.url}/studies", params={"limit": 1}, timeout=timeout,
                         headers={"Accept": "application/dicom+json"}).raise_for_status()
        except requests.exceptions.ConnectionError as e:
            raise PacsError(f"DICOM server unreachable at {url} ({type(e).__name__})") from e
        except requests.exceptions.RequestException as e:
            raise PacsError(f"DICOM server at {url} answered the QIDO-RS query with an error: {e}") from e

    def studies(self, patient_id: str | None = None, study: str | None = None) -> list[dict]:
        filters = {k: v for k, v in (("PatientID", patient_id), ("StudyInstanceUID", study)) if v}
        return [{"StudyInstanceUID": _value(r, "0020000D"), "PatientID": _value(r, "00100020"),
                 "StudyDate": _value(r, "00080020"), "StudyDescription": _value(r, "00081030")}
                for r in self.client.search_for_studies(search_filters=filters or None, get_remaining=True)]

    def series(self, study: str) -> list[dict]:
        return [_series_record(_value(r, "0020000E"), _value(r, "00080060"), _value(r, "00201209"))
                for r in self.client.search_for_series(study_instance_uid=study)]

    def iter_instances(self, study: str, series: str):
        yield from self.client.iter_series(study, series)

    def store(self, datasets: list) -> None:
        for study in sorted({str(ds.StudyInstanceUID) for ds in datasets}):
            group = [ds for ds in datasets if str(ds.StudyInstanceUID) == study]
            failed = self.client.store_instances(group).get("FailedSOPSequence", [])
            if failed:
                raise PacsError(f"the server refused {len(failed)} of {len(group)} instances of study {study}")


class DimseServer:
    """A DICOM server spoken to with DIMSE (pynetdicom): C-ECHO, C-FIND and C-GET (study root), C-STORE.

    ``dimse://AET@host:port``; this tool calls as ``calling_aet`` (the server must know it, or allow unknown
    callers: Orthanc's ``DicomModalities``, or ``DicomAlwaysAllowFind``/``DicomAlwaysAllowGet``).
    """

    def __init__(self, address: str, calling_aet: str = "MONAIBUNDLE", timeout: float = 30.0) -> None:
        from urllib.parse import urlparse

        parsed = urlparse(address)
        if not parsed.hostname or not parsed.port or not parsed.username:
            raise PacsError(f"a DIMSE server is given as dimse://AET@host:port, got {address}")
        self.name, self.aet, self.host, self.port = address, parsed.username, parsed.hostname, parsed.port
        self.calling_aet, self.timeout = calling_aet, timeout
        from pynetdicom.sop_class import Verification

        assoc = self._associate([Verification])
        try:
            status = assoc.send_c_echo()
            if not status or status.Status != 0:
                raise PacsError(f"DICOM server at {address} did not answer C-ECHO")
        finally:
            assoc.release()

    def _associate(self, contexts, **kwargs):
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for context in contexts:
            if isinstance(context, tuple):
                ae.add_requested_context(*context)
            else:
                ae.add_requested_context(context)
        assoc = ae.associate(self.host, self.port, ae_title=self.aet, **kwargs)
        if not assoc.is_established:
            raise PacsError(f"DICOM server unreachable at {self.name}, or it refused the association "
                            f"(calling AE title {self.calling_aet})")
        return assoc

    def _find(self, level: str, **keys) -> list:
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        query = Dataset()
        query.QueryRetrieveLevel = level
        for key, value in keys.items():
            setattr(query, key, value)
        assoc = self._associate([FIND])
        found = []
        try:
            for status, identifier in assoc.send_c_find(query, FIND):
                if not status:
                    raise PacsError(f"C-FIND at {self.name}: no answer, the server aborted or timed out (does it "
                                    f"accept the calling AE title {self.calling_aet}?)")
                if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                    found.append(identifier)
                elif status.Status != 0:
                    raise PacsError(f"C-FIND at {self.name} failed with status 0x{status.Status:04X}")
        finally:
            assoc.release()
        return found

    def studies(self, patient_id: str | None = None, study: str | None = None) -> list[dict]:
        found = self._find("STUDY", StudyInstanceUID=study or "", PatientID=patient_id or "", StudyDate="",
                           StudyDescription="")
        return [{"StudyInstanceUID": str(d.StudyInstanceUID), "PatientID": str(d.get("PatientID", "")),
                 "StudyDate": str(d.get("StudyDate", "")), "StudyDescription": str(d.get("StudyDescription", ""))}
                for d in found]

    def series(self, study: str) -> list[dict]:
        found = self._find("SERIES", StudyInstanceUID=study, SeriesInstanceUID="", Modality="",
                           NumberOfSeriesRelatedInstances="")
        return [_series_record(d.SeriesInstanceUID, d.get("Modality"), d.get("NumberOfSeriesRelatedInstances"))
                for d in found]

    def iter_instances(self, study: str, series: str):
        from pydicom.dataset import Dataset
        from pynetdicom import StoragePresentationContexts, build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        received = []

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            received.append(ds)
            return 0x0000

        # C-GET returns the instances on the same association: this tool is their storage SCP
        storage = [cx.abstract_syntax for cx in StoragePresentationContexts][:127]
        roles = [build_role(uid, scp_role=True) for uid in storage]
        assoc = self._associate([GET, *storage], ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID, query.SeriesInstanceUID = "SERIES", study, series
        try:
            final = None
            for status, _ in assoc.send_c_get(query, GET):
                if not status:
                    raise PacsError(f"C-GET at {self.name}: no answer, the server aborted or timed out (does it "
                                    f"accept the calling AE title {self.calling_aet}?)")
                final = status
            if final is None or final.Status != 0:
                code = "none" if final is None else f"0x{final.Status:04X}"
                raise PacsError(f"C-GET of series {series} at {self.name} did not complete (status {code})")
        finally:
            assoc.release()
        yield from received

    def store(self, datasets: list) -> None:
        contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
        assoc = self._associate([(sop, [syntax]) for sop, syntax in contexts])
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if not status or status.Status not in (0x0000, 0xB000, 0xB007, 0xB006):
                    code = "none" if not status else f"0x{status.Status:04X}"
                    raise PacsError(f"C-STORE of {ds.SOPInstanceUID} at {self.name} failed (status {code})")
        finally:
            assoc.release()


def connect(server: str, calling_aet: str = "MONAIBUNDLE", timeout: float = 30.0):
    """The server ``server`` (``http(s)://...``: DICOMweb; ``dimse://AET@host:port``: DIMSE), checked to answer.

    Raises:
        PacsError: the server does not answer, or answers with an error.
    """
    if server.startswith(("http://", "https://")):
        return DicomWebServer(server, timeout)
    if server.startswith("dimse://"):
        return DimseServer(server, calling_aet, timeout)
    raise PacsError(f"server must be a DICOMweb URL (http://host:8042/dicom-web) or dimse://AET@host:port, got {server}")


def find_study(server, study: str) -> dict:
    """The study record of ``study`` (StudyInstanceUID). Raises PacsError when there is none."""
    study = check_uid("study", study)
    found = server.studies(study=study)
    if not found:
        raise PacsError(f"study not found on the server: StudyInstanceUID {study}")
    return found[0]


def choose_series(server, study: str, series: str | None = None) -> dict:
    """The image series to segment: ``series`` when given, else the image series with the most instances."""
    records = server.series(study)
    if series is not None:
        series = check_uid("series", series)
        records = [r for r in records if r["SeriesInstanceUID"] == series]
        if not records:
            raise PacsError(f"series {series} not found in study {study}")
        return records[0]
    images = [r for r in records if r["Modality"].upper() not in NON_IMAGE_MODALITIES]
    if not images:
        raise PacsError(f"study {study} has no image series (series modalities: "
                        f"{sorted({r['Modality'] for r in records})})")
    images.sort(key=lambda r: r["NumberOfSeriesRelatedInstances"], reverse=True)
    if len(images) > 1:
        _log(f"study has {len(images)} image series; taking the largest (choose one with --series)")
    return images[0]


def retrieve(server: str, study: str, output_dir: str, series: str | None = None, aet: str = "MONAIBUNDLE") -> str:
    """Retrieve one image series of ``study`` into ``output_dir`` (new or empty folder, one file per instance; it
    appears complete or not at all). Returns the folder."""
    study = check_uid("study", study)
    if series is not None:
        series = check_uid("series", series)
    remote = connect(server, aet)
    find_study(remote, study)
    record = choose_series(remote, study, series)
    return _retrieve_series(remote, study, record, Path(output_dir))


def _retrieve_series(remote, study: str, record: dict, out: Path) -> str:
    series_uid, count = record["SeriesInstanceUID"], record["NumberOfSeriesRelatedInstances"] or "?"
    _log(f"retrieving series {series_uid} ({record['Modality'] or '?'}, {count} instances)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PacsError(f"{out} exists and is not an empty folder")
    from custom_components.data.synthetic.io import build_dataset_atomically

    n, expected, seen = 0, record["NumberOfSeriesRelatedInstances"], set()
    with build_dataset_atomically(out) as tmp:  # the folder appears complete or not at all
        for n, ds in enumerate(remote.iter_instances(study, series_uid), start=1):
            # a server may answer with more than was asked for (other series, duplicates): never segment a mixture
            got = str(ds.get("SeriesInstanceUID", ""))
            if got != series_uid:
                raise PacsError(f"the retrieve of series {series_uid} returned an instance of another series ({got})")
            sop = str(ds.get("SOPInstanceUID", ""))
            if sop in seen:
                raise PacsError(f"the retrieve of series {series_uid} returned instance {sop} twice")
            seen.add(sop)
            if expected and n > expected:
                raise PacsError(f"the retrieve of series {series_uid} returned more instances than the series has "
                                f"({n} so far, the query said {expected})")
            ds.save_as(tmp / f"{n:05d}.dcm", enforce_file_format=True)
            if n % 50 == 0:
                _log(f"  {n}/{count} instances")
        if n == 0:
            raise PacsError(f"series {series_uid} returned no instances")
        if expected and n != expected:
            raise PacsError(f"the retrieve of series {series_uid} returned {n} instances, the query said {expected}")
    _log(f"retrieved {n} instances into {out}")
    return str(out)


def store(server: str, *paths: str, aet: str = "MONAIBUNDLE") -> list[str]:
    """Store DICOM files (files or folders of files) on the server (STOW-RS or C-STORE); the stored SOPInstanceUIDs."""
    import pydicom

    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise PacsError(f"not found: {p}")
    if not files:
        raise PacsError("no files to store")
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f))
        except pydicom.errors.InvalidDicomError as e:
            raise PacsError(f"{f}: not a DICOM file") from e
    connect(server, aet).store(datasets)
    _log(f"stored {len(datasets)} instances on {server}")
    return [str(ds.SOPInstanceUID) for ds in datasets]


def studies(server: str, patient_id: str | None = None, aet: str = "MONAIBUNDLE") -> list[dict]:
    """List the studies on the server (optionally of one PatientID): UID, patient, date, description."""
    return connect(server, aet).studies(patient_id=patient_id)


def write_series(image: str, output_dir: str, modality: str = "CT", patient_id: str = "SYNTHETIC001") -> str:
    """Write a NIfTI (or any image MONAI reads) as a DICOM series folder, keeping its geometry (demo input)."""
    from custom_components.dicom import DicomInputError, write_dicom_series

    try:
        files = write_dicom_series(image, output_dir, modality=modality, patient_id=patient_id)
    except DicomInputError as e:
        raise PacsError(str(e)) from e
    _log(f"wrote {len(files)} {modality} images to {output_dir}")
    return str(output_dir)


def check_overrides(overrides: dict) -> dict:
    """The ``--key value`` config overrides given to ``run``, checked to be values, never code.

    Raises:
        PacsError: a value (or an item of a list or mapping) starts with ``$``, ``@`` or ``%``
            (:func:`custom_components.utils.refuse_expression`).
    """
    from custom_components.utils import refuse_expression

    for key, value in overrides.items():
        try:
            refuse_expression(key, value)
        except ValueError as e:
            raise PacsError(str(e)) from e
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in overrides.items()}


def inference_configs(bundle_dir: Path, config_file=None) -> list[Path]:
    """``configs/inference.json`` of the bundle, then ``config_file`` (one or a list; paths relative to the current
    directory or to the bundle folder), checked to exist."""
    configs = [Path(bundle_dir) / "configs" / "inference.json"]
    extra = [] if config_file is None else ([config_file] if isinstance(config_file, str) else list(config_file))
    for c in extra:
        path = Path(c)
        configs.append(path if path.is_absolute() or path.exists() else Path(bundle_dir) / path)
    for c in configs:
        if not c.is_file():
            raise PacsError(f"bundle config not found: {c}")
    return [c.resolve() for c in configs]


def config_class_names(configs: list[Path]):
    """The merged configs' literal ``class_names`` list (None when absent or computed)."""
    from monai.bundle import ConfigParser

    names = ConfigParser.load_config_files([str(c) for c in configs]).get("class_names")
    return names if isinstance(names, list) else None


def infer_series(bundle: str, series_dir: str, output_dir: str, config_file=None, ckpt_path: str | None = None,
                 **overrides) -> str:
    """Run the bundle's inference on one series folder (``python -m monai.bundle run``); the prediction file."""
    from custom_components.utils import bundle_env, run_bundle_workflow

    bundle_dir = Path(bundle).resolve()
    configs = inference_configs(bundle_dir, config_file)
    values = check_overrides(overrides)
    values.update(input=str(series_dir), output_dir=str(output_dir))  # the tool's own, whatever the overrides say
    if ckpt_path is not None:
        values["ckpt_path"] = str(Path(ckpt_path).resolve())
    # the bundle folder first: an unpacked bundle zip brings its own custom_components
    env = bundle_env(extra_path=os.pathsep.join([str(bundle_dir), str(REPO_ROOT)]))
    _log(f"running {bundle_dir.name} inference on {series_dir}")
    proc = run_bundle_workflow(configs, values, cwd=bundle_dir, env=env, check=False)
    if proc.returncode != 0:
        lines = proc.output.splitlines()
        errors = list(dict.fromkeys(x for x in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", x)))
        errors = [x for x in errors if x.startswith("InputDataError:")] or errors  # bad input: its one line
        tail = "\n".join(lines[-10:])
        raise PacsError(f"{bundle_dir.name} inference failed (exit {proc.returncode}): "
                        f"{' | '.join(errors[:3]) or 'see its output'}\nits last output:\n{tail}")
    predictions = sorted(Path(output_dir).glob("*.nii*"))
    if len(predictions) != 1:
        raise PacsError(f"expected one prediction in {output_dir}, found {[p.name for p in predictions]}")
    _log(f"prediction: {predictions[0]}")
    return str(predictions[0])


def run(server: str, study: str, bundle: str, series: str | None = None, config_file=None,
        ckpt_path: str | None = None, workdir: str | None = None, store: bool = True, aet: str = "MONAIBUNDLE",
        **overrides) -> dict:
    """Retrieve a study's image series, segment it with ``bundle`` and store the DICOM SEG back.

    Args:
        server: DICOMweb root (Orthanc: ``http://host:8042/dicom-web``) or ``dimse://AET@host:port`` (DIMSE:
            C-FIND, C-GET, C-STORE).
        study: StudyInstanceUID.
        bundle: the bundle folder.
        series: SeriesInstanceUID to segment (default: the image series with the most instances).
        config_file: config(s) merged after ``configs/inference.json`` (e.g. ``configs/quick.json``).
        ckpt_path: weights (default: the bundle's ``models/model.pt``).
        workdir: keep the series, prediction and SEG here (default: a temporary folder, removed at the end).
        store: store the SEG on the server (STOW-RS or C-STORE); ``False`` only writes it.
        aet: this tool's AE title (DIMSE only).
        overrides: more ``--key value`` config overrides for the bundle: values only (one starting with ``$``, ``@``
            or ``%`` is refused; give such a sentence with ``--text_file``).

    Returns:
        ``{"seg_file", "series_instance_uid", "sop_instance_uid", "stored"}`` of the SEG (``seg_file`` only
        lasts when ``workdir`` is given).
    """
    import pydicom

    from custom_components.dicom.seg import label_names_from_metadata, write_dicom_seg

    study = check_uid("study", study)  # before anything is retrieved or written
    if series is not None:
        series = check_uid("series", series)
    check_overrides(overrides)
    bundle_dir = Path(bundle).resolve()
    metadata_file = bundle_dir / "configs" / "metadata.json"
    if not metadata_file.is_file():
        raise PacsError(f"not a bundle folder (no configs/metadata.json): {bundle_dir}")
    metadata = json.loads(metadata_file.read_text())
    dicom_support = metadata.get("dicom", {})
    if dicom_support.get("series_input") is False:
        raise PacsError(f"{bundle_dir.name} does not take DICOM series input: {dicom_support.get('reason', '')}")
    configs = inference_configs(bundle_dir, config_file)  # before anything is retrieved or written
    remote = connect(server, aet)
    find_study(remote, study)
    record = choose_series(remote, study, series)
    keep = workdir is not None
    work = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="pacs_"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        series_dir = work / "series"  # a plain name: the prediction file is named after it
        if series_dir.exists():
            shutil.rmtree(series_dir)
        _retrieve_series(remote, study, record, series_dir)
        pred_dir = work / "prediction"
        if pred_dir.exists():
            shutil.rmtree(pred_dir)
        prediction = infer_series(bundle_dir, str(series_dir), str(pred_dir), config_file, ckpt_path, **overrides)
        seg_file = write_dicom_seg(
            prediction, series_dir, work / "seg.dcm", label_names_from_metadata(metadata, config_class_names(configs)),
            algorithm_name=str(metadata.get("name", bundle_dir.name)), algorithm_version=str(metadata.get("version", "")),
            series_description=f"{bundle_dir.name} segmentation",
        )
        seg = pydicom.dcmread(seg_file)
        _log(f"wrote DICOM SEG {seg_file} ({len(seg.SegmentSequence)} segments, {seg.NumberOfFrames} frames)")
        result = {"seg_file": str(seg_file), "series_instance_uid": str(seg.SeriesInstanceUID),
                  "sop_instance_uid": str(seg.SOPInstanceUID), "stored": False}
        if store:
            remote.store([seg])
            result["stored"] = True
            _log(f"stored SEG series {seg.SeriesInstanceUID} in study {study}")
        return result
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    import fire

    try:
        fire.Fire({"studies": studies, "retrieve": retrieve, "store": store, "run": run, "write_series": write_series})
    except PacsError as e:
        print(f"pacs: error: {e}", file=sys.stderr)
        sys.exit(1)
    except ValueError as e:  # bad input to the DICOM writers (imported by then, so this import is free)
        from custom_components.dicom import DicomInputError

        if not isinstance(e, DicomInputError):
            raise
        print(f"pacs: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
