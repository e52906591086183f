"""The datastore: one directory with a manifest beside memory-mapped arrays."""

from .build import build_datastore
from .layout import FORMAT_VERSION, read_manifest
from .parts import build_in_parts
from .store import Datastore, Hit

__all__ = ["FORMAT_VERSION", "Datastore", "Hit", "build_datastore", "build_in_parts", "read_manifest"]
