"""The one exception family synful raises for bad input.

The CLI prints the message of a :class:`SynfulError` on one line and exits
non-zero; messages name the file, section, key, dataset or value at fault.
"""


class SynfulError(Exception):
    """Bad input or state that the user can fix; the message says what and where."""
