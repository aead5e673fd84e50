"""The one exception type raised for bad dataset input."""


class DatasetError(ValueError):
    """A dataset root, file or label does not match what the dataset expects.

    The message always names the offending path, key or value and what was expected.
    """
