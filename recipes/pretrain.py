"""Phase 1, main pre-training of Lucie-7B.

Lucie-7B from random init (seed 42); context 4,096; RoPE theta 500,000; global batch 256 -> 1,024
(+64 every 10M/12 samples); AdamW, LR 3e-4 with linear warmup over 2M samples then cosine to 3e-5
at sample 762,144,586 (753,851 steps); a checkpoint every 5,000 steps; the full Lucie blend;
originally 128 nodes x 4 H100, TP4 PP4 DP32. Values: lucie_nemo/phases.py (PRETRAIN).
"""

from lucie_nemo.phases import PRETRAIN
from lucie_nemo.recipe import phase_recipe


def pretrain_recipe(**options):
    """Options: nodes, gpus_per_node, precision ("bf16"/"fp8"), output_root, data_root, model."""
    return phase_recipe(PRETRAIN, **options)
