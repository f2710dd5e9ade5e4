"""`lucie prepare-data` and `lucie data ...`: tokenized datasets, phase blends, the demo corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lucie_nemo.cli.errors import user_errors
from lucie_nemo.errors import UserError
from lucie_nemo.data.demo_corpus import DEFAULT_MAX_MB

UNUSED_SHOWN = 20  # unused dataset files listed in the text report
data_app = typer.Typer(help="Data blends of the phases and the demo corpus.", no_args_is_help=True)


def prepare_data(
    inputs: Annotated[list[Path], typer.Argument(help="JSONL (.jsonl/.json/.ndjson), Parquet or .txt/.md files.")],
    tokenizer: Annotated[str, typer.Option(help="Folder holding tokenizer.json, or a Hub id.")],
    output_prefix: Annotated[Path, typer.Option(help="Writes PREFIX.bin, PREFIX.idx and PREFIX.stats.json.")],
    text_field: Annotated[str, typer.Option(help="JSON field or Parquet column holding each document.")] = "text",
    workers: Annotated[int | None, typer.Option(help="Tokenizer processes.", show_default="the CPU count")] = None,
    split_at: Annotated[
        int | None,
        typer.Option(
            help="Split by document length N (BOS and EOS included): DIR/length-0-N/NAME gets documents "
            "of <= N tokens, DIR/length-N-inf/NAME the longer ones (phase 2's layout)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Tokenize documents into Megatron indexed datasets by the original Lucie run's rules.

    Each text is rstrip()-ed, encoded in 100,000-character slices when longer, and stored as <s> ids </s>;
    an empty or whitespace-only document is stored as <s></s>.

    Resumable: rerun the same command after an interruption and finished input files are kept.
    """
    with user_errors():
        from lucie_nemo.data.prepare import PrepareConfig, default_workers
        from lucie_nemo.data.prepare import prepare_data as run

        config = PrepareConfig(
            inputs=tuple(inputs),
            tokenizer=tokenizer,
            output_prefix=output_prefix,
            text_field=text_field,
            workers=workers or default_workers(),
            split_at=split_at,
            progress=progress,
        )
        for prefix, stats in run(config).items():
            typer.echo(
                f"{prefix}: {stats['documents']:,} documents, {stats['tokens']:,} tokens "
                f"({stats['empty_documents']:,} empty, stored as <s></s>)"
            )


@data_app.command("blend")
def blend(
    phase: Annotated[str, typer.Argument(help="pretrain, extension or anneal.")],
    data_root: Annotated[Path, typer.Option(help="Folder that the blend's prefixes are relative to.")],
    blend_file: Annotated[
        Path | None,
        typer.Option(
            help="A blend CSV, a file of WEIGHT PATH pairs, or a phase-2 folder of three CSVs.",
            show_default="the original run's",
        ),
    ] = None,
    check: Annotated[bool, typer.Option(help="Check weights and that every .bin/.idx exists.")] = False,
) -> None:
    """Print a phase's data blend as JSON: {"prefixes": [...], "weights": [...]}."""
    with user_errors():
        from lucie_nemo.data.blends import phase_blend, validate_blend

        result = phase_blend(phase, data_root, blend_file)
        if check:
            validate_blend(result)
        typer.echo(json.dumps({"prefixes": result.prefixes, "weights": result.weights}, indent=2))


@data_app.command("samples")
def samples(
    phase: Annotated[str, typer.Argument(help="pretrain, extension or anneal.")],
    data_root: Annotated[Path, typer.Option(help="Folder of the tokenised datasets (as `lucie train`).")],
    step: Annotated[int | None, typer.Option(help="The global batch of this step (1-based).")] = None,
    sample_range: Annotated[str | None, typer.Option("--range", help="Global samples A:B (B excluded).")] = None,
    blend_file: Annotated[Path | None, typer.Option(help="Blend file (as `lucie train`).",
                                                    show_default="the phase's Lucie blend")] = None,
    seq_length: Annotated[int | None, typer.Option(help="Sequence length.", show_default="the phase's")] = None,
    seed: Annotated[int | None, typer.Option(help="Data seed.", show_default="the phase's")] = None,
    train_samples: Annotated[int | None, typer.Option(help="Train samples (sizes the blend).",
                                                      show_default="the phase's")] = None,
    data_order: Annotated[str | None, typer.Option(help="original or megatron.", show_default="the phase's")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="The scaled-down phase of `lucie train --tiny`.")] = False,
    tokens_out: Annotated[Path | None, typer.Option(help="Write the windows to FILE.npy: an int array, one row of seq+1 tokens per sample.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What a step's global batch, or a range of global samples, of PHASE holds: read through the very dataset
    objects `lucie train` builds (global sample, step, dataset prefix, document ids, first-token offset)."""
    with user_errors():
        from lucie_nemo.data.samples import parse_range, step_samples
        from lucie_nemo.schedule import PhaseSchedule
        from lucie_nemo.phases import trained_phase

        if (step is None) == (sample_range is None):
            raise UserError("give one of --step N or --range A:B")
        if tokens_out is not None and tokens_out.suffix != ".npy":
            raise UserError(f"--tokens-out {tokens_out} must end in .npy")
        overrides = dict(seq_length=seq_length, seed=seed, train_samples=train_samples, data_order=data_order)
        schedule = PhaseSchedule(trained_phase(phase, tiny, overrides))
        wanted = step_samples(schedule, step) if step is not None else parse_range(sample_range)
        from lucie_nemo import runtime

        runtime.prepare()
        from lucie_nemo.data.samples import read_windows, train_dataset
        from lucie_nemo.model import lucie_tiny
        from lucie_nemo.recipe import phase_recipe

        # the recipe `lucie train` builds (its dataset does not depend on the layout)
        cfg = phase_recipe(schedule.phase, data_root=data_root, blend_file=blend_file,
                           model=lucie_tiny(schedule.phase) if tiny else None)
        windows = read_windows(train_dataset(cfg), wanted, schedule)
        if tokens_out is not None:
            _save_windows(tokens_out, [window.tokens for window in windows])
        if as_json:
            typer.echo(json.dumps([window.to_json() for window in windows], indent=2))
            return
        typer.echo(f"{'sample':>12} {'step':>8}  {'offset':>7}  prefix: documents")
        for window in windows:
            documents = ",".join(str(document) for document in window.documents)
            typer.echo(f"{window.sample:>12} {window.step:>8}  {window.offset:>7}  {_relative(window.prefix, data_root)}: "
                       f"{documents}")


def _save_windows(path: Path, windows: list) -> None:
    """The windows as one int64 array [samples, seq_length + 1] in ``path`` (.npy)."""
    import numpy as np

    np.save(path, np.stack(windows).astype(np.int64))


def _relative(prefix: str, data_root: Path) -> str:
    path = Path(prefix)
    return str(path.relative_to(data_root)) if path.is_relative_to(data_root) else prefix


@data_app.command("sources")
def sources(
    phase: Annotated[str, typer.Argument(help="pretrain, extension or anneal.")],
    only: Annotated[list[str] | None, typer.Option(help="Only this prefix or dataset name (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full resolution as JSON.")] = False,
    renormalize: Annotated[
        bool, typer.Option(help="Share the weight of prefixes with no public file (Persee) among the others.")
    ] = False,
    dataset: Annotated[str, typer.Option(help="Hub dataset id.")] = "OpenLLM-France/Lucie-Training-Dataset",
    revision: Annotated[str, typer.Option(help="Branch, tag or commit of the dataset.")] = "main",
    endpoint: Annotated[
        str | None, typer.Option(help="Hub URL.", show_default="HF_ENDPOINT, else https://huggingface.co")
    ] = None,
) -> None:
    """Where each prefix of a phase's blend comes from in the public Lucie dataset (files, filter, order).

    The dataset's file list is read once per revision and cached (LUCIE_CACHE, default ~/.cache/lucie-nemo).
    """
    with user_errors():
        from lucie_nemo.data.sources import list_dataset_files, phase_sources

        report = phase_sources(phase, list_dataset_files(dataset, revision, endpoint), dataset, revision,
                               renormalize=renormalize, only=tuple(only or ()),
                               files_at=lambda branch: list_dataset_files(dataset, branch, endpoint))
        if as_json:
            typer.echo(json.dumps(report.to_json(), indent=2))
            return
        for source in report.sources:
            typer.echo(f"{source.weight:.9f}  {source.prefix}: {_where(source)}")
        for path in report.unused_files[:UNUSED_SHOWN]:
            typer.echo(f"unused: {path}")
        unmatched = report.unmatched
        typer.echo(f"{len(report.sources) - len(unmatched)} of {len(report.sources)} prefixes found in "
                   f"{dataset}@{revision}; {len(report.unused_files)} dataset file(s) used by no prefix"
                   + (" (--json lists them all)" if len(report.unused_files) > UNUSED_SHOWN else ""))
        if unmatched and not renormalize:
            share = sum(source.weight for source in unmatched)
            typer.echo(f"the missing prefixes weigh {share:.6f}: --renormalize shares it among the others")


@data_app.command("build")
def build(
    phase: Annotated[str, typer.Argument(help="pretrain, extension or anneal.")],
    data_root: Annotated[Path, typer.Option(help="Folder receiving the blend's datasets (the --data-root of training).")],
    tokenizer: Annotated[str | None, typer.Option(help="Folder holding tokenizer.json, or a Hub id.",
                                                  show_default="the Lucie tokenizer")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Only this prefix or dataset name (repeatable).")] = None,
    workers: Annotated[int | None, typer.Option(help="Tokenizer processes.", show_default="the CPU count")] = None,
    dataset: Annotated[str, typer.Option(help="Hub dataset id.")] = "OpenLLM-France/Lucie-Training-Dataset",
    revision: Annotated[str, typer.Option(help="Branch, tag or commit of the dataset.")] = "main",
    endpoint: Annotated[
        str | None, typer.Option(help="Hub URL.", show_default="HF_ENDPOINT, else https://huggingface.co")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    step: Annotated[str, typer.Option(help="all; datasets (build, no blend file); blend (write and check the "
                                           "blend file of datasets already built).")] = "all",
    cluster: Annotated[str | None, typer.Option(help="Build as Slurm jobs on this profile or site-config table "
                                                     "(as `lucie launch`).", show_default="here")] = None,
    site_config: Annotated[Path | None, typer.Option(help="Site TOML (default ~/.config/lucie-nemo/clusters.toml)")] = None,
    task_gb: Annotated[float, typer.Option(help="With --cluster: GB of Parquet input per job (one node each).")] = 200.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --cluster: write the sbatch scripts, print their "
                                                            "paths, submit nothing.")] = False,
    account: Annotated[str | None, typer.Option(help="With --cluster: Slurm account.")] = None,
    partition: Annotated[str | None, typer.Option(help="With --cluster: Slurm partition (a CPU one).")] = None,
    qos: Annotated[str | None, typer.Option(help="With --cluster: Slurm QoS.")] = None,
    walltime: Annotated[str | None, typer.Option(help="With --cluster: job time limit, HH:MM:SS.")] = None,
) -> None:
    """Download the public Lucie dataset's files of a phase's blend and tokenize them into DATA_ROOT.

    Complete prefixes are skipped and an interrupted one resumes: rerun the same command after a failure.
    Ends by writing DATA_ROOT/blend-PHASE.txt (the built prefixes, renormalized weights) and checking it.
    With --cluster: one Slurm job per --task-gb of input on a whole node, then one job afterok on all of
    them that writes and checks the blend file.
    """
    with user_errors():
        from lucie_nemo.data.build import BuildConfig, build_phase
        from lucie_nemo.tokenizer import DEFAULT_TOKENIZER

        config = BuildConfig(phase, data_root, str(tokenizer or DEFAULT_TOKENIZER), dataset, revision, endpoint,
                             tuple(only or ()), workers=workers, progress=progress, step=step)
        if cluster is not None:
            slurm = dict(account=account, partition=partition, qos=qos, walltime=walltime)
            _build_on_cluster(config, cluster, site_config, task_gb, dry_run, slurm, tokenizer is not None)
            return
        if dry_run:
            raise UserError("--dry-run writes Slurm scripts: give --cluster NAME too")
        blend_file = build_phase(config, echo=typer.echo)
        if blend_file is None:
            typer.echo("datasets built; write and check the blend file with --step blend")
            return
        typer.echo(f"blend checked: {blend_file} (lucie data blend {phase} --data-root {data_root} "
                   f"--blend-file {blend_file} --check)")


def _build_on_cluster(config, cluster: str, site_config: Path | None, task_gb: float, dry_run: bool,
                      slurm: dict, tokenizer_given: bool) -> None:
    """Submit (or render, --dry-run) the build's Slurm jobs; their arguments repeat this command's."""
    import logging

    from cluster.data_jobs import build_jobs, render, require_slurm, submit
    from cluster.placeholders import DRY_RUN_FOLDER, mark_scripts, notice, placeholder_values
    from cluster.profiles import load_site
    from lucie_nemo.data.build import build_tasks
    from lucie_nemo.data.sources import list_dataset_files, phase_sources

    if config.step != "all":
        raise UserError("--cluster runs every step itself: leave out --step")
    data_root = str(config.data_root.absolute())
    placeholders = placeholder_values(cluster, site_config, slurm) if dry_run else {}
    # data_root: the pyxis profile mounts it into the container
    flags = {key: value for key, value in slurm.items() if value is not None} | {"data_root": data_root}
    if placeholders:
        flags["job_root"] = str(Path.cwd() / DRY_RUN_FOLDER)
    site, profile = load_site(cluster, site_config, **(placeholders | flags))
    require_slurm(profile)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # nemo-run's import logs every request at INFO
    files = list_dataset_files(config.dataset, config.revision, config.endpoint)
    report = phase_sources(config.phase, files, config.dataset, config.revision, only=config.only,
                           files_at=lambda branch: list_dataset_files(config.dataset, branch, config.endpoint))
    common = ["--data-root", data_root, "--dataset", config.dataset,
              "--revision", config.revision]
    common += ["--tokenizer", config.tokenizer] if tokenizer_given else []
    common += ["--endpoint", config.endpoint] if config.endpoint else []
    common += ["--workers", str(config.workers)] if config.workers else []
    jobs = build_jobs(config.phase, common, build_tasks(report.sources), int(task_gb * 1e9), config.only)
    title = f"lucie-data-{config.phase}"
    for job in jobs:
        typer.echo(f"# {job.summary}")
    if dry_run:
        paths = render(site, jobs, title)
        if placeholders:
            mark_scripts(paths, placeholders)
            typer.echo("\n".join(notice(placeholders)), err=True)
        for path in paths:
            typer.echo(str(path))
        return
    for name, job_id in submit(site, jobs, title):
        typer.echo(f"{name}: Slurm job {job_id}")


def _where(source) -> str:
    """``N file(s), SIZE in FOLDER[, rows whose extra has subset=X]`` or why the prefix has no file."""
    if not source.files:
        return f"MISSING: {source.missing}"
    rows = "".join(f", rows whose extra has {key}={value}" for key, value in (source.row_filter or {}).items())
    return f"{len(source.files)} file(s), {source.bytes / 1e9:.2f} GB in {source.folder}{rows}"


@data_app.command("demo-corpus")
def demo_corpus(
    output_dir: Annotated[Path, typer.Argument(help="Folder for en/fr/de/es/it/code .jsonl files.")],
    max_mb: Annotated[float, typer.Option(help="Total text size in MB, shared by the six languages.")] = DEFAULT_MAX_MB,
) -> None:
    """Build (or reuse) the small multilingual demo corpus from Debian manual pages and Python sources."""
    with user_errors():
        from lucie_nemo.data.demo_corpus import build_demo_corpus

        for path in build_demo_corpus(output_dir, max_mb):
            typer.echo(path)


def register(app: typer.Typer) -> None:
    """Add `prepare-data` and the `data` group to the `lucie` command."""
    app.command("prepare-data")(prepare_data)
    app.add_typer(data_app, name="data")
