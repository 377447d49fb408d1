"""The one exception type for user-facing problems: bad input, a broken store, a missing extra.

The CLI turns it into a one-line `Error: ...` and exit status 1; anything else that escapes is a bug.
"""


class TsrError(Exception):
    """A problem the user can fix. The message names the file, row or field at fault."""
