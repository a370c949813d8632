"""``vlticket demo``: a miniature of the study on this machine's CPU, offline.

A small ViLT (hidden 64, 2 layers) is pre-trained briefly on easy-vqa (θ0), then IMP finds a
ticket on each of two colour tasks; the ticket is compared with random pruning (global, and
matched tensor by tensor) and with the ticket on shuffled weights θ0'' at the same sparsity, the
two tasks' masks are compared (IoU) and task A's ticket is re-trained on task B. Every number
printed comes from the run. Run again into the same --out, it resumes finished work (θ0, rounds,
baselines); with other settings it says so and starts afresh.

Modules: ``data`` (easy-vqa questions and images), ``model`` (the small ViLT and its training
loop), ``options`` (defaults and checks), ``study`` (the experiment), ``output`` (what a re-run
reuses), ``report`` (the table and the plot).
"""

from .options import DEFAULTS, TINY, configure_parser
from .study import run, run_study

__all__ = ["DEFAULTS", "TINY", "configure_parser", "run", "run_study"]
