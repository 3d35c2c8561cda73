import logging

import structlog

# Library diagnostics at warning and above only, so test output shows what matters.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
