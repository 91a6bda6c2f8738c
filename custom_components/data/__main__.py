"""Command line of the data tools: dataset converters and synthetic data generators.

Usage::

    python -m custom_components.data convert_synapse --src_dir /data/Synapse --dst_dir /data/synapse_datalist
    python -m custom_components.data synthetic_synapse --dataset_dir /data/synapse_synthetic
    python -m custom_components.data --help
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .acdc import convert_acdc_h5, convert_la_h5, generate_acdc_synthetic, generate_la_synthetic
from .btcv import convert_btcv, generate_btcv_synthetic
from .fewshot import generate_fewshot_synthetic
from .qata import convert_qata, generate_qata_synthetic
from .synapse import convert_synapse, generate_synapse_synthetic

COMMANDS = {
    "convert_synapse": convert_synapse,
    "synthetic_synapse": generate_synapse_synthetic,
    "synthetic_fewshot": generate_fewshot_synthetic,
    "convert_acdc": convert_acdc_h5,
    "synthetic_acdc": generate_acdc_synthetic,
    "convert_la": convert_la_h5,
    "synthetic_la": generate_la_synthetic,
    "convert_btcv": convert_btcv,
    "synthetic_btcv": generate_btcv_synthetic,
    "convert_qata": convert_qata,
    "synthetic_qata": generate_qata_synthetic,
}


def main(argv: Sequence[str] | None = None):
    """Run one of :data:`COMMANDS` with ``fire``; returns what the command returns (e.g. the datalist path)."""
    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return fire.Fire(COMMANDS, command=list(argv) if argv is not None else None, name="python -m custom_components.data")


if __name__ == "__main__":
    main()
