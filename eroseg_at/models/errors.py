"""The exception types raised for a model that cannot be built from what the user gave."""

from eroseg_at.errors import UserError


class ModelSourceError(UserError, ValueError):
    """A model name, weights file or model directory that does not build or load: an unknown name, a file that is
    not a state dict or an archive of the expected kind, weights that do not fit the architecture.

    The message names the file or setting and what was expected.
    """


class ModelFileNotFoundError(UserError, FileNotFoundError):
    """A weights file or model directory that does not exist, named with the setting that gave it."""
