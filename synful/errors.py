"""The one exception family synful raises for bad input.

The CLI prints the message of a :class:`SynfulError` on one line and exits
non-zero; messages name the file, section, key, dataset or value at fault.
"""


class SynfulError(Exception):
    """Bad input or state that the user can fix; the message says what and where."""


def read_text_file(path, what: str, error: type[SynfulError] = SynfulError) -> str:
    """The text (UTF-8) of ``path``; a missing or unreadable file raises ``error`` with one line naming the
    path (``what`` says what the file is, e.g. ``"skeleton file"``)."""
    from pathlib import Path

    path = Path(path)
    try:
        return path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read {what}: {e}") from None


def read_json_file(path, what: str, error: type[SynfulError] = SynfulError):
    """The parsed JSON of ``path``; a missing, unreadable or invalid file raises ``error`` with one line
    naming the path (``what`` says what the file is, e.g. ``"config file"``)."""
    import json

    text = read_text_file(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON: {e}") from None
