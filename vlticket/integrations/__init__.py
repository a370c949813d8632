"""Glue to the training tools people already use; each module imports its tool on first use.

``vlticket.integrations.transformers``: a ``TrainerCallback`` that runs a ticket search round
inside a Hugging Face ``Trainer``. Importing ``vlticket`` never imports these modules.
"""
