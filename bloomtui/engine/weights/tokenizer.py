"""A checkpoint's tokenizer through the `tokenizers` library, without importing transformers.

transformers' fast tokenizer is this same library underneath: encode runs the tokenizer.json pipeline with its
special tokens, and decode is the library's (transformers 5 skips its space clean-up for byte-level BPE, which
BLOOM's is). Importing transformers costs ~2 s a process (it indexes its whole package), half of a cold
`generate`'s time to first token; only a chat template needs it, and loads it then.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from bloomtui.errors import CheckpointError

FILE = "tokenizer.json"


class Tokenizer:
    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer as Backend

        self.folder = folder
        path = folder / FILE
        if path.is_file():
            try:
                self.backend = Backend.from_file(str(path))
            except Exception as exc:
                raise CheckpointError(f"{folder}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
        elif (folder / "tokenizer_config.json").is_file():  # no tokenizer.json: transformers converts the files
            self.backend = self.transformers.backend_tokenizer
        else:
            raise CheckpointError(f"{folder}: no tokenizer.json (BLOOM checkpoints ship one next to config.json)")
        # A tokenizer.json may be saved with truncation or padding on (a fine-tune's max_length): transformers
        # turns both off for a plain call, and a prompt must never be cut in silence.
        self.backend.no_truncation()
        self.backend.no_padding()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        """transformers' calling form (`tok(text)["input_ids"]`), for code written against either."""
        return {"input_ids": self.encode(text, add_special_tokens)}

    def token_name(self, token: int) -> str:
        """The vocabulary's own spelling of a token (byte-level BPE: bytes as printable characters)."""
        return str(self.backend.id_to_token(token))

    def identity(self) -> tuple[object, object]:
        """(vocabulary, merges): two tokenizers with equal ones split text into the same ids."""
        model: dict[str, Any] = json.loads(self.backend.to_str()).get("model", {})
        return model.get("vocab"), model.get("merges")

    @cached_property
    def transformers(self) -> Any:  # noqa: ANN401 - a transformers tokenizer
        """transformers' tokenizer of the same folder, for what only it has (a chat template); loaded on use."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        except Exception as exc:
            raise CheckpointError(f"{self.folder}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
