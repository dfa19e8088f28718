"""SageMaker launcher: the in-container launch command, the offline dry run, and a real
submission through the SDK against a local AWS emulator (moto_server on 127.0.0.1).

Every test runs behind a socket guard: a connection or DNS lookup for anything but the
loopback address is recorded and fails the test, even where the SDK swallows the error
(its telemetry does).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

import launch_sagemaker as launcher
from scripts import sagemaker_entry as entry

REPO_ROOT = Path(__file__).resolve().parents[1]
ROLE = "arn:aws:iam::123456789012:role/SageMakerTraining"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def no_outside_network(monkeypatch):
    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            attempts.append(address)
            raise OSError(f"test blocked a connection to {address}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            attempts.append(host)
            raise OSError(f"test blocked a DNS lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert attempts == [], f"something tried to leave this machine: {attempts}"


# ---- scripts/sagemaker_entry.py ----------------------------------------------------------


def sm_env(hosts, current, gpus, channels=("recipe", "train", "validation")):
    env = {"SM_HOSTS": json.dumps(hosts), "SM_CURRENT_HOST": current, "SM_NUM_GPUS": str(gpus)}
    env.update({f"SM_CHANNEL_{c.upper()}": f"/opt/ml/input/data/{c}" for c in channels})
    return env


HPS = {"recipe": "gsm8k.yaml", "launcher": "torchrun", "deepspeed_config": None,
       "overrides": ["train.learning_rate=1e-5"], "train_file": "train.jsonl", "validation_file": "val.jsonl"}
TRAIN_ARGS = [
    "train.py", "--recipe", "/opt/ml/input/data/recipe/gsm8k.yaml", "--resume", "--output-dir", "/opt/ml/checkpoints",
    "train.learning_rate=1e-5",
    "data.train_file=/opt/ml/input/data/train/train.jsonl",
    "data.validation_file=/opt/ml/input/data/validation/val.jsonl",
]


def test_single_node_single_gpu_torchrun():
    command = entry.build_launch_command(sm_env(["algo-1"], "algo-1", 1), HPS)
    assert command == ["torchrun", "--nnodes", "1", "--node_rank", "0", "--nproc_per_node", "1",
                       "--master_addr", "algo-1", "--master_port", "29500", *TRAIN_ARGS]


def test_multi_node_rank_and_master_come_from_the_sorted_host_list():
    # SM_HOSTS order is not guaranteed; sorted, algo-1 is node 0 (the master) and algo-3 is node 2.
    command = entry.build_launch_command(sm_env(["algo-3", "algo-1", "algo-2"], "algo-3", 8), HPS)
    assert command[:11] == ["torchrun", "--nnodes", "3", "--node_rank", "2", "--nproc_per_node", "8",
                            "--master_addr", "algo-1", "--master_port", "29500"]
    assert command[11:] == TRAIN_ARGS


def test_cpu_instance_runs_one_process():
    command = entry.build_launch_command(sm_env(["algo-1"], "algo-1", 0), HPS)
    assert command[command.index("--nproc_per_node") + 1] == "1"


def test_deepspeed_single_node_with_config():
    hps = {**HPS, "launcher": "deepspeed", "deepspeed_config": "ds_config.json", "overrides": [],
           "validation_file": None}
    command = entry.build_launch_command(sm_env(["algo-1"], "algo-1", 4), hps)
    assert command == [
        "deepspeed", "--num_gpus", "4", "--master_port", "29500", "--no_local_rank",
        "train.py", "--recipe", "/opt/ml/input/data/recipe/gsm8k.yaml", "--resume",
        "--output-dir", "/opt/ml/checkpoints", "--deepspeed", "ds_config.json",
        "data.train_file=/opt/ml/input/data/train/train.jsonl",
    ]


def test_deepspeed_multi_node_launches_locally_from_a_hostfile():
    hps = {**HPS, "launcher": "deepspeed", "deepspeed_config": "ds_config.json"}
    env = sm_env(["algo-2", "algo-1"], "algo-2", 4)
    command = entry.build_launch_command(env, hps)
    assert command[:command.index("train.py")] == [
        "deepspeed", "--num_gpus", "4", "--master_port", "29500", "--no_local_rank",
        "--hostfile", entry.DEEPSPEED_HOSTFILE, "--no_ssh", "--num_nodes", "2", "--node_rank", "1",
        "--master_addr", "algo-1",
    ]
    assert entry.deepspeed_hostfile(entry.read_cluster(env)) == "algo-1 slots=4\nalgo-2 slots=4\n"


@pytest.mark.parametrize("env_change, hps_change, message", [
    pytest.param({"SM_HOSTS": None}, {}, "SM_HOSTS is not set", id="hosts-unset"),
    pytest.param({"SM_HOSTS": "algo-1,algo-2"}, {}, "not a JSON list", id="hosts-not-json"),
    pytest.param({"SM_HOSTS": "[]"}, {}, "non-empty JSON list", id="hosts-empty"),
    pytest.param({"SM_CURRENT_HOST": "algo-9"}, {}, "not one of SM_HOSTS", id="current-host-not-listed"),
    pytest.param({"SM_NUM_GPUS": "eight"}, {}, "not an integer", id="gpu-count-not-integer"),
    pytest.param({"SM_CHANNEL_TRAIN": None}, {}, "no 'train' input channel", id="no-train-channel"),
    pytest.param({"SM_CHANNEL_RECIPE": None}, {}, "no 'recipe' input channel", id="no-recipe-channel"),
    pytest.param({}, {"recipe": None}, "hyperparameter 'recipe' is missing", id="no-recipe-hyperparameter"),
    pytest.param({}, {"launcher": "mpirun"}, "launcher='mpirun'", id="unknown-launcher"),
    pytest.param({"SM_NUM_GPUS": "0"}, {"launcher": "deepspeed"}, "needs a GPU instance", id="deepspeed-without-gpus"),
])
def test_entry_errors_name_the_problem(env_change, hps_change, message):
    env = sm_env(["algo-1", "algo-2"], "algo-1", 4)
    for key, value in env_change.items():
        env.pop(key) if value is None else env.__setitem__(key, value)
    with pytest.raises(entry.EntryError, match=re.escape(message)):
        entry.build_launch_command(env, {**HPS, **hps_change})


def test_hyperparameters_arrive_as_the_sdk_driver_passes_them():
    # ModelTrainer's script driver turns each hyperparameter into `--name value`; overrides are a JSON list.
    argv = ["--recipe", "gsm8k.yaml", "--launcher", "torchrun",
            "--overrides", '["train.learning_rate=1e-5", "rollout.stop_strings=[\\"\\\\n\\\\n\\"]"]',
            "--train_file", "train.jsonl"]
    parsed = entry.parse_hyperparameters(argv)
    assert parsed["overrides"] == ["train.learning_rate=1e-5", 'rollout.stop_strings=["\\n\\n"]']
    assert (parsed["recipe"], parsed["launcher"], parsed["train_file"]) == ("gsm8k.yaml", "torchrun", "train.jsonl")
    assert parsed["validation_file"] is None and parsed["deepspeed_config"] is None


@pytest.mark.parametrize("overrides", ['"train.beta=0"', '{"a": 1}', "[1, 2]", "not json"],
                         ids=["json-string", "json-object", "list-of-numbers", "not-json"])
def test_overrides_must_be_a_json_list_of_strings(overrides, capsys):
    with pytest.raises(SystemExit):
        entry.parse_hyperparameters(["--recipe", "r.yaml", "--overrides", overrides])
    assert "--overrides" in capsys.readouterr().err


def test_print_command_shows_the_launch_without_running_it(monkeypatch, capsys):
    for name, value in sm_env(["algo-1", "algo-2"], "algo-1", 2).items():
        monkeypatch.setenv(name, value)
    assert entry.main(["--recipe", "gsm8k.yaml", "--train_file", "train.jsonl", "--print-command"]) == 0
    assert capsys.readouterr().out == (
        "environment: NCCL_SOCKET_IFNAME=eth0\n"
        "launch: torchrun --nnodes 2 --node_rank 0 --nproc_per_node 2 --master_addr algo-1 --master_port 29500 "
        "train.py --recipe /opt/ml/input/data/recipe/gsm8k.yaml --resume --output-dir /opt/ml/checkpoints "
        "data.train_file=/opt/ml/input/data/train/train.jsonl\n"
    )


@pytest.mark.parametrize("instance, job_env, expected", [
    # what SageMaker's torchrun driver sets per instance type (its lists, torchrun_driver.setup_env)
    pytest.param("ml.p4d.24xlarge", {}, {"NCCL_SOCKET_IFNAME": "eth0", "FI_PROVIDER": "efa", "NCCL_PROTO": "simple",
                                         "FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"}, id="efa-with-rdma"),
    pytest.param("ml.p5.48xlarge", {"SM_NETWORK_INTERFACE_NAME": "ens32"},
                 {"NCCL_SOCKET_IFNAME": "ens32", "FI_PROVIDER": "efa", "NCCL_PROTO": "simple"}, id="efa"),
    pytest.param("ml.g5.2xlarge", {}, {"NCCL_SOCKET_IFNAME": "eth0"}, id="no-efa"),
    pytest.param("", {}, {"NCCL_SOCKET_IFNAME": "eth0"}, id="instance-type-unknown"),
    pytest.param("ml.p4d.24xlarge", {"NCCL_PROTO": "LL128", "NCCL_SOCKET_IFNAME": "ens5"},
                 {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"},
                 id="the-jobs-own-settings-win"),
])
def test_network_environment_is_what_sagemakers_torchrun_driver_sets(instance, job_env, expected):
    assert entry.network_environment({"SM_CURRENT_INSTANCE_TYPE": instance, **job_env}) == expected


# A stand-in for torchrun: starts `python -u train.py` twice, and on its own SIGTERM does what torchrun
# does (forward it, then SIGKILL the workers), with 0.5 s for torchrun's 30; exits 0 when both did.
FAKE_LAUNCHER = """
import signal, subprocess, sys, time
workers = [subprocess.Popen([sys.executable, "-u", sys.argv[1], str(i)]) for i in range(2)]
def stop(*_):
    for w in workers:
        w.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    for w in workers:
        w.kill()
    sys.exit(9)
signal.signal(signal.SIGTERM, stop)
sys.exit(max(w.wait() for w in workers))
"""
# A stand-in for train.py: forks a helper (a data loader), then on SIGTERM takes `delay` seconds to
# finish its step and checkpoint (a marker file), and exits 0.
FAKE_TRAIN = """
import os, signal, sys, time
if os.fork() == 0:
    time.sleep(60)
    sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: (time.sleep({delay}), open({marker!r} + sys.argv[1], "w").close(),
                                         sys.exit(0)))
open({marker!r} + "started" + sys.argv[1], "w").close()
time.sleep(60)
"""


def launch_fake_training(tmp_path, delay: float, grace_s: float):
    import os
    import signal
    import threading

    marker = str(tmp_path / "checkpointed-")
    (tmp_path / "train.py").write_text(FAKE_TRAIN.format(delay=delay, marker=marker))
    (tmp_path / "launcher.py").write_text(FAKE_LAUNCHER)

    def sagemaker_stops_the_job():
        deadline = time.monotonic() + 30
        while not all(Path(f"{marker}started{i}").exists() for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=sagemaker_stops_the_job).start()
    started = time.monotonic()
    code = entry.run_forwarding_sigterm([sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "train.py")],
                                        grace_s=grace_s)
    return code, time.monotonic() - started, [Path(f"{marker}{i}").exists() for i in range(2)]


def test_sigterm_goes_to_the_training_processes_which_get_longer_than_the_launcher_would_give(tmp_path):
    # each worker needs 2 s after SIGTERM; the launcher would have killed it after 0.5 s
    code, _, checkpointed = launch_fake_training(tmp_path, delay=2.0, grace_s=20)
    assert code == 0 and checkpointed == [True, True]


def test_training_that_outlasts_the_grace_period_is_stopped_by_its_launcher(tmp_path):
    code, seconds, checkpointed = launch_fake_training(tmp_path, delay=30.0, grace_s=1.0)
    assert code == 9 and checkpointed == [False, False]  # the launcher's SIGKILL after the grace period
    assert seconds < 15


@pytest.mark.parametrize("argv, expected", [
    pytest.param(["/usr/bin/python3", "-u", "train.py", "--recipe", "r.yaml"], True, id="torchrun-worker"),
    pytest.param(["python", "/opt/code/train.py"], True, id="a-path"),
    pytest.param(["python", "-X", "faulthandler", "train.py"], True, id="option-with-a-value"),
    pytest.param(["python", "/usr/bin/torchrun", "--nnodes", "1", "train.py"], False, id="torchrun-itself"),
    pytest.param(["python", "-u", "-m", "deepspeed.launcher.launch", "train.py"], False, id="deepspeed-launcher"),
    pytest.param(["python", "-c", "import train.py"], False, id="inline-code"),
    pytest.param(["python", "my_train.py"], False, id="another-script"),
    pytest.param(["python"], False, id="no-script"),
])
def test_a_training_process_is_python_running_train_py(argv, expected):
    assert entry.runs_train_py(argv) is expected


def test_training_processes_are_the_topmost_train_py_processes(tmp_path):
    (tmp_path / "train.py").write_text(FAKE_TRAIN.format(delay=0, marker=str(tmp_path / "m-")))
    (tmp_path / "launcher.py").write_text(FAKE_LAUNCHER)
    launcher_process = subprocess.Popen([sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "train.py")])
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"m-started{i}").exists() for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = entry.training_processes(launcher_process.pid)
        parents = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in found}
        assert len(found) == 2 and parents == {launcher_process.pid}  # the workers, not their forked helpers
    finally:
        launcher_process.kill()
        launcher_process.wait()


def test_final_adapter_is_copied_into_the_model_dir(tmp_path):
    adapter = tmp_path / "out" / "final" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    entry.export_final_adapter(tmp_path / "out", tmp_path / "model")
    assert (tmp_path / "model" / "adapter" / "adapter_config.json").read_text() == '{"r": 16}'


def test_missing_final_adapter_is_an_error(tmp_path):
    with pytest.raises(entry.EntryError, match="does not exist"):
        entry.export_final_adapter(tmp_path / "out", tmp_path / "model")


# ---- launch_sagemaker.py: options and dry run ----------------------------------------------


@pytest.fixture
def source_dir(tmp_path):
    """A source folder as the launcher expects it, plus junk the upload must leave out."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "sagemaker_entry.py", root / "scripts")
    shutil.copy(REPO_ROOT / "requirements-sagemaker.txt", root)
    (root / "train.py").write_text("# only its upload is checked here\n")
    shutil.copy(REPO_ROOT / "ds_config.json", root)
    (root / "recipes").mkdir()
    (root / "recipes" / "qwen2.5-0.5b-gsm8k.yaml").write_text("model:\n  name: Qwen/Qwen2.5-0.5B-Instruct\n")
    for junk in (".venv/lib/big.bin", "runs/demo/metrics.jsonl", "grpo/__pycache__/x.pyc"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("must not be uploaded")
    (tmp_path / "train.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    (tmp_path / "val.jsonl").write_text('{"question": "2+2?", "answer": "#### 4"}\n')
    return root


def base_argv(source_dir: Path) -> list[str]:
    return [
        "--recipe", str(source_dir / "recipes" / "qwen2.5-0.5b-gsm8k.yaml"), "--source-dir", str(source_dir),
        "--role", ROLE, "--bucket", "grpo-bucket", "--region", "us-east-1",
        "--image-uri", "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.9.0-gpu-py312",
    ]


def test_dry_run_prints_the_request_without_credentials(source_dir, capsys):
    argv = base_argv(source_dir) + [
        "--train", str(source_dir.parent / "train.jsonl"), "--validation", "s3://data-bucket/gsm8k/val.jsonl",
        "--instance-type", "ml.p4d.24xlarge", "--instance-count", "2", "--max-run", "3600", "--spot",
        "--env", "HF_TOKEN", "--env", "WANDB_MODE=offline", "--tag", "project=grpo",
        "--job-name", "grpo-qwen", "--dry-run", "train.learning_rate=1e-5",
    ]
    # The only variable in the shell is the token: no AWS credentials, profile or region.
    assert launcher.main(argv, shell_env={"HF_TOKEN": "hf_secret"}) == 0
    out, err = capsys.readouterr()
    request = json.loads(out)
    name = request["TrainingJobName"]
    assert re.fullmatch(r"grpo-qwen-\d{14}", name)
    staged = f"s3://grpo-bucket/grpo/grpo-qwen/{name}/input"
    assert request["ResourceConfig"] == {"InstanceType": "ml.p4d.24xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100}
    assert request["HyperParameters"] == {
        "recipe": "qwen2.5-0.5b-gsm8k.yaml", "launcher": "torchrun",
        "overrides": '["train.learning_rate=1e-5"]', "train_file": "train.jsonl", "validation_file": "val.jsonl",
    }
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {
        "recipe": f"{staged}/recipe/qwen2.5-0.5b-gsm8k.yaml",
        "train": f"{staged}/train/train.jsonl",
        "validation": "s3://data-bucket/gsm8k/val.jsonl",  # already in S3: used as given
        "code": f"{staged}/code",
        "sm_drivers": f"{staged}/sm_drivers",
    }
    # spot: max wait defaults to 2 x max run = 7200 s
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://grpo-bucket/grpo/grpo-qwen/{name}/checkpoints",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://grpo-bucket/grpo/grpo-qwen", "CompressionType": "GZIP"}
    assert request["Environment"] == {"HF_TOKEN": "***", "WANDB_MODE": "offline"}  # secrets masked in print
    assert request["Tags"] == [{"Key": "project", "Value": "grpo"}]
    assert request["RoleArn"] == ROLE
    assert f"would upload {source_dir} -> {staged}/code" in err
    assert "hf_secret" not in out + err


def test_explicit_checkpoint_uri_and_no_spot(source_dir, capsys):
    argv = base_argv(source_dir) + ["--checkpoint-s3-uri", "s3://grpo-bucket/old-run/checkpoints/", "--dry-run"]
    launcher.main(argv, shell_env={})
    request = json.loads(capsys.readouterr().out)
    assert request["CheckpointConfig"]["S3Uri"] == "s3://grpo-bucket/old-run/checkpoints"
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert request["EnableManagedSpotTraining"] is False
    assert "Tags" not in request


@pytest.mark.parametrize("drop, extra, shell_env, message", [
    pytest.param("--role", [], {}, "--role is required", id="missing-role"),
    pytest.param("--bucket", [], {}, "--bucket is required", id="missing-bucket"),
    pytest.param("--region", [], {}, "no AWS region: pass --region", id="missing-region"),
    pytest.param("--recipe", [], {}, "--recipe is required", id="missing-recipe"),
    pytest.param(None, ["--role", "SageMakerTraining"], {}, "give the full role ARN", id="role-name-not-arn"),
    pytest.param(None, ["--bucket", "s3://grpo-bucket/x"], {}, "give a bucket name", id="bucket-as-s3-uri"),
    pytest.param(None, ["--max-wait", "100"], {}, "--max-wait applies to spot jobs only", id="max-wait-without-spot"),
    pytest.param(None, ["--spot", "--max-run", "3600", "--max-wait", "60"], {}, "needs max-wait >= max-run",
                 id="max-wait-below-max-run"),
    pytest.param(None, ["--launcher", "deepspeed"], {}, "--launcher deepspeed needs --deepspeed-config",
                 id="deepspeed-without-config"),
    pytest.param(None, ["--deepspeed-config", "missing.json"], {}, "no such file inside",
                 id="deepspeed-config-not-found"),
    pytest.param(None, ["train.lr"], {}, "expected section.key=value", id="override-without-value"),
    pytest.param(None, ["log.output_dir=/tmp/x"], {}, "always writes to /opt/ml/checkpoints",
                 id="override-of-output-dir"),
    pytest.param(None, ["--train", "s3://b/train.jsonl", "data.train_file=x.jsonl"], {}, "--train sets it",
                 id="override-of-train-file"),
    pytest.param(None, ["rollout.stop_strings=['\\n']"], {}, "single quotes cannot pass", id="single-quoted-override"),
    pytest.param(None, ["--train", "no/such/file.jsonl"], {}, "no such local file", id="missing-local-train-file"),
    pytest.param(None, ["--train", "s3://bucket/folder/"], {}, "not a folder", id="train-uri-is-a-folder"),
    pytest.param(None, ["--env", "HF_TOKEN"], {}, "HF_TOKEN is not set in your shell", id="env-var-not-in-shell"),
    pytest.param(None, ["--tag", "project"], {}, "expected KEY=VALUE", id="tag-without-value"),
    pytest.param(None, ["--job-name", "grpo_run"], {}, "letters, digits and hyphens", id="job-name-with-underscore"),
    pytest.param(None, ["--follow", "job-1"], {}, "cannot be combined with --dry-run", id="follow-with-dry-run"),
])
def test_bad_options_exit_with_a_clear_message(source_dir, capsys, drop, extra, shell_env, message):
    argv = base_argv(source_dir)
    if drop:
        at = argv.index(drop)
        del argv[at:at + 2]
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(argv + extra + ["--dry-run"], shell_env=shell_env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


PUBLISHED = REPO_ROOT / "recipes" / "qwen2.5-0.5b-gsm8k.yaml"


@pytest.mark.parametrize("override, message", [
    pytest.param("train.batch_size=15", "multiple of rollout.group_size=8", id="batch-not-groups"),
    pytest.param("train.bogus=1", "unknown key", id="unknown-key"),
    pytest.param("rollout.group_size=1", "at least 2 per prompt", id="group-of-one"),
    pytest.param("train.global_batch_prompts=12", "not a multiple of 16", id="global-batch-not-divisible"),
    pytest.param("train.mini_batches=3", "train.mini_batches=3 must divide", id="mini-batches-not-dividing"),
])
def test_the_launcher_refuses_what_train_py_would_refuse_before_uploading(source_dir, capsys, override, message):
    argv = base_argv(source_dir) + ["--recipe", str(PUBLISHED), "--instance-type", "ml.g5.12xlarge",
                                    "--instance-count", "2", "--dry-run", override]
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(argv, shell_env={})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train.py would refuse this job" in err and message in err
    assert "would upload" not in err


def test_the_published_recipe_on_two_four_gpu_instances_is_accepted(source_dir, capsys):
    argv = base_argv(source_dir) + ["--recipe", str(PUBLISHED), "--instance-type", "ml.g5.12xlarge",
                                    "--instance-count", "2", "--dry-run"]
    assert launcher.main(argv, shell_env={}) == 0
    err = capsys.readouterr().err
    # 2 x 4 GPUs = 8 processes; 64 prompts per step fixed by the recipe -> 2 per micro-batch x 4 micro-batches
    assert "job: 8 training process(es), zero3: 64 prompts x 8 = 512 completions per optimizer step" in err
    assert "would upload" in err


def test_an_unknown_instance_type_needs_its_gpu_count(source_dir, capsys):
    argv = base_argv(source_dir) + ["--instance-type", "ml.x9.huge", "--dry-run"]
    with pytest.raises(SystemExit):
        launcher.main(argv, shell_env={})
    assert "pass --gpus-per-instance N" in capsys.readouterr().err
    assert launcher.main(argv + ["--gpus-per-instance", "2"], shell_env={}) == 0
    assert "job: 2 training process(es)" in capsys.readouterr().err


@pytest.mark.parametrize("instance_type, gpus", [
    pytest.param("ml.g5.2xlarge", 1, id="g5-one-gpu"), pytest.param("ml.g5.12xlarge", 4, id="g5-four-gpus"),
    pytest.param("ml.p4d.24xlarge", 8, id="p4d"), pytest.param("ml.m5.xlarge", 1, id="cpu-one-process"),
])
def test_processes_per_instance(instance_type, gpus):
    assert launcher.processes_per_instance(instance_type, None) == gpus


def test_region_falls_back_to_the_standard_variables():
    assert launcher.resolve_region(None, {"AWS_DEFAULT_REGION": "eu-west-1"}) == "eu-west-1"
    assert launcher.resolve_region(None, {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-1"}) == "us-west-2"
    assert launcher.resolve_region("ap-south-1", {"AWS_REGION": "us-west-2"}) == "ap-south-1"


def test_job_names():
    assert launcher.unique_job_name("grpo-qwen", datetime(2026, 1, 2, 3, 4, 5)) == "grpo-qwen-20260102030405"
    # "qwen2.5-0.5b-gsm8k" -> non-alphanumerics become hyphens
    assert launcher._default_job_name(Path("recipes/qwen2.5-0.5b-gsm8k.yaml")) == "grpo-qwen2-5-0-5b-gsm8k"
    # base names are cut to 63 - 15 = 48 characters so the timestamp always fits
    assert len(launcher._default_job_name(Path("x" * 80 + ".yaml"))) == 48


def test_help_documents_every_option(capsys):
    parser = launcher.build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert undocumented == []
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dry-run", "--wait", "--follow", "--spot", "--checkpoint-s3-uri", "--env", "--instance-count"):
        assert option in text


# ---- launch_sagemaker.py against a local AWS emulator -------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def emulated_aws(tmp_path, monkeypatch):
    """moto_server on 127.0.0.1 and an environment that points boto3 and the SDK at it, offline."""
    pytest.importorskip("moto.server")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    config = tmp_path / "sagemaker-config.yaml"
    config.write_text('SchemaVersion: "1.0"\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n')
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config), "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(config),
        "SAGEMAKER_VALIDATE_ROLE": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    pytest.importorskip("sagemaker.train")  # imported only now, with telemetry already off
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start on 127.0.0.1") from None
                time.sleep(0.2)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_submission_to_the_emulator_uploads_and_creates_the_job(emulated_aws, source_dir, capsys):
    import boto3

    boto3.client("s3").create_bucket(Bucket="grpo-bucket")
    argv = base_argv(source_dir) + [
        "--train", str(source_dir.parent / "train.jsonl"), "--validation", str(source_dir.parent / "val.jsonl"),
        "--instance-type", "ml.g5.12xlarge", "--instance-count", "2", "--max-run", "7200", "--spot",
        "--launcher", "deepspeed", "--deepspeed-config", "ds_config.json",
        "--env", "HF_TOKEN=hf_test", "--tag", "project=grpo", "--job-name", "grpo-e2e", "--wait",
        "train.learning_rate=1e-5", "data.n_shot=2",
    ]
    assert launcher.main(argv) == 0
    out = capsys.readouterr().out
    name = re.search(r"training job: (\S+)", out).group(1)
    assert "status:       Completed" in out  # --wait streamed the job to its end (moto completes at once)

    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert job["ResourceConfig"] == {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100}
    assert job["HyperParameters"] == {
        "recipe": "qwen2.5-0.5b-gsm8k.yaml", "launcher": "deepspeed", "deepspeed_config": "ds_config.json",
        "overrides": '["train.learning_rate=1e-5", "data.n_shot=2"]',
        "train_file": "train.jsonl", "validation_file": "val.jsonl",
    }
    staged = f"s3://grpo-bucket/grpo/grpo-e2e/{name}/input"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {
        "recipe": f"{staged}/recipe/qwen2.5-0.5b-gsm8k.yaml", "train": f"{staged}/train/train.jsonl",
        "validation": f"{staged}/validation/val.jsonl", "code": f"{staged}/code", "sm_drivers": f"{staged}/sm_drivers",
    }
    assert job["CheckpointConfig"] == {"S3Uri": f"s3://grpo-bucket/grpo/grpo-e2e/{name}/checkpoints",
                                       "LocalPath": "/opt/ml/checkpoints"}
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    tags = boto3.client("sagemaker").list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
    assert {"Key": "project", "Value": "grpo"} in tags

    # The uploads: data byte for byte, the code without virtualenvs, run outputs or caches.
    s3 = boto3.client("s3")
    key = f"grpo/grpo-e2e/{name}/input"
    train_body = s3.get_object(Bucket="grpo-bucket", Key=f"{key}/train/train.jsonl")["Body"].read()
    assert train_body == (source_dir.parent / "train.jsonl").read_bytes()
    listed = s3.list_objects_v2(Bucket="grpo-bucket", Prefix=f"{key}/code/")["Contents"]
    code = sorted(o["Key"].removeprefix(f"{key}/code/") for o in listed)
    assert code == ["ds_config.json", "recipes/qwen2.5-0.5b-gsm8k.yaml", "requirements-sagemaker.txt",
                    "scripts/sagemaker_entry.py", "train.py"]

    # The dry run describes exactly what the SDK sent (moto does not echo Environment and Tags).
    spec = launcher.resolve_spec(launcher.build_parser().parse_intermixed_args(argv), {"HF_TOKEN": "x"})
    dry = launcher.create_training_job_request(spec, name)
    algorithm = {k: v for k, v in job["AlgorithmSpecification"].items() if k != "MetricDefinitions"}
    assert algorithm == dry["AlgorithmSpecification"]
    for field in ("HyperParameters", "InputDataConfig", "ResourceConfig", "RoleArn", "StoppingCondition",
                  "OutputDataConfig", "CheckpointConfig", "EnableManagedSpotTraining"):
        assert job[field] == dry[field], field

    # --follow attaches to the finished job and returns.
    assert launcher.main(["--follow", name]) == 0


def test_default_image_is_the_sdk_pytorch_training_image():
    pytest.importorskip("sagemaker.core.image_uris")
    gpu = launcher.default_image_uri("us-east-1", "ml.g5.2xlarge", "2.9.0")
    assert gpu == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.9.0-gpu-py312"
    assert launcher.default_image_uri("eu-west-1", "ml.m5.xlarge", "2.9.0").endswith("pytorch-training:2.9.0-cpu-py312")
    with pytest.raises(launcher.LaunchError, match="pass --image-uri"):
        launcher.default_image_uri("us-east-1", "ml.g5.2xlarge", "0.1.0")


def test_launcher_hyperparameters_reach_train_py_through_the_sdk_script_driver(source_dir):
    # The SDK's container driver (copied into every job) turns hyperparameters into argv.
    driver = pytest.importorskip("sagemaker.train.container_drivers.common.utils")
    argv = base_argv(source_dir) + ["--train", "s3://data-bucket/gsm8k/train.jsonl", "--launcher", "deepspeed",
                                    "--deepspeed-config", "ds_config.json", 'rollout.stop_strings=["\\n\\n"]',
                                    "loss.beta=0"]
    spec = launcher.resolve_spec(launcher.build_parser().parse_intermixed_args(argv), {})
    container_argv = driver.hyperparameters_to_cli_args(launcher.hyperparameters(spec))
    command = entry.build_launch_command(sm_env(["algo-1"], "algo-1", 4), entry.parse_hyperparameters(container_argv))
    assert command[command.index("train.py"):] == [
        "train.py", "--recipe", "/opt/ml/input/data/recipe/qwen2.5-0.5b-gsm8k.yaml", "--resume",
        "--output-dir", "/opt/ml/checkpoints", "--deepspeed", "ds_config.json",
        'rollout.stop_strings=["\\n\\n"]', "loss.beta=0", "data.train_file=/opt/ml/input/data/train/train.jsonl",
    ]


MLFLOW_ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/grpo-tracking"


def test_mlflow_tracking_uri_reaches_the_job_with_its_plugin(source_dir, capsys):
    argv = base_argv(source_dir) + ["--mlflow-tracking-uri", MLFLOW_ARN, "--dry-run"]
    assert launcher.main(argv, shell_env={}) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["Environment"]["MLFLOW_TRACKING_URI"] == MLFLOW_ARN
    hps = request["HyperParameters"]
    extra = json.loads(hps["extra_requirements"])
    assert "sagemaker-mlflow==0.5.0" in extra and any(r.startswith("mlflow==") for r in extra)
    assert json.loads(hps["overrides"]) == ["log.report_to=[tensorboard,mlflow]"]
    # in the container: installed before training starts
    command = entry.install_command(entry.parse_hyperparameters(
        ["--recipe", "r.yaml", "--extra_requirements", hps["extra_requirements"]]))
    assert command[-2:] == extra and command[1:4] == ["-m", "pip", "install"]


def test_a_bad_mlflow_uri_is_refused_before_anything_is_uploaded(source_dir, capsys):
    with pytest.raises(SystemExit):
        launcher.main(base_argv(source_dir) + ["--mlflow-tracking-uri", "grpo-tracking", "--dry-run"], shell_env={})
    err = capsys.readouterr().err
    assert "mlflow-tracking-server" in err and "would upload" not in err


def test_sigterm_reaches_training_and_an_early_stop_exports_nothing(tmp_path, capsys):
    import os
    import signal
    import threading

    marker = tmp_path / "got-sigterm"
    child = (f"import signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
             f"time.sleep(60)\n")
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()  # SageMaker stopping the job
    assert entry.run_forwarding_sigterm([sys.executable, "-c", child]) == 0
    assert marker.is_file()
    (tmp_path / "stopped.json").write_text('{"step": 3}')
    entry.after_training(tmp_path, tmp_path / "model")  # no final/ and no error: the checkpoints resume it
    assert "stopped early" in capsys.readouterr().out and not (tmp_path / "model").exists()
