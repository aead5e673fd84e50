"""The one exception type raised for bad dataset input."""

from eroseg_at.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset root, file or label does not match what the dataset expects.

    The message always names the offending path, key or value and what was expected.
    """
