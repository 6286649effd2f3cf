"""Errors a user can cause, and the one-line exit that stage entry points give them."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A problem the user can fix (bad data, bad params, missing weights).

    The message is shown as one line, so it must name the file or key and what is wrong.
    """


class ParamsError(UserError):
    """params.yaml has an unknown, missing or ill-typed key."""


class DatasetError(UserError):
    """The dataset breaks the MRNet-v1.0 contract."""


class WeightsNotFoundError(UserError):
    """Pretrained weights were asked for but are not in the local torch cache."""


def setup_logging(level: int = logging.INFO) -> None:
    """Configure root logging once for a command-line entry point."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def cli(main: F) -> F:
    """Run ``main`` as a command: logging on, user errors as one line and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        setup_logging()
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
