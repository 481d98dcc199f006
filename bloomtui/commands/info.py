"""`bloomtui info MODEL`: what opening a model would do, without loading its weights."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from bloomtui.commands.engine_options import engine_options
from bloomtui.errors import UsageError
from bloomtui.openmp import describe_in_effect
from bloomtui.remote import is_remote_url
from bloomtui.remote.cli import info_remote
from bloomtui.sizes import format_size


def info(args: argparse.Namespace) -> int:
    """`bloomtui info MODEL`: the config, layout, sizes, the plan for a budget and the model's generation defaults."""
    if is_remote_url(args.model):
        if args.draft:
            raise UsageError("--draft works with local models only")
        return info_remote(args)
    from bloomtui.engine.compute.cpu_profile import prefill_path
    from bloomtui.engine.compute.native import describe as native_describe
    from bloomtui.engine.decode.draft_spec import PROMPT_LOOKUP
    from bloomtui.engine.decode.drafting import budget_after_draft, draft_plan
    from bloomtui.engine.plan.model_plan import plan_model

    options = engine_options(args)
    draft = None
    if args.draft is not None and args.draft != PROMPT_LOOKUP:
        draft = draft_plan(args.draft, options)
        options = budget_after_draft(options, draft)
    mp = plan_model(args.model, options)
    ckpt, plan, cfg = mp.checkpoint, mp.plan, mp.checkpoint.config
    disk_stream = sum(ckpt.block_nbytes(i) for i in plan.streamed_blocks)
    if not plan.head_resident:
        disk_stream += sum(ref.nbytes for ref in ckpt.head_refs)
    data = {
        "path": str(mp.path),
        "layout": ckpt.layout,
        "files": len(ckpt.files),
        "file_bytes": ckpt.total_file_bytes,
        "hidden_size": cfg.hidden_size,
        "n_head": cfg.n_head,
        "n_layer": cfg.n_layer,
        "vocab_size": cfg.vocab_size,
        "training_context": cfg.training_context,
        "post_ln_residual": cfg.apply_residual_connection_post_layernorm,
        "tied_head": ckpt.tied,
        "stored_dtype": str(ckpt.dtype).removeprefix("torch."),
        "compute_dtype": str(mp.dtype).removeprefix("torch."),
        "recommended_dtype": cfg.recommended_dtype,
        "weights": ckpt.scheme.weights if ckpt.scheme else "original",
        "group_size": ckpt.scheme.group_size if ckpt.scheme else None,
        "head_weights": ckpt.scheme.head if ckpt.scheme and ckpt.scheme.quantized else None,
        "block_bytes": ckpt.block_nbytes(),
        "bytes_per_token_all_streamed": sum(ckpt.block_nbytes(i) for i in range(ckpt.n_blocks))
        + sum(ref.nbytes for ref in ckpt.head_refs),
        "prefill": prefill_path(mp.dtype),
        "decode": native_describe(mp.activations),
        "ram_budget": plan.budget,
        "resident_blocks": sorted(plan.resident_blocks),
        "streamed_blocks": list(plan.streamed_blocks),
        "head_resident": plan.head_resident,
        "resident_bytes": plan.resident_bytes,
        "buffer_bytes": plan.buffer_bytes,
        "streamed_bytes_per_token": disk_stream,
        "threads": args.threads or _torch_threads(),
        "threads_follow_load": not args.threads,
        "openmp": describe_in_effect(),
        "reads": mp.reads.path or None,
        "reads_reason": mp.reads.reason,
        "reads_refused_direct": [str(path) for path in mp.reads.refused],
        "budget_warning": mp.budget_warning,
        "format_warning": mp.format_warning,
        "generation_defaults": mp.generation.set_fields(),
        "draft": _draft_data(args.draft, draft),
    }
    for warning in (mp.budget_warning, mp.format_warning):
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    n = cfg.n_layer
    print(f"model       {mp.path}")
    print(f"layout      {ckpt.layout}, {len(ckpt.files)} file(s), {format_size(ckpt.total_file_bytes)}")
    print(
        f"shape       {n} blocks, hidden {cfg.hidden_size}, {cfg.n_head} heads, vocab {cfg.vocab_size}, "
        f"{'tied' if ckpt.tied else 'untied'} head{', post-LN residual' if data['post_ln_residual'] else ''}"
    )
    why = (
        " (--dtype)"
        if args.dtype
        else " (the model's config asks for it; --dtype overrides)"
        if cfg.recommended_dtype
        else ""
    )
    print(f"dtype       stored {data['stored_dtype']}, computed in {data['compute_dtype']}{why}")
    print(f"context     trained on {cfg.training_context} tokens (longer prompts run, with a warning)")
    if ckpt.scheme:
        group = f", group size {ckpt.scheme.group_size}" if ckpt.scheme.group_size else ""
        head = f", embeddings/head {ckpt.scheme.head}" if ckpt.scheme.quantized else ""
        made = f"prepared by bloomtui, format {ckpt.scheme.format_version}"
        print(f"weights     {ckpt.scheme.weights}{group}{head} ({made})")
    print(f"prefill     {data['prefill']}")
    print(f"decode      {data['decode']}")
    if args.threads:
        print(f"threads     {args.threads} (--threads)")
    else:
        print(f"threads     {data['threads']}, fewer while other programs hold cores (--threads N fixes the count)")
    print(f"openmp      {data['openmp']}")
    defaults = data["generation_defaults"]
    if defaults:
        listed = ", ".join(f"{key.replace('_', '-')} {value}" for key, value in defaults.items())
        print(f"defaults    {listed} (the model's generation_config.json; options override them)")
    if args.draft is not None:
        print(f"draft       {_draft_line(data['draft'], args.ram_budget is not None)}")
    print(f"per block   {format_size(ckpt.block_nbytes())} on disk, {format_size(plan.block_bytes)} in RAM")
    lowered = " (lowered to what this machine can hold)" if mp.budget_warning else ""
    print(f"RAM budget  {format_size(plan.budget)}{lowered}")
    print(
        f"resident    {len(plan.resident_blocks)}/{n} blocks, "
        f"LM head {'resident' if plan.head_resident else 'streamed'}"
        f" ({format_size(plan.resident_bytes)} + {format_size(plan.buffer_bytes)} stream buffers)"
    )
    streamed = plan.streamed_blocks
    print(f"streamed    {len(streamed)} blocks{': ' + _ranges(streamed) if streamed else ''}")
    print(
        f"disk/token  {format_size(disk_stream)} read per generated token with this budget; "
        f"{format_size(data['bytes_per_token_all_streamed'])} with every block streamed"
    )
    if mp.reads.path:
        print(f"reads       {mp.reads.describe()}")
    return 0


def _draft_data(name: str | None, draft) -> dict | None:  # noqa: ANN001 - a draft's ModelPlan (imports torch)
    if name is None:
        return None
    if draft is None:
        return {"name": name, "path": None, "resident_bytes": 0}
    return {"name": name, "path": str(draft.path), "resident_bytes": draft.plan.total_bytes}


def _draft_line(draft: dict, budget_given: bool) -> str:
    if draft["path"] is None:
        return f"{draft['name']} (drafts from the text itself: no model, no memory)"
    where = "taken from --ram-budget" if budget_given else "beside the default budget"
    return f"{draft['path']}, held resident: {format_size(draft['resident_bytes'])}, {where}"


def _ranges(indices: Sequence[int]) -> str:
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
