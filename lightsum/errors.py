"""What lightsum says on stderr: ``lightsum: error: <what is wrong>`` (exit 2) and ``lightsum: <note>``.

Bad input is reported as a ``ValueError`` (or ``FileNotFoundError``, ``DamagedFile`` for a file
that is not what its name says, or ``CannotWrite`` for a file that could not be written) wherever it
is found; the command line turns it into one line without a traceback. ``LIGHTSUM_DEBUG=1``
re-raises instead.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException


class CannotWrite(OSError):
    """A file lightsum writes could not be written (a full disk, no permission, ...): names the file,
    after ``what`` (the option that chose it) where given."""

    def __init__(self, path: object, error: OSError, what: str = "") -> None:
        super().__init__(error.errno, f"{what + ': ' if what else ''}cannot write {path}: {error.strerror or error}")

    def __str__(self) -> str:
        return self.strerror


class DamagedFile(ValueError):
    """A file lightsum reads is not what its name says (a folder, not YAML, not an event file, ...)."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


# What the user can act on: their mistakes, and the machine's limits. MisconfigurationException:
# Lightning's own check of a combination of trainer settings.
USER_ERRORS = (ValueError, FileNotFoundError, CannotWrite, MisconfigurationException)


def debugging() -> bool:
    return bool(os.environ.get("LIGHTSUM_DEBUG"))


@rank_zero_only
def note(text: str) -> None:
    """Print ``lightsum: <text>`` on stderr, once per run (rank 0 under DDP)."""
    print(f"lightsum: {text}", file=sys.stderr, flush=True)


def fail(message: object, code: int = 2) -> NoReturn:
    """Print ``lightsum: error: <message>`` on one line and exit."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    sys.stderr.write(f"lightsum: error: {text}\n")
    sys.exit(code)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Report the user's mistakes raised inside as one line and exit 2."""
    try:
        with quiet_writer_threads():
            yield
    except USER_ERRORS as err:
        if debugging():
            raise
        fail(what_went_wrong(err))


def what_went_wrong(err: BaseException) -> BaseException:
    """The error to report for ``err``: Lightning's TensorBoard logger turns any failure to log a
    value into ``ValueError("you tried to log <value> which is currently not supported ...")``,
    where the ``CannotWrite`` under it (``events.EventWriteErrors``: a full disk, a filesystem
    turned read-only) is what went wrong."""
    return err.__cause__ if isinstance(err, ValueError) and isinstance(err.__cause__, CannotWrite) else err


@contextmanager
def quiet_writer_threads() -> Iterator[None]:
    """No traceback from TensorBoard's writer threads while a command runs.

    TensorBoard writes event files from a thread of its own. An OS error there ends the thread,
    which prints a traceback, and TensorBoard raises the same error in the main thread at its next
    write, where it is reported in one line: the thread's copy would be a second report.
    """
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        writer = type(args.thread).__module__.startswith("tensorboard")  # tensorboard's or tensorboardX's
        if not (writer and issubclass(args.exc_type, OSError)) or debugging():
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


class OneLineParserErrors:
    """Mixin for an argparse (or jsonargparse) parser: a bad argument is one line, no usage block.

    ``error_context`` prefixes the message (``report: ``); ``help_hint`` says where help is.
    """

    error_context = ""
    help_hint = "--help"

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # jsonargparse calls error() with exit_on_error=False while it tries alternatives: let it raise.
        if not getattr(self, "exit_on_error", True) or debugging():
            super().error(message, *([ex] if ex is not None else []))  # type: ignore[misc]
        fail(f"{self.error_context}{message} (see {self.help_hint})")


Rule = tuple[Callable[[Any], bool], str]


def check_arguments(owner: str, values: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Raise ``ValueError("<owner>.<name> must be <what>, got <value>")`` for the first broken rule.

    Args:
        owner: the config section the arguments belong to (``model``, ``data``).
        values: argument name -> value.
        rules: argument name -> (predicate, what the value must be).
    """
    for name, (ok, must) in rules.items():
        if not ok(values[name]):
            raise ValueError(f"{owner}.{name} must be {must}, got {values[name]!r}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


POSITIVE_INT: Rule = (lambda v: isinstance(v, int) and is_number(v) and v >= 1, "a positive integer")
NON_NEGATIVE_INT: Rule = (lambda v: isinstance(v, int) and is_number(v) and v >= 0, "an integer >= 0")


def diverged(what: str, precision: object) -> ValueError:
    """The error for a non-finite loss or output, with the most likely remedy."""
    hint = (
        "float16 overflows easily: try --trainer.precision bf16-mixed"
        if str(precision).startswith("16")
        else "try a lower --optimizer.init_args.lr"
    )
    return ValueError(f"training diverged: {what} is not finite (NaN or inf); {hint}")
