"""A model opened and run block by block: the store that holds resident weights and fills the stream slots
ahead of compute (loader), the passes that run blocks over hidden states as their weights arrive (passes),
and OpenModel, which ties a plan, its store and the tokenizer together (open_model)."""
