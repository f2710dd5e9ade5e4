"""Phase 3, annealing of Lucie-7B.

Starts from the weights of phase 2's last checkpoint (fresh optimizer and scheduler); context
32,000; RoPE theta 20,000,000; global batch 128, micro batch 4; LR 3e-5 decaying linearly to 0
over 156,250 samples (1,220 steps); a checkpoint every 500 steps; the annealing mix; originally
32 nodes x 4 H100, TP4 PP4 DP8. Values: lucie_nemo/phases.py (ANNEAL).
"""

from lucie_nemo.phases import ANNEAL
from lucie_nemo.recipe import phase_recipe


def anneal_recipe(**options):
    """Options: nodes, gpus_per_node, precision, output_root, data_root, initial_checkpoint, model."""
    return phase_recipe(ANNEAL, **options)
