"""The core: masks, pruning, rewinding, similarity and keeping a mask in force.

Nothing here knows a model family; adapters name tensors through the small
:class:`vlticket.registry.Naming` protocol.
"""

from .attach import MaskHandle
from .mask import Mask
from .metrics import (
    chance_iou_matrix,
    group_iou,
    group_sparsity,
    group_stats,
    iou,
    iou_matrix,
    mask_distance,
    tensor_iou,
)
from .pruning import prune_by_score, prune_magnitude, prune_random
from .rewind import Checkpoint

__all__ = [
    "Checkpoint",
    "Mask",
    "MaskHandle",
    "chance_iou_matrix",
    "group_iou",
    "group_sparsity",
    "group_stats",
    "iou",
    "iou_matrix",
    "mask_distance",
    "prune_by_score",
    "prune_magnitude",
    "prune_random",
    "tensor_iou",
]
