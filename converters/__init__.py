"""Converters between Megatron-Bridge / megatron-core training checkpoints and Hugging Face Lucie folders.

One concern per module: ``layout`` (tensor names and QKV / SwiGLU re-packing), ``megatron_reader``
(streaming reads of torch_dist checkpoints), ``hf_writer`` (sharded safetensors), ``model_card``,
``export``, ``import_hf``, ``megatron_model`` (a one-process Megatron model on CPU), ``verify`` and
``publish``. The ``lucie export/import/verify/publish`` commands are thin wrappers over them.
"""

from lucie_nemo import runtime

# Every converter uses lucie_nemo.model, which imports Megatron-Bridge: make it importable first.
runtime.prepare()
