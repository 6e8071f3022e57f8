"""HIEROS: hierarchical imagination on structured state space sequence world models."""

import logging

__version__ = "0.1.0"

# The `hieros` logger (training messages) is silent unless the application configures logging (a library's
# convention); a hieros job configures it through conf/hydra/job_logging/hieros.yaml.
logging.getLogger(__name__).addHandler(logging.NullHandler())
