"""SageMaker training-container entry point: start train.py on this node with torchrun or deepspeed.

`launch_sagemaker.py` submits the job with this file as the ModelTrainer entry script, so
SageMaker runs it once per instance, from the uploaded source folder, with the job's
hyperparameters as `--name value` arguments. The cluster comes from SageMaker's environment:
SM_HOSTS (JSON list), SM_CURRENT_HOST, SM_NUM_GPUS; every input channel is mounted at
SM_CHANNEL_<NAME>. Checkpoints go to /opt/ml/checkpoints, which SageMaker mirrors to the job's
checkpoint S3 URI and restores after a spot interruption, so `--resume` continues from there.
When training succeeds, node 0 copies the final adapter into SM_MODEL_DIR (-> model.tar.gz).

Outside SageMaker, `--print-command` shows the command this node would run, given those
variables, without starting it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = "/opt/ml/checkpoints"  # the CheckpointConfig local_path set by launch_sagemaker.py
FINAL_SUBDIR = "final"  # train.py writes the finished adapter to <output dir>/final
STOPPED = "stopped.json"  # train.py writes it when SIGTERM ended the run early (train.STOPPED)
MASTER_PORT = 29500
DEEPSPEED_HOSTFILE = "/tmp/deepspeed_hostfile"
LAUNCHERS = ("torchrun", "deepspeed")


class EntryError(ValueError):
    """The job's environment or hyperparameters cannot describe a launch."""


@dataclass(frozen=True)
class Cluster:
    hosts: tuple[str, ...]  # sorted, so every node agrees on rank order and the master
    current_host: str
    gpus_per_host: int

    @property
    def num_nodes(self) -> int:
        return len(self.hosts)

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def master_addr(self) -> str:
        return self.hosts[0]


def _require_env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise EntryError(
            f"environment variable {name} is not set; this script runs inside a SageMaker "
            "training job (submit it with launch_sagemaker.py)"
        )
    return value


def read_cluster(env: Mapping[str, str]) -> Cluster:
    """The node layout from SM_HOSTS / SM_CURRENT_HOST / SM_NUM_GPUS."""
    raw_hosts = _require_env(env, "SM_HOSTS")
    try:
        hosts = json.loads(raw_hosts)
    except json.JSONDecodeError:
        raise EntryError(f"SM_HOSTS={raw_hosts!r} is not a JSON list of host names") from None
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise EntryError(f"SM_HOSTS={raw_hosts!r} is not a non-empty JSON list of host names")
    current = _require_env(env, "SM_CURRENT_HOST")
    if current not in hosts:
        raise EntryError(f"SM_CURRENT_HOST={current!r} is not one of SM_HOSTS={hosts}")
    raw_gpus = env.get("SM_NUM_GPUS", "0")
    try:
        gpus = int(raw_gpus)
    except ValueError:
        raise EntryError(f"SM_NUM_GPUS={raw_gpus!r} is not an integer") from None
    return Cluster(hosts=tuple(sorted(hosts)), current_host=current, gpus_per_host=gpus)


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON list of strings")
    return value


def parse_hyperparameters(argv: list[str]) -> dict:
    """The job's hyperparameters, as the SDK's script driver passes them (`--name value`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="recipe file name inside the 'recipe' channel")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="torchrun")
    parser.add_argument("--deepspeed_config", help="DeepSpeed JSON config, relative to the source folder")
    parser.add_argument("--overrides", type=_json_list, default=[],
                        help='JSON list of recipe overrides, e.g. \'["train.learning_rate=1e-5"]\'')
    parser.add_argument("--train_file", help="file name inside the 'train' channel")
    parser.add_argument("--validation_file", help="file name inside the 'validation' channel")
    parser.add_argument("--extra_requirements", type=_json_list, default=[],
                        help='JSON list of packages to install before training, e.g. \'["sagemaker-mlflow==0.5.0"]\'')
    parser.add_argument("--print-command", action="store_true", help="print the launch command and exit")
    return vars(parser.parse_args(argv))


def _channel_file(env: Mapping[str, str], channel: str, file_name: str) -> str:
    variable = f"SM_CHANNEL_{channel.upper()}"
    directory = env.get(variable)
    if not directory:
        raise EntryError(f"hyperparameters name a {channel} file {file_name!r} but the job has no "
                         f"'{channel}' input channel ({variable} is not set)")
    return f"{directory}/{file_name}"


def train_arguments(env: Mapping[str, str], hyperparameters: Mapping) -> list[str]:
    """train.py and its arguments: recipe, output dir, resume, DeepSpeed config, overrides."""
    if not hyperparameters.get("recipe"):
        raise EntryError("hyperparameter 'recipe' is missing; launch_sagemaker.py always sets it")
    args = ["train.py", "--recipe", _channel_file(env, "recipe", hyperparameters["recipe"])]
    # --resume takes an optional value, so an option must follow it, never a bare override.
    args += ["--resume", "--output-dir", OUTPUT_DIR]
    if hyperparameters.get("deepspeed_config"):
        args += ["--deepspeed", hyperparameters["deepspeed_config"]]
    args += list(hyperparameters.get("overrides") or [])
    if hyperparameters.get("train_file"):
        args.append(f"data.train_file={_channel_file(env, 'train', hyperparameters['train_file'])}")
    if hyperparameters.get("validation_file"):
        path = _channel_file(env, "validation", hyperparameters["validation_file"])
        args.append(f"data.validation_file={path}")
    return args


def build_launch_command(env: Mapping[str, str], hyperparameters: Mapping) -> list[str]:
    """The command that starts this node's share of the training processes."""
    cluster = read_cluster(env)
    launcher = hyperparameters.get("launcher") or "torchrun"
    script = train_arguments(env, hyperparameters)
    if launcher == "torchrun":
        return [
            "torchrun",
            "--nnodes", str(cluster.num_nodes),
            "--node_rank", str(cluster.node_rank),
            "--nproc_per_node", str(max(cluster.gpus_per_host, 1)),  # CPU instances run one process
            "--master_addr", cluster.master_addr,
            "--master_port", str(MASTER_PORT),
            *script,
        ]
    if launcher == "deepspeed":
        if cluster.gpus_per_host < 1:
            raise EntryError("launcher=deepspeed needs a GPU instance (SM_NUM_GPUS is 0); "
                             "use launcher=torchrun or a GPU instance type")
        # --no_local_rank: ranks reach train.py through LOCAL_RANK/RANK, as under torchrun.
        command = ["deepspeed", "--num_gpus", str(cluster.gpus_per_host),
                   "--master_port", str(MASTER_PORT), "--no_local_rank"]
        if cluster.num_nodes > 1:
            # Every node starts its own local launcher (no ssh between SageMaker instances).
            command += ["--hostfile", DEEPSPEED_HOSTFILE, "--no_ssh",
                        "--num_nodes", str(cluster.num_nodes), "--node_rank", str(cluster.node_rank),
                        "--master_addr", cluster.master_addr]
        return command + script
    raise EntryError(f"launcher={launcher!r}: use one of {', '.join(LAUNCHERS)}")


def install_command(hyperparameters: Mapping) -> list[str] | None:
    """pip install of the job's extra requirements (the launcher adds e.g. the SageMaker MLflow plugin)."""
    extra = list(hyperparameters.get("extra_requirements") or [])
    return [sys.executable, "-m", "pip", "install", "--no-input", *extra] if extra else None


def deepspeed_hostfile(cluster: Cluster) -> str:
    """DeepSpeed hostfile text: one `host slots=N` line per node, in rank order."""
    return "".join(f"{host} slots={cluster.gpus_per_host}\n" for host in cluster.hosts)


def export_final_adapter(output_dir: Path, model_dir: Path) -> None:
    """Copy train.py's final folder (adapter/, and merged/ when exported) into the model dir."""
    final = output_dir / FINAL_SUBDIR
    if not final.is_dir():
        raise EntryError(f"training finished but {final} does not exist; train.py writes the final "
                         "adapter there, so check the training log above")
    shutil.copytree(final, model_dir, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    hyperparameters = parse_hyperparameters(sys.argv[1:] if argv is None else argv)
    env = os.environ
    command = build_launch_command(env, hyperparameters)
    install = install_command(hyperparameters)
    if install:
        print("install:", " ".join(install), flush=True)
    print("launch:", " ".join(command), flush=True)
    if hyperparameters["print_command"]:
        return 0
    if install and subprocess.run(install).returncode != 0:
        raise EntryError(f"could not install {hyperparameters['extra_requirements']}; see pip's output above")
    cluster = read_cluster(env)
    if hyperparameters["launcher"] == "deepspeed" and cluster.num_nodes > 1:
        Path(DEEPSPEED_HOSTFILE).write_text(deepspeed_hostfile(cluster))
    returncode = run_forwarding_sigterm(command)
    if returncode == 0 and cluster.node_rank == 0:
        after_training(Path(OUTPUT_DIR), Path(env.get("SM_MODEL_DIR", "/opt/ml/model")))
    return returncode


def after_training(output_dir: Path, model_dir: Path) -> None:
    """Node 0, after train.py exited 0: export the final adapter, unless SIGTERM stopped the run
    early (train.py's note): then its checkpoints resume it and there is nothing to export."""
    stopped = output_dir / STOPPED
    if stopped.is_file():
        print(f"training stopped early ({stopped.read_text()}): no final adapter to export; the checkpoints "
              f"in {output_dir} resume it", flush=True)
        return
    export_final_adapter(output_dir, model_dir)


def run_forwarding_sigterm(command: list[str]) -> int:
    """Run the launcher, passing on the SIGTERM SageMaker sends this process before a stop or a spot
    interruption (torchrun and deepspeed pass it to train.py, which checkpoints and exits 0)."""
    process = subprocess.Popen(command, cwd=REPO_ROOT)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGTERM))
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
