"""Turning passes into text: a sequence's decoding loop (sequence), many sequences per pass (batch),
sampling and its speculative form (sampling, speculative), drafting chains and trees (draft_spec,
draft_mode, drafting, tree, tree_budget), perplexity (scoring) and text assembled from tokens (textstream)."""
