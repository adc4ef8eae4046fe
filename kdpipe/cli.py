"""``python -m kdpipe <entry> [flags]``: the seed library's command line."""

from __future__ import annotations

import logging
import os
import sys

from .errors import INTERRUPTED, KdpipeError, os_error_line
from .options import ENTRIES, entry_function, make_parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("python -m kdpipe")
    args = vars(parser.parse_args(argv))
    entry = args.pop("entry")
    kwargs = {k: v for k, v in args.items() if v is not None}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        record = entry_function(entry)(**kwargs)
    except KdpipeError as exc:
        print(f"kdpipe {entry}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused a write or read (a full disk, no permission): one line too
        print(f"kdpipe {entry}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kdpipe {entry}: {INTERRUPTED}", file=sys.stderr)
        return 130
    if ENTRIES[entry].prints:
        try:
            print(record[ENTRIES[entry].prints], flush=True)
        except BrokenPipeError:  # the reader stopped early (| head): not an error; nothing more to write
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
