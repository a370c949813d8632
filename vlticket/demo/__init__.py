"""``vlticket demo``: a miniature of the study on this machine's CPU, offline.

A small ViLT (hidden 64, 2 layers) is pre-trained briefly on easy-vqa (θ0), then IMP finds a
ticket on each of two colour tasks; the ticket is compared with random pruning (global, and
matched tensor by tensor) and with the ticket on shuffled weights θ0'' at the same sparsity, the
two tasks' masks are compared (IoU) and task A's ticket is re-trained on task B (Table 1). IMP
on the pre-training objective gives the pre-training ticket, trained on each task beside the
task's own ticket (Table 2). Structured IMP says how many attention heads and FFN neurons each
task can lose, and the shrunk model and the CSR-exported ticket are timed on this CPU. Every
number printed comes from the run. Run again into the same --out, it resumes finished work;
with other settings it says so and starts afresh.

Modules: ``data`` (easy-vqa questions and images), ``model`` (the small ViLT and its training
loop), ``options`` (defaults and checks), ``pretraining`` (θ0 and the pre-training ticket),
``structured`` (heads and neurons), ``speed`` (timing on this CPU), ``study`` (the experiment),
``output`` (what a re-run reuses), ``report`` (the tables and the plot).
"""

from .options import DEFAULTS, TINY, configure_parser
from .study import run, run_study

__all__ = ["DEFAULTS", "TINY", "configure_parser", "run", "run_study"]
