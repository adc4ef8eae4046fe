"""kdpipe: teacher-student knowledge transfer, from training to comparison tables."""

__version__ = "0.1.0"

from .errors import KdpipeError  # noqa: E402
from .methods.base import train_base  # noqa: E402
from .methods.kd import train_kd  # noqa: E402

__all__ = ["KdpipeError", "train_base", "train_kd", "__version__"]
