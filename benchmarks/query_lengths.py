"""Wordpieces (all-MiniLM-L6-v2) of the eval queries of the item-4 run: whole context vs last 32 tokens."""
from types import SimpleNamespace

import numpy as np
from transformers import AutoTokenizer

from relm.corpus.tokenizer import load_tokenizer
from relm.encoders.sentence_transformers import resolve_model_path
from relm.eval.windows import WindowConfig, make_windows, pack_streams, read_eval_sets

tok = load_tokenizer()
lm = SimpleNamespace(encode=tok.encode, eos_id=tok.hf.eos_token_id)
sets = read_eval_sets(["../shared/data/eval/pydocs.jsonl.gz"])
streams = [s for name, docs in sets for s in pack_streams(docs, lm, set_name=name)]
windows = make_windows(streams, WindowConfig(512, max_windows=40))
wp = AutoTokenizer.from_pretrained(str(resolve_model_path("all-MiniLM-L6-v2")))
ctx = np.array([len(wp(tok.decode(w.context_ids).strip())["input_ids"]) for w in windows])
last = np.array([len(wp(tok.decode(w.context_ids[-32:]).strip())["input_ids"]) for w in windows])
print(f"{len(windows)} windows; whole-context query: median {np.median(ctx):.0f} wordpieces (with [CLS]/[SEP]), "
      f"{(ctx > 256).mean():.0%} over 256; last-32-token query: max {last.max()}")
