"""The training loop that train.py and distil.py share: a time budget, random windows, a fitted schedule.

Each script builds its model, optimizer and loss, and hands them to `Loop`; the loop samples batches of
random SEQ_LEN windows from the training stream, steps until the schedule ends or the budget is spent, logs
every `log_every` steps (with the script's evaluation every tenth log line) and checkpoints every
`save_minutes`. The checkpoint holds the model, the optimizer, the sampler's generator and `state`, so a
resumed run draws the same batches and continues the schedule it began with.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


def new_state() -> dict:
    return {"step": 0, "total_steps": None, "tokens": 0, "seconds": 0.0}


def warmup_cosine(step: int, total: int, peak: float, warmup: int, *, short_skips_warmup: bool = False) -> float:
    """Linear warmup to `peak`, then cosine to 10% of it at `total`. `short_skips_warmup`: a schedule not
    longer than twice the warmup skips it (train.py's recipes warm up for 200 steps, long for a short run)."""
    if step < warmup and not (short_skips_warmup and total <= warmup * 2):
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def fit_schedule(state: dict, first_step: int, run_start: float, deadline: float) -> None:
    """Every 20 steps: end the schedule when this run's time budget does. Its length follows the speed
    measured so far in this run (an average, so a busy machine bends the cosine smoothly); a resumed run with
    a new budget re-fits the schedule from where it stands (a warm restart)."""
    done = state["step"] - first_step
    if done == 0 or done % 20:
        return
    per_step = (time.perf_counter() - run_start) / done
    fits = state["step"] + int((deadline - time.monotonic()) * 0.98 / per_step)
    if state["total_steps"] is None or abs(fits - state["total_steps"]) > 10:
        state["total_steps"] = max(state["step"] + 1, fits)
        print(f"{per_step:.2f} s/step: schedule ends at step {state['total_steps']}", flush=True)


def save(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: dict,
) -> None:
    tmp = path.with_suffix(".tmp")  # written aside, then renamed: a kill mid-save keeps the last checkpoint
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "state": state,
        },
        tmp,
    )
    tmp.replace(path)


@dataclass
class Loop:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    checkpoint: Path
    log_path: Path
    train_ids: torch.Tensor
    seq_len: int
    batch_size: int
    lr_at: Callable[[int, int], float]
    """(step, total steps) -> learning rate; total is 10**9 until the schedule is first fitted."""
    loss: Callable[[torch.Tensor], torch.Tensor]
    """A (batch, seq_len) window batch -> the scalar loss to minimise."""
    loss_name: str = "loss"
    log_fields: Callable[[dict], dict] = lambda state: {}
    """state -> fields that follow step, loss and lr on each log line."""
    evaluate: Callable[[], dict] = lambda: {}
    """Fields added to every tenth log line (held-out measures: too slow for every one)."""
    state: dict = field(default_factory=new_state)

    def resume(self) -> bool:
        """Load the checkpoint into the model, optimizer, generator and state, if there is one."""
        if not self.checkpoint.exists():
            return False
        saved = torch.load(self.checkpoint, weights_only=False)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        self.state = saved["state"]
        return True

    def save(self) -> None:
        save(self.checkpoint, self.model, self.optimizer, self.generator, self.state)

    def run(self, minutes: float, log_every: int, save_minutes: float) -> None:
        """Train until the schedule ends or `minutes` are spent; the caller saves the final checkpoint."""
        state = self.state
        with self.log_path.open("a") as log:
            deadline = time.monotonic() + minutes * 60
            last_save = time.monotonic()
            run_start, first_step = time.perf_counter(), state["step"]
            while state["total_steps"] is None or state["step"] < state["total_steps"]:
                if time.monotonic() > deadline:
                    print("time budget spent; run again to resume", flush=True)
                    break
                started = time.perf_counter()
                starts = torch.randint(
                    0, len(self.train_ids) - self.seq_len - 1, (self.batch_size,), generator=self.generator
                )
                batch = torch.stack([self.train_ids[s : s + self.seq_len] for s in starts.tolist()])
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(state["step"], state["total_steps"] or 10**9)
                loss = self.loss(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                state["step"] += 1
                state["tokens"] += batch.numel()
                state["seconds"] += time.perf_counter() - started
                fit_schedule(state, first_step, run_start, deadline)
                if state["step"] % log_every == 0:
                    entry = {
                        "step": state["step"],
                        self.loss_name: round(loss.item(), 4),
                        "lr": self.optimizer.param_groups[0]["lr"],
                    }
                    entry.update(self.log_fields(state))
                    if state["step"] % (log_every * 10) == 0:
                        entry.update(self.evaluate())
                    print(json.dumps(entry), flush=True)
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                if time.monotonic() - last_save > save_minutes * 60:
                    self.save()
                    last_save = time.monotonic()
