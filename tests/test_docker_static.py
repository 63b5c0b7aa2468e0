"""docker/ checked statically (fast, no Docker engine needed). The image itself is built and run end to end by
scripts/container_check.sh, which needs an engine."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def _stages(text: str) -> list[str]:
    """The Dockerfile's stages, each from its FROM line to the next (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", text)
    return ["FROM" + part for part in re.split(r"^FROM", text, flags=re.M)[1:]]


def _ignore_lines(name: str) -> list[str]:
    return [ln.strip() for ln in (ROOT / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_compose_services_and_environment():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"label-studio", "redis", "backend", "worker"}
    ls_env = services["label-studio"]["environment"]
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false" and ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    assert ls_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == services["backend"]["environment"]["DGAN_LS_DOCUMENT_ROOT"]
    for name in ("backend", "worker"):
        env = services[name]["environment"]
        assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080" and env["REDIS_URL"].startswith("redis://redis:")
        assert "data:/data" in services[name]["volumes"]
    assert services["worker"]["command"] == ["dgan", "worker"]
    # the image's health check asks the backend's port; the worker serves none
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["backend"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    from ls_backend.config import ENV_DOC

    used = set(services["backend"]["environment"]) - {"DGAN_LS_DOCUMENT_ROOT"}
    assert used <= set(ENV_DOC), used - set(ENV_DOC)


def test_gpu_override_puts_backend_and_worker_on_cuda():
    yaml = pytest.importorskip("yaml")
    base = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())["services"]
    gpu = yaml.safe_load((ROOT / "docker" / "compose.gpu.yml").read_text())["services"]
    assert set(gpu) == {"backend", "worker"} <= set(base)
    assert gpu["backend"]["build"]["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    assert "TORCH_INDEX" in DOCKERFILE and "context" not in gpu["backend"]["build"]    # the base file's context
    from ls_backend.config import ENV_DOC

    for name in ("backend", "worker"):
        assert gpu[name]["environment"] == {"DGAN_DEVICE": "cuda"} and "DGAN_DEVICE" in ENV_DOC
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_dockerfile_copies_what_exists_and_pins_torch():
    for src in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE, flags=re.M):
        assert (ROOT / src).exists(), src
    for src in re.findall(r"--mount=type=bind,source=([^,\s]+)", DOCKERFILE):
        assert (ROOT / src).is_dir(), src             # a bind mount of a missing folder fails the build
    assert '"torch==2.13.0"' in DOCKERFILE and "TORCH_INDEX" in DOCKERFILE
    assert 'pip install ".[serve]"' in DOCKERFILE
    assert 'CMD ["dgan", "serve"' in DOCKERFILE


def test_dockerfile_base_is_a_build_arg_with_the_registry_default():
    assert re.search(r"^ARG BASE=python:3\.11-slim$", DOCKERFILE, flags=re.M)
    assert [s.splitlines()[0] for s in _stages(DOCKERFILE)] == ["FROM ${BASE} AS build", "FROM ${BASE}"]


def test_runtime_stage_is_lean_and_not_root():
    build, runtime = _stages(DOCKERFILE)
    # the runtime stage takes the built environment only: no sources, compiler, package manager runs or pip
    assert re.findall(r"^COPY .*", runtime, flags=re.M) == ["COPY --from=build /opt/venv /opt/venv"]
    assert not re.search(r"apt-get|pip install|gcc", runtime)
    users = re.findall(r"^USER (\S+)", runtime, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert "useradd" in runtime and f"chown -R {users[-1]} /data" in runtime
    assert "MODEL_DIR=/data/models" in runtime
    # pip never keeps its cache in a layer
    assert "PIP_NO_CACHE_DIR=1" in build


def test_ca_bundle_is_a_build_secret_never_a_layer():
    # every RUN that installs packages may use the CA secret; nothing copies a certificate into the image
    for run in re.findall(r"^RUN .*pip install.*$", re.sub(r"\\\n", " ", DOCKERFILE), flags=re.M):
        assert "--mount=type=secret,id=ca" in run and '[ -s /run/secrets/ca ]' in run, run
    assert not re.search(r"\.(crt|pem)\b", " ".join(re.findall(r"^(?:COPY|ADD) .*", DOCKERFILE, flags=re.M)))
    assert "PIP_CERT" not in "".join(re.findall(r"^ENV .*", DOCKERFILE, flags=re.M))


def test_build_context_takes_the_wheels_folder_but_not_secrets_or_environments():
    dockerignore = _ignore_lines(".dockerignore")
    assert {".git", ".venv/", ".venv-ls/", "**/*.crt", "**/*.pem", "docker/.env"} <= set(dockerignore)
    assert not any(p.startswith("docker") and "wheels" in p for p in dockerignore)
    assert not {"model", "model/", "ls_backend", "ls_backend/", "docker", "docker/"} & set(dockerignore)
    gitignore = _ignore_lines(".gitignore")
    assert {"docker/wheels/*.whl", "docker/*.crt", "docker/.env"} <= set(gitignore)
    assert (ROOT / "docker" / "wheels" / "README.md").is_file()      # the folder the build mounts exists in git
