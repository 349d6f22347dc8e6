"""The one base of the errors users see.

Every error that means "this input cannot be used" (a file, a config key, a checkpoint, a folder) derives from
``UserError``; its message is one line that names the file (and line, or key) and the problem. ``vtg`` prints it as
``vtg <command>: error: <message>`` and exits with status 2 (``cli.USER_ERRORS``). A run that fails for another
reason (``training.TrainingError``: a non-finite loss) is not a user error and exits 1.
"""


class UserError(ValueError):
    """Bad input from a user or another tool: one line naming the file (and line, or key) and the problem.

    A ValueError, so code that checks values with ``except ValueError`` also sees these."""
