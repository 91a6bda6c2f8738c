"""Every bundle in bundles/ passes tools/check_bundle.py (slow: exports and instantiates networks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))

from check_bundle import default_bundles, run_checks  # noqa: E402

BUNDLES = default_bundles()


@pytest.mark.slow
@pytest.mark.parametrize("bundle_dir", BUNDLES, ids=[b.name for b in BUNDLES])
def test_bundle_passes_checks(bundle_dir: Path) -> None:
    report = run_checks(bundle_dir)
    for line in [*(f"{report.bundle}: [{r}] ok: {n}" for r, n in report.notes.items()), *map(str, report.problems)]:
        print(line)
    assert not report.failures, "\n".join(map(str, report.failures))
