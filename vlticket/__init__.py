"""vlticket: find, check, share and compare lottery tickets in PyTorch models.

The core is model-agnostic: a :class:`Mask` over named weights, pure pruning functions that
return new masks, :class:`Checkpoint` snapshots to rewind to, and mask-similarity metrics.
"""

from . import adapters
from .adapters import adapter_for
from .attach import MaskHandle
from .errors import (
    ArgumentError,
    FileFormatError,
    MismatchError,
    NameMismatchError,
    ShapeMismatchError,
    VlticketError,
)
from .masks import Mask
from .metrics import iou, iou_matrix, layer_iou, mask_distance
from .pruning import prune_magnitude, prune_random
from .rewind import Checkpoint

__version__ = "0.1.0.dev0"

__all__ = [
    "ArgumentError",
    "Checkpoint",
    "FileFormatError",
    "Mask",
    "MaskHandle",
    "MismatchError",
    "NameMismatchError",
    "ShapeMismatchError",
    "VlticketError",
    "__version__",
    "adapter_for",
    "adapters",
    "iou",
    "iou_matrix",
    "layer_iou",
    "mask_distance",
    "prune_magnitude",
    "prune_random",
]
