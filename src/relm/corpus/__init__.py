"""Corpus reading and chunking."""

from .chunking import chunk_tokens, chunk_words
from .documents import Document
from .readers import InputFile, ReadStats, read_documents, resolve_inputs

__all__ = ["Document", "InputFile", "ReadStats", "chunk_tokens", "chunk_words", "read_documents", "resolve_inputs"]
