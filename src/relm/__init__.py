"""relm: retrieval-based language models at datastore scale."""

__version__ = "0.1.0"

from .config import BuildConfig, ChunkConfig, EncoderConfig, ReaderConfig  # noqa: E402
from .datastore import Datastore, Hit, build_datastore  # noqa: E402
from .errors import ConfigError, DatastoreError, InputError, RelmError  # noqa: E402

__all__ = [
    "BuildConfig",
    "ChunkConfig",
    "ConfigError",
    "Datastore",
    "DatastoreError",
    "EncoderConfig",
    "Hit",
    "InputError",
    "ReaderConfig",
    "RelmError",
    "__version__",
    "build_datastore",
]
