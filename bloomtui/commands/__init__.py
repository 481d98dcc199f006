"""The headless commands behind `bloomtui generate`, `info` and `perplexity`: each takes the parsed
arguments (cli.py builds the parser) and returns the exit status. Nothing here imports torch at module level:
the CLI sets OpenMP defaults before torch loads (bloomtui/openmp.py)."""
