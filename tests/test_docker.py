"""The docker stack, checked statically: there is no Docker engine where the tests run."""

from __future__ import annotations

import re
import tomllib

import orjson
import yaml

from intent.cli import build_parser
from intent.observability import REGISTRY
from intent.settings import REPO_DIR, Settings

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
    assert "COPY training" not in dockerfile, "the runtime wheel holds no training code"


def test_the_runtime_image_really_builds_the_aiokafka_c_extension() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "--no-binary aiokafka" in dockerfile and "build-essential" in dockerfile
    assert "aiokafka.record._crecords" in dockerfile  # the build fails without the compiled codecs


def test_the_training_image_installs_the_train_extra_that_pyproject_declares() -> None:
    dockerfile = (DOCKER / "training.Dockerfile").read_text()
    assert installed_extras(dockerfile) == [{"train"}]
    # The wheel ships `intent` only: `python -m training` finds the copied folder in the working directory.
    assert "COPY training ./training" in dockerfile and "WORKDIR /app" in dockerfile
    assert "train" in PYPROJECT["project"]["optional-dependencies"]
    assert any(dep.startswith("torch==") for dep in PYPROJECT["project"]["optional-dependencies"]["train"])


def test_every_base_image_is_pinned() -> None:
    for name in ("Dockerfile", "training.Dockerfile"):
        text = (DOCKER / name).read_text()
        defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
        for image in re.findall(r"^FROM (\S+)", text, re.M):
            image = defaults.get(image.strip("${}"), image)
            assert pinned(image), f"{name}: {image} is not pinned"


COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SETTINGS = {f"INTENT_{name.upper()}" for name in Settings.model_fields}


def intent_services() -> dict[str, dict]:
    return {
        name: service
        for name, service in COMPOSE["services"].items()
        if service.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    }


def test_compose_parses_and_runs_kafka_in_kraft_mode_with_the_topics_the_workers_need() -> None:
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    script = COMPOSE["services"]["topics"]["command"][0]
    defaults = Settings()
    for topic in (
        defaults.events_topic,
        defaults.changes_topic,
        defaults.dead_letter_topic,
        defaults.webhook_dead_letter_topic,
        defaults.webhook_attempts_topic,
        defaults.subscriptions_topic,
        defaults.identities_topic,
        defaults.erasures_topic,
        defaults.console_sessions_topic,
    ):
        assert f"--topic {topic} " in script
    compacted_topics = (
        defaults.subscriptions_topic,
        defaults.identities_topic,
        defaults.erasures_topic,
        defaults.console_sessions_topic,
    )
    for compacted in compacted_topics:
        assert f"--topic {compacted} --partitions 1 --config cleanup.policy=compact" in script
    assert COMPOSE["services"]["worker"]["deploy"]["replicas"] == 2


def test_every_service_command_is_a_command_of_the_cli() -> None:
    parser = build_parser()
    services = intent_services()
    assert {"worker", "collector", "receiver", "loadgen"} <= set(services)
    for name, service in services.items():
        arguments = parser.parse_args(service["command"])  # exits (fails the test) on an unknown option
        assert arguments.handler.__name__ == f"command_{service['command'][0]}", name


def test_every_environment_variable_in_compose_is_a_real_setting() -> None:
    for name, service in intent_services().items():
        for variable in service["environment"]:
            assert variable in SETTINGS, f"{name}: {variable} is not a setting"


def test_every_image_in_compose_is_pinned() -> None:
    for name, service in COMPOSE["services"].items():
        assert pinned(service["image"]), f"{name}: {service['image']}"


def test_prometheus_and_grafana_ask_for_metrics_the_code_exports() -> None:
    exported = {metric.name for metric in REGISTRY.collect()} | {
        f"{metric.name}_total" for metric in REGISTRY.collect()
    }
    exported |= {f"{metric.name}_bucket" for metric in REGISTRY.collect()}
    dashboard = orjson.loads((DOCKER / "grafana" / "dashboards" / "intent.json").read_bytes())
    for panel in dashboard["panels"]:
        for name in re.findall(r"\b(intent_[a-z_]+)", panel["targets"][0]["expr"]):
            assert name in exported, f"{panel['title']}: {name}"
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"intent-worker", "intent-collector"}
