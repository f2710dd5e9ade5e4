"""Converters between Megatron-Bridge / megatron-core training checkpoints and Hugging Face Lucie folders.

One concern per module: ``layout`` (tensor names and QKV / SwiGLU re-packing), ``megatron_reader``
(streaming reads of torch_dist checkpoints), ``hf_writer`` (sharded safetensors), ``model_card``,
``export``, ``import_hf``, ``megatron_model`` (a one-process Megatron model on CPU), ``verify`` and
``publish``; ``universal/`` for the DeepSpeed universal checkpoints of the original run. The
``lucie export/import/verify/publish`` commands are thin wrappers over them.

Importing the package loads nothing heavy: the modules that import Megatron (``megatron_reader``,
``megatron_model``, ``verify``) prepare its runtime themselves, so ``publish`` and the folder checks of
``hf_writer`` run without torch or Megatron.
"""
