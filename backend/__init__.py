"""batchvar backend: exact theory, replica engine, statistics and cache for studying SGD against the batch size b.

Nothing here imports Streamlit; the CLI (``python -m backend``) and the pages call the same functions in ``backend.api``.
"""

__all__ = ["ConfigError"]

from backend.errors import ConfigError  # noqa: E402
