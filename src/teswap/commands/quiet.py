"""Third-party chatter off while a teswap command prints its own output, and back as it was afterwards.

transformers draws a "Loading weights" bar per from_pretrained and logs generation and loading warnings;
huggingface_hub draws download bars. Interleaved with teswap's tables and its own progress bar (plain
tqdm, untouched here) they make the output unreadable. Inside `quiet_libraries()` transformers logs
errors only and neither library draws a bar; what it found is restored on exit. TRANSFORMERS_VERBOSITY,
when set, is the user's choice and left alone. Errors still surface: teswap's own checks raise them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers at error verbosity, no transformers or huggingface_hub progress bars, no transformers
    Python warnings, for the block."""
    from huggingface_hub import utils as hub
    from transformers.utils import logging

    verbosity, bars, hub_bars = logging.get_verbosity(), logging.is_progress_bar_enabled(), \
        hub.are_progress_bars_disabled()
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        logging.set_verbosity_error()
    logging.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"transformers(\.|$)")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
        if not hub_bars:
            hub.enable_progress_bars()
