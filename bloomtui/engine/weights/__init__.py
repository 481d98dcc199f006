"""What a checkpoint folder holds, read without running anything: the tensor files and their layouts
(tensorfile, checkpoint), the model's config, its quantisation scheme (quant), its tokenizer, its decoding
defaults (generation_config) and where a name resolves to on disk (hub). Imports nothing else of the engine."""
