"""The one exception type that user-facing entry points turn into a single error line."""


class KdpipeError(Exception):
    """Bad input or an unusable file: the message is one line naming what and why."""
