"""SageMaker training-container entry point: start train.py on this node with torchrun or deepspeed.

`launch_sagemaker.py` submits the job with this file as the ModelTrainer entry script, so
SageMaker runs it once per instance, from the uploaded source folder, with the job's
hyperparameters as `--name value` arguments. The cluster comes from SageMaker's environment:
SM_HOSTS (JSON list), SM_CURRENT_HOST, SM_NUM_GPUS; every input channel is mounted at
SM_CHANNEL_<NAME>. Checkpoints go to /opt/ml/checkpoints, which SageMaker mirrors to the job's
checkpoint S3 URI and restores after a spot interruption, so `--resume` continues from there.
When training succeeds, node 0 copies the final adapter into SM_MODEL_DIR (-> model.tar.gz).

The launcher gets the network settings SageMaker's own torchrun driver sets (EFA where the
instance has it; `network_environment`). When SageMaker stops the job (SIGTERM, then SIGKILL 120 s
later), the signal goes to the train.py processes themselves, not to their launcher: torchrun
(unless given the --shutdown-timeout of recent versions; the SageMaker image's torch 2.9 has none) and
deepspeed's launcher SIGKILL their workers 30 s after passing SIGTERM on, while train.py may need
longer to finish its step and checkpoint.

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
import time
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
WORKER_GRACE_S = 110  # SageMaker's StopTrainingJob waits 120 s between SIGTERM and SIGKILL

# The instance types SageMaker's torchrun driver gives EFA settings, as it lists them (sagemaker-python-sdk,
# src/sagemaker/modules/train/container_drivers/common/utils.py: SM_EFA_NCCL_INSTANCES, SM_EFA_RDMA_INSTANCES;
# the older sagemaker-training-toolkit's torch_distributed.py uses lists of the same names).
EFA_INSTANCES = ("ml.g4dn.8xlarge", "ml.g4dn.12xlarge", "ml.g5.48xlarge", "ml.p3dn.24xlarge", "ml.p4d.24xlarge",
                 "ml.p4de.24xlarge", "ml.p5.48xlarge", "ml.trn1.32xlarge")
EFA_RDMA_INSTANCES = ("ml.p4d.24xlarge", "ml.p4de.24xlarge", "ml.trn1.32xlarge")


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


def network_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The NCCL/EFA variables SageMaker's torchrun driver sets (sagemaker-python-sdk,
    src/sagemaker/modules/train/container_drivers/distributed_drivers/torchrun_driver.py, setup_env),
    for the instance in SM_CURRENT_INSTANCE_TYPE; a variable the job already sets is left to it.

    - NCCL_SOCKET_IFNAME: SM_NETWORK_INTERFACE_NAME (default eth0), the interface of NCCL's bootstrap;
    - FI_PROVIDER=efa on EFA instances: libfabric (under NCCL's aws-ofi-nccl plugin) uses EFA;
    - FI_EFA_USE_DEVICE_RDMA=1 and RDMAV_FORK_SAFE=1 where EFA does GPUDirect RDMA: one-sided
      transfers straight from GPU memory, and ibverbs memory registrations that survive fork();
    - NCCL_PROTO=simple on EFA instances. The driver sets it on every instance; here only with EFA,
      where the low-latency protocols are what it guards against: on one node's NVLink they are
      NCCL's fastest for small messages.
    """
    instance = env.get("SM_CURRENT_INSTANCE_TYPE", "")
    settings = {"NCCL_SOCKET_IFNAME": env.get("SM_NETWORK_INTERFACE_NAME") or "eth0"}
    if instance in EFA_INSTANCES:
        settings.update(FI_PROVIDER="efa", NCCL_PROTO="simple")
    if instance in EFA_RDMA_INSTANCES:
        settings.update(FI_EFA_USE_DEVICE_RDMA="1", RDMAV_FORK_SAFE="1")
    return {name: value for name, value in settings.items() if name not in env}


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
    network = network_environment(env)
    if install:
        print("install:", " ".join(install), flush=True)
    print("environment:", " ".join(f"{name}={value}" for name, value in network.items()), flush=True)
    print("launch:", " ".join(command), flush=True)
    if hyperparameters["print_command"]:
        return 0
    if install and subprocess.run(install).returncode != 0:
        raise EntryError(f"could not install {hyperparameters['extra_requirements']}; see pip's output above")
    cluster = read_cluster(env)
    if hyperparameters["launcher"] == "deepspeed" and cluster.num_nodes > 1:
        Path(DEEPSPEED_HOSTFILE).write_text(deepspeed_hostfile(cluster))
    returncode = run_forwarding_sigterm(command, {**env, **network})
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


def run_forwarding_sigterm(command: list[str], env: Mapping[str, str] | None = None,
                           grace_s: float = WORKER_GRACE_S) -> int:
    """Run the launcher; on the SIGTERM SageMaker sends before a stop or a spot interruption, pass it to
    the train.py processes under the launcher (train.py finishes or abandons its step, checkpoints and
    exits 0, and the launcher exits with its workers). Only if they are still running `grace_s` later
    does the launcher get the signal itself (it then ends them its own way). Without train.py
    processes (not started yet, or another command) the launcher gets it at once."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=None if env is None else dict(env))
    deadline = []  # set once, by the first SIGTERM

    def stop(signum, frame):
        if deadline:
            return
        deadline.append(time.monotonic() + grace_s)
        for pid in training_processes(process.pid) or [process.pid]:
            _signal(pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            try:
                return process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if deadline and time.monotonic() > deadline[0]:
                    print(f"train.py still running {grace_s:.0f} s after SIGTERM: stopping the launcher", flush=True)
                    _signal(process.pid, signal.SIGTERM)
                    deadline[0] = float("inf")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # it has just exited
        pass


def runs_train_py(argv: list[str]) -> bool:
    """Whether a command line is Python running train.py: its first argument after the interpreter's
    options (`python -u train.py ...`; not `torchrun ... train.py`, nor `python -m launcher ... train.py`)."""
    arguments = iter(argv[1:])
    for arg in arguments:
        if arg in ("-m", "-c"):
            return False
        if arg in ("-W", "-X"):  # options whose value is the next argument
            next(arguments, None)
        elif not arg.startswith("-"):
            return Path(arg).name == "train.py"
    return False


def training_processes(root: int, proc: Path = Path("/proc")) -> list[int]:
    """The topmost processes at or under `root` whose command runs train.py: the launcher's workers
    (torchrun and deepspeed start `python -u train.py ...`), not what they fork or spawn themselves
    (data loaders, compile workers). Read from /proc (Linux, as in the SageMaker containers)."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command name)"
        except (OSError, IndexError):  # exited while being read
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if runs_train_py([arg.decode(errors="replace") for arg in argv if arg]):
            found.append(pid)
        else:
            pending.extend(children.get(pid, []))
    return sorted(found)


if __name__ == "__main__":
    sys.exit(main())
