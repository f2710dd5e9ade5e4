"""lucie-nemo: Lucie-7B's training, re-declared on Megatron-Bridge, megatron-core and nemo-run."""

__version__ = "0.1.0"
