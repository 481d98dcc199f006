"""The engine's tokenizer (the `tokenizers` library on tokenizer.json) encodes and decodes as transformers'
AutoTokenizer of the same folder does, and opening a model imports no transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from bloomtui import demo_models
from bloomtui.engine.weights.tokenizer import Tokenizer
from bloomtui.errors import CheckpointError
from tests.checkpoints import Written

TEXTS = [
    "The most important thing to remember about lists is that",
    "  leading spaces, trailing spaces  \n\nand blank lines\n",
    "Le modèle BLOOM est entraîné. ¿Cómo estás? 你好，世界！ こんにちは Привет 🙂🚀 — “quotes” … € ±",
    "def f(x):\n\treturn x ** 2  # tab and comment",
    "</s> special tokens in text <pad><unk><s> and a partial </",
    "",
    "a",
]


@pytest.mark.parametrize("which", ["demo", "random"])
def test_encode_and_decode_equal_transformers(which: str, tiny_model: Written) -> None:
    folder = demo_models.path("trained") if which == "demo" else Path(tiny_model.path)
    ours, theirs = Tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    for text in TEXTS:
        ids = theirs(text, add_special_tokens=True)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == theirs.decode(ids), text
        assert [ours.token_name(i) for i in ids] == theirs.convert_ids_to_tokens(ids)
    every = list(range(min(theirs.vocab_size, 2000)))
    assert ours.decode(every) == theirs.decode(every)


def test_truncation_saved_in_the_file_never_cuts_a_prompt(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as Backend

    saved = Backend.from_file(str(demo_models.path("trained") / "tokenizer.json"))
    saved.enable_truncation(max_length=4)
    saved.save(str(tmp_path / "tokenizer.json"))
    text = TEXTS[0] * 3
    assert len(Tokenizer(tmp_path).encode(text)) == len(Tokenizer(demo_models.path("trained")).encode(text)) > 4


def test_a_folder_without_a_tokenizer_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer(tmp_path)


def test_opening_and_generating_import_no_transformers() -> None:
    script = (
        "import sys\n"
        "from bloomtui.engine import Engine, SamplingParams\n"
        "engine = Engine.open('trained')\n"
        "engine.generate('A list is', SamplingParams(max_new_tokens=2))\n"
        "print('transformers' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
