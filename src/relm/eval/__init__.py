"""Retrieval-augmented LM evaluation."""
