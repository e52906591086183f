"""RETRO (Borgeaud et al. 2021): chunked cross-attention model, neighbour database, leakage-filtered eval.

The model (model.py) is a Llama decoder with chunked cross-attention to retrieved neighbours;
`RetroModel.from_llama` retrofits a pretrained Llama-style model (e.g. SmolLM2), and fusion "relm" reads
one passage embedding vector per neighbour instead of neighbour tokens. See model.py for the design notes.
"""

from .model import RetroConfig, RetroModel

__all__ = ["RetroConfig", "RetroModel"]
