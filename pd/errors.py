"""Errors a user can act on.

Each carries a message meant to be printed as is: the CLI and the workflow show
``str(err)`` without a stack trace for these, so the message must say what is wrong
and how to fix it.
"""


class PDError(Exception):
    """Base for every error that is the user's to fix (config, data, models)."""


class ConfigError(PDError):
    """The configuration names an unknown key, a wrong type or an unknown name."""


class ModelUnavailableError(PDError):
    """A model's weights cannot be found (offline, missing package, bad path)."""


class DataError(PDError):
    """A dataset file is missing or malformed."""


class OutputError(PDError):
    """An output cannot be written where it must go (a read-only or missing folder); the message names it."""


class VocabularyMismatchError(PDError):
    """Two models that must share a vocabulary (teacher and student) do not."""


class CheckpointError(PDError):
    """A training checkpoint cannot be loaded safely (not one pd wrote, damaged, or holding code)."""


class TrainingInterrupted(PDError):
    """Training stopped on a signal (SIGTERM: a SLURM time limit or ``scancel``) after saving a checkpoint; running
    the job again resumes from it."""
