#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine (README "Quick start", command 2; .ci/run):
#   1. Debian packages for the PACS tests: Orthanc with its DICOMweb plugin, and dicom3tools (dciodvfy);
#   2. the project's pinned Python packages, with this repository installed editable;
#   3. the separate MONAI Label environment (.cache/monailabel-venv, see tools/monailabel_env.py; minutes, once).
# Each step says what failed and exits non-zero; nothing asks for input.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v Orthanc >/dev/null || ! command -v dciodvfy >/dev/null; then
    echo "setup: installing Debian packages orthanc orthanc-dicomweb dicom3tools"
    $SUDO apt-get update -qq \
        && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb dicom3tools >/dev/null \
        || { echo "setup: apt-get install of orthanc orthanc-dicomweb dicom3tools failed"; exit 1; }
fi

echo "setup: installing the pinned Python packages (requirements.txt) and this repository"
python3 -m pip install -q -r requirements.txt -e . || { echo "setup: pip install failed"; exit 1; }

echo "setup: MONAI Label environment"
python3 tools/monailabel_env.py >/dev/null || { echo "setup: the MONAI Label environment could not be made (see above)"; exit 1; }
echo "setup: done"
