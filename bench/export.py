"""Time and peak memory of `lucie export` against Megatron-Bridge's AutoBridge export, on one checkpoint.

Builds once, under the work folder, a Lucie-7B-shaped torch_dist checkpoint with random bf16 weights
(N(0, 0.02), norms 1), laid out as Megatron saves one (stacked layers, one chunk per layer,
run_config.yaml of the CPU model, tokenizer folder), plus a Hugging Face reference folder (config.json +
tokenizer) that AutoBridge needs to know the architecture. Each tensor chunk is drawn as it is written,
so building takes about 2.5 GiB of RAM at any size (imports, one 0.5 GB embedding and its
serialization); a COMPLETE file, written last, marks a finished build that later runs reuse.

Each export then runs in a fresh child process (Python imports included), after the checkpoint files
have been read once to warm the page cache equally for both, timed, its RSS sampled every
50 ms and its peak taken from the kernel for that process alone (bench/child_peak.py). A child
whose RSS passes --memory-cap (default: available memory at start minus 1 GiB) is killed, and the
RSS it reached is reported:

- AutoBridge: ``AutoBridge.from_auto_config(ckpt, reference).export_ckpt(ckpt, out)``, Megatron-Bridge's
  documented export (examples/conversion/convert_checkpoints.py), on CPU through lucie_nemo.runtime;
- ours: ``converters.export.export_checkpoint(ckpt, out)``.

Each output is hashed tensor by tensor (sha256 of the bytes, with name, dtype and shape) and deleted;
when both finish, the two must hold the same tensors. Logs of the children are in WORKDIR/logs/.
The last line (ratios are ours / AutoBridge):

    ours: T s, P GiB | AutoBridge: T s, P GiB | time ratio X, memory ratio Y

    .venv/bin/python bench/export.py [--layers 32] [--workdir DIR] [--shard-size 5GB] [--memory-cap GIB]
                                     [--skip-baseline]

Full size (32 layers) needs 13.4 GB of disk for the checkpoint plus 13.4 GB for one export at a time,
and RAM for the baseline (Megatron-Bridge 0.6.2 holds the model and then every exported tensor).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import child_peak  # bench/child_peak.py, beside this script
from lucie_nemo.tokenizer import DEFAULT_TOKENIZER

REPO = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = REPO.parent / "shared" / "lucie" / "tokenizer"  # this project's copy, when it is there
DEFAULT_WORKDIR = Path.home() / ".cache" / "lucie-nemo" / "bench-export"
GIB = 2**30
HEADROOM = 1 * GIB
COMPLETE = "COMPLETE"
WEIGHT_STD = 0.02

# --- the checkpoint (built in a child process) ------------------------------------------------


def checkpoint_chunks(layers: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(name, global size, chunk offsets, chunk sizes) of every tensor chunk, in Megatron's order."""
    from converters.layout import EMBEDDING, FINAL_NORM, OUTPUT_LAYER
    from lucie_nemo.architecture import LUCIE_7B as s

    qkv_rows = (s.num_attention_heads + 2 * s.num_query_groups) * s.head_dim
    whole = [(EMBEDDING, (s.vocab_size, s.hidden_size)), (FINAL_NORM, (s.hidden_size,)),
             (OUTPUT_LAYER, (s.vocab_size, s.hidden_size))]
    per_layer = {
        "self_attention.linear_qkv.layer_norm_weight": (s.hidden_size,),
        "self_attention.linear_qkv.weight": (qkv_rows, s.hidden_size),
        "self_attention.linear_proj.weight": (s.hidden_size, s.hidden_size),
        "mlp.linear_fc1.layer_norm_weight": (s.hidden_size,),
        "mlp.linear_fc1.weight": (2 * s.ffn_hidden_size, s.hidden_size),
        "mlp.linear_fc2.weight": (s.hidden_size, s.ffn_hidden_size),
    }
    chunks = [(name, shape, (0,) * len(shape), shape) for name, shape in whole]
    for name, shape in per_layer.items():
        for i in range(layers):
            chunks.append((f"decoder.layers.{name}", (layers, *shape), (i,) + (0,) * len(shape), (1, *shape)))
    return chunks


def serialized(obj: object) -> bytes:
    """A megatron-core ShardedObject as torch_dist stores it (torch.save of a one-item list)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save([obj], buffer)
    return buffer.getvalue()


def checkpoint_objects(layers: int) -> dict[str, bytes]:
    """The non-tensor entries: the common state of a model-only checkpoint, the local linears' empty extra states."""
    common = {"checkpoint_version": 3.0, "iteration": 1,
              "content_metadata": {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}}
    objects = {"common_state/shard_0_1": serialized(common)}
    for linear in ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2"):
        for i in range(layers):
            objects[f"decoder.layers.{linear}._extra_state/shard_{i}_{layers}"] = serialized(None)
    return objects


def write_random_weights(folder: Path, layers: int) -> None:
    """The .distcp file and .metadata of a torch_dist checkpoint, each tensor chunk drawn when it is written."""
    import io

    import torch
    from torch.distributed.checkpoint import FileSystemWriter, save
    from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import (BytesIOWriteData, SavePlan, SavePlanner, TensorWriteData,
                                                      WriteItem, WriteItemType)

    objects = checkpoint_objects(layers)
    items = [WriteItem(MetadataIndex(name), WriteItemType.BYTE_IO, BytesIOWriteData(len(data)))
             for name, data in objects.items()]
    for name, size, offsets, sizes in checkpoint_chunks(layers):
        chunk = ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes))
        data = TensorWriteData(chunk, TensorProperties(dtype=torch.bfloat16), torch.Size(size))
        items.append(WriteItem(MetadataIndex(name, torch.Size(offsets)), WriteItemType.SHARD, tensor_data=data))

    class RandomWeights(SavePlanner):
        generator = torch.Generator().manual_seed(0)

        def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False):
            pass

        def create_local_plan(self):
            return SavePlan(items)

        def create_global_plan(self, plans):
            return create_default_global_save_plan(plans)

        def finish_plan(self, plan):
            return plan

        def resolve_data(self, item):
            if item.type == WriteItemType.BYTE_IO:
                return io.BytesIO(objects[item.index.fqn])
            sizes = item.tensor_data.chunk.sizes
            if len(sizes) == 1 or item.index.fqn.endswith("norm_weight"):  # norms: ones, as at initialisation
                return torch.ones(sizes, dtype=torch.bfloat16)
            # N(0, 0.02) like a trained model's weights, so that logits stay finite and `lucie verify` is meaningful
            return (torch.randn(sizes, generator=self.generator) * WEIGHT_STD).to(torch.bfloat16)

    writer = FileSystemWriter(str(folder), single_file_per_rank=True, thread_count=1)
    save({}, storage_writer=writer, planner=RandomWeights(), no_dist=True)
    (folder / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1}))


def write_run_config(folder: Path, layers: int) -> None:
    """run_config.yaml with the model section Megatron-Bridge writes for Lucie-7B (local layers, bf16)."""
    from dataclasses import replace

    import torch
    import yaml
    from megatron.bridge.training.utils.config_utils import _ConfigContainerBase
    from megatron.training.config.container import safe_yaml_representers

    from lucie_nemo.architecture import LUCIE_7B
    from lucie_nemo.model import build_provider, use_local_layers

    provider = use_local_layers(build_provider(replace(LUCIE_7B, num_layers=layers)), torch.bfloat16)
    provider.finalize()
    with safe_yaml_representers():
        text = yaml.safe_dump({"model": _ConfigContainerBase._convert_value_to_dict(provider)})
    (folder / "run_config.yaml").write_text(text)


def build(cache: Path, layers: int, tokenizer: str) -> None:
    """checkpoint/ (iteration 1) and hf-reference/ under ``cache``."""
    from dataclasses import replace

    from lucie_nemo import runtime
    from lucie_nemo.architecture import LUCIE_7B
    from lucie_nemo.hf_config import hf_config
    from lucie_nemo.phases import PRETRAIN
    from lucie_nemo.tokenizer import export_tokenizer

    runtime.prepare()  # Megatron-Bridge importable and runnable here
    folder = cache / "checkpoint" / "iter_0000001"
    folder.mkdir(parents=True)
    write_random_weights(folder, layers)
    write_run_config(folder, layers)
    export_tokenizer(tokenizer, folder / "tokenizer")
    (cache / "checkpoint" / "latest_checkpointed_iteration.txt").write_text("1")
    export_tokenizer(tokenizer, cache / "hf-reference")
    config = hf_config(PRETRAIN, 1, shape=replace(LUCIE_7B, num_layers=layers))
    (cache / "hf-reference" / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# --- the two exports (each in its own child process) ------------------------------------------


def export_ours(ckpt: Path, out: Path, shard_size: str) -> None:
    from converters.export import export_checkpoint

    export_checkpoint(ckpt, out, shard_size=shard_size, progress=False)


def export_autobridge(ckpt: Path, reference: Path, out: Path) -> None:
    from lucie_nemo import runtime

    runtime.prepare()  # the CPU redirects Megatron needs on this machine
    from megatron.bridge import AutoBridge
    from megatron.bridge.utils.instantiate_utils import register_allowed_target_prefix

    register_allowed_target_prefix("lucie_nemo.")  # run_config.yaml names lucie_nemo.model.LucieModelProvider
    bridge = AutoBridge.from_auto_config(str(ckpt), str(reference))
    bridge.export_ckpt(str(ckpt), str(out), show_progress=False, strict=True)


# --- measuring a child ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    name: str
    seconds: float
    peak_rss: int  # bytes
    failure: str | None  # why it did not finish, None if it did

    def summary(self) -> str:
        return f"{self.name}: {self.seconds:.0f} s, {self.peak_rss / GIB:.2f} GiB"


def spawn(args: list[str], log: Path) -> int:
    """This script as a child with ``args``, its output to ``log``."""
    actions = [(os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    return os.posix_spawn(sys.executable, [sys.executable, __file__, *args], os.environ, file_actions=actions)


def measure(name: str, args: list[str], log: Path, cap: int) -> Run:
    """Run this script as a child with ``args`` to its end (or kill it past ``cap`` bytes of RSS); its wall time and
    peak RSS (bench/child_peak.py)."""
    run = child_peak.measure([sys.executable, __file__, *args], log, cap)
    peak, code = run.peak_rss, run.exit_code
    failure = None
    if run.killed_at is not None:
        failure = (f"killed by this bench at {run.killed_at / GIB:.2f} GiB RSS, over the memory cap of "
                   f"{cap / GIB:.2f} GiB")
    elif code < 0:
        failure = f"killed by {signal.Signals(-code).name} at {peak / GIB:.2f} GiB RSS (the kernel's OOM killer?)"
    elif code > 0:
        failure = f"exited with code {code} at {peak / GIB:.2f} GiB RSS: {last_line(log)}"
    return Run(name, run.seconds, peak, failure and f"{failure} (log: {log})")


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def default_cap() -> int:
    """MemAvailable now, minus HEADROOM."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 - HEADROOM
    raise RuntimeError("/proc/meminfo has no MemAvailable line: pass --memory-cap")


# --- comparing the outputs --------------------------------------------------------------------


def tensor_digests(folder: Path) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """name -> (dtype, shape, sha256 of the bytes) of every tensor in the folder's safetensors files."""
    digests = {}
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            for name, entry in header.items():
                start, end = entry["data_offsets"]
                f.seek(8 + length + start)
                digest, left = hashlib.sha256(), end - start
                while left:
                    block = f.read(min(left, 64 * 2**20))
                    digest.update(block)
                    left -= len(block)
                digests[name] = (entry["dtype"], tuple(entry["shape"]), digest.hexdigest())
    return digests


def compare(ours: dict, theirs: dict) -> str:
    """A one-line account of the comparison; raises if the two exports differ."""
    problems = [f"only ours: {sorted(ours.keys() - theirs.keys())}"] if ours.keys() - theirs.keys() else []
    if theirs.keys() - ours.keys():
        problems.append(f"only AutoBridge: {sorted(theirs.keys() - ours.keys())}")
    for name in sorted(ours.keys() & theirs.keys()):
        (dtype, shape, digest), (their_dtype, their_shape, their_digest) = ours[name], theirs[name]
        if (dtype, shape) != (their_dtype, their_shape):
            problems.append(f"{name}: ours {dtype}{list(shape)}, AutoBridge {their_dtype}{list(their_shape)}")
        elif digest != their_digest:
            problems.append(f"{name}: same dtype and shape, different bytes")
    if problems:
        raise SystemExit("the two exports differ:\n  " + "\n  ".join(problems))
    return f"both exports hold the same {len(ours)} tensors (names, dtypes, shapes, bytes)"


# --- the bench --------------------------------------------------------------------------------


def ensure_checkpoint(cache: Path, layers: int, tokenizer: str, log: Path) -> None:
    """Build the checkpoint under ``cache`` unless a finished build is there."""
    if (cache / COMPLETE).is_file():
        print(f"reusing {cache}")
        return
    shutil.rmtree(cache, ignore_errors=True)
    print(f"building {cache} ({layers} layers) ...", flush=True)
    start = time.monotonic()
    pid = spawn(["--role", "build", "--layers", str(layers), "--tokenizer", tokenizer, str(cache)], log)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        raise SystemExit(f"building the checkpoint failed (exit {code}): {last_line(log)} (log: {log})")
    (cache / COMPLETE).write_text("")
    print(f"built in {time.monotonic() - start:.0f} s")


def warm_page_cache(folder: Path) -> None:
    """Read every file of ``folder`` once, so that each export starts with the checkpoint equally cached
    (the previous export's RSS or output may have evicted it)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as file:
                while file.read(64 * 2**20):
                    pass


def run_export(name: str, args: list[str], ckpt: Path, out: Path, log: Path, cap: int) -> tuple[Run, dict | None]:
    """Measure one export of ``ckpt`` (page cache warmed first), hash what it wrote, delete it."""
    shutil.rmtree(out, ignore_errors=True)
    warm_page_cache(ckpt)
    print(f"{name} export ...", flush=True)
    run = measure(name, [*args, str(out)], log, cap)
    digests = tensor_digests(out) if run.failure is None else None
    shutil.rmtree(out, ignore_errors=True)
    print(run.summary() + (f": {run.failure}" if run.failure else ""), flush=True)
    return run, digests


def final_line(ours: Run, baseline: Run | None) -> str:
    if baseline is None:
        return f"{ours.summary()} | AutoBridge: skipped (--skip-baseline)"
    if baseline.failure:
        return f"{ours.summary()} | AutoBridge: did not finish: {baseline.failure}"
    return (f"{ours.summary()} | {baseline.summary()} | time ratio {ours.seconds / baseline.seconds:.2f}, "
            f"memory ratio {ours.peak_rss / baseline.peak_rss:.2f}")


def cache_folder(workdir: Path, layers: int) -> Path:
    """Where the checkpoint of ``layers`` layers is built (``checkpoint/``) and reused; COMPLETE once built."""
    return workdir / f"lucie-7b-{layers}-layers"


def bench(args: argparse.Namespace) -> None:
    workdir = args.workdir.expanduser()
    cache = cache_folder(workdir, args.layers)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ensure_checkpoint(cache, args.layers, args.tokenizer, logs / "build.log")
    ckpt = cache / "checkpoint"
    size = sum(p.stat().st_size for p in ckpt.rglob("*.distcp"))
    cap = int(args.memory_cap * GIB) if args.memory_cap else default_cap()
    print(f"checkpoint: {args.layers} Lucie-7B layers, {size / GIB:.2f} GiB of .distcp; memory cap {cap / GIB:.2f} GiB")
    baseline = theirs = None
    if not args.skip_baseline:
        baseline, theirs = run_export("AutoBridge", ["--role", "autobridge", str(ckpt), str(cache / "hf-reference")],
                                      ckpt, workdir / "export-autobridge", logs / "autobridge.log", cap)
    ours, mine = run_export("ours", ["--role", "ours", "--shard-size", args.shard_size, str(ckpt)],
                            ckpt, workdir / "export-ours", logs / "ours.log", cap)
    if ours.failure:
        raise SystemExit(f"our export did not finish: {ours.failure}")
    if theirs is not None:
        print(compare(mine, theirs))
    print(final_line(ours, baseline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="Lucie-7B layers (default 32, the full model)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"default {DEFAULT_WORKDIR}")
    parser.add_argument("--shard-size", default="5GB", help="our safetensors shard size (default 5GB, as AutoBridge)")
    parser.add_argument("--memory-cap", type=float, help="GiB of RSS that kills an export (default: available - 1)")
    parser.add_argument("--tokenizer", default=str(SHARED_TOKENIZER) if SHARED_TOKENIZER.is_dir() else DEFAULT_TOKENIZER,
                        help="tokenizer folder or Hub id (default: ../shared/lucie/tokenizer if present, else the Hub's)")
    parser.add_argument("--skip-baseline", action="store_true", help="run only our export")
    parser.add_argument("--role", choices=["build", "ours", "autobridge"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "build":
        build(args.paths[0], args.layers, args.tokenizer)
    elif args.role == "ours":
        export_ours(args.paths[0], args.paths[1], args.shard_size)
    elif args.role == "autobridge":
        export_autobridge(*args.paths)
    else:
        bench(args)


if __name__ == "__main__":
    main()
