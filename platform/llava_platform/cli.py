"""Shared behaviour of the command-line jobs: user errors print one clear message, not a traceback."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["user_errors_exit", "quiet_transformers", "drop_bitsandbytes_kernel_notice", "spec_job"]


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


def spec_job(doc: str, spec_cls: type, run: Callable[[Any], Any], config_help: str, example: str) -> None:
    """The command line of a job driven by one spec: `--config FILE [dotted.key=value ...]` -> load() -> run(spec),
    quiet transformers, a user error exits 2 with its message. `example` shows an override in --help."""
    from llava_platform.config import load

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("overrides", nargs="*", help=f"dotted.key=value, e.g. {example}")
    args = parser.parse_args()

    @user_errors_exit
    def main() -> None:
        quiet_transformers()
        run(load(args.config, spec_cls, args.overrides))

    main()


def quiet_transformers() -> None:
    """No progress bars or backend notices on the console of an interactive tool."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


class _DropMessage(logging.Filter):
    """Drops the records whose message template starts with `prefix`; every other record passes."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# bitsandbytes (0.50) on a CPU with AVX512-BF16, when it is imported (peft imports it whether or not anything is
# quantized): it asks the Hugging Face Hub for an optional 4-bit CPU kernel ("kernels-community/..."), and when the
# Hub cannot vouch for it (offline, untrusted publisher) it logs this warning and uses its own kernel, as it should.
_BNB_KERNEL_NOTICE = _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community")


def drop_bitsandbytes_kernel_notice() -> None:
    """Silence bitsandbytes' start-up warning about its optional CPU kernel: that one record of that one logger
    (`bitsandbytes.backends.cpu.ops`), installed before anything imports bitsandbytes (llava_platform/__init__.py)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_BNB_KERNEL_NOTICE)
