"""vlticket: find, check, share and compare lottery tickets in PyTorch models.

Where things live, bottom to top (each layer imports only from those below it):

- ``errors``, ``registry`` and private helpers: exceptions, the adapter registry;
- ``core``: :class:`Mask`, pruning, :class:`Checkpoint` (rewinding), similarity metrics and
  :class:`MaskHandle` (a mask kept in force while training);
- ``adapters``: canonical names of model families (LXMERT, UNITER, ViLT, patterns);
- ``hub`` (sharing), then the methods: ``structured`` / ``shrink`` (whole heads and neurons),
  ``export``, ``saliency``, ``early_bird``, ``dynamic``, ``baselines``, ``adversarial``,
  ``distributed``; above them ``search`` (IMP), which may drive any of them;
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
    HubError,
    MismatchError,
    NameMismatchError,
    ShapeMismatchError,
    VlticketError,
)
from .export import export
from .hub import Ticket, load_sparse, load_sparse_state_dict, push_sparse, save_sparse
from .registry import register_adapter
from .search import RelaxedTicket, Round, TicketSearch, relaxed_ticket
from .shrink import load_shrunk, shrink
from .structured import prune_structured

__all__ = [
    "ArgumentError",
    "Checkpoint",
    "DynamicSparsity",
    "EarlyBird",
    "FileFormatError",
    "HubError",
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
    "export",
    "group_iou",
    "group_sparsity",
    "group_stats",
    "hub",
    "iou",
    "iou_matrix",
    "load_shrunk",
    "load_sparse",
    "load_sparse_state_dict",
    "mask_distance",
    "prune_by_score",
    "prune_magnitude",
    "prune_random",
    "prune_structured",
    "push_sparse",
    "register_adapter",
    "relaxed_ticket",
    "saliency",
    "save_sparse",
    "shrink",
    "tensor_iou",
]
