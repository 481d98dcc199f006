"""What `bloomtui demo-model` can write: the random-weight shapes, the shipped trained models, the file layouts
and the weight dtypes. Plain names, no torch: the CLI lists them in its --help (demo.py writes the files)."""

from __future__ import annotations

from dataclasses import dataclass

from bloomtui import demo_models


@dataclass(frozen=True)
class DemoShape:
    n_layer: int
    hidden_size: int
    n_head: int
    vocab_size: int


PRESETS: dict[str, DemoShape] = {
    "tiny": DemoShape(n_layer=2, hidden_size=64, n_head=4, vocab_size=1024),  # fast unit tests
    "small": DemoShape(n_layer=4, hidden_size=96, n_head=6, vocab_size=1024),  # non-power-of-two heads
    # vocab as large as the demo tokenizer, so every id a random model picks decodes to visible text
    "medium": DemoShape(n_layer=8, hidden_size=256, n_head=8, vocab_size=1024),
    "560m": DemoShape(n_layer=24, hidden_size=1024, n_head=16, vocab_size=250880),  # bloom-560m shape
    "1b7": DemoShape(n_layer=24, hidden_size=2048, n_head=16, vocab_size=250880),  # bloom-1b7 shape
}
ALL_PRESETS = (*PRESETS, *demo_models.NAMES)
"""Random-weight shapes, and the project's trained models (copied from the package)."""
DTYPE_NAMES = ("float16", "bfloat16", "float32")
# layout -> (weight file name, formatted with shard number i of n; index file name or None). Who writes it:
FILES: dict[str, tuple[str, str | None]] = {
    # transformers' save_pretrained, transformer.* keys
    "safetensors": ("model.safetensors", None),
    "safetensors-sharded": ("model-{i:05d}-of-{n:05d}.safetensors", "model.safetensors.index.json"),
    # the 176B safetensors conversions: bare keys, one shard per block like "bigscience"
    "safetensors-underscore": ("model_{i:05d}-of-{n:05d}.safetensors", "model.safetensors.index.json"),
    "bin": ("pytorch_model.bin", None),  # bloom-560m: bare keys
    "bin-sharded": ("pytorch_model-{i:05d}-of-{n:05d}.bin", "pytorch_model.bin.index.json"),  # bloom-7b1
    # bigscience/bloom (the seed): bare keys; embeddings, then one shard per block, then ln_f
    "bigscience": ("pytorch_model_{i:05d}-of-{n:05d}.bin", "pytorch_model.bin.index.json"),
}
LAYOUTS: tuple[str, ...] = tuple(FILES)
PREFIXED = {"safetensors", "safetensors-sharded"}  # layouts whose keys carry "transformer." by default
SHARDED = {"safetensors-sharded", "bin-sharded"}  # layouts whose shard count the caller may choose
DEFAULT_SHARDS = 3  # a middle shard catches loaders that only handle the first and last file
