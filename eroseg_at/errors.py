"""The mark of an error that the user can fix: bad input, a missing file or root, a setting that cannot be honoured.

Every such error names the file, key or value and what was expected. The command-line entry points print it as a
short message without a traceback (``HYDRA_FULL_ERROR=1`` shows it); any other exception is a bug in this
project and keeps its traceback. Domain errors subclass :class:`UserError` beside the built-in type callers
already catch (``class DatasetError(UserError, ValueError)``), so marking an error changes no ``except`` clause.
"""


class UserError(Exception):
    """An error in what the user gave (a path, a config value, a file's contents), with a message that says how
    to fix it."""


class ConfigError(UserError, ValueError):
    """Settings that cannot work together (a model's class count that differs from the dataset's, a crop size the
    architecture cannot take), naming each key and value."""
