"""``python -m kdpipe <entry> [flags]``: the seed library's command line."""

from __future__ import annotations

import logging
import sys

from .errors import KdpipeError
from .options import make_parser

ENTRIES = {
    "base": "plain supervised training of one network (teachers and baseline students)",
    "kd": "distil a trained teacher into a student with one of the 17 kd modes",
    "ft": "factor transfer: paraphraser on the teacher, translator on the student",
    "ft_paraphraser": "train only FT's paraphraser on a teacher (the workflow's shared node)",
    "crd": "contrastive representation distillation with a memory bank",
    "dml": "deep mutual learning of 2+ peers, no pre-trained teacher",
    "bss": "boundary supporting samples + soft targets; one born-again generation",
    "teacher_cache": "run a frozen teacher on every view of every training image, once, for the students",
}


def _train_function(entry: str):
    import kdpipe

    return kdpipe.build_teacher_cache if entry == "teacher_cache" else getattr(kdpipe, f"train_{entry}")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("python -m kdpipe", ENTRIES)
    args = vars(parser.parse_args(argv))
    entry = args.pop("entry")
    kwargs = {k: v for k, v in args.items() if v is not None}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        _train_function(entry)(**kwargs)
    except KdpipeError as exc:
        print(f"kdpipe {entry}: error: {exc}", file=sys.stderr)
        return 2
    return 0
