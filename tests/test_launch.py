"""`lucie launch`: sbatch scripts rendered for each profile (dry run), submission with afterok
dependencies (a fake sbatch), validation before rendering, and a real tiny run on this machine."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lucie_nemo.cli import launch as launch_cli

SITE = """
[jz]
profile = "jeanzay"
account = "abc@h100"
qos = "qos_gpu_h100-t3"
modules = ["arch/h100", "cuda/12.8.0"]
venv = "/lustre/work/lucie-venv"
output_root = "/lustre/scratch/lucie/runs"
job_root = "{jobs}"
env = {{ NCCL_DEBUG = "WARN" }}

[eos]
profile = "pyxis"
account = "acct"
partition = "batch"
container_mounts = ["/lustre:/lustre"]
output_root = "/lustre/runs"
job_root = "{jobs}"
"""


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def site_config(tmp_path) -> Path:
    path = tmp_path / "clusters.toml"
    path.write_text(SITE.format(jobs=tmp_path / "jobs"))
    return path


def invoke(*args: str):
    app = typer.Typer()
    launch_cli.register(app)
    app.command("version")(lambda: None)  # a second command keeps `launch` a sub-command, as in `lucie`
    return CliRunner().invoke(app, ["launch", *args])


def rendered(result, count: int) -> list[str]:
    """The scripts whose paths the dry run printed on its last ``count`` lines."""
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.strip().splitlines()[-count:]]
    assert all(path.is_file() and path.name.endswith("_sbatch.sh") for path in paths)
    return [path.read_text() for path in paths]


def training_command(script: str) -> list[str]:
    line = next(line for line in script.splitlines() if line.startswith("srun ") and "torchrun" in line)
    return shlex.split(line.split(" torchrun ", 1)[1])


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_jeanzay_all_chains_three_phases(site_config, megatron_runtime):
    from lucie_nemo.train import build_phase_config
    from lucie_nemo.validation import validate_config

    result = invoke("all", "--cluster", "jz", "--site-config", str(site_config), "--dry-run", "--layout", "original")
    pretrain, extension, anneal = rendered(result, 3)

    for line in ["#SBATCH --nodes=128", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --time=20:00:00", "#SBATCH --account=abc@h100", "#SBATCH --qos=qos_gpu_h100-t3",
                 "#SBATCH --constraint=h100", "#SBATCH --hint=nomultithread", "#SBATCH --cpus-per-task=96",
                 "#SBATCH --signal=TERM@300", "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --job-name=lucie-pretrain",
                 "module purge", "module load arch/h100", "module load cuda/12.8.0",
                 "source /lustre/work/lucie-venv/bin/activate", "export NCCL_DEBUG=WARN",
                 "# lucie: pretrain on 128 nodes x 4 GPUs: TP4 PP4 CP1 DP32, mbs 2, 753851 iterations",
                 "lucie_checkpoints=/lustre/scratch/lucie/runs/pretrain/checkpoints",
                 "lucie_final_iteration=753851", "lucie_max_retries=3", "trap lucie_on_exit EXIT"]:
        assert line in pretrain, line
    assert "--dependency" not in pretrain and "--container-image" not in pretrain
    assert "#SBATCH --dependency=afterok:PRETRAIN_JOB_ID" in extension
    assert "#SBATCH --dependency=afterok:EXTENSION_JOB_ID" in anneal
    assert "#SBATCH --nodes=32" in extension and "lucie_final_iteration=1220" in anneal

    command = training_command(pretrain)
    assert (option(command, "--nnodes"), option(command, "--nproc-per-node")) == ("128", "4")
    assert option(command, "--rdzv-backend") == "c10d"
    assert option(command, "--rdzv-endpoint") == "$head_node_ip:29500"
    lucie = command[command.index("--no-python") + 1:]
    assert lucie[:3] == ["/lustre/work/lucie-venv/bin/lucie", "train", "pretrain"]
    assert (option(lucie, "--nodes"), option(lucie, "--gpus-per-node")) == ("128", "4")
    assert option(lucie, "--precision") == "bf16"
    assert option(lucie, "--output-root") == "/lustre/scratch/lucie/runs"
    assert lucie[-3:] == ["train.exit_duration_in_mins=1180", "train.exit_signal_handler=true",  # 20 h - 20 min
                          "train.exit_signal_handler_for_dataloader=true"]
    # The command's allocation gives the original layout: TP4 PP4 DP32 on 128 nodes.
    assert option(lucie, "--layout") == "original"
    cfg = build_phase_config("pretrain", nodes=128, gpus_per_node=4, output_root="/lustre/scratch/lucie/runs",
                             layout="original")
    checked = validate_config(cfg, 128 * 4)
    model = cfg.model
    assert (model.tensor_model_parallel_size, model.pipeline_model_parallel_size, checked.data_parallel_size) == (4, 4, 32)
    assert "--initial-checkpoint" not in training_command(extension)  # phase 2 starts from <root>/pretrain/checkpoints


def test_pyxis_container_and_8_gpus(site_config, megatron_runtime):
    [script] = rendered(invoke("pretrain", "--cluster", "eos", "--site-config", str(site_config), "--dry-run",
                               "--walltime", "04:00:00", "--precision", "fp8", "--layout", "original",
                               "train.manual_gc_interval=50"), 1)
    for line in ["#SBATCH --nodes=64", "#SBATCH --gpus-per-node=8", "#SBATCH --exclusive", "#SBATCH --partition=batch",
                 "#SBATCH --time=04:00:00", "# lucie: pretrain on 64 nodes x 8 GPUs: TP4 PP4 CP1 DP32"]:
        assert line in script, line
    assert "module load" not in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--container-image nvcr.io/nvidia/nemo:26.08" in srun
    mounts = re.search(r"--container-mounts (\S+)", srun).group(1).split(",")
    assert {"/lustre:/lustre", "/lustre/runs:/lustre/runs"} <= set(mounts)
    command = training_command(script)
    assert (option(command, "--nnodes"), option(command, "--nproc-per-node")) == ("64", "8")
    lucie = command[command.index("--no-python") + 1:]
    assert lucie[:3] == ["lucie", "train", "pretrain"] and option(lucie, "--precision") == "fp8"
    assert lucie[-4:] == ["train.exit_duration_in_mins=220", "train.exit_signal_handler=true",
                          "train.exit_signal_handler_for_dataloader=true", "train.manual_gc_interval=50"]


def test_generic_profile_renders_only_the_options_the_site_gives(tmp_path, megatron_runtime):
    """A plain Slurm cluster: no account, partition, constraint (empty) or modules; CPU nodes."""
    config = tmp_path / "plain.toml"
    config.write_text(f'[plain]\nprofile = "generic"\nvenv = "/shared/venv"\noutput_root = "/shared/runs"\n'
                      f'gpus_per_node = 0\nconstraint = ""\njob_root = "{tmp_path / 'jobs'}"\n')
    [script] = rendered(invoke("pretrain", "--tiny", "--cluster", "plain", "--site-config", str(config), "--dry-run"), 1)
    for absent in ("account", "constraint", "partition", "qos", "gpus-per-node", "hint"):
        assert f"#SBATCH --{absent}" not in script, absent
    assert "module " not in script
    for line in ["#SBATCH --time=04:00:00", "#SBATCH --ntasks-per-node=1", "source /shared/venv/bin/activate",
                 "set +vx", "export PET_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT"]:
        assert line in script, line
    command = training_command(script)
    assert option(command, "--nproc-per-node") == "1"
    assert command[command.index("--no-python") + 1:][:3] == ["/shared/venv/bin/lucie", "train", "pretrain"]


def test_the_training_step_starts_torchrun_with_sigterm_ignored(site_config, megatron_runtime):
    """The srun line runs `bash -c 'trap "" TERM; exec "$0" "$@"' torchrun ...`: bash execs torchrun with its
    arguments unchanged, SIGTERM ignored (the trainers get it from Slurm and save)."""
    [script] = rendered(invoke("pretrain", "--cluster", "jz", "--site-config", str(site_config), "--dry-run",
                               "--layout", "original"), 1)
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    start = srun.index("bash")
    assert srun[start:start + 4] == ["bash", "-c", 'trap "" TERM; exec "$0" "$@"', "torchrun"]
    shown = subprocess.run(["bash", "-c", srun[start + 2], "bash", "-c", 'trap -p TERM; echo "$@"', "x", "a b", "c"],
                           capture_output=True, text=True, check=True).stdout
    assert shown == "trap -- '' SIGTERM\na b c\n"


def test_tiny_launch_keeps_the_layout_asked_for(site_config, megatron_runtime):
    [script] = rendered(invoke("pretrain", "--tiny", "--cluster", "jz", "--site-config", str(site_config), "--dry-run",
                               "--layout", "TP2xPP2xCP1"), 1)
    assert "# lucie: pretrain on 1 nodes x 4 GPUs: TP2 PP2 CP1 DP1, mbs 1" in script
    lucie = training_command(script)
    assert option(lucie, "--layout") == "TP2xPP2xCP1" and "--tiny" in lucie


def test_blend_file_is_validated_then_given_to_the_training_command(site_config, tmp_path, megatron_runtime):
    data = tmp_path / "data"
    for prefix in ("web/fr_text_document", "code/py_text_document"):
        (data / prefix).parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".bin", ".idx"):
            (data / (prefix + suffix)).write_bytes(b"")
    blend = tmp_path / "my-blend.txt"
    blend.write_text("0.25 web/fr_text_document 0.75 code/py_text_document\n")
    [script] = rendered(invoke("anneal", "--cluster", "jz", "--site-config", str(site_config), "--dry-run",
                               "--data-root", str(data), "--blend-file", str(blend)), 1)
    assert option(training_command(script), "--blend-file") == str(blend)
    (data / "code/py_text_document.idx").unlink()
    result = invoke("anneal", "--cluster", "jz", "--site-config", str(site_config), "--dry-run",
                    "--data-root", str(data), "--blend-file", str(blend))
    assert result.exit_code == 2 and "code/py_text_document" in result.output, result.output
    result = invoke("all", "--cluster", "jz", "--site-config", str(site_config), "--dry-run", "--blend-file", str(blend))
    assert result.exit_code == 2 and "--blend-file is one phase's blend" in result.output


def test_submission_chains_phases_afterok(site_config, tmp_path, monkeypatch, megatron_runtime):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls"
    sbatch = bin_dir / "sbatch"  # prints job ids 101, 102, ... like `sbatch --parsable`
    sbatch.write_text(f'#!/bin/bash\necho "$*" >> {calls}\necho $((100 + $(wc -l < {calls})))\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")

    result = invoke("all", "--cluster", "jz", "--site-config", str(site_config), "--nodes", "32", "--layout", "original")
    assert result.exit_code == 0, result.output
    submitted = calls.read_text().splitlines()
    assert [line.split()[-1].rsplit("/", 1)[-1] for line in submitted] == [
        "pretrain_sbatch.sh", "extension_sbatch.sh", "anneal_sbatch.sh"]
    assert "--dependency" not in submitted[0]
    assert "--dependency=afterok:101" in submitted[1] and "--dependency=afterok:102" in submitted[2]
    assert "pretrain: Slurm job 101; follow it with: tail -F " in result.stdout
    assert "log-lucie-anneal_103_0.out" in result.stdout


def test_a_phase_submitted_alone_needs_its_start_checkpoint_now(site_config, tmp_path, monkeypatch,
                                                                megatron_runtime):
    """`lucie launch extension` alone: refused before submission while pretrain's checkpoint is missing (in
    `all`, pretrain's job writes it first); submitted once it is there; a dry run renders it either way."""
    from test_checkpoint_load import write_checkpoint

    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch_calls"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {calls}\necho 101\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    runs = tmp_path / "runs"
    launch = ("extension", "--cluster", "jz", "--site-config", str(site_config), "--output-root", str(runs))

    result = invoke(*launch)
    assert result.exit_code == 2 and not calls.exists(), result.output
    assert result.output.strip().splitlines() == [
        f"error: phase extension starts from the checkpoint {runs / 'pretrain' / 'checkpoints'}, which does not "
        "exist: train the phase before it first (its last checkpoint goes there), or set "
        "checkpoint.pretrained_checkpoint=PATH"]
    assert invoke(*launch, "--dry-run").exit_code == 0

    write_checkpoint(runs / "pretrain" / "checkpoints")
    result = invoke(*launch)
    assert result.exit_code == 0, result.output
    assert len(calls.read_text().splitlines()) == 1 and "extension: Slurm job 101" in result.stdout


def test_layout_is_validated_before_anything_is_rendered(site_config, tmp_path, megatron_runtime):
    result = invoke("pretrain", "--cluster", "jz", "--site-config", str(site_config), "--nodes", "3", "--dry-run",
                    "--layout", "original")
    assert result.exit_code == 2
    assert "not divisible by TP x PP x CP" in result.output
    assert not (tmp_path / "jobs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "--cluster", "nowhere"], "unknown cluster 'nowhere'"),
        (["pretrain", "--cluster", "jz", "--walltime", "20h"], "walltime '20h'"),
        (["pretrain", "--cluster", "jeanzay"], "set account"),  # a submission needs the user's values
        (["phase4", "--cluster", "jz"], "unknown phase 'phase4'"),
        (["pretrain", "--cluster", "local", "--dry-run", "--tiny"], "the local profile has none"),
    ],
)
def test_bad_input_is_one_clear_error(site_config, args, message, megatron_runtime):
    result = invoke(*args, "--site-config", str(site_config))
    assert result.exit_code == 2
    assert message in result.output


def test_fast_layout_runs_phase_1_in_two_chained_legs(site_config, megatron_runtime):
    """Under --layout fast (the default) on the original 128 x 4 GPUs: a rampup leg that stops at step 19,336
    in a rampup-compatible layout, then the main leg in the plan's fast layout, afterok on the first, each
    requeued until its own last step; phases 2 and 3 follow the main leg."""
    from lucie_nemo.phases import PRETRAIN
    from lucie_nemo.plan import make_plan

    result = invoke("all", "--cluster", "jz", "--site-config", str(site_config), "--dry-run")
    rampup, main, extension, anneal = rendered(result, 4)
    plan_legs = make_plan(PRETRAIN, 128, 4).to_json()["legs"]
    for script, leg in zip((rampup, main), plan_legs):
        layout = (f"TP{leg['tensor_parallel']} PP{leg['pipeline_parallel']} CP{leg['context_parallel']} "
                  f"DP{leg['data_parallel']}, mbs {leg['micro_batch_size']}")
        assert f"# lucie: pretrain ({leg['leg']} leg, steps {leg['from_step']}-{leg['to_step']}) on 128 nodes x 4 " \
               f"GPUs: {layout}, stops at iteration {leg['to_step']} of 753851 " in script
        assert f"lucie_final_iteration={leg['to_step']}" in script
        assert "lucie_checkpoints=/lustre/scratch/lucie/runs/pretrain/checkpoints" in script  # one folder
        lucie = training_command(script)
        assert (option(lucie, "--layout"), option(lucie, "--leg")) == ("fast", leg["leg"])
    assert "#SBATCH --job-name=lucie-pretrain-rampup" in rampup and "--dependency" not in rampup
    assert "#SBATCH --dependency=afterok:PRETRAIN-MAIN_JOB_ID" in extension
    assert re.search(r"#SBATCH --dependency=afterok:PRETRAIN-RAMPUP_JOB_ID", main)
    assert "lucie_final_iteration=1220" in anneal
    printed = [line for line in result.stdout.splitlines() if line.startswith("# lucie:")]
    assert len(printed) + 4 == len(result.stdout.splitlines())  # stdout: summaries and paths, nothing else
    assert printed[0].startswith("# lucie: pretrain (rampup leg, steps 1-19336)")
    assert printed[1].startswith("# lucie: pretrain (main leg, steps 19337-753851)")


def test_fast_layout_that_cannot_exist_is_one_clear_error(site_config, megatron_runtime):
    result = invoke("pretrain", "--cluster", "jz", "--site-config", str(site_config), "--nodes", "3", "--dry-run")
    assert result.exit_code == 2
    assert "no layout of phase 'pretrain' fits 3 x 4 GPUs" in result.output


def test_local_tiny_run_trains_and_checkpoints(tmp_path):
    runs = tmp_path / "runs"
    result = invoke("pretrain", "--cluster", "local", "--tiny", "--output-root", str(runs), "train.train_iters=3")
    assert result.exit_code == 0, result.output
    assert (runs / "pretrain" / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert any((runs / "pretrain" / "tensorboard").iterdir())
    experiments = runs / "jobs" / "experiments" / "lucie-pretrain"
    logs = list(experiments.glob("*/pretrain/nemo_run/*/pretrain/0/combined.log"))
    assert logs and "iteration        3/       3" in logs[0].read_text()


def test_dry_run_without_site_config_renders_marked_placeholders_here(tmp_path, monkeypatch, megatron_runtime):
    monkeypatch.chdir(tmp_path)
    result = invoke("pretrain", "--cluster", "jeanzay", "--dry-run")
    [script] = rendered(result, 1)
    assert Path(result.stdout.strip().splitlines()[-1]).is_relative_to(tmp_path / "lucie-dry-run")
    header = script.splitlines()[1]
    assert header.startswith("# lucie: PLACEHOLDER values") and "account = 'abc@h100'" in header
    assert header in result.stderr  # the same notice on the console
    assert "#SBATCH --account=abc@h100" in script
    command = training_command(script)
    assert option(command, "--output-root") == "/lustre/fsn1/projects/rech/abc/lucie/runs"
    assert "--data-root" not in command  # the example's data is not here to validate a blend against
    assert not Path("/lustre/fsn1/projects/rech/abc").exists()
