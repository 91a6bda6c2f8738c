"""Data components: datalists, input validation, dataset converters and synthetic data generators.

- :mod:`.datalist`: the datalist convention (:func:`ensure_dataset`, :func:`load_items`, :func:`inference_items`);
- :mod:`.validation`: checks of user input (up front, and of each loaded image), DICOM series selection;
- :mod:`.synthetic`: the shared synthetic-shape toolkit (primitives, noise, anatomy-like phantoms, writers);
- :mod:`.synapse`: Synapse multi-organ CT (converter of the published layout, synthetic Synapse-like data);
- :mod:`.acdc`: ACDC cardiac MRI and left-atrium MRI (converters of the published h5 layouts, synthetic data);
- :mod:`.fewshot`: few-shot tasks and episodes (synthetic task families, binary tasks from datalists, support sets).
"""

from . import synthetic
from .acdc import (
    LA_CLASSES,
    convert_acdc_h5,
    convert_la_h5,
    generate_acdc_synthetic,
    generate_la_synthetic,
    labeled_items,
    split_first_patients,
    unlabeled_items,
)
from .fewshot import (
    HELDOUT_KINDS,
    TRAIN_KINDS,
    ArrayTask,
    EpisodicDataset,
    SupportSet,
    SyntheticTask,
    generate_fewshot_synthetic,
    load_tasks,
    read_support_folder,
    synthetic_tasks,
    tasks_from_datalist,
)
from .datalist import DATALIST_NAME, ensure_dataset, inference_items, load_items
from .synapse import SYNAPSE_CLASSES, convert_synapse, generate_synapse_synthetic
from .qata import convert_qata, generate_qata_synthetic
from .validation import (
    InputDataError,
    check_datalist,
    dicom_series,
    image_problems,
    image_shape,
    report_input_errors,
    require_file,
    select_series,
)

__all__ = [
    "synthetic",
    "DATALIST_NAME",
    "ensure_dataset",
    "inference_items",
    "load_items",
    "SYNAPSE_CLASSES",
    "convert_synapse",
    "generate_synapse_synthetic",
    "convert_qata",
    "generate_qata_synthetic",
    "InputDataError",
    "check_datalist",
    "image_shape",
    "require_file",
    "image_problems",
    "dicom_series",
    "select_series",
    "report_input_errors",
    "LA_CLASSES",
    "convert_acdc_h5",
    "convert_la_h5",
    "generate_acdc_synthetic",
    "generate_la_synthetic",
    "labeled_items",
    "split_first_patients",
    "unlabeled_items",
    "HELDOUT_KINDS",
    "TRAIN_KINDS",
    "ArrayTask",
    "EpisodicDataset",
    "SupportSet",
    "SyntheticTask",
    "generate_fewshot_synthetic",
    "load_tasks",
    "read_support_folder",
    "synthetic_tasks",
    "tasks_from_datalist",
]
