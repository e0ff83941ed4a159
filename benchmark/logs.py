"""How `bench` prints: one line per message, in the command's process and in each run a parallel
sweep starts (`bench run --jobs N`)."""

from __future__ import annotations

import logging


def configure_logging() -> None:
    """One line per message: the project's loggers print through the root handler; Lightning's
    print through the handler Lightning adds to its own `lightning` logger, which therefore must not
    hand them on to the root's as well."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").propagate = False
