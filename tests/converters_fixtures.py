"""Shared fixtures of the converter tests: a random tiny Hugging Face Lucie model, its import, and one short
CPU training run (Megatron-Bridge pretrain) that starts from it; imported explicitly by tests/test_*.py.

Run as a script, it is the training run: ``python converters_fixtures.py OUT PRETRAINED_CHECKPOINT [OPTIONS]``,
one rank, or several under torchrun (``--tensor-parallel 2`` etc.: see ``Layout``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

SHARED_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "lucie" / "tokenizer"
SEQ_LENGTH = 64
TRAIN_ITERS = 2


def tiny_shape():
    from lucie_nemo.model import LucieShape

    # The Lucie vocabulary so that the real tokenizer's ids fit; everything else tiny.
    return LucieShape(num_layers=2, hidden_size=128, ffn_hidden_size=384, num_attention_heads=4,
                      num_query_groups=2, vocab_size=65_024)


def hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder (sharded with an index, or one model.safetensors)."""
    from safetensors import safe_open

    from converters.hf_writer import weight_map

    state = {}
    for file in sorted(set(weight_map(folder).values())):
        with safe_open(folder / file, framework="pt") as shard:
            state.update({name: shard.get_tensor(name) for name in shard.keys()})
    return state


def write_random_hf(folder: Path, seed: int = 0) -> Path:
    """A random Lucie-shaped LlamaForCausalLM (bf16, norms away from 1) with the real tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lucie_nemo.hf_config import hf_config
    from lucie_nemo.phases import PRETRAIN
    from lucie_nemo.tokenizer import export_tokenizer

    torch.manual_seed(seed)
    config = LlamaConfig(**{**hf_config(PRETRAIN, 0, shape=tiny_shape()), "initializer_range": 0.05})
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
    model.to(torch.bfloat16).save_pretrained(folder)
    export_tokenizer(SHARED_TOKENIZER, folder)
    return folder


@dataclass(frozen=True)
class Layout:
    """How a training run splits the model over its ranks; the ranks left over are data parallel."""

    ranks: int = 1
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    distributed_optimizer: bool = False

    @property
    def data_parallel(self) -> int:
        return self.ranks // (self.tensor_parallel * self.pipeline_parallel)

    def options(self) -> list[str]:
        """The script's options for this layout (the ranks are torchrun's)."""
        options = ["--tensor-parallel", str(self.tensor_parallel), "--pipeline-parallel", str(self.pipeline_parallel)]
        return options + ["--distributed-optimizer"] * self.distributed_optimizer


def train(out: Path, pretrained: Path, layout: Layout = Layout(), train_iters: int = TRAIN_ITERS) -> Path:
    """``train_iters`` iterations on mock data from ``pretrained``, saving each (fresh processes: Bridge's save
    needs them); several ranks run under torchrun, on gloo."""
    launcher = [sys.executable]
    if layout.ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(layout.ranks)]
    command = [*launcher, __file__, str(out), str(pretrained), *layout.options(), "--train-iters", str(train_iters)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out


@pytest.fixture(scope="session")
def converter_runs(tmp_path_factory) -> dict[str, Path]:
    """hf: a random HF model; imported: its `lucie import`; trained: a 2-iteration run starting from it.

    The LR warms up from 0, so iteration 1 holds the imported weights unchanged (in fp32) and
    iteration 2 holds trained fp32 weights.
    """
    from converters.import_hf import import_hf

    if not SHARED_TOKENIZER.is_dir():
        pytest.skip(f"needs {SHARED_TOKENIZER} (the real Lucie tokenizer)")
    root = tmp_path_factory.mktemp("converters")
    hf = write_random_hf(root / "hf")
    import_hf(hf, root / "imported")
    train(root / "trained", root / "imported")
    return {"hf": hf, "imported": root / "imported", "trained": root / "trained"}


@pytest.fixture(scope="session")
def exported(converter_runs, tmp_path_factory) -> Path:
    """`lucie export` of the trained run's last iteration (phase given: a 64-token run names no phase)."""
    from converters.export import export_checkpoint

    out = tmp_path_factory.mktemp("exported") / "step2"
    export_checkpoint(converter_runs["trained"], out, phase="pretrain", tokenizer=str(SHARED_TOKENIZER),
                      shard_size="10MB", progress=False)
    return out


def _training_config(out: Path, pretrained: Path, layout: Layout, train_iters: int):
    from megatron.bridge.training.config import (
        CheckpointConfig, ConfigContainer, DistributedInitConfig, LoggerConfig, MockGPTDatasetConfig, RNGConfig,
        SchedulerConfig, TokenizerConfig, TrainingConfig, ValidationConfig,
    )
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig

    from lucie_nemo.model import build_provider, use_local_layers
    from lucie_nemo.phases import PRETRAIN

    model = use_local_layers(build_provider(tiny_shape(), PRETRAIN))
    model.seq_length = SEQ_LENGTH
    model.tensor_model_parallel_size = layout.tensor_parallel
    model.pipeline_model_parallel_size = layout.pipeline_parallel
    return ConfigContainer(
        model=model,
        train=TrainingConfig(train_iters=train_iters, global_batch_size=2, micro_batch_size=1),
        validation=ValidationConfig(eval_interval=1000, eval_iters=0),
        optimizer=OptimizerConfig(optimizer="adam", lr=1e-3, min_lr=1e-3, weight_decay=0.1, bf16=False,
                                  use_distributed_optimizer=layout.distributed_optimizer),
        scheduler=SchedulerConfig(lr_decay_style="constant", lr_warmup_iters=train_iters, lr_warmup_init=0.0,
                                  start_weight_decay=0.1, end_weight_decay=0.1, weight_decay_incr_style="constant"),
        ddp=DistributedDataParallelConfig(use_distributed_optimizer=layout.distributed_optimizer, grad_reduce_in_fp32=True),
        dataset=MockGPTDatasetConfig(seq_length=SEQ_LENGTH, random_seed=1234, reset_attention_mask=False,
                                     reset_position_ids=False, eod_mask_loss=False, num_dataset_builder_threads=1,
                                     split="9999,8,2", skip_getting_attention_mask_from_dataset=True,
                                     dataloader_type="single"),
        logger=LoggerConfig(log_interval=1),
        tokenizer=TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=tiny_shape().vocab_size),
        checkpoint=CheckpointConfig(save_interval=1, save=str(out), ckpt_format="torch_dist",
                                    pretrained_checkpoint=str(pretrained)),
        rng=RNGConfig(seed=42, inference_rng_tracker=True),
        dist=DistributedInitConfig(distributed_backend="gloo"),
    )


def _parse_arguments(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(description="One short CPU training run (under torchrun for several ranks).")
    parser.add_argument("out", type=Path)
    parser.add_argument("pretrained", type=Path)
    parser.add_argument("--tensor-parallel", type=int, default=1)
    parser.add_argument("--pipeline-parallel", type=int, default=1)
    parser.add_argument("--distributed-optimizer", action="store_true")
    parser.add_argument("--train-iters", type=int, default=TRAIN_ITERS)
    return parser.parse_args(argv)


def _main(argv: list[str]) -> None:
    import os

    from lucie_nemo import runtime
    from lucie_nemo.distributed import free_port

    runtime.prepare()
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    if "RANK" not in os.environ:  # started directly, not by torchrun: a world of one
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    arguments = _parse_arguments(argv)
    layout = Layout(int(os.environ["WORLD_SIZE"]), arguments.tensor_parallel, arguments.pipeline_parallel,
                    arguments.distributed_optimizer)
    pretrain(_training_config(arguments.out, arguments.pretrained, layout, arguments.train_iters), forward_step)
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    _main(sys.argv[1:])
