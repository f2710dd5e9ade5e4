"""Phase 2, context extension of Lucie-7B.

Starts from the weights of phase 1's last checkpoint (fresh optimizer and scheduler); context
32,000; RoPE theta 20,000,000; global batch 128, micro batch 4; LR 2e-5 constant; 156,250 samples
(1,220 steps); a checkpoint every 250 steps; documents split at 4,096 tokens, long part
up-weighted 10x; originally 32 nodes x 4 H100, TP4 PP4 DP8. Values: lucie_nemo/phases.py (EXTENSION).
"""

from lucie_nemo.phases import EXTENSION
from lucie_nemo.recipe import phase_recipe


def extension_recipe(**options):
    """Options: nodes, gpus_per_node, precision, output_root, data_root, initial_checkpoint, model."""
    return phase_recipe(EXTENSION, **options)
