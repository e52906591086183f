"""Downstream tasks with retrieval: open-domain QA (exact match, F1, answer recall) and multiple choice."""

from __future__ import annotations

from .context import Found, FoundPassages, fit_passages, retrieve_all
from .data import QAItem, read_qa, split_items
from .prompts import TEMPLATES, QAPrompt, load_prompt
from .run import QAConfig, condition_name, run_qa

__all__ = ["TEMPLATES", "Found", "FoundPassages", "QAConfig", "QAItem", "QAPrompt", "condition_name",
           "fit_passages", "load_prompt", "read_qa", "retrieve_all", "run_qa", "split_items"]
