"""The deployment files under cluster/ agree with the code and with each other.

Nothing here starts Ray or a cluster: the files are parsed and cross-checked.
Where Ray ships a validator (the cluster launcher's JSON schema, RuntimeEnv,
the working-dir packager) the test uses Ray's own code, so a file that passes
here is one Ray accepts. The checks that matter at 3 a.m.: the entrypoint and
config a manifest names exist and validate, every manifest runs the same image
with the same pins, GPU groups really ask for GPUs, and the schedule is valid.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from recbatch.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"

# The image's user is `ray` (uid 1000) with this home (cluster/Dockerfile).
IMAGE_HOME = "/home/ray"
# GPUs per instance for the instance types the manifests use (AWS catalog).
GPUS_PER_INSTANCE = {"g5.12xlarge": 4, "g5.48xlarge": 8, "p4d.24xlarge": 8, "p5.48xlarge": 8}


# --------------------------------------------------------------------------- readers


def _yaml_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path) -> dict:
    (doc,) = _yaml_documents(path)
    return doc


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    """'ray[default,data]==2.6' -> 'ray' (normalised as pip does)."""
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _exact_pins(requirements: list[str]) -> dict[str, str]:
    """{name: version} for the requirements pinned with ==."""
    pins = {}
    for req in requirements:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^;\s]+)", req.strip())
        if m:
            pins[_name(m.group(1))] = m.group(3)
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [r for r in extra if not r.startswith("recbatch[")]
    return _exact_pins(reqs)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments, also those between the lines of a continued RUN
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def _dockerfile_args() -> dict[str, str]:
    args = {}
    for instruction, rest in _dockerfile_instructions():
        if instruction == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key.strip()] = value.strip().strip('"')
    return args


def _dockerfile_image() -> str:
    """The image reference the Dockerfile declares it is built as (LABEL io.recbatch.image)."""
    for instruction, rest in _dockerfile_instructions():
        if instruction == "LABEL":
            m = re.search(r'io\.recbatch\.image="([^"]+)"', rest)
            if m:
                return m.group(1)
    raise AssertionError("cluster/Dockerfile has no LABEL io.recbatch.image=...")


def _image_path_to_repo(image_path: str) -> Path:
    """Map a path inside the image (/app/...) back to the repo, via the Dockerfile's COPYs."""
    for instruction, rest in _dockerfile_instructions():
        if instruction != "COPY":
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        *sources, dest = parts
        for source in sources:
            if image_path == dest or image_path.startswith(dest.rstrip("/") + "/"):
                return REPO / source / image_path[len(dest) :].lstrip("/")
    raise AssertionError(f"{image_path} is not copied into the image by cluster/Dockerfile")


def _rayjob() -> dict:
    return _one(KUBERAY / "rayjob.yaml")


def _pod_containers(rayjob: dict) -> list[dict]:
    spec = rayjob["spec"]["rayClusterSpec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for t in templates for c in t["spec"]["containers"]]


def _production() -> Config:
    return load_config(CLUSTER / "configs" / "production.yaml")


# --------------------------------------------------------------------------- cron


_CRON_FIELDS = [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)]
_CRON_NAMES = {
    "month": {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    "day of week": {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
}


def cron_errors(expression: str) -> list[str]:
    """Problems with a 5-field cron expression as Kubernetes CronJob reads it; [] when valid."""
    fields = expression.split()
    if len(fields) != 5:
        return [f"{expression!r} has {len(fields)} fields, a cron expression has 5"]
    errors = []
    for text, (name, lo, hi) in zip(fields, _CRON_FIELDS):
        names = _CRON_NAMES.get(name, {})
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                errors.append(f"{name}: bad step in {part!r}")
            if base == "*" or (base == "?" and name in ("day of month", "day of week")):
                continue
            bounds = base.split("-")
            if len(bounds) > 2 or not all(bounds):
                errors.append(f"{name}: bad range {part!r}")
                continue
            values = [names.get(b.lower(), int(b) if b.isdigit() else None) for b in bounds]
            if any(v is None or not lo <= v <= hi for v in values):
                errors.append(f"{name}: {part!r} is outside {lo}-{hi}")
            elif len(values) == 2 and values[0] > values[1]:
                errors.append(f"{name}: range {part!r} runs backwards")
    return errors


@pytest.mark.parametrize(
    "expression, valid",
    [
        ("0 2 * * *", True),
        ("*/15 0-6 1,15 jan-mar mon-fri", True),
        ("30 23 * * 7", True),
        ("0 24 * * *", False),  # hour out of range
        ("0 2 * *", False),  # four fields
        ("60 2 * * *", False),
        ("0 2 * * */0", False),
        ("0 5-2 * * *", False),
        ("0 2 * foo *", False),
    ],
)
def test_cron_validator_tells_valid_from_invalid(expression: str, valid: bool) -> None:
    assert (cron_errors(expression) == []) is valid, cron_errors(expression)


# --------------------------------------------------------------------------- every manifest


def test_every_yaml_under_cluster_parses_to_mappings() -> None:
    paths = sorted(CLUSTER.rglob("*.yaml"))
    assert len(paths) >= 7, paths  # runtime env, 2 configs, launcher, 4 kuberay files
    for path in paths:
        docs = _yaml_documents(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_every_recbatch_config_validates() -> None:
    configs = sorted((CLUSTER / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"demo.yaml", "production.yaml"}
    for path in configs:
        cfg = load_config(path)  # raises ConfigError naming the key
        assert Path(cfg.root).is_absolute(), f"{path}: root must be absolute (a job's cwd is temporary)"


def test_one_image_everywhere() -> None:
    image = _dockerfile_image()
    version = _pyproject()["project"]["version"]
    assert image.rsplit(":", 1)[1] == f"{version}-{_dockerfile_args()['TORCH_CUDA']}"
    launcher = _one(CLUSTER / "ray-cluster.yaml")
    assert launcher["docker"]["image"] == image
    for key in ("head_image", "worker_image"):
        assert launcher["docker"].get(key, image) == image
    for container in _pod_containers(_rayjob()):
        assert container["image"] == image, container["name"]


def _bash_syntax_error(command: str) -> str:
    """bash's complaint about a command line ('' when it parses); nothing is executed."""
    result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    return result.stderr.strip()


def test_every_shell_command_in_the_image_and_launcher_parses() -> None:
    """A broken continuation or quote fails `docker build` / `ray up` on the cluster; catch it here."""
    commands = [rest for ins, rest in _dockerfile_instructions() if ins == "RUN"]
    launcher = _one(CLUSTER / "ray-cluster.yaml")
    for key in ("initialization_commands", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        commands += launcher[key]
    assert len(commands) > 10
    for command in commands:
        assert _bash_syntax_error(command) == "", command
    assert _bash_syntax_error("echo 'unclosed") != ""  # the check itself can fail


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_pins_equal_pyproject() -> None:
    args, pins = _dockerfile_args(), _pyproject_pins()
    assert args["TORCH_VERSION"] == pins["torch"]
    requires = _pyproject()["project"]["requires-python"]
    assert requires == f">={args['PYTHON_VERSION']}", (requires, args["PYTHON_VERSION"])
    # The torch wheel index must be the CUDA of the base image.
    major, minor = args["CUDA_VERSION"].split(".")[:2]
    assert args["TORCH_CUDA"] == f"cu{major}{minor}"
    # Every other pin comes from installing the project itself, under the lock.
    runs = [rest for ins, rest in _dockerfile_instructions() if ins == "RUN"]
    (install,) = [r for r in runs if re.search(r'pip install "/src\[', r)]
    extras = re.search(r'"/src\[([^\]]*)\]"', install).group(1).split(",")
    assert set(extras) <= set(_pyproject()["project"]["optional-dependencies"]), extras
    assert "-c /src/constraints.txt" in install and "pip check" in install


def test_dockerfile_builds_from_cuda_runs_as_non_root_and_copies_what_exists() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for ins, rest in instructions if ins == "FROM"]
    assert froms and all(f.startswith("nvidia/cuda:") for f in froms), froms
    users = [rest for ins, rest in instructions if ins == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    for ins, rest in instructions:
        if ins == "COPY" and "--from=" not in rest:
            *sources, _dest = [p for p in rest.split() if not p.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
    labels = " ".join(rest for ins, rest in instructions if ins == "LABEL")
    assert f'org.opencontainers.image.version="{_pyproject()["project"]["version"]}"' in labels
    env = " ".join(rest for ins, rest in instructions if ins == "ENV")
    assert "HF_HUB_OFFLINE=1" in env


def test_constraints_lock_agrees_with_pyproject() -> None:
    lock = _exact_pins((CLUSTER / "constraints.txt").read_text().splitlines())
    pins = _pyproject_pins()
    missing = sorted(set(pins) - set(lock))
    assert not missing, f"cluster/constraints.txt lacks {missing}: regenerate it (see its header)"
    differ = {n: (pins[n], lock[n]) for n in pins if lock[n] != pins[n]}
    assert not differ, f"pyproject.toml vs cluster/constraints.txt: {differ}: regenerate the lock"


# --------------------------------------------------------------------------- runtime env


def _runtime_env() -> dict:
    return _one(CLUSTER / "runtime_env.yaml")


def test_runtime_env_is_accepted_by_ray_and_installs_nothing() -> None:
    from ray.runtime_env import RuntimeEnv

    env = _runtime_env()
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert not {"pip", "conda", "uv"} & set(env), "the image holds the packages; see the file's comment"
    variables = env["env_vars"]
    assert all(isinstance(v, str) for v in variables.values()), "env var values must be strings"
    assert variables["HF_HUB_OFFLINE"] == "1"
    assert variables["TOKENIZERS_PARALLELISM"] == "false"
    # One persistent JIT cache path in the image's home: submitted jobs (Ray expands
    # ${HOME} on each node), the image's own ENV, and the training workers' config.
    in_image = variables["TORCH_EXTENSIONS_DIR"].replace("${HOME}", IMAGE_HOME)
    dockerfile_env = " ".join(rest for ins, rest in _dockerfile_instructions() if ins == "ENV")
    assert f"TORCH_EXTENSIONS_DIR={in_image}" in dockerfile_env
    assert _production().train.extensions_dir.replace("~", IMAGE_HOME, 1) == in_image


def test_working_dir_upload_keeps_code_and_drops_venv_git_and_runs(tmp_path: Path) -> None:
    """Package the checkout exactly as `ray job submit --working-dir .` would, with our excludes only."""
    from zipfile import ZipFile

    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, create_package

    package = tmp_path / "working_dir.zip"
    create_package(str(REPO), package, include_gitignore=False, excludes=_runtime_env()["excludes"])
    names = set(ZipFile(package).namelist())
    assert "jobs/nightly.py" in names and "recbatch/config.py" in names
    assert "cluster/configs/production.yaml" in names
    for dropped in (".git/", ".venv/", "runs/"):
        assert not any(n.startswith(dropped) for n in names), f"{dropped} would be uploaded"
    assert not any("__pycache__" in n for n in names)
    assert package.stat().st_size < GCS_STORAGE_MAX_SIZE


# --------------------------------------------------------------------------- Ray cluster launcher


def test_cluster_launcher_yaml_passes_rays_schema_and_fits_the_production_config() -> None:
    from ray.autoscaler._private.util import validate_config

    launcher = _one(CLUSTER / "ray-cluster.yaml")
    validate_config(launcher)  # Ray's JSON schema plus its cross-field checks
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "keep tasks off the head: it runs the driver"
    gpu_types = {n: t for n, t in types.items() if t["node_config"]["InstanceType"] in GPUS_PER_INSTANCE}
    assert gpu_types, "no GPU worker type"
    max_gpus = sum(t["max_workers"] * GPUS_PER_INSTANCE[t["node_config"]["InstanceType"]] for t in gpu_types.values())
    cfg = _production()
    assert max_gpus >= cfg.train.num_workers
    assert max_gpus >= cfg.score.num_actors * cfg.score.gpus_per_actor
    # The run root is the shared filesystem mounted into every container.
    assert any(opt.endswith(f":{cfg.root}") for opt in launcher["docker"]["run_options"])
    # Setup installs this checkout's code, pinned to the image's version, without dependencies.
    setup = " ".join(launcher["setup_commands"])
    assert "--no-deps" in setup and "--no-index" in setup
    assert f"'{_pyproject()['project']['version']}'" in setup
    for remote, local in launcher["file_mounts"].items():
        assert (REPO / local).exists(), f"file_mounts {remote}: {local} does not exist"


# --------------------------------------------------------------------------- KubeRay


def test_rayjob_has_the_fields_a_nightly_run_needs() -> None:
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] >= 0
    assert spec["rayClusterSpec"]["rayVersion"] == _pyproject_pins()["ray"]
    assert "schedule" not in spec, "current KubeRay's RayJob has no schedule field (see cronjob.yaml)"


def test_rayjob_entrypoint_runs_a_script_and_config_that_exist() -> None:
    from recbatch.cli import build_parser

    argv = shlex.split(_rayjob()["spec"]["entrypoint"])
    assert argv[0] == "python"
    script = _image_path_to_repo(argv[1])
    assert script.exists() and script.parent.name == "jobs", script
    args = build_parser().parse_args(["nightly", *argv[2:]])  # the flags jobs/nightly.py accepts
    config = _image_path_to_repo(args.config)
    cfg = load_config(config)
    assert cfg.train.use_gpu == "true" and cfg.train.precision in ("fp16", "bf16")


def test_rayjob_rerun_recipe_sets_the_run_date() -> None:
    """The sed line in rayjob.yaml's header, applied the same way, yields a valid --run-date."""
    from recbatch.cli import build_parser

    text = (KUBERAY / "rayjob.yaml").read_text()
    m = re.search(r"sed 's\|(.+?)\|(.+?)\|'", text)
    assert m, "rayjob.yaml documents no rerun recipe"
    rerun = yaml.safe_load(text.replace(m.group(1), m.group(2)))
    argv = shlex.split(rerun["spec"]["entrypoint"])
    args = build_parser().parse_args(["nightly", *argv[2:]])
    assert args.run_date is not None


def test_rayjob_runtime_env_matches_the_submission_runtime_env() -> None:
    from ray.runtime_env import RuntimeEnv

    inline = yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**inline)
    assert inline["env_vars"] == _runtime_env()["env_vars"]
    assert not {"pip", "conda", "uv", "working_dir"} & set(inline)


def test_rayjob_gpu_group_asks_for_the_gpus_the_config_uses() -> None:
    job, cfg = _rayjob(), _production()
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    total = 0
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        if gpus:
            assert container["resources"].get("requests", limits).get("nvidia.com/gpu") == limits["nvidia.com/gpu"]
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), "GPU nodes are usually tainted"
            total += gpus * group["replicas"]
    assert total == cfg.train.num_workers, "one Ray Train worker per GPU"
    assert cfg.embed.num_actors * cfg.embed.gpus_per_actor <= total
    assert cfg.score.num_actors * cfg.score.gpus_per_actor <= total


def test_rayjob_pods_mount_the_run_root_and_carry_the_serving_secret() -> None:
    cfg = _production()
    for container in _pod_containers(_rayjob()):
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert any(cfg.root == p or cfg.root.startswith(p.rstrip("/") + "/") for p in mounts), container["name"]
        assert cfg.ingest.source.startswith(cfg.root), "the input must be on the shared volume too"
        env = {e["name"]: e for e in container.get("env", [])}
        assert cfg.serving.redis_url_env in env, f"{container['name']} lacks {cfg.serving.redis_url_env}"
        assert "secretKeyRef" in env[cfg.serving.redis_url_env]["valueFrom"], "the URL is a secret"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for t in [_rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]]
        for v in t["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    pvcs = {d["metadata"]["name"] for d in _yaml_documents(KUBERAY / "storage.yaml") if d["kind"] == "PersistentVolumeClaim"}
    assert claims <= pvcs and claims
    assert all("ReadWriteMany" in d["spec"]["accessModes"] for d in _yaml_documents(KUBERAY / "storage.yaml"))


def _cronjob_documents() -> dict[str, dict]:
    return {d["kind"]: d for d in _yaml_documents(KUBERAY / "cronjob.yaml")}


def test_schedule_is_a_valid_nightly_cron_that_cannot_overlap_or_cross_midnight() -> None:
    cron = _cronjob_documents()["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    schedule = cron["spec"]["schedule"]
    assert cron_errors(schedule) == [], cron_errors(schedule)
    assert cron["spec"]["timeZone"] == "Etc/UTC", "run dates are UTC dates"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    minute, hour, *_ = schedule.split()
    assert minute.isdigit() and hour.isdigit(), "one run a day at a fixed time"
    deadline_h = _rayjob()["spec"]["activeDeadlineSeconds"] / 3600
    assert int(hour) + int(minute) / 60 + deadline_h < 24, "a run must end before midnight UTC"


def test_cronjob_creates_the_rayjob_from_the_generated_configmap_with_just_enough_rights() -> None:
    docs = _cronjob_documents()
    pod = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    configmaps = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    kustomization = _one(KUBERAY / "kustomization.yaml")
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    (volume, configmap) = next(iter(configmaps.items()))
    assert configmap in generated and "rayjob.yaml" in generated[configmap]
    assert container["command"][:2] == ["kubectl", "create"], "generateName needs create, not apply"
    assert f"{mounts[volume]}/rayjob.yaml" in container["command"]
    for resource in kustomization["resources"] + [f for files in generated.values() for f in files]:
        assert (KUBERAY / resource).exists(), resource
    assert "rayjob.yaml" not in kustomization["resources"], "applying it would start a run now"
    # RBAC: the pod's service account may create RayJobs, and nothing more.
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    binding, role = docs["RoleBinding"], docs["Role"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": pod["serviceAccountName"]} in binding["subjects"]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}]


def test_the_benchmark_training_recipe_validates() -> None:
    """bench/README.md's ml-latest-small two-tower row is trained from this file."""
    cfg = load_config(CLUSTER.parent / "bench" / "quality-two-tower.yaml")
    assert cfg.model.freeze_encoder and cfg.model.id_dropout > 0 and cfg.model.history_dropout > 0


def test_the_fine_tuning_preset_is_the_benchmark_recipe_with_the_encoder_trained() -> None:
    """bench/gpu_check.sh compares this preset with the recipe's figure: only the encoder may differ
    (and example age, which the recipe's leave-last-5 row was trained without)."""
    recipe = load_config(CLUSTER.parent / "bench" / "quality-two-tower.yaml", {"model.example_age_days": []})
    preset = load_config(CLUSTER / "presets" / "gpu-minilm-finetune-ml.yaml")
    assert not preset.model.freeze_encoder
    assert dataclasses.replace(preset.model, freeze_encoder=True) == recipe.model
    for key in ("batch_size", "epochs", "learning_rate", "validate_users"):
        assert getattr(preset.train, key) == getattr(recipe.train, key), key
    assert preset.train.num_workers == 1 and preset.train.use_gpu == "true"


def test_the_gpu_check_without_a_visible_gpu_says_so_and_exits_0() -> None:
    """bench/gpu_check.sh is run on whatever machine a task is lent; without a GPU it must not fail."""
    script = REPO / "bench" / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU from torch
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no CUDA GPU visible" in done.stdout, done.stdout + done.stderr
    wrong = subprocess.run(["bash", str(script)], env={**env, "PART": "everything"}, capture_output=True, text=True,
                           timeout=120)
    assert wrong.returncode == 2 and "PART must be steps, quality or all" in wrong.stderr, wrong.stderr
