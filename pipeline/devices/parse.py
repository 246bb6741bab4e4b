"""Pure parsers of what an emulated device run leaves behind, by what they read:

- :mod:`pipeline.devices.insn_counts`: the qemu plugin's count file (per-region
  class counts and the block profile), and instructions per inference;
- :mod:`pipeline.devices.guest_result`: the guest's ``result.json`` and a runtime's
  load error text;
- :mod:`pipeline.devices.blocks`: the block profile checked, re-joined and its hot part.

Nothing there runs anything: ``runner.py`` drives qemu. Their public names stay
importable from here.
"""

from pipeline.devices.blocks import (HOT_COVERAGE, BlockProfile, HotProfile, block_profile, hot_blocks,
                                     is_branch, rejoin)
from pipeline.devices.guest_result import (GUEST_FORMAT, GuestResult, LoadError, TensorInfo, TensorIO,
                                           parse_guest_result, parse_load_error)
from pipeline.devices.insn_counts import (CLASSES, COUNTS_HEADER, COUNTS_VERSION, FIRST_INFERENCE_REGION,
                                          INSN_BYTES, MARKER_REGION, WARMUP_REGION, Block, ClassCounts,
                                          InferenceCounts, InsnCounts, check_inference_regions,
                                          inference_counts, parse_insn_counts)

__all__ = [
    "CLASSES", "COUNTS_HEADER", "COUNTS_VERSION", "FIRST_INFERENCE_REGION", "GUEST_FORMAT", "HOT_COVERAGE",
    "INSN_BYTES", "MARKER_REGION", "WARMUP_REGION", "Block", "BlockProfile", "ClassCounts", "GuestResult",
    "HotProfile", "InferenceCounts", "InsnCounts", "LoadError", "TensorIO", "TensorInfo", "block_profile",
    "check_inference_regions", "hot_blocks", "inference_counts", "is_branch", "parse_guest_result",
    "parse_insn_counts", "parse_load_error", "rejoin",
]
