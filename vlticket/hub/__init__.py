"""Sharing tickets: ticket folders, their config and model card, and the Hugging Face Hub.

:class:`Ticket` is the object to save, load and push (``save_pretrained``, ``from_pretrained``,
``push_to_hub``); :func:`push_folder` and :func:`download_ticket` move whole folders, as the
``vlticket push`` and ``pull`` commands do.
"""

from .config import (
    CARD_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MASK_FILE,
    TICKET_FILES,
    TicketConfig,
    file_record,
)
from .sparse import load_sparse, load_sparse_state_dict, push_sparse, save_sparse
from .ticket import Ticket, download_ticket, push_folder

__all__ = [
    "CARD_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "MASK_FILE",
    "TICKET_FILES",
    "Ticket",
    "TicketConfig",
    "download_ticket",
    "file_record",
    "load_sparse",
    "load_sparse_state_dict",
    "push_folder",
    "push_sparse",
    "save_sparse",
]
