"""vlticket: find, check, share and compare lottery tickets in PyTorch models.

Where things live, bottom to top (each layer imports only from those below it):

- ``errors``, ``registry`` and private helpers: exceptions, the adapter registry;
- ``core``: :class:`Mask`, pruning, :class:`Checkpoint` (rewinding), similarity metrics and
  :class:`MaskHandle` (a mask kept in force while training);
- ``adapters``: canonical names of model families (LXMERT, UNITER, ViLT, patterns);
- ``search`` (IMP), ``baselines``, ``adversarial``, ``distributed``, ``hub`` (sharing);
- ``cli`` and ``demo``.
"""

from . import adapters, adversarial, baselines, hub, saliency
from ._version import __version__
from .adapters import adapter_for
from .core import (
    Checkpoint,
    Mask,
    MaskHandle,
    group_iou,
    group_sparsity,
    group_stats,
    iou,
    iou_matrix,
    mask_distance,
    prune_by_score,
    prune_magnitude,
    prune_random,
    tensor_iou,
)
from .dynamic import DynamicSparsity
from .early_bird import EarlyBird
from .errors import (
    ArgumentError,
    FileFormatError,
    MismatchError,
    NameMismatchError,
    ShapeMismatchError,
    VlticketError,
)
from .hub import Ticket
from .registry import register_adapter
from .search import RelaxedTicket, Round, TicketSearch, relaxed_ticket

__all__ = [
    "ArgumentError",
    "Checkpoint",
    "DynamicSparsity",
    "EarlyBird",
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
    "group_iou",
    "group_sparsity",
    "group_stats",
    "hub",
    "iou",
    "iou_matrix",
    "mask_distance",
    "prune_by_score",
    "prune_magnitude",
    "prune_random",
    "register_adapter",
    "relaxed_ticket",
    "saliency",
    "tensor_iou",
]
