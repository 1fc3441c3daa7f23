"""One logging set-up for stage scripts and the CLI: concise lines on stderr."""

import logging
import warnings


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
