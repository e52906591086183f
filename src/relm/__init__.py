"""relm: retrieval-based language models at datastore scale."""

from .config import BuildConfig, ChunkConfig, EncoderConfig, ReaderConfig
from .datastore import Datastore, Hit, build_datastore
from .errors import ConfigError, DatastoreError, InputError, RelmError
from .generation import GenerationConfig, agenerate_stream, generate_stream
from .version import __version__

__all__ = [
    "BuildConfig",
    "ChunkConfig",
    "ConfigError",
    "Datastore",
    "DatastoreError",
    "EncoderConfig",
    "GenerationConfig",
    "Hit",
    "InputError",
    "ReaderConfig",
    "RelmError",
    "__version__",
    "agenerate_stream",
    "build_datastore",
    "generate_stream",
]
