"""Training data: tokenized Megatron indexed datasets, the phases' data blends, and a demo corpus.

Sub-modules are imported on demand (``prepare`` pulls in megatron-core and torch in the parent process
only; its worker processes need just the tokenizer).
"""
