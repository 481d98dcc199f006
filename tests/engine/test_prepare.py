"""`bloomtui prepare`: every source layout and dtype, outputs equal to a dequantised reference, streaming equal to
resident, and every bad input one clear error with the source untouched."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import BloomConfig as HFBloomConfig
from transformers import BloomForCausalLM

from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine import events as ev
from bloomtui.engine.compute.matmul import Matmul, QuantizedLinear
from bloomtui.engine.plan.residency import minimum_budget
from bloomtui.engine.prepare import PAGE, prepare, write_safetensors
from bloomtui.engine.weights.checkpoint import MATRICES, Checkpoint
from bloomtui.engine.weights.quant import int4_codes, pack_int4, quantize_int8, unpack_int4
from bloomtui.errors import CancelRequested, UsageError
from tests.checkpoints import reference_greedy, write_checkpoint

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
LAYOUTS = ["safetensors", "safetensors-sharded", "safetensors-underscore", "bin", "bin-sharded", "bigscience"]


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            h.update(path.read_bytes())
            h.update(str(path.stat().st_mtime_ns).encode())
    return h.hexdigest()


def dequantised_state(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The prepared folder's weights as fp32, dequantised from its files: the oracle's inputs."""
    config = json.loads((folder / "config.json").read_text())
    raw: dict[str, torch.Tensor] = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            raw |= {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    state: dict[str, torch.Tensor] = {}
    for key, t in raw.items():
        if key.endswith(".scales"):
            continue
        if not key.endswith(".qweight"):
            state[key] = t.float()
            continue
        base = key.removesuffix("qweight")
        scales = raw[base + "scales"].float()
        if t.dtype == torch.int8:
            state[base + "weight"] = t.float() * scales[:, None]
        else:
            n, k = t.shape[0], t.shape[1] * 2
            codes = unpack_int4(t, k).float().view(n, scales.shape[1], -1)  # the head's groups are its own
            w = (codes - 8) * scales[:, :, 0][..., None] + scales[:, :, 1][..., None]
            state[base + "weight"] = w.view(n, k)
    return config, state


def oracle_for(folder: Path) -> BloomForCausalLM:
    config, state = dequantised_state(folder)
    config = {k: v for k, v in config.items() if k not in ("quantization_config", "torch_dtype", "dtype")}
    model = BloomForCausalLM(HFBloomConfig(**config)).eval()
    model.transformer.load_state_dict(state, strict=False)
    if "lm_head.weight" in state:
        model.lm_head.weight.data.copy_(state["lm_head.weight"])
    else:
        model.tie_weights()
    return model


def run(folder: Path, n: int = 12, **options) -> tuple[list[int], list[float], Engine]:  # noqa: ANN003
    """Greedy ids and logprobs; the exact kernels unless asked (the oracle multiplies unrounded inputs)."""
    engine = Engine.open(folder, EngineOptions(**{"activations": "exact", **options}))
    tokens: list[ev.TokenGenerated] = []
    collect = lambda e: tokens.append(e) if isinstance(e, ev.TokenGenerated) else None  # noqa: E731
    try:
        result = engine.generate(PROMPT, SamplingParams(max_new_tokens=n, ignore_eos=True), on_event=collect)
        ids = engine.encode(PROMPT)
    finally:
        engine.close()
    return list(result.token_ids), [t.logprob for t in tokens], ids


@pytest.mark.parametrize(("weights", "head"), [("bf16", "int8"), ("int8", "int8"), ("int4", "int8"), ("int4", "int4")])
def test_prepared_equals_dequantised_reference(tmp_path, weights, head) -> None:  # noqa: ANN001
    source = write_checkpoint(tmp_path / "src", preset="tiny", layout="safetensors", dtype="float32", init_std=0.08)
    out = prepare(source.path, tmp_path / "out", weights, head=head)
    ckpt = Checkpoint.open(out)
    stored = {"bf16": torch.bfloat16, "int8": torch.int8, "int4": torch.uint8}["bf16" if weights == "bf16" else head]
    assert ckpt.scheme.weights == weights and ckpt.head.dtype == stored
    ids, logprobs, prompt_ids = run(out, dtype="float32")
    want_ids, want_lp = reference_greedy(oracle_for(out), prompt_ids, 12)
    assert ids == want_ids
    assert max(abs(a - b) for a, b in zip(logprobs, want_lp, strict=True)) < 2e-3
    assert len(set(want_ids)) > 3  # an untied random model that varies: matching ids proves something


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_every_layout_and_dtype_prepares(tmp_path, layout, dtype) -> None:  # noqa: ANN001
    source = write_checkpoint(
        tmp_path / "src", preset="tiny", layout=layout, dtype=dtype, untied=layout != "bigscience"
    )
    before = folder_digest(source.path)
    out = prepare(source.path, tmp_path / "out", "int8")
    assert folder_digest(source.path) == before  # the source is never written to
    ckpt = Checkpoint.open(out)
    assert ckpt.tied == (layout == "bigscience") and ckpt.embedding_scales is not None
    assert sorted(p.name for p in out.glob("block-*.safetensors")) == [f"block-{i:05d}.safetensors" for i in range(2)]
    for path in out.glob("*.safetensors"):
        header = int.from_bytes(path.read_bytes()[:8], "little")
        assert (8 + header) % PAGE == 0  # data starts on a page: a block is one aligned sequential read
    ids, _, _ = run(out, n=4)
    assert len(ids) == 4


@pytest.mark.parametrize(("weights", "head"), [("int8", "int8"), ("int4", "int8"), ("int4", "int4")])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_streamed_equals_resident(tmp_path, weights, head, dtype) -> None:  # noqa: ANN001
    """Streamed head chunks (read into slots in fp32, mapped in bf16) and streamed embedding rows give what the
    resident ones give."""
    source = write_checkpoint(tmp_path / "src", preset="tiny", dtype="float32", init_std=0.08)
    out = prepare(source.path, tmp_path / "out", weights, head=head)
    ckpt = Checkpoint.open(out)
    itemsize = torch.tensor([], dtype=getattr(torch, dtype)).element_size()
    resident = run(out, dtype=dtype)
    streamed = run(out, dtype=dtype, ram_budget=minimum_budget(ckpt, itemsize))
    assert streamed[0] == resident[0]
    assert max(abs(a - b) for a, b in zip(streamed[1], resident[1], strict=True)) < 1e-4
    engine = Engine.open(out, EngineOptions(dtype=dtype, ram_budget=minimum_budget(ckpt, itemsize)))
    try:
        assert engine.store.plan.streamed_blocks == (0, 1) and not engine.store.plan.head_resident
        assert engine.store.zero_copy == (dtype == "bfloat16")  # the mapped path and the read path both ran
    finally:
        engine.close()


def test_kernels_agree_with_dequantised_matrices() -> None:
    torch.manual_seed(0)
    w = torch.randn(128, 256)
    codes, scale, zero = int4_codes(w, 64)
    packed, scales = pack_int4(codes, scale, zero)
    assert torch.equal(unpack_int4(packed, 256).to(torch.int32), codes)
    int4 = QuantizedLinear(4, packed, scales.float(), 64, (128, 256))
    q, s = quantize_int8(w)
    int8 = QuantizedLinear(8, q, s, 0, (128, 256))
    x = torch.randn(5, 256)
    for weight, atol in ((int8, 1e-3), (int4, 1e-3)):
        reference = x @ weight.dequantize_rows(0, 128, torch.float32).T
        assert torch.allclose(Matmul()(x, weight), reference, atol=atol)  # fused kernel, many rows
        assert torch.allclose(Matmul()(x[:1], weight), reference[:1], atol=atol)  # fused kernel, decode
        assert torch.allclose(Matmul(upcast=True, tile_bytes=64 * 256 * 4)(x, weight), reference, atol=atol)
    assert (int4.dequantize_rows(0, 128, torch.float32) - w).abs().max() <= scale.max() / 2 + 1e-5


def test_bad_inputs_are_clear_and_touch_nothing(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    source = write_checkpoint(tmp_path / "src", preset="small", dtype="float16")
    before = folder_digest(source.path)
    with pytest.raises(UsageError, match="int4 cannot store"):
        prepare(source.path, tmp_path / "a", "int4")  # hidden 96: not a multiple of int4's 64-row blocks
    out = prepare(source.path, tmp_path / "out", "int8")
    stamp = folder_digest(out)
    with pytest.raises(UsageError, match="already exists"):
        prepare(source.path, out, "int8")
    assert folder_digest(out) == stamp
    with pytest.raises(UsageError, match="already prepared"):
        prepare(out, tmp_path / "again", "int4")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="refusing to replace"):
        prepare(source.path, other, "int8", force=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(UsageError, match="must not be the model folder"):
        prepare(source.path, source.path / "inside", "int8")
    with pytest.raises(UsageError, match="--group-size"):
        prepare(source.path, tmp_path / "b", "int8", group_size=48)
    with pytest.raises(Exception, match="no such folder"):
        prepare(tmp_path / "missing", tmp_path / "c", "int8")

    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**12, 10**12, 1000))
    with pytest.raises(UsageError, match="GB free"):
        prepare(source.path, tmp_path / "d", "int8")
    monkeypatch.undo()
    assert not (tmp_path / "d").exists() and folder_digest(source.path) == before

    replaced = prepare(source.path, out, "bf16", force=True)  # --force replaces an earlier output
    assert Checkpoint.open(replaced).scheme.weights == "bf16"


def test_interrupted_prepare_leaves_nothing(tmp_path) -> None:  # noqa: ANN001
    source = write_checkpoint(tmp_path / "src", preset="tiny")
    stop = threading.Event()
    calls = []

    def progress(p) -> None:  # noqa: ANN001
        calls.append(p)
        stop.set()  # as Ctrl+C would, after the first file

    with pytest.raises(CancelRequested):
        prepare(source.path, tmp_path / "out", "int4", on_progress=progress, should_stop=stop.is_set)
    assert calls and not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_matrices_are_quantised_and_card_written(tmp_path) -> None:  # noqa: ANN001
    source = write_checkpoint(tmp_path / "src", preset="tiny")
    out = prepare(source.path, tmp_path / "out", "int4", group_size=32)
    ckpt = Checkpoint.open(out)
    names = set(ckpt.blocks[0])
    for name in MATRICES:
        base = name.removesuffix("weight")
        assert {base + "qweight", base + "scales"} <= names and name not in names
    assert ckpt.scheme.group_size == 32 and ckpt.block_nbytes() < Checkpoint.open(source.path).block_nbytes() / 3
    card = (out / "README.md").read_text()
    assert "int4" in card and "group size 32" in card and str(source.path) in card
    assert (out / "tokenizer.json").read_bytes() == (source.path / "tokenizer.json").read_bytes()


def _torch_int4_layout() -> str:
    """This CPU's layout of torch's int4 packing (what format-1 folders hold), probed with matrices whose
    nibbles spell their own row: the string an older bloomtui recorded."""
    n, k = 128, 32
    rows = torch.arange(n)[:, None].expand(n, k)
    pack = lambda q: torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)  # noqa: E731
    nibbles = lambda p: torch.stack([p.reshape(-1) & 15, p.reshape(-1) >> 4], dim=-1).reshape(-1)  # noqa: E731
    row_of = nibbles(pack(rows % 16)) + 16 * nibbles(pack(rows // 16))
    for block in (64, 32, 16):
        order = row_of.view(n // block, k, block)[0, 0]
        if sorted(order.tolist()) == list(range(block)):
            return f"torch-cpu-int4pack/rows{block}/" + ",".join(map(str, order.tolist()))
    raise AssertionError("torch's int4 packing has an unknown layout here")


def _as_format_1(folder: Path, out: Path) -> None:
    """A copy of an int4 folder as bloomtui before format 2 wrote it: torch's packing, pairs [groups, out, 2]."""
    out.mkdir()
    layout = _torch_int4_layout()
    for path in folder.iterdir():
        if path.suffix != ".safetensors":
            (out / path.name).write_bytes(path.read_bytes())
            continue
        with safe_open(str(path), "pt") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
        for key in [k for k in tensors if k.endswith(".qweight") and tensors[k].dtype == torch.uint8]:
            base = key.removesuffix("qweight")
            codes = unpack_int4(tensors[key], tensors[key].shape[1] * 2)
            tensors[key] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
            tensors[base + "scales"] = tensors[base + "scales"].transpose(0, 1).contiguous()
        write_safetensors(out / path.name, tensors, metadata)
    config = json.loads((out / "config.json").read_text())
    del config["quantization_config"]["format_version"]
    config["quantization_config"]["int4_layout"] = layout
    (out / "config.json").write_text(json.dumps(config))


def test_a_format_1_int4_folder_runs_repacked_and_says_so(tmp_path) -> None:  # noqa: ANN001
    source = write_checkpoint(tmp_path / "src", preset="tiny", dtype="float32", init_std=0.08)
    out = prepare(source.path, tmp_path / "out", "int4")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format_version"] == 2
    _as_format_1(out, tmp_path / "old")
    new_ids, new_lp, _ = run(out, dtype="float32", activations="exact")
    old_ids, old_lp, _ = run(tmp_path / "old", dtype="float32", activations="exact")
    assert old_ids == new_ids and old_lp == new_lp  # the same matrices once repacked
    engine = Engine.open(tmp_path / "old")
    try:
        assert "older bloomtui's layout" in (engine.model_plan.format_warning or "")
    finally:
        engine.close()
    assert Engine.open(out).model_plan.format_warning is None
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["format_version"] = 3
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="by a newer bloomtui"):
        Engine.open(out)
    config["quantization_config"] |= {"format_version": 1, "int4_layout": "torch-cpu-int4pack/rows64"}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="int4_layout 'torch-cpu-int4pack/rows64' is not one bloomtui reads"):
        Engine.open(out)  # a damaged layout string: said when the config is read, not deep in a load
    with pytest.raises(UsageError, match="activations must be one of auto, exact, int8"):
        Engine.open(tmp_path / "old", EngineOptions(activations="int4"))
