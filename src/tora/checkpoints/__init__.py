"""The one checkpoint module: reading every supported file safely (``files``), the one
strict loader (``loading``) and writing full or Tora-modules files (``conversion``)."""

from tora.checkpoints.conversion import (
    DTYPES,
    MOTION_GUIDANCE_PREFIX,
    OPTIONAL_GROUPS,
    convert_checkpoint,
    select_tora_modules,
    unshared_contiguous,
)
from tora.checkpoints.files import (
    Checkpoint,
    CheckpointError,
    load_pickle,
    read_checkpoint,
    read_hyper_parameters,
    read_state_dict,
)
from tora.checkpoints.loading import (
    WeightsMismatchError,
    load_weights,
    load_weights_from,
    select_prefix,
)

__all__ = [
    "DTYPES",
    "MOTION_GUIDANCE_PREFIX",
    "OPTIONAL_GROUPS",
    "Checkpoint",
    "CheckpointError",
    "WeightsMismatchError",
    "convert_checkpoint",
    "load_pickle",
    "load_weights",
    "load_weights_from",
    "read_checkpoint",
    "read_hyper_parameters",
    "read_state_dict",
    "select_prefix",
    "select_tora_modules",
    "unshared_contiguous",
]
