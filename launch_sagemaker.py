"""Run train.py as a SageMaker training job (SageMaker Python SDK v3, ModelTrainer).

    python launch_sagemaker.py --recipe recipes/qwen2.5-0.5b-gsm8k.yaml \\
        --role arn:aws:iam::123456789012:role/SageMakerTraining --bucket my-bucket --region us-east-1 \\
        --train train.jsonl --validation s3://my-bucket/data/val.jsonl \\
        --instance-type ml.g5.2xlarge --spot --env HF_TOKEN --wait  train.learning_rate=1e-5

What gets sent: this folder (minus caches, virtualenvs and run outputs) with
requirements-sagemaker.txt installed on top of the SageMaker PyTorch image, the recipe as the
'recipe' channel, the JSONL files as the 'train'/'validation' channels (local files are uploaded
to S3 first), and hyperparameters naming them. In the container, scripts/sagemaker_entry.py
starts train.py on every instance with torchrun or deepspeed. Checkpoints are written to
/opt/ml/checkpoints and mirrored to S3, so a spot interruption resumes from the last one; pass
--checkpoint-s3-uri of an earlier job to continue it in a new job.

--dry-run prints the CreateTrainingJob request as JSON and needs no AWS credentials.
--wait streams the job's status and logs until it ends; --follow JOB_NAME attaches to a job.
The SDK sends usage telemetry unless opted out (SageMaker.PythonSDK.Modules.TelemetryOptOut
in its config file, see README).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent
ENTRY_SCRIPT = "scripts/sagemaker_entry.py"
REQUIREMENTS_FILE = "requirements-sagemaker.txt"
TRAIN_SCRIPT = "train.py"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"  # scripts/sagemaker_entry.py trains into this folder
LAUNCHERS = ("torchrun", "deepspeed")
DEFAULT_PYTORCH_VERSION = "2.9.0"  # SageMaker PyTorch training image (torch + CUDA come from it)
MAX_RUNTIME_LIMIT = 28 * 24 * 3600  # SageMaker's ceiling for MaxRuntimeInSeconds
JOB_NAME_SUFFIX = 15  # ModelTrainer appends "-YYYYmmddHHMMSS" to the base job name
JOB_NAME_LIMIT = 63
# Names never uploaded with the code (shutil.ignore_patterns, matched at every depth).
UPLOAD_IGNORE = (
    ".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".cache", ".ipynb_checkpoints",
    ".DS_Store", ".env", "*.egg-info", "build", "runs", "outputs", ".whl",
)
# The container command ModelTrainer sets whenever SourceCode is given (sagemaker.train.constants);
# repeated here so --dry-run works without the SDK, and checked against it by the emulator test.
SDK_CONTAINER_ENTRYPOINT = ["/bin/bash"]
SDK_CONTAINER_ARGUMENTS = [
    "-c",
    "chmod +x /opt/ml/input/data/sm_drivers/sm_train.sh && /opt/ml/input/data/sm_drivers/sm_train.sh",
]
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL")
# GPUs per instance of the usual SageMaker training instance types; CPU families run one process.
INSTANCE_GPUS = {
    **{f"ml.g5.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "ml.g5.12xlarge": 4, "ml.g5.24xlarge": 4, "ml.g5.48xlarge": 8,
    **{f"ml.g6.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "ml.g6.12xlarge": 4, "ml.g6.24xlarge": 4, "ml.g6.48xlarge": 8,
    **{f"ml.g6e.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "ml.g6e.12xlarge": 4, "ml.g6e.24xlarge": 4, "ml.g6e.48xlarge": 8,
    **{f"ml.g4dn.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "ml.g4dn.12xlarge": 4,
    "ml.p3.2xlarge": 1, "ml.p3.8xlarge": 4, "ml.p3.16xlarge": 8, "ml.p3dn.24xlarge": 8,
    "ml.p4d.24xlarge": 8, "ml.p4de.24xlarge": 8, "ml.p5.48xlarge": 8, "ml.p5e.48xlarge": 8, "ml.p5en.48xlarge": 8,
}
CPU_FAMILIES = ("ml.m", "ml.c", "ml.r", "ml.t")

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_][\w.]*=")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LaunchError(ValueError):
    """A launcher option is missing or wrong; the message names it and the fix."""


@dataclass(frozen=True)
class JobSpec:
    """Everything one training job needs, validated; both --dry-run and submission read it."""

    recipe: Path
    region: str
    role: str
    bucket: str
    prefix: str  # S3 key prefix inside the bucket, "" for none
    job_name: str  # base name; ModelTrainer appends a timestamp
    image_uri: str
    instance_type: str
    instance_count: int
    volume_size_gb: int
    source_dir: Path
    train: str | None  # local JSONL path or s3:// URI of one JSONL object
    validation: str | None
    launcher: str
    deepspeed_config: str | None  # relative to source_dir
    overrides: tuple[str, ...]
    max_run: int
    spot: bool
    max_wait: int | None
    checkpoint_s3_uri: str | None  # None = per job, under the job's S3 folder
    environment: tuple[tuple[str, str], ...]
    tags: tuple[tuple[str, str], ...]
    summary: str = ""  # the processes and global batch the recipe trains with
    extra_requirements: tuple[str, ...] = ()  # installed in the container before training


# ---- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch_sagemaker.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="recipe overrides passed to train.py, e.g. train.learning_rate=1e-5")
    parser.add_argument("--recipe", help="YAML recipe to train with (required unless --follow)")

    aws = parser.add_argument_group("AWS")
    aws.add_argument("--region", help="AWS region (default: $AWS_REGION, then $AWS_DEFAULT_REGION)")
    aws.add_argument("--role", help="ARN of the IAM role the job runs as (needs SageMaker and S3 access)")
    aws.add_argument("--bucket", help="S3 bucket name for code, data, checkpoints and the model")
    aws.add_argument("--prefix", default="grpo", help="S3 key prefix inside the bucket (default: grpo)")

    job = parser.add_argument_group("job")
    job.add_argument("--job-name", help="base job name; SageMaker's name gets a -YYYYmmddHHMMSS "
                                        "suffix (default: grpo-<recipe name>)")
    job.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="job tag (repeatable)")
    job.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                     help="container environment variable (repeatable); NAME alone copies it from "
                          "your shell, e.g. --env HF_TOKEN")
    job.add_argument("--source-dir", type=Path, default=REPO_ROOT,
                     help="folder uploaded as the code (default: this repository)")

    compute = parser.add_argument_group("compute")
    compute.add_argument("--instance-type", default="ml.g5.2xlarge",
                         help="SageMaker instance type (default: ml.g5.2xlarge, one 24 GB A10G)")
    compute.add_argument("--instance-count", type=int, default=1,
                         help="instances; more than 1 trains multi-node (default: 1)")
    compute.add_argument("--gpus-per-instance", type=int,
                         help="GPUs of one instance, for an instance type the launcher's table does not know "
                              "(it sets the number of training processes the recipe is checked against)")
    compute.add_argument("--volume-size", type=int, default=100, help="EBS volume per instance in GB (default: 100)")
    compute.add_argument("--image-uri", help="training image (default: the SageMaker PyTorch training image "
                                             "for --pytorch-version, the region and the instance type)")
    compute.add_argument("--pytorch-version", default=DEFAULT_PYTORCH_VERSION,
                         help=f"version of the default image (default: {DEFAULT_PYTORCH_VERSION})")
    compute.add_argument("--launcher", choices=LAUNCHERS, default="torchrun",
                         help="process launcher in the container (default: torchrun)")
    compute.add_argument("--deepspeed-config", help="DeepSpeed JSON config inside --source-dir, "
                                                    "passed to train.py as --deepspeed (e.g. ds_config.json)")

    data = parser.add_argument_group("data")
    data.add_argument("--train", help="training JSONL: local file (uploaded) or s3:// URI of one object; "
                                      "becomes data.train_file")
    data.add_argument("--validation", help="validation JSONL, like --train; becomes data.validation_file")

    time = parser.add_argument_group("time, spot and checkpoints")
    time.add_argument("--max-run", type=int, default=24 * 3600,
                      help="max training seconds before SageMaker stops the job (default: 86400)")
    time.add_argument("--spot", action="store_true", help="use managed spot instances")
    time.add_argument("--max-wait", type=int,
                      help="spot only: max seconds including waiting for capacity, >= --max-run "
                           "(default: 2 x --max-run)")
    time.add_argument("--mlflow-tracking-uri", metavar="URI",
                      help="track the run in MLflow: a SageMaker managed MLflow tracking server ARN (the "
                           "sagemaker-mlflow plugin is installed in the container) or an http(s) URI; sets "
                           "MLFLOW_TRACKING_URI in the job and adds mlflow to log.report_to")
    time.add_argument("--checkpoint-s3-uri",
                      help="S3 folder mirrored with /opt/ml/checkpoints; reuse an earlier job's to "
                           "continue it (default: s3://BUCKET/PREFIX/JOB/<job name>/checkpoints)")

    mode = parser.add_argument_group("mode")
    mode.add_argument("--dry-run", action="store_true",
                      help="print the CreateTrainingJob request as JSON and exit (no AWS access)")
    mode.add_argument("--wait", action="store_true", help="after submitting, stream status and logs until the job ends")
    mode.add_argument("--follow", metavar="JOB_NAME", help="stream status and logs of an existing job, then exit")
    return parser


def _key_value(item: str, option: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise LaunchError(f"{option} {item!r}: expected KEY=VALUE")
    return key, value


def _environment(items: list[str], shell_env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not ENV_NAME.match(name):
            raise LaunchError(f"--env {item!r}: {name!r} is not a valid variable name")
        if not sep:
            if name not in shell_env:
                raise LaunchError(f"--env {name}: {name} is not set in your shell; export it "
                                  f"or pass --env {name}=VALUE")
            value = shell_env[name]
        pairs.append((name, value))
    return tuple(pairs)


def resolve_region(option: str | None, shell_env: Mapping[str, str]) -> str:
    region = option or shell_env.get("AWS_REGION") or shell_env.get("AWS_DEFAULT_REGION")
    if not region:
        raise LaunchError("no AWS region: pass --region (e.g. --region us-east-1) or set AWS_REGION")
    return region


def _data_source(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    if value.startswith("s3://"):
        if value.endswith("/") or value.count("/") < 3:
            raise LaunchError(f"{option} {value!r}: give the S3 URI of one JSONL object, not a folder")
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise LaunchError(f"{option} {value!r}: no such local file; give a JSONL file or an s3:// URI")
    return str(path.resolve())


def _default_job_name(recipe: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "-", recipe.stem).strip("-")
    return f"grpo-{stem}"[: JOB_NAME_LIMIT - JOB_NAME_SUFFIX].rstrip("-")


def default_image_uri(region: str, instance_type: str, pytorch_version: str) -> str:
    """The SageMaker PyTorch training image, looked up offline in the SDK's bundled tables."""
    try:
        from sagemaker.core import image_uris
    except ImportError:
        raise LaunchError("the default image needs the SageMaker SDK: pip install 'sagemaker>=3', "
                          "or pass --image-uri") from None
    try:
        return image_uris.retrieve(framework="pytorch", region=region, version=pytorch_version,
                                   instance_type=instance_type, image_scope="training")
    except ValueError as err:
        raise LaunchError(f"no default image for --pytorch-version {pytorch_version} in {region} "
                          f"on {instance_type} ({err}); pass --image-uri") from None


def _check_source_dir(source_dir: Path, deepspeed_config: str | None) -> None:
    for needed in (TRAIN_SCRIPT, ENTRY_SCRIPT, REQUIREMENTS_FILE):
        if not (source_dir / needed).is_file():
            raise LaunchError(f"--source-dir {source_dir}: {needed} is missing; point --source-dir at "
                              "the repository root")
    if deepspeed_config and not (source_dir / deepspeed_config).is_file():
        raise LaunchError(f"--deepspeed-config {deepspeed_config!r}: no such file inside {source_dir}; "
                          "give a path relative to the source folder, e.g. ds_config.json")


def _check_recipe(recipe: Path) -> None:
    if not recipe.is_file():
        raise LaunchError(f"--recipe {str(recipe)!r}: no such file; see recipes/ for examples")
    try:
        loaded = yaml.safe_load(recipe.read_text())
    except yaml.YAMLError as err:
        raise LaunchError(f"--recipe {str(recipe)!r} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise LaunchError(f"--recipe {str(recipe)!r} must be a YAML mapping of sections")


def _check_overrides(overrides: list[str], train: str | None, validation: str | None) -> None:
    # These keys are set by scripts/sagemaker_entry.py; a second value would silently lose.
    owned = {"log.output_dir": "the job always writes to /opt/ml/checkpoints"}
    if train:
        owned["data.train_file"] = "--train sets it"
    if validation:
        owned["data.validation_file"] = "--validation sets it"
    for item in overrides:
        if not OVERRIDE.match(item):
            raise LaunchError(f"override {item!r}: expected section.key=value, e.g. train.beta=0.0")
        if "'" in item:  # the SDK exports hyperparameters inside single quotes in the container
            raise LaunchError(f"override {item!r}: single quotes cannot pass through SageMaker; "
                              'use double quotes, e.g. rollout.stop_strings=["\\n\\n"]')
        key = item.partition("=")[0]
        if key in owned:
            raise LaunchError(f"override {item!r}: {owned[key]}; drop the override")


def processes_per_instance(instance_type: str, gpus_option: int | None) -> int:
    """Training processes on one instance: one per GPU (scripts/sagemaker_entry.py), one on CPU types."""
    if gpus_option is not None:
        if gpus_option < 0:
            raise LaunchError(f"--gpus-per-instance {gpus_option}: must be >= 0")
        return max(gpus_option, 1)
    if instance_type in INSTANCE_GPUS:
        return INSTANCE_GPUS[instance_type]
    if instance_type.startswith(CPU_FAMILIES):
        return 1
    raise LaunchError(f"--instance-type {instance_type}: the launcher does not know its GPU count; pass "
                      "--gpus-per-instance N")


def check_recipe_for_job(recipe: Path, overrides: list[str], processes: int, launcher: str,
                         deepspeed_config: Path | None, default_ds_config: Path) -> str:
    """Load the recipe and overrides through train.py's own validation, for `processes` training
    processes; raise LaunchError with train.py's message for anything train.py would refuse.
    deepspeed_config: --deepspeed-config; without it ZeRO-3 over several processes uses
    `default_ds_config` (the uploaded ds_config.json). Returns a line describing the job's global batch."""
    from grpo.runtime.config import ConfigError, for_world, load_config
    from grpo.runtime.distributed import check_recipe, load_ds_config

    try:
        cfg = for_world(load_config(recipe, overrides), processes)
        strategy = cfg.train.strategy
        if strategy == "auto":  # decided on the instance from its GPU memory; either choice must pass
            strategy = "zero3" if launcher == "deepspeed" else "ddp"
        if launcher == "deepspeed" and strategy != "zero3":
            raise ConfigError(f"--launcher deepspeed runs ZeRO-3 but train.strategy={strategy}; use --launcher "
                              "torchrun or train.strategy=zero3")
        multi = processes > 1 or deepspeed_config is not None
        if multi:
            check_recipe(cfg, strategy)
        if multi and strategy == "zero3" and deepspeed_config is None and default_ds_config.is_file():
            deepspeed_config = default_ds_config
        if multi and strategy == "zero3":
            resolved = cfg if cfg.model.dtype != "auto" else dataclasses.replace(
                cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16"))  # auto is bfloat16 on the GPUs
            load_ds_config(deepspeed_config, resolved, processes, hidden_size=1)
    except (ConfigError, ValueError) as err:
        raise LaunchError(f"train.py would refuse this job: {err}") from None
    t, g = cfg.train, cfg.rollout.group_size
    prompts = t.batch_size // g * t.grad_accum_steps * processes
    return (f"{processes} training process(es), {strategy if multi else 'single'}: "
            f"{prompts} prompts x {g} = {prompts * g} completions per optimizer step")


MLFLOW_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:mlflow-tracking-server/[\w-]+$")
SAGEMAKER_MLFLOW = "sagemaker-mlflow==0.5.0"  # the plugin that resolves a tracking-server ARN to its URL


def _with_mlflow(uri: str, recipe: Path, overrides: list[str], environment: tuple) -> tuple:
    """The job's overrides, environment and extra requirements for tracking in MLflow at `uri`."""
    if not (MLFLOW_ARN.match(uri) or uri.startswith(("http://", "https://"))):
        raise LaunchError(f"--mlflow-tracking-uri {uri!r}: give a SageMaker MLflow tracking server ARN "
                          "(arn:aws:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME) or an http(s) URI")
    if any(name == "MLFLOW_TRACKING_URI" for name, _ in environment):
        raise LaunchError("--mlflow-tracking-uri and --env MLFLOW_TRACKING_URI both set it; keep one")
    from grpo.runtime.config import ConfigError, load_config

    try:
        report_to = list(load_config(recipe, overrides).log.report_to)
    except ConfigError as err:
        raise LaunchError(f"train.py would refuse this job: {err}") from None
    if "mlflow" not in report_to:
        overrides = [o for o in overrides if not o.startswith("log.report_to=")]
        overrides.append("log.report_to=[" + ",".join([*report_to, "mlflow"]) + "]")
    from importlib.metadata import version

    extra = (f"mlflow=={version('mlflow')}",) + ((SAGEMAKER_MLFLOW,) if uri.startswith("arn:") else ())
    return overrides, (*environment, ("MLFLOW_TRACKING_URI", uri)), extra


def resolve_spec(args: argparse.Namespace, shell_env: Mapping[str, str]) -> JobSpec:
    """Validate the options into a JobSpec; every problem raises LaunchError naming its fix."""
    if not args.recipe:
        raise LaunchError("--recipe is required (e.g. --recipe recipes/qwen2.5-0.5b-gsm8k.yaml)")
    recipe = Path(args.recipe).expanduser()
    _check_recipe(recipe)
    region = resolve_region(args.region, shell_env)
    if not args.role:
        raise LaunchError("--role is required: the ARN of an IAM role SageMaker can assume, e.g. "
                          "arn:aws:iam::123456789012:role/SageMakerTraining")
    if not ROLE_ARN.match(args.role):
        raise LaunchError(f"--role {args.role!r}: give the full role ARN, "
                          "arn:aws:iam::<account>:role/<name>")
    if not args.bucket:
        raise LaunchError("--bucket is required: the S3 bucket for code, data, checkpoints and the model")
    if not BUCKET_NAME.match(args.bucket):
        raise LaunchError(f"--bucket {args.bucket!r}: give a bucket name (lowercase, no s3:// and no path; "
                          "use --prefix for a folder)")
    job_name = args.job_name or _default_job_name(recipe)
    if not JOB_NAME.match(job_name) or len(job_name) > JOB_NAME_LIMIT - JOB_NAME_SUFFIX:
        raise LaunchError(f"--job-name {job_name!r}: use letters, digits and hyphens, at most "
                          f"{JOB_NAME_LIMIT - JOB_NAME_SUFFIX} characters (SageMaker adds a timestamp)")
    if args.instance_count < 1 or args.volume_size < 1:
        raise LaunchError("--instance-count and --volume-size must be at least 1")
    if not 1 <= args.max_run <= MAX_RUNTIME_LIMIT:
        raise LaunchError(f"--max-run {args.max_run}: must be between 1 and {MAX_RUNTIME_LIMIT} seconds")
    if args.max_wait is not None and not args.spot:
        raise LaunchError("--max-wait applies to spot jobs only; add --spot or drop --max-wait")
    max_wait = (args.max_wait or min(2 * args.max_run, MAX_RUNTIME_LIMIT)) if args.spot else None
    if max_wait is not None and max_wait < args.max_run:
        raise LaunchError(f"--max-wait {max_wait} is shorter than --max-run {args.max_run}; SageMaker "
                          "needs max-wait >= max-run")
    if args.launcher == "deepspeed" and not args.deepspeed_config:
        raise LaunchError("--launcher deepspeed needs --deepspeed-config (e.g. ds_config.json)")
    if args.checkpoint_s3_uri and not args.checkpoint_s3_uri.startswith("s3://"):
        raise LaunchError(f"--checkpoint-s3-uri {args.checkpoint_s3_uri!r}: must start with s3://")
    source_dir = args.source_dir.expanduser().resolve()
    _check_source_dir(source_dir, args.deepspeed_config)
    train = _data_source(args.train, "--train")
    validation = _data_source(args.validation, "--validation")
    _check_overrides(args.overrides, train, validation)
    processes = processes_per_instance(args.instance_type, args.gpus_per_instance) * args.instance_count
    overrides, environment, extra = list(args.overrides), _environment(args.env, shell_env), ()
    if args.mlflow_tracking_uri:
        overrides, environment, extra = _with_mlflow(args.mlflow_tracking_uri, recipe, overrides, environment)
    in_container = [f"data.train_file=/opt/ml/input/data/train/{_file_name(train)}"] if train else []
    in_container += [f"data.validation_file=/opt/ml/input/data/validation/{_file_name(validation)}"] if validation else []
    summary = check_recipe_for_job(recipe, [*overrides, *in_container], processes, args.launcher,
                                   source_dir / args.deepspeed_config if args.deepspeed_config else None,
                                   source_dir / "ds_config.json")
    return JobSpec(
        recipe=recipe.resolve(), region=region, role=args.role, bucket=args.bucket,
        prefix=args.prefix.strip("/"), job_name=job_name,
        image_uri=args.image_uri or default_image_uri(region, args.instance_type, args.pytorch_version),
        instance_type=args.instance_type, instance_count=args.instance_count,
        volume_size_gb=args.volume_size, source_dir=source_dir, train=train, validation=validation,
        launcher=args.launcher, deepspeed_config=args.deepspeed_config, overrides=tuple(overrides),
        max_run=args.max_run, spot=args.spot, max_wait=max_wait,
        checkpoint_s3_uri=args.checkpoint_s3_uri.rstrip("/") if args.checkpoint_s3_uri else None,
        environment=environment,
        tags=tuple(_key_value(item, "--tag") for item in args.tag),
        summary=summary,
        extra_requirements=extra,
    )


# ---- the request -------------------------------------------------------------------------


def _file_name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1]


def channel_sources(spec: JobSpec) -> dict[str, str]:
    """Input channel name -> local path or S3 URI (the code channels are added by ModelTrainer)."""
    sources = {"recipe": str(spec.recipe)}
    if spec.train:
        sources["train"] = spec.train
    if spec.validation:
        sources["validation"] = spec.validation
    return sources


def hyperparameters(spec: JobSpec) -> dict[str, str]:
    """What scripts/sagemaker_entry.py reads (SageMaker hyperparameters are strings)."""
    hps = {"recipe": spec.recipe.name, "launcher": spec.launcher}
    if spec.deepspeed_config:
        hps["deepspeed_config"] = spec.deepspeed_config
    if spec.overrides:
        hps["overrides"] = json.dumps(list(spec.overrides))
    if spec.train:
        hps["train_file"] = _file_name(spec.train)
    if spec.validation:
        hps["validation_file"] = _file_name(spec.validation)
    if spec.extra_requirements:
        hps["extra_requirements"] = json.dumps(list(spec.extra_requirements))
    return hps


def _s3(bucket: str, *parts: str) -> str:
    return "s3://" + "/".join([bucket, *(p.strip("/") for p in parts if p.strip("/"))])


def output_s3_uri(spec: JobSpec) -> str:
    return _s3(spec.bucket, spec.prefix, spec.job_name)


def unique_job_name(base: str, now: datetime) -> str:
    """The name ModelTrainer gives the job: base + "-YYYYmmddHHMMSS"."""
    return f"{base}-{now:%Y%m%d%H%M%S}"[:JOB_NAME_LIMIT]


def staged_s3_uri(spec: JobSpec, job_name: str, channel: str, source: str | None = None) -> str:
    """Where ModelTrainer uploads a local input: PREFIX/BASE/JOB/input/CHANNEL[/FILE]."""
    return _s3(spec.bucket, spec.prefix, spec.job_name, job_name, "input", channel,
               Path(source).name if source else "")


def checkpoint_s3_uri(spec: JobSpec, job_name: str) -> str:
    return spec.checkpoint_s3_uri or _s3(spec.bucket, spec.prefix, spec.job_name, job_name, "checkpoints")


def _channel(name: str, s3_uri: str) -> dict:
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": s3_uri,
                                        "S3DataDistributionType": "FullyReplicated"}},
        "InputMode": "File",
    }


def create_training_job_request(spec: JobSpec, job_name: str) -> dict:
    """The CreateTrainingJob request ModelTrainer sends for `spec`, built without AWS access."""
    channels = [
        _channel(name, source if source.startswith("s3://") else staged_s3_uri(spec, job_name, name, source))
        for name, source in channel_sources(spec).items()
    ]
    channels += [_channel(name, staged_s3_uri(spec, job_name, name)) for name in ("code", "sm_drivers")]
    stopping = {"MaxRuntimeInSeconds": spec.max_run}
    if spec.max_wait is not None:
        stopping["MaxWaitTimeInSeconds"] = spec.max_wait
    request = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": spec.image_uri,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": SDK_CONTAINER_ENTRYPOINT,
            "ContainerArguments": SDK_CONTAINER_ARGUMENTS,
        },
        "HyperParameters": hyperparameters(spec),
        "InputDataConfig": channels,
        "ResourceConfig": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count,
                           "VolumeSizeInGB": spec.volume_size_gb},
        "RoleArn": spec.role,
        "StoppingCondition": stopping,
        "OutputDataConfig": {"S3OutputPath": output_s3_uri(spec), "CompressionType": "GZIP"},
        "CheckpointConfig": {"S3Uri": checkpoint_s3_uri(spec, job_name), "LocalPath": CHECKPOINT_LOCAL_PATH},
        "Environment": dict(spec.environment),
        "EnableManagedSpotTraining": spec.spot,
    }
    if spec.tags:
        request["Tags"] = [{"Key": key, "Value": value} for key, value in spec.tags]
    return request


def mask_secrets(environment: Mapping[str, str]) -> dict[str, str]:
    """Environment for printing: values of token/secret/password/key variables hidden."""
    return {k: ("***" if any(w in k.upper() for w in SECRET_WORDS) else v) for k, v in environment.items()}


def upload_plan(spec: JobSpec, job_name: str) -> list[tuple[str, str]]:
    """(local path, S3 URI) pairs that a submission uploads."""
    plan = [(str(spec.source_dir), staged_s3_uri(spec, job_name, "code"))]
    plan += [(source, staged_s3_uri(spec, job_name, name, source))
             for name, source in channel_sources(spec).items() if not source.startswith("s3://")]
    return plan


# ---- AWS ---------------------------------------------------------------------------------


def build_model_trainer(spec: JobSpec):
    """A ModelTrainer that submits `spec`; uploads happen when .train() is called."""
    import boto3
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.training.configs import (
        CheckpointConfig, Compute, InputData, OutputDataConfig, SourceCode, StoppingCondition, Tag,
    )
    from sagemaker.train import ModelTrainer

    session = Session(boto_session=boto3.Session(region_name=spec.region), default_bucket=spec.bucket,
                      default_bucket_prefix=spec.prefix or None)
    return ModelTrainer(
        sagemaker_session=session,
        role=spec.role,
        base_job_name=spec.job_name,
        training_image=spec.image_uri,
        source_code=SourceCode(source_dir=str(spec.source_dir), requirements=REQUIREMENTS_FILE,
                               entry_script=ENTRY_SCRIPT, ignore_patterns=list(UPLOAD_IGNORE)),
        compute=Compute(instance_type=spec.instance_type, instance_count=spec.instance_count,
                        volume_size_in_gb=spec.volume_size_gb, enable_managed_spot_training=spec.spot),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=spec.max_run,
                                             max_wait_time_in_seconds=spec.max_wait),
        output_data_config=OutputDataConfig(s3_output_path=output_s3_uri(spec), compression_type="GZIP"),
        checkpoint_config=CheckpointConfig(s3_uri=spec.checkpoint_s3_uri, local_path=CHECKPOINT_LOCAL_PATH),
        input_data_config=[InputData(channel_name=name, data_source=source)
                           for name, source in channel_sources(spec).items()],
        hyperparameters=hyperparameters(spec),
        environment=dict(spec.environment),
        tags=[Tag(key=key, value=value) for key, value in spec.tags] or None,
    )


def submit(spec: JobSpec, wait: bool):
    """Upload code and data, create the job; with `wait`, stream status and logs until it ends.

    Returns the sagemaker.core.resources.TrainingJob.
    """
    trainer = build_model_trainer(spec)
    trainer.train(wait=wait, logs=wait)
    return trainer._latest_training_job  # the documented handle to the job train() created


def follow(job_name: str, region: str) -> None:
    """Stream an existing job's status and CloudWatch logs until it completes, fails or stops."""
    import boto3
    from sagemaker.core.resources import TrainingJob

    job = TrainingJob.get(training_job_name=job_name, session=boto3.Session(region_name=region), region=region)
    job.wait(logs=True)


def _report(job, spec: JobSpec, waited: bool) -> None:
    name = job.training_job_name
    print(f"training job: {name}")
    print(f"checkpoints:  {checkpoint_s3_uri(spec, name)}")
    if waited:
        print(f"status:       {job.training_job_status}")
        if job.training_job_status == "Completed":
            print(f"model:        {job.model_artifacts.s3_model_artifacts}")
    else:
        print(f"follow it:    python launch_sagemaker.py --follow {name} --region {spec.region}")


def _run_on_aws(args: argparse.Namespace, spec: JobSpec | None, region: str) -> int:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    from sagemaker.core.utils.exceptions import FailedStatusError

    try:
        if args.follow:
            follow(args.follow, region)
            return 0
        job = submit(spec, wait=args.wait)
    except NoCredentialsError:
        print("error: no AWS credentials found; run 'aws configure' or 'aws sso login', or set "
              "AWS_PROFILE (--dry-run needs none)", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError, FailedStatusError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _report(job, spec, waited=args.wait)
    return 0


def main(argv: list[str] | None = None, shell_env: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may sit between options
    shell_env = os.environ if shell_env is None else shell_env
    if args.follow and args.dry_run:
        parser.error("--follow attaches to a running job; it cannot be combined with --dry-run")
    try:
        region = resolve_region(args.region, shell_env)
        spec = None if args.follow else resolve_spec(args, shell_env)
    except LaunchError as err:
        parser.error(str(err))
    if args.dry_run:
        job_name = unique_job_name(spec.job_name, datetime.now())
        request = create_training_job_request(spec, job_name)
        request["Environment"] = mask_secrets(request["Environment"])
        print(f"job: {spec.summary}", file=sys.stderr)
        for local, s3_uri in upload_plan(spec, job_name):
            print(f"would upload {local} -> {s3_uri}", file=sys.stderr)
        print(json.dumps(request, indent=2))
        return 0
    if importlib.util.find_spec("sagemaker") is None or importlib.util.find_spec("sagemaker.train") is None:
        parser.error("submitting needs the SageMaker SDK: pip install -e '.[sagemaker]' "
                     "(or pip install 'sagemaker>=3'); --dry-run works without it")
    return _run_on_aws(args, spec, region)


if __name__ == "__main__":
    sys.exit(main())
