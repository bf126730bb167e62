"""Shared CLI behaviour: user errors print one line and exit 1, no traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from edge.errors import UserError

OWN_PACKAGES = ("edge", "engines", "calibration", "tools")


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    # Our own INFO lines only: the ONNX exporter's libraries log every graph pass.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in OWN_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
