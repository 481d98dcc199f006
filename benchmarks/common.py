"""Small helpers shared by the harness, its workers and the commands that measure a section of their own:
page-cache eviction, RSS, byte ranges, budgets, and the sections they write into BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

PROMPT = "The SQL command to extract all the users whose name starts with A is: "
PASSAGE = (
    "The old lighthouse keeper climbed the stairs every evening, lit the lamp, and wrote one line in his "
    "book about the sea, the wind and the ships that passed."
)
DRAFT_PROMPTS = {
    "story": "Once upon a time, a little girl named Lily found a small red box in the garden.",
    "repeat": f"Repeat the passage exactly.\nPassage: {PASSAGE}\nRepeated: {PASSAGE}\nRepeated again:",
    "no-repeat": "Seventeen quiet purple elephants juggled marmalade beneath Tuesday's crooked horizon",
}
"""Speculative decoding (issue 9): ordinary text, a prompt that asks to copy a passage (prompt lookup's case),
and one where nothing repeats (prompt lookup must not lose)."""
RESULT_TAG = "BENCH_RESULT "
REPO = Path(__file__).resolve().parent.parent
HELDOUT = REPO / "training" / "heldout-sample.txt"
READ_CHUNK = 32 * 1024 * 1024  # the engine reads in 32 MiB preadv chunks; the floor uses the same
BIG_BUDGET = 1 << 40  # "everything resident"


def say(text: str) -> None:
    """Progress on stderr: stdout carries a worker's result or a command's section."""
    print(text, file=sys.stderr, flush=True)


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes.

    Linux's VmHWM, the high-water mark of this process's own memory: `ru_maxrss` also keeps, across fork and
    exec, the RSS the parent had when it forked, so a worker started by a harness that had just built a
    10 GB checkpoint would report 10 GB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: KiB, as Linux counts it


def rss() -> int:
    return psutil.Process().memory_info().rss


def evict(paths: Iterable[Path]) -> float:
    """Drop the files from the OS page cache (POSIX_FADV_DONTNEED); returns the seconds it took.

    On a VM the host may still cache the virtual disk: "cold" means cold for this kernel only."""
    t0 = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin"))


class RangeEvictor:
    """Evicts byte ranges of checkpoint files, keeping one descriptor per file."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self.seconds = 0.0

    def __call__(self, path: Path, offset: int, length: int) -> None:
        t0 = time.perf_counter()
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def spans(refs) -> list[tuple[Path, int, int]]:  # noqa: ANN001 - TensorRefs
    """Byte spans (file, offset, length) covering the refs, one per file."""
    by_file: dict[Path, list[int]] = {}
    for ref in refs:
        lo_hi = by_file.setdefault(ref.path, [ref.offset, ref.offset + ref.nbytes])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], ref.offset), max(lo_hi[1], ref.offset + ref.nbytes)
    return [(path, lo, hi - lo) for path, (lo, hi) in by_file.items()]


def long_prompt(tokenizer, tokens: int) -> str:  # noqa: ANN001 - a transformers tokenizer
    """About `tokens` tokens of English (the held-out sample, repeated as needed), cut on a token boundary so
    that every contender's tokenizer gives the same ids for the same text."""
    text = HELDOUT.read_text(encoding="utf-8")
    ids: list[int] = []
    while len(ids) < tokens:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        text += "\n\n" + text
    return tokenizer.decode(ids[:tokens])


@dataclass(frozen=True)
class Section:
    """A BENCHMARKS.md section that a command of its own measures, between `<!-- name:begin -->` and
    `<!-- name:end -->`: the command's --update puts it in place, and the harness keeps it when it rewrites the
    rest. Every such command writes its section through here."""

    name: str

    @property
    def begin(self) -> str:
        return f"<!-- {self.name}:begin -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}:end -->"

    def text(self, lines: list[str]) -> str:
        """The section's Markdown: its lines between its markers."""
        return "\n".join([self.begin, *lines, self.end])

    def kept(self, markdown: str) -> str:
        """This section as an older report has it ("" if it has none)."""
        if self.begin not in markdown or self.end not in markdown:
            return ""
        return self.begin + markdown.split(self.begin, 1)[1].split(self.end, 1)[0] + self.end

    def update(self, path: Path | None, text: str) -> None:
        """Put `text` (this section, markers included) in place of its older self in `path`, or before the
        method notes when it has none yet; nothing without a path or a text."""
        if path is None or not text:
            return
        old = path.read_text() if path.exists() else ""
        if self.begin in old and self.end in old:
            new = old.split(self.begin)[0] + text + old.split(self.end, 1)[1]
        else:
            marker = "\n## Method notes"
            new = old.replace(marker, "\n" + text + "\n" + marker, 1) if marker in old else old + "\n" + text + "\n"
        path.write_text(new)

    def publish(self, text: str, path: Path | None) -> None:
        """Print the section and, given a file (--update), write it there."""
        print(text)
        self.update(path, text)

    @staticmethod
    def parser(doc: str) -> argparse.ArgumentParser:
        """A measuring command's parser: its module docstring as help, and --update FILE."""
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--update", type=Path, metavar="FILE", help="write the section into this Markdown file")
        return parser


def table_head(*columns: str) -> list[str]:
    """A Markdown table's header row and the rule under it."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def commit_stamp() -> str:
    """ "commit abc1234, YYYY-MM-DD": which code a section measured, and when."""
    here = Path(__file__).resolve().parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True).stdout
    return f"commit {commit.strip()}, {time.strftime('%Y-%m-%d')}"


def _cpu() -> tuple[str, set[str]]:
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, flags


def cpu_family() -> str:
    """The CPU family the kernels care about: the widest vector extension, and the integer-dot and matrix
    units beside it."""
    flags = _cpu()[1]
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        vector = "AVX512-BF16"
    elif "avx512f" in flags:
        vector = "AVX512 (no BF16)"
    elif "avx2" in flags:
        vector = "AVX2 (no AVX512)"
    else:
        return "no AVX2"
    extras = [label for flag, label in (("amx_tile", "AMX"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"))
              if flag in flags]  # fmt: skip
    return " + ".join([vector, *extras])


def cpu_summary() -> str:
    """The CPU's name, cores and family, for a section measured on this machine alone."""
    return f"{_cpu()[0]}, {os.cpu_count()} cores, {cpu_family()}"


def budget_arg(text: str, model: Path) -> int | None:
    """A worker's --budget: bytes, 'auto' for the engine's default (None: a share of the memory available,
    within a memory cgroup's limit), or 'min' for the engine's minimum for `model`, with room for direct I/O's
    page-aligned slots (a few KB: every block still streams, whichever way it is read)."""
    if text == "auto":
        return None
    if text != "min":
        return int(text)
    from bloomtui.engine.plan.model_plan import compute_dtype
    from bloomtui.engine.plan.residency import minimum_budget
    from bloomtui.engine.plan.slots import slot_extra
    from bloomtui.engine.weights.checkpoint import Checkpoint

    ckpt = Checkpoint.open(model)
    itemsize = compute_dtype(ckpt.dtype, None).itemsize
    return minimum_budget(ckpt, itemsize, slot_extra(ckpt, itemsize))


# The budgets the harness (run.py) and tree_cost.py both plan with: here, so that neither imports the other.


def full_bytes(model: Path) -> int:
    """Bytes bloomtui holds with everything resident (weights in the compute dtype)."""
    from bloomtui.engine import EngineOptions
    from bloomtui.engine.plan.model_plan import plan_model

    return plan_model(model, EngineOptions(ram_budget=BIG_BUDGET)).plan.total_bytes


def minimum_bytes(model: Path) -> int:
    """The least budget bloomtui streams `model` under, in the dtype it computes in (as full_bytes)."""
    from bloomtui.engine import EngineOptions
    from bloomtui.engine.plan.model_plan import plan_model
    from bloomtui.engine.plan.residency import minimum_budget

    plan = plan_model(model, EngineOptions(ram_budget=BIG_BUDGET))
    return minimum_budget(plan.checkpoint, plan.dtype.itemsize)


def quarter_bytes(model: Path) -> int:
    """The streaming budget the harness and the tree-cost runs use: 1/4 of `model` resident, or its minimum."""
    return max(full_bytes(model) // 4, minimum_bytes(model))
