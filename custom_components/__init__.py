"""Components shared by the bundles of this collection.

Bundle configs instantiate these by full path, for example
``"_target_": "custom_components.networks.LeViTUNet"``. Subpackages:

- :mod:`custom_components.networks`: the networks of the five methods;
- :mod:`custom_components.transforms`: MONAI-style transforms;
- :mod:`custom_components.losses`: losses MONAI does not have (masked Dice + CE of BCP);
- :mod:`custom_components.engines`: ignite handlers, report writer, checkpoint and distributed helpers, predictions
  written to a staging folder and moved into place when a run completes;
- :mod:`custom_components.data`: dataset readers/converters, input validation, synthetic data generators;
"""

from . import data, engines, losses, networks, transforms, utils
from .utils import bundle_root

# a `python -m monai.bundle run` that fails on bad input ends with one line naming the file and the problem
data.validation.report_input_errors()

__version__ = "0.1.0"
__all__ = ["data", "engines", "losses", "networks", "transforms", "utils", "bundle_root", "__version__"]
