"""The docker stack, checked statically: there is no Docker engine where the tests run."""

from __future__ import annotations

import re
import tomllib

from intent.settings import REPO_DIR

DOCKER = REPO_DIR / "docker"
PYPROJECT = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())


def stages(dockerfile: str) -> list[str]:
    return re.split(r"^FROM ", dockerfile, flags=re.M)[1:]


def pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and tag not in ("", "latest") and any(ch.isdigit() for ch in tag)


def installed_extras(dockerfile: str) -> list[set[str]]:
    """The extras of every `pip install ... .[extras]` of the project itself."""
    found = []
    for line in re.findall(r"pip install[^\n]*", dockerfile):
        for target in re.findall(r"""['"]?\.(?:\[([\w,]*)\])?['"]?(?=\s|$)""", line):
            found.append({extra for extra in target.split(",") if extra})
    return found


def test_the_runtime_image_is_multi_stage_slim_non_root_and_without_torch() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert len(stages(dockerfile)) >= 2
    runtime = stages(dockerfile)[-1]
    assert re.search(r"^USER (?!root\b)\w+", runtime, re.M)
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert not any("torch" in line for line in re.findall(r"pip install[^\n]*", dockerfile))
    assert installed_extras(dockerfile) == [set()], "the runtime installs the package without extras"
    assert "COPY models" in runtime


def test_the_runtime_image_really_builds_the_aiokafka_c_extension() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "--no-binary aiokafka" in dockerfile and "build-essential" in dockerfile
    assert "aiokafka.record._crecords" in dockerfile  # the build fails without the compiled codecs


def test_the_training_image_installs_the_train_extra_that_pyproject_declares() -> None:
    dockerfile = (DOCKER / "training.Dockerfile").read_text()
    assert installed_extras(dockerfile) == [{"train"}]
    assert "train" in PYPROJECT["project"]["optional-dependencies"]
    assert any(dep.startswith("torch==") for dep in PYPROJECT["project"]["optional-dependencies"]["train"])


def test_every_base_image_is_pinned() -> None:
    for name in ("Dockerfile", "training.Dockerfile"):
        text = (DOCKER / name).read_text()
        defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
        for image in re.findall(r"^FROM (\S+)", text, re.M):
            image = defaults.get(image.strip("${}"), image)
            assert pinned(image), f"{name}: {image} is not pinned"
