"""`bloomtui serve`: the layer-streamed engine behind an OpenAI-compatible HTTP API, with continuous batching."""
