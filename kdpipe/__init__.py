"""kdpipe: teacher-student knowledge transfer, from training to comparison tables."""

__version__ = "0.1.0"

from .errors import KdpipeError  # noqa: E402
from .methods.base import train_base  # noqa: E402
from .methods.bss import train_bss  # noqa: E402
from .methods.crd import train_crd  # noqa: E402
from .methods.dml import train_dml  # noqa: E402
from .methods.ft import train_ft, train_ft_paraphraser  # noqa: E402
from .methods.kd import train_kd  # noqa: E402
from .methods.teacher_cache import build_teacher_cache  # noqa: E402

__all__ = [
    "KdpipeError",
    "build_teacher_cache",
    "train_base",
    "train_bss",
    "train_crd",
    "train_dml",
    "train_ft",
    "train_ft_paraphraser",
    "train_kd",
    "__version__",
]
