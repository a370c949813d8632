"""vlticket: find, check, share and compare lottery tickets in PyTorch models.

The core is model-agnostic: a :class:`Mask` over named weights, pure pruning functions that
return new masks, :class:`Checkpoint` snapshots to rewind to, and mask-similarity metrics.
"""

from . import adapters, adversarial, baselines, hub
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
from .hub import Ticket, load_ticket
from .masks import Mask
from .metrics import iou, iou_matrix, layer_iou, mask_distance
from .pruning import prune_magnitude, prune_random
from .rewind import Checkpoint
from .search import Round, TicketSearch
from .tickets import RelaxedTicket, relaxed_ticket

__version__ = "0.1.0.dev0"

__all__ = [
    "ArgumentError",
    "Checkpoint",
    "FileFormatError",
    "Mask",
    "MaskHandle",
    "MismatchError",
    "NameMismatchError",
    "RelaxedTicket",
    "Round",
    "ShapeMismatchError",
    "Ticket",
    "TicketSearch",
    "VlticketError",
    "__version__",
    "adapter_for",
    "adapters",
    "adversarial",
    "baselines",
    "hub",
    "iou",
    "iou_matrix",
    "layer_iou",
    "load_ticket",
    "mask_distance",
    "prune_magnitude",
    "prune_random",
    "relaxed_ticket",
]
