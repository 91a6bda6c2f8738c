"""Every bundle served by a real MONAI Label server (tools/monailabel_app), offline, on loopback.

MONAI Label 0.8.5 cannot share the project's environment (numpy<2, jsonschema 3, pydicom 2, torchvision), so the
server runs from its own venv, made by tools/monailabel_env.py (the session fixture creates it when missing: minutes,
~8 GB). Per bundle: a clean copy under the app's model folder with random initial weights, its own inference workflow
generating its synthetic data, the first inference item copied into a studies folder; then ``POST /infer/<bundle>``
must return a label of the image's shape whose values are labels of the bundle, and ``POST /train/<bundle>`` (one
short epoch) must finish and change ``models/model.pt``; for bundles that declare it, labels saved through
``PUT /datastore/label`` are then trained on. Nothing here names a bundle: what differs (request parameters such as a
report sentence or a support folder, the label values) comes from the bundle's own datalist item and metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, bundle_names, copy_bundle

sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tools" / "monailabel_app"))
import bundle_config  # noqa: E402
import monailabel_env  # noqa: E402

APP = REPO / "tools" / "monailabel_app"
SERVER_START_TIMEOUT = 600
TRAIN_TIMEOUT = 900
# one short epoch; keys a bundle's train config does not have are ignored by the app
SHORT_TRAIN = {"quick": True, "max_epochs": 1, "epoch_length": 2, "val_interval": 1}


# ---------------------------------------------------------------------------------------------------------------
# request -> config mapping (no server, no venv)


CONFIG = {"support_dir": "$@dataset_dir + '/support'", "threshold": 0.5, "text": "", "network_def": {"_target_": "X"},
          "ckpt_path": "$@ckpt_dir + '/model.pt'", "class_names": ["a", "b"], "text_cache_dir": "/cache",
          "device": "$torch.device('cpu')"}
ALLOWED = ["threshold", "text", "class_names", "support_set"]


def _named(tmp_path):
    for name in ("liver", "knee"):
        (tmp_path / "support_sets" / name).mkdir(parents=True)
    return {"support_set": {"config_key": "support_dir", "folder": str(tmp_path / "support_sets"),
                            "choices": {"liver": str(tmp_path / "support_sets" / "liver")}}}


def test_request_overrides_take_declared_plain_values_only(tmp_path):
    named = _named(tmp_path)
    request = {"model": "m", "image": "/x.nii.gz", "threshold": 0.3, "text": "", "device": "cuda",
               "class_names": ["c"], "support_set": "liver", "result_extension": ".nii.gz"}
    assert bundle_config.request_overrides(CONFIG, request, ALLOWED, named) == {
        "threshold": 0.3, "class_names": ["c"], "support_dir": str(tmp_path / "support_sets" / "liver")}
    for bad in ("$__import__('os').system('x')", "@network_def", "%configs/train.json#x", " $x"):
        with pytest.raises(ValueError, match="expressions"):
            bundle_config.request_overrides(CONFIG, {"text": bad}, ALLOWED, named)
    with pytest.raises(ValueError, match="nested"):
        bundle_config.request_overrides(CONFIG, {"class_names": [["a"]]}, ALLOWED, named)


@pytest.mark.parametrize("key, value, match", [
    ("support_dir", "/data/elsewhere", "names a path"),        # a path key, even one a named path sets
    ("text_cache_dir", "/srv/www", "names a path"),            # a path key the bundle never declared
    ("ckpt_path", "/elsewhere.pt", "names a path"),
    ("network_def", "y", "not declared"),                      # a config key that is not on the list
    ("support_set", "../../etc", "not one of this server's names"),
    ("support_set", "knee", "not one of this server's names"),  # a folder without being a listed choice
])
def test_request_overrides_refuse_undeclared_keys_paths_and_unknown_names(tmp_path, key, value, match):
    with pytest.raises(ValueError, match=match):
        bundle_config.request_overrides(CONFIG, {key: value}, ALLOWED, _named(tmp_path))


def test_a_declared_path_key_is_refused_at_start():
    with pytest.raises(ValueError, match="names a path"):
        bundle_config.check_declaration(CONFIG, ["text_cache_dir"])
    bundle_config.check_declaration(CONFIG, ALLOWED, {"support_set": {"config_key": "support_dir"}})


def test_datastore_datalist_splits_labeled_images():
    items = [{"image": f"/s/{i}.nii.gz", "label": f"/s/labels/final/{i}.nii.gz"} for i in range(5)]
    items.append({"image": "/s/unlabeled.nii.gz", "label": ""})
    d = bundle_config.datastore_datalist(items)
    assert len(d["validation"]) == 1 and len(d["training"]) == 4
    assert sorted(i["image"] for i in d["training"] + d["validation"]) == sorted(i["image"] for i in items[:5])
    with pytest.raises(ValueError, match="at least 2"):
        bundle_config.datastore_datalist(items[:1])


def test_find_prediction_wants_exactly_one_file(tmp_path):
    with pytest.raises(RuntimeError, match="found 0"):
        bundle_config.find_prediction(tmp_path)
    (tmp_path / "a_seg.nii.gz").write_bytes(b"x")
    assert bundle_config.find_prediction(tmp_path).endswith("a_seg.nii.gz")
    (tmp_path / "b_seg.nii.gz").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="found 2"):
        bundle_config.find_prediction(tmp_path)


@pytest.mark.parametrize("name", bundle_names())
def test_bundle_declares_what_monailabel_needs(name):
    """Label values for the app, documented request parameters, and a "Use in MONAI Label" model card section."""
    bundle = REPO / "bundles" / name
    labels = bundle_config.label_map(bundle)
    assert 0 in labels and len(labels) >= 2, f"{name}: the label map needs background and at least one label: {labels}"
    section = bundle_config.monailabel_section(bundle)
    top = bundle_config.top_level_config(bundle_config.config_files(bundle, "inference", quick=False))
    card = (bundle / "docs" / "README.md").read_text()
    assert "## Use in MONAI Label" in card, f"{name}: docs/README.md has no 'Use in MONAI Label' section"
    named = bundle_config.named_paths(bundle)
    bundle_config.check_declaration(top, bundle_config.request_params(bundle, "infer"), named, name)
    for key in section.get("infer_params", {}):
        assert f"`{key}`" in card.split("## Use in MONAI Label", 1)[1], f"{name}: infer param {key} not documented"
    train_top = bundle_config.top_level_config(bundle_config.config_files(bundle, "train", quick=False))
    bundle_config.check_declaration(train_top, bundle_config.request_params(bundle, "train"), named, name)
    for key in SHORT_TRAIN:  # what the server test sends every bundle: declared wherever train.json has the key
        assert key == "quick" or key not in train_top or key in section.get("train_params", {}), (name, key)
    for key in section.get("train_overrides", {}):
        assert key in train_top, f"{name}: train override {key} is not a top-level key of train.json"


# ---------------------------------------------------------------------------------------------------------------
# the real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def monailabel_python() -> Path:
    """The MONAI Label venv's python, created if missing. Fails in CI when it cannot be made; skips locally only when
    the machine's package cache (source of torch==2.14.1) is missing."""
    if monailabel_env.is_ready():
        return monailabel_env.venv_python()
    if not os.environ.get("CI") and not Path("/opt/pypi-more/simple/torch").exists():
        pytest.skip("no local package cache with torch==2.14.1 (/opt/pypi-more): cannot build the MONAI Label venv")
    log_path = monailabel_env.venv_dir().parent / "monailabel-venv.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            return monailabel_env.create(log=log)
        except RuntimeError as e:
            tail = log_path.read_text()[-3000:]
            pytest.fail(f"could not create the MONAI Label venv ({e}); pip log {log_path}:\n{tail}")


def _prepare(name: str, root: Path) -> dict:
    """App copy, bundle copy with random weights under its model folder, and one study; returns what the test needs."""
    import torch
    from monai.bundle import ConfigParser

    app = Path(shutil.copytree(APP, root / "app", ignore=shutil.ignore_patterns("__pycache__", "model", "logs")))
    bundle = copy_bundle(name, app / "model")
    parser = ConfigParser()
    parser.read_config(bundle_config.config_files(bundle, "inference", quick=True))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    ckpt = Path(parser.get_parsed_content("ckpt_path"))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), ckpt)
    parser.get_parsed_content("initialize")  # the bundle's own checks; generates its synthetic data
    item = parser.get_parsed_content("datalist")[0]
    image = Path(item["image"])
    assert image.is_file(), f"{name}: first inference item is not an image file: {image}"
    studies = root / "studies"
    studies.mkdir()
    suffix = "".join(image.suffixes[-2:]) if image.name.endswith(".nii.gz") else image.suffix
    study = studies / f"sample{suffix}"
    shutil.copy(image, study)
    declared = bundle_config.request_params(bundle, "infer")
    params = {k: v for k, v in item.items() if k in declared and isinstance(v, (str, int, float, bool))}
    # the request parameters the bundle declares: a named path's default folder (e.g. a support set) is moved to the
    # server's list of names and the request gives its name, so the inference can only succeed if the name reaches
    # the bundle's config
    spec = bundle_config.monailabel_section(bundle).get("named_paths", {})
    for key in declared:
        if key in spec:
            default = parser.get_parsed_content(spec[key]["config_key"])
            listed = bundle / spec[key]["folder"] / "from_request"
            listed.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(default, listed)
            params[key] = listed.name
            continue
        value = parser.get_parsed_content(key)
        if isinstance(value, (str, int, float, bool)):
            params.setdefault(key, value)
    return {"app": app, "bundle": bundle, "studies": studies, "study": study, "params": params, "ckpt": ckpt,
            "label": item.get("label")}


def _multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """A multipart/form-data body (``fields``: name -> text; ``files``: name -> path) and its content type."""
    boundary = "----monailabel-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{Path(path).name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + Path(path).read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Server:
    def __init__(self, python: Path, app: Path, studies: Path, model: str, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
               "--conf", "models", model, "--conf", "zoo_source", "local", "--conf", "quick", "true",
               "--host", "127.0.0.1", "--port", str(self.port)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(OMP_NUM_THREADS="2", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false", MONAI_LABEL_TASKS_SCORING="false",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.started = time.time()
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(log.parent), env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
                timeout: float = 600):
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self) -> dict:
        while time.time() - self.started < SERVER_START_TIMEOUT:
            if self.proc.poll() is not None:
                pytest.fail(f"MONAI Label server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                status, body = self.request("GET", "/info/", timeout=10)
                if status == 200:
                    return json.loads(body)
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
                pass
            time.sleep(1)
        pytest.fail(f"MONAI Label server not ready after {SERVER_START_TIMEOUT} s:\n{self.tail()}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module", params=bundle_names())
def served(request, monailabel_python, tmp_path_factory):
    """One bundle served by a started MONAI Label server (module scope: shared by its infer and train tests)."""
    name = request.param
    root = tmp_path_factory.mktemp(f"monailabel_{name}")
    prep = _prepare(name, root)
    server = Server(monailabel_python, prep["app"], prep["studies"], name, root / "server.log")
    try:
        info = server.wait_ready()
        print(f"{name}: server ready in {time.time() - server.started:.1f} s")
        yield {"name": name, "server": server, "info": info, **prep}
    finally:
        server.stop()


@pytest.mark.slow
def test_info_lists_bundle_tasks(served):
    info = served["info"]
    assert served["name"] in info["models"], info["models"].keys()
    assert served["name"] in info["trainers"], info["trainers"].keys()


@pytest.mark.slow
def test_infer_returns_label_of_image_shape_and_bundle_labels(served):
    from monai.transforms import LoadImage

    server, name = served["server"], served["name"]
    image_id = "sample"
    query = urllib.parse.urlencode({"image": image_id, "output": "image"})
    body = urllib.parse.urlencode({"params": json.dumps(served["params"])}).encode()
    start = time.time()
    status, content = server.request("POST", f"/infer/{name}?{query}", data=body,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    print(f"{name}: inference through the server took {time.time() - start:.1f} s")
    assert status == 200, f"{status}: {content[:2000]!r}\n{server.tail()}"
    out = served["studies"].parent / "returned_label.nii.gz"
    out.write_bytes(content)
    loader = LoadImage(image_only=True)
    label = np.asarray(loader(str(out)))
    image = loader(str(served["study"]))
    # spatial shape of the study (a colour image may carry its channels last); the label has no channel dimension
    label_shape = label.squeeze().shape
    assert tuple(np.asarray(image).squeeze().shape[: len(label_shape)]) == label_shape, (label.shape, image.shape)
    allowed = set(bundle_config.label_map(served["bundle"]))
    values = set(np.unique(label).astype(int).tolist())
    assert values <= allowed, f"{name}: label values {values} not among the bundle's labels {sorted(allowed)}"


def _train(served, params: dict) -> None:
    """``POST /train/<bundle>`` with ``params``; waits until the task ends; asserts DONE and a changed model.pt."""
    server, name, ckpt = served["server"], served["name"], served["ckpt"]
    before = ckpt.read_bytes()
    start = time.time()
    status, content = server.request("POST", f"/train/{name}", data=json.dumps(params).encode(),
                                     headers={"Content-Type": "application/json"})
    assert status == 200, f"{status}: {content[:2000]!r}"
    task = json.loads(content)
    while task.get("status") in ("SUBMITTED", "RUNNING") and time.time() - start < TRAIN_TIMEOUT:
        time.sleep(2)
        status, content = server.request("GET", "/train/", timeout=30)
        assert status == 200, content[:2000]
        task = json.loads(content)
    print(f"{name}: training through the server took {time.time() - start:.1f} s")
    details = "\n".join(task.get("details", []))
    assert task.get("status") == "DONE", f"{name}: train task {task.get('status')}:\n{details}\n{server.tail()}"
    assert ckpt.is_file() and ckpt.read_bytes() != before, f"{name}: models/model.pt unchanged:\n{details}"


@pytest.mark.slow
def test_train_endpoint_updates_model(served):
    _train(served, SHORT_TRAIN)


@pytest.mark.slow
def test_train_on_labels_saved_through_the_datastore(served):
    """The annotation loop: labels saved with ``PUT /datastore/label`` (tag final), then a training request on them
    (``dataset: datastore``), for the bundles whose metadata declares it."""
    if not bundle_config.monailabel_section(served["bundle"]).get("train_datastore"):
        pytest.skip(f"{served['name']} does not declare monailabel.train_datastore")
    server, label = served["server"], served["label"]
    assert label and Path(label).is_file(), f"{served['name']}: its first inference item has no label to save"
    body, ctype = _multipart({"params": "{}"}, {"file": served["study"]})
    status, content = server.request("PUT", "/datastore/image?image=sample_copy", data=body,
                                     headers={"Content-Type": ctype})
    assert status == 200, content[:2000]
    for image_id in ("sample", "sample_copy"):
        body, ctype = _multipart({"params": "{}"}, {"label": label})
        status, content = server.request("PUT", f"/datastore/label?image={image_id}&tag=final", data=body,
                                         headers={"Content-Type": ctype})
        assert status == 200, content[:2000]
    _train(served, {**SHORT_TRAIN, "dataset": "datastore"})
    datalist = json.loads((served["bundle"] / "data" / "monailabel" / "dataset.json").read_text())
    items = datalist["training"] + datalist["validation"]
    assert len(items) == 2 and all(Path(i["label"]).is_file() for i in items), datalist
