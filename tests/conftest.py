import logging
import os

import structlog

# Quiet, fast logs in tests: warnings and errors only, to stderr.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(
        logging.DEBUG if os.environ.get("CDP_TEST_DEBUG") else logging.WARNING
    ),
    logger_factory=structlog.PrintLoggerFactory(),
    cache_logger_on_first_use=False,
)
