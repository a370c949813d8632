"""Finding tickets in the user's own loop: IMP with rewinding, its run folder, and the relaxed
winning ticket of its history."""

from .imp import Round, TicketSearch, prune_schedule
from .relaxed import RelaxedTicket, relaxed_ticket

__all__ = ["RelaxedTicket", "Round", "TicketSearch", "prune_schedule", "relaxed_ticket"]
