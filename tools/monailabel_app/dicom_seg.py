"""Write a MONAI Label label map as a DICOM SEG of its source series, with this project's writer (highdicom).

MONAI Label 0.8.5 converts labels to DICOM SEG either with dcmqi's ``itkimage2segimage`` (a binary it downloads from
GitHub at start-up: not available offline) or with pydicom-seg; its venv has pydicom 2 and no highdicom, so the
app (``main.py``) runs this script with the project's own python (pydicom 3, highdicom), which writes the SEG the
same way ``tools/pacs.py run`` does (``custom_components.dicom.write_dicom_seg``: one coded segment per label of
the bundle, referencing the series). The app then stores it in the PACS (STOW-RS) with MONAI Label's client.

    python tools/monailabel_app/dicom_seg.py --series SERIES_DIR --label LABEL.nii.gz --out SEG.dcm \\
        [--bundle BUNDLE_DIR | --names '{"1": "liver"}']

Exit status 1 and one line on stderr when the label cannot be written (a grid other than the series', ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def bundle_label_names(bundle: Path) -> tuple[dict[int, str], str, str]:
    """``({value: name}, algorithm name, version)`` of a bundle, as ``tools/pacs.py`` names its segments."""
    from monai.bundle import ConfigParser

    from custom_components.dicom import label_names_from_metadata

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    class_names = ConfigParser.load_config_files([str(bundle / "configs" / "inference.json")]).get("class_names")
    names = label_names_from_metadata(meta, class_names if isinstance(class_names, list) else None)
    return names, str(meta.get("name", bundle.name)), str(meta.get("version", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", required=True, help="folder of the source DICOM series")
    parser.add_argument("--label", required=True, help="label map on the series' grid (NIfTI)")
    parser.add_argument("--out", required=True, help="the DICOM SEG file to write")
    parser.add_argument("--bundle", help="bundle folder whose label names and version the SEG carries")
    parser.add_argument("--names", help="JSON {label value: name}, when no bundle is given")
    args = parser.parse_args(argv)
    try:
        from custom_components.dicom import write_dicom_seg

        if args.bundle:
            names, algorithm, version = bundle_label_names(Path(args.bundle))
        else:
            names = {int(k): str(v) for k, v in json.loads(args.names or "{}").items()}
            algorithm, version = "MONAI Label", ""
        seg = write_dicom_seg(args.label, args.series, args.out, names, algorithm_name=algorithm,
                              algorithm_version=version, series_description=f"{algorithm} segmentation (MONAI Label)")
    except Exception as e:  # noqa: BLE001 - one line for the server's log and the client
        print(f"DICOM SEG not written: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    print(seg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
