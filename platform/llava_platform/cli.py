"""Shared behaviour of the command-line jobs: user errors print one clear message, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

__all__ = ["user_errors_exit", "quiet_transformers"]


def user_errors_exit(main: Callable[[], None]) -> Callable[[], None]:
    """Run `main`; a bad spec, dataset, image, template or path exits 2 with its message.

    The library raises ValueError subclasses (ConfigError, RecordError, ImageError, TemplateError)
    and OSError (missing files, unknown hub ids) for what the user can fix.
    """

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            main()
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def quiet_transformers() -> None:
    """No progress bars or backend notices on the console of an interactive tool."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
