"""The generation loop: events, cancellation, stop rules, UTF-8 streaming, sampling semantics."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine import events as ev
from bloomtui.engine.compute.model import Alibi, alibi_bias
from bloomtui.engine.decode.sampling import Sampler, apply_repetition_penalty, top_k_filter, top_p_filter
from bloomtui.engine.decode.textstream import IncrementalDecoder, StopFilter
from bloomtui.engine.plan.residency import minimum_budget
from bloomtui.engine.weights.checkpoint import Checkpoint
from tests.checkpoints import Written, write_checkpoint

PROMPT = "The Spanish translation of thank you for your help is: "


@pytest.fixture(scope="module")
def engine(tiny_model: Written):  # noqa: ANN201
    eng = Engine.open(tiny_model.path)
    yield eng
    eng.close()


@pytest.fixture(scope="module", params=["read", "mapped"])
def streaming_engine(request: pytest.FixtureRequest, tiny_model: Written, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Every block streamed: read and converted (fp16 on disk), or mapped in place (fp32 on disk)."""
    path = tiny_model.path
    if request.param == "mapped":
        path = write_checkpoint(tmp_path_factory.mktemp("fp32") / "m", preset="small", dtype="float32").path
    budget = minimum_budget(Checkpoint.open(path), 4)
    eng = Engine.open(path, EngineOptions(ram_budget=budget))
    assert len(eng.model_plan.plan.streamed_blocks) == eng.config.n_layer
    assert eng.store.zero_copy == (request.param == "mapped")
    yield eng
    eng.close()


def test_events_per_block_and_token(streaming_engine: Engine) -> None:
    seen: list[ev.Event] = []
    result = streaming_engine.generate(PROMPT, SamplingParams(max_new_tokens=5, ignore_eos=True), on_event=seen.append)
    n = streaming_engine.config.n_layer
    blocks = [e for e in seen if isinstance(e, ev.BlockDone)]
    tokens = [e for e in seen if isinstance(e, ev.TokenGenerated)]
    assert len(blocks) == 5 * n  # prompt prefilled in one pass, then one pass per further token
    assert [b.index for b in blocks[:n]] == list(range(n)) and blocks[0].kind == "prefill"
    assert blocks[n].kind == "decode"
    assert all(b.bytes > 0 and not b.resident and b.rss > 0 for b in blocks)
    assert [t.id for t in tokens] == list(result.token_ids)
    assert "".join(t.text for t in tokens) == result.text
    assert seen[-1] is result and result.stop_reason == "length" and result.new_tokens == 5
    assert result.bytes_read >= sum(b.bytes for b in blocks)
    assert len({e.generation for e in seen}) == 1


def test_cancel_mid_pass_then_reuse(streaming_engine: Engine) -> None:
    cancel = threading.Event()
    blocks: list[ev.BlockDone] = []

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.BlockDone):
            blocks.append(event)
            if event.token_index == 2 and event.index == 1:
                cancel.set()  # mid-pass, while the prefetcher is reading ahead

    result = streaming_engine.generate(PROMPT, SamplingParams(max_new_tokens=50), on_event=on_event, cancel=cancel)
    assert isinstance(result, ev.Cancelled)
    assert result.new_tokens == 2
    assert (blocks[-1].token_index, blocks[-1].index) == (2, 1), "cancel must land within one block"
    # The engine is ready for the next prompt and gives the same tokens as a fresh run.
    again = streaming_engine.generate(PROMPT, SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert isinstance(again, ev.Done)
    assert again.token_ids[:2] == result.token_ids


def test_memory_grows_with_the_tokens_generated_not_max_new_tokens(streaming_engine: Engine) -> None:
    """A huge max-new-tokens ("until it stops") allocates nothing up front: a 10^10-position ALiBi bias alone
    would be 40 GB per head."""
    import psutil

    cancel = threading.Event()

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.TokenGenerated) and event.index == 300:
            cancel.set()  # past the KV cache's and the bias's first capacity (256), so both have grown

    before = psutil.Process().memory_info().rss
    params = SamplingParams(max_new_tokens=10**10, ignore_eos=True)
    result = streaming_engine.generate(PROMPT, params, on_event=on_event, cancel=cancel)
    assert isinstance(result, ev.Cancelled) and result.new_tokens == 301
    assert psutil.Process().memory_info().rss - before < 200 * 1024**2
    again = streaming_engine.generate(PROMPT, SamplingParams(max_new_tokens=301, ignore_eos=True))
    assert again.token_ids == result.token_ids
    grown = Alibi(6, torch.bfloat16, capacity=4)
    grown.upto(3)
    assert torch.equal(grown.upto(1000), alibi_bias(6, 1000, torch.bfloat16))  # grown = made at full length


def test_cancel_before_start(engine: Engine) -> None:
    cancel = threading.Event()
    cancel.set()
    result = engine.generate(PROMPT, SamplingParams(max_new_tokens=5), cancel=cancel)
    assert isinstance(result, ev.Cancelled) and result.new_tokens == 0


def test_resident_and_streamed_agree(streaming_engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    resident = Engine.open(streaming_engine.model_plan.path)
    try:
        assert resident.generate(PROMPT, params).token_ids == streaming_engine.generate(PROMPT, params).token_ids
    finally:
        resident.close()


def test_stop_string_cuts_before_it(engine: Engine) -> None:
    full = engine.generate(PROMPT, SamplingParams(max_new_tokens=24, ignore_eos=True))
    assert len(full.text) > 6
    stop = full.text[3:6]
    tokens: list[ev.TokenGenerated] = []
    cut = engine.generate(
        PROMPT,
        SamplingParams(max_new_tokens=24, ignore_eos=True, stop=(stop,)),
        on_event=lambda e: tokens.append(e) if isinstance(e, ev.TokenGenerated) else None,
    )
    assert cut.stop_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert "".join(t.text for t in tokens) == cut.text  # nothing of the stop string was streamed


def test_eos_stops_unless_ignored(engine: Engine) -> None:
    ids = engine.generate(PROMPT, SamplingParams(max_new_tokens=6, ignore_eos=True)).token_ids
    # Make the model's own third token the "EOS" to see the rule apply.
    object.__setattr__(engine.config, "eos_token_id", ids[2])
    try:
        stopped = engine.generate(PROMPT, SamplingParams(max_new_tokens=6))
        ignored = engine.generate(PROMPT, SamplingParams(max_new_tokens=6, ignore_eos=True))
    finally:
        object.__setattr__(engine.config, "eos_token_id", 2)
    assert stopped.stop_reason == "eos" and stopped.token_ids == ids[: ids.index(ids[2]) + 1]
    assert ignored.token_ids == ids


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=10, temperature=1.3, top_k=50, top_p=0.95, seed=7, ignore_eos=True)
    a = engine.generate(PROMPT, params).token_ids
    b = engine.generate(PROMPT, params).token_ids
    c = engine.generate(PROMPT, SamplingParams(**{**params.__dict__, "seed": 8})).token_ids
    assert a == b and a != c


def test_utf8_pieces_never_broken(engine: Engine) -> None:
    text = "日本語のテキスト 🙂🚀 and émojis — ñ ü 中文字符"
    ids = engine.encode(text)
    assert len(ids) > len(text.encode()) // 4  # many characters span several byte-level tokens
    decoder = IncrementalDecoder(engine.decode)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert any(p == "" for p in pieces), "some tokens hold only part of a character"


def test_stop_filter_holds_back_partial_matches() -> None:
    f = StopFilter(["STOP"])
    assert f.feed("abc ST") == ("abc ", False)
    assert f.feed("xy") == ("STxy", False)
    assert f.feed("S") == ("", False)
    assert f.feed("TOP more") == ("", True)
    g = StopFilter(["\n\n", "###"])
    assert g.feed("line\n") == ("line", False)
    assert g.feed("#") == ("\n", False)
    assert g.flush() == "#"


def test_sampling_filters_match_transformers() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 500) * 3
    seen = torch.tensor([[5, 17, 17, 300]])
    want = RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits[0], seen[0], 1.3), want[0])
    for k in (1, 10, 499):
        want = TopKLogitsWarper(k)(seen, logits.clone())
        assert torch.equal(top_k_filter(logits[0], k), want[0])
    for p in (0.1, 0.5, 0.9, 1.0):
        scaled = TemperatureLogitsWarper(0.7)(seen, logits.clone())
        want = TopPLogitsWarper(p)(seen, scaled.clone())
        assert torch.equal(top_p_filter(scaled[0], p), want[0])


def test_sampler_logprob_is_of_raw_logits() -> None:
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0])
    token, logprob = Sampler(SamplingParams(repetition_penalty=5.0))(logits, torch.tensor([1]))
    assert token == 2  # the penalty moved argmax from 1 to 2 ...
    assert logprob == pytest.approx(torch.log_softmax(logits, -1)[2].item())  # ... but logprob is unpenalised


def test_empty_prompt_is_an_error(engine: Engine) -> None:
    from bloomtui.errors import UsageError

    seen: list[ev.Event] = []
    with pytest.raises(UsageError, match="empty"):
        engine.generate("", SamplingParams(max_new_tokens=2), on_event=seen.append)
    assert isinstance(seen[-1], ev.Error)


def test_streaming_reads_only_the_streamed_bytes(tiny_model: Written, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass reads exactly the streamed blocks' tensors (and head chunks), nothing of resident blocks."""
    from bloomtui.engine.io import reader

    ckpt = Checkpoint.open(tiny_model.path)
    budget = minimum_budget(ckpt, 4) + ckpt.block_nbytes() * 2 + ckpt.head.nbytes * 2  # 1 block + head
    eng = Engine.open(tiny_model.path, EngineOptions(ram_budget=budget))
    plan = eng.model_plan.plan
    assert plan.head_resident and 0 < len(plan.streamed_blocks) < ckpt.n_blocks
    reads: list[tuple[str, int, int]] = []
    original = reader.TensorReader._pread_into

    def spy(self, path, offset, view, should_stop):  # noqa: ANN001, ANN202
        reads.append((str(path), offset, len(view)))
        return original(self, path, offset, view, should_stop)

    monkeypatch.setattr(reader.TensorReader, "_pread_into", spy)
    passes = 3
    eng.generate(PROMPT, SamplingParams(max_new_tokens=passes, ignore_eos=True))
    eng.close()
    assert not ckpt.tied
    allowed = {(str(r.path), r.offset, r.nbytes) for i in plan.streamed_blocks for r in ckpt.blocks[i].values()}
    emb = ckpt.embeddings  # this model's head is untied, so embedding rows are read from disk as needed
    row = emb.shape[1] * emb.dtype.itemsize
    rows = [(p, o, n) for p, o, n in reads if p == str(emb.path) and emb.offset <= o < emb.offset + emb.nbytes]
    assert all(n == row and (o - emb.offset) % row == 0 for _, o, n in rows)
    assert len(rows) == len(eng.encode(PROMPT)) + passes - 1
    blocks = [r for r in reads if r not in rows]
    # fp16 -> fp32 conversion reads through the staging buffer in chunks; these tensors fit one chunk.
    assert set(blocks) == allowed
    assert len(blocks) == passes * len(allowed)


def test_mapped_streaming_faults_in_only_the_streamed_bytes(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """With the compute dtype on disk, streamed tensors are mapped: only their pages are faulted in."""
    from bloomtui.engine.io import mapped

    path = write_checkpoint(tmp_path / "m", preset="small", dtype="float32", untied=False).path
    ckpt = Checkpoint.open(path)
    budget = minimum_budget(ckpt, 4) + ckpt.block_nbytes() + ckpt.head.nbytes  # 1 block + head resident
    eng = Engine.open(path, EngineOptions(ram_budget=budget))
    plan = eng.model_plan.plan
    assert eng.store.zero_copy and plan.head_resident and 0 < len(plan.streamed_blocks) < ckpt.n_blocks
    faults: list[tuple[str, int, int]] = []
    released: list[tuple[str, int, int]] = []
    populate, release = mapped.FileMaps.populate, mapped.FileMaps.release

    def spy_populate(self, ref, start, length, should_stop):  # noqa: ANN001, ANN202
        faults.append((str(ref.path), start, length))
        return populate(self, ref, start, length, should_stop)

    def spy_release(self, ref, start, length):  # noqa: ANN001, ANN202
        released.append((str(ref.path), start, length))
        return release(self, ref, start, length)

    monkeypatch.setattr(mapped.FileMaps, "populate", spy_populate)
    monkeypatch.setattr(mapped.FileMaps, "release", spy_release)
    passes = 3
    eng.generate(PROMPT, SamplingParams(max_new_tokens=passes, ignore_eos=True))
    eng.close()
    allowed = {(str(r.path), r.offset, r.nbytes) for i in plan.streamed_blocks for r in ckpt.blocks[i].values()}
    assert set(faults) == allowed and len(faults) == passes * len(allowed)
    assert sorted(released) == sorted(faults)  # every faulted-in range is unmapped after its block
