"""`bloomtui prepare`: rewrite any BLOOM checkpoint as one page-aligned safetensors file per block, with the
four matrices of each block in bf16, int8 or int4, so a streamed block is one sequential read of fewer bytes.

convert  what a prepared folder holds, tensor by tensor (shared by both sources)
folder   where OUT may be written, and how OUT.partial becomes OUT
local    from a folder or the local Hugging Face cache, one block at a time
from_hub straight from the hub, one shard at a time, resumable (the whole checkpoint never on disk)
"""

from bloomtui.engine.prepare.convert import PAGE, default_group_size, output_bytes, write_safetensors
from bloomtui.engine.prepare.local import PrepareProgress, prepare

__all__ = ["PAGE", "PrepareProgress", "default_group_size", "output_bytes", "prepare", "write_safetensors"]
