"""Time and peak memory of `lucie export` of a `.nemo` file against the export of the folder it packs.

    .venv/bin/python bench/export.py --skip-baseline [--layers N]   # once: builds the checkpoint (cached)
    .venv/bin/python bench/export_nemo.py [--layers N]

Packs the checkpoint that bench/export.py builds into an uncompressed `.nemo` beside it (cached), laid out as NeMo
writes one: a flat `model_config.yaml` of the Lucie-7B shape, its torch_dist files as `model_weights/`, and the
tokenizer as a NeMo artifact (`nemo:tokenizer`); the file name carries the step (`step=1`). Then exports the folder
and the `.nemo`, each in a fresh child process after reading its files once (bench/export.py's measure: wall time,
peak RSS), and checks that both wrote the same tensors. Needs the checkpoint's size again on disk for the `.nemo`,
plus one export at a time. The last line:

    folder: T s, P GiB | .nemo: T s, P GiB | memory ratio X
"""

from __future__ import annotations

import argparse
import io
import tarfile
from dataclasses import replace
from pathlib import Path

import yaml

from export import (  # bench/export.py, beside this script
    COMPLETE, DEFAULT_WORKDIR, GIB, cache_folder, default_cap, run_export,
)


def model_config(layers: int) -> dict:
    """NeMo's flat model config of Lucie-7B with ``layers`` layers (the fields lucie export reads)."""
    from lucie_nemo.architecture import LUCIE_7B
    from lucie_nemo.phases import PRETRAIN

    shape = replace(LUCIE_7B, num_layers=layers)
    return {
        "mcore_gpt": True, "num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
        "ffn_hidden_size": shape.ffn_hidden_size, "num_attention_heads": shape.num_attention_heads,
        "num_query_groups": shape.num_query_groups, "encoder_seq_length": PRETRAIN.seq_length,
        "rotary_base": float(PRETRAIN.rotary_base), "activation": "fast-swiglu", "normalization": "rmsnorm",
        "position_embedding_type": "rope", "share_embeddings_and_output_weights": False, "bias": False,
        "init_method_std": 0.009, "layernorm_epsilon": 1e-5, "precision": "bf16",
        "tokenizer": {"library": "huggingface", "type": "nemo:tokenizer"},
    }


def pack(folder: Path, layers: int, nemo: Path) -> None:
    """The .nemo of iteration folder ``folder``, written under a temporary name, then renamed."""
    partial = nemo.with_name(nemo.name + ".partial")
    with tarfile.open(partial, "w:") as tar:
        config = yaml.safe_dump(model_config(layers)).encode()
        info = tarfile.TarInfo("./model_config.yaml")
        info.size = len(config)
        tar.addfile(info, io.BytesIO(config))
        for file in sorted(folder.iterdir()):
            if file.name in (".metadata", "metadata.json") or file.suffix == ".distcp":
                tar.add(file, arcname=f"./model_weights/{file.name}")
        for file in sorted((folder / "tokenizer").iterdir()):
            tar.add(file, arcname=f"./tokenizer/{file.name}")
    partial.rename(nemo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="Lucie-7B layers (default 32, the full model)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"default {DEFAULT_WORKDIR}")
    parser.add_argument("--shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    args = parser.parse_args()
    workdir = args.workdir.expanduser()
    cache = cache_folder(workdir, args.layers)
    if not (cache / COMPLETE).is_file():
        raise SystemExit(f"no built checkpoint in {cache}: run `bench/export.py --layers {args.layers} "
                         "--skip-baseline` first")
    ckpt = cache / "checkpoint"
    nemo = cache / f"lucie-7b-{args.layers}-layers-step=1.nemo"
    if not nemo.is_file():
        print(f"packing {nemo} ...", flush=True)
        pack(ckpt / "iter_0000001", args.layers, nemo)
    print(f".nemo: {nemo.stat().st_size / GIB:.2f} GiB", flush=True)
    cap, logs = default_cap(), workdir / "logs"
    role = ["--role", "ours", "--shard-size", args.shard_size]
    folder_run, from_folder = run_export("folder", [*role, str(ckpt)], ckpt, workdir / "export-folder",
                                         logs / "folder.log", cap)
    with open(nemo, "rb") as file:  # read once, as run_export reads a folder's files first
        while file.read(64 * 2**20):
            pass
    nemo_run, from_nemo = run_export(".nemo", [*role, str(nemo)], nemo, workdir / "export-nemo", logs / "nemo.log", cap)
    for run in (folder_run, nemo_run):
        if run.failure:
            raise SystemExit(f"the {run.name} export did not finish: {run.failure}")
    if from_folder != from_nemo:
        raise SystemExit("the two exports differ")
    print(f"both exports hold the same {len(from_nemo)} tensors (names, dtypes, shapes, bytes)")
    print(f"{folder_run.summary()} | {nemo_run.summary()} | memory ratio {nemo_run.peak_rss / folder_run.peak_rss:.2f}")


if __name__ == "__main__":
    main()
