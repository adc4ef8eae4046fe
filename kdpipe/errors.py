"""The one exception type that user-facing entry points turn into a single error line."""


class KdpipeError(Exception):
    """Bad input or an unusable file: the message is one line naming what and why."""


def os_error_line(exc: OSError) -> str:
    """One line for a file operation the system refused (a full disk, a read-only or missing directory, a
    file where a directory should be): the system's reason and the path, without a traceback."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p]
    return f"{exc.strerror or exc}: {' -> '.join(paths)}" if paths else str(exc.strerror or exc)


INTERRUPTED = "interrupted; a training run resumes from its last checkpoint when run again"
