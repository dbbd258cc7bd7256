"""The deployment files checked against the code they deploy, so that they cannot rot silently.

There is no Docker engine or Kubernetes cluster here. Instead, every manifest is parsed and held
against the real thing: environment variable names and values against `serving.settings.Settings`,
probe and health-check paths against the routes of the app `create_app` builds, every
`python -m pipeline ...` command against the CLI's own argparse parser, ports against each other,
make targets against the Makefile, config paths against `configs/`.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, ClassVar
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import ValidationError
from starlette.routing import Match

from pipeline.cli import _parser
from pipeline.config import load_config
from pipeline.errors import ConfigError, DataValidationError
from serving.app import create_app
from serving.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE = REPO_ROOT / "docker-compose.yml"
K8S = REPO_ROOT / "deploy" / "k8s"
SCRIPT = REPO_ROOT / "deploy" / "monitor-retrain.sh"
WORKFLOWS = REPO_ROOT / ".github" / "workflows"
MAKEFILE = REPO_ROOT / "Makefile"
CI_RUN = REPO_ROOT / ".ci" / "run"

IMAGE = "mlops-pipeline"
"""The image every container of ours runs (compose tags it mlops-pipeline:local)."""
LIVENESS = "/health/live"
READINESS = "/health/ready"
WORKER_MEMORY_BYTES = 230 * 1000**2
"""Private memory of one serving worker, measured (README, "Workers and memory")."""

PREFIX: str = Settings.model_config.get("env_prefix") or ""
SETTINGS_ENV = {PREFIX + name.upper(): name for name in Settings.model_fields}


# --- reading the files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: int


@functools.cache
def _dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined; `stage` counts FROM lines from 0."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue  # comments may sit between continuation lines too
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    instructions: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, value = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), value.strip(), stage))
    return instructions


def _runtime(keyword: str) -> list[str]:
    """Values of `keyword` in the final (runtime) stage."""
    instructions = _dockerfile()
    last = max(i.stage for i in instructions)
    return [i.value for i in instructions if i.keyword == keyword and i.stage == last]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in _runtime("ENV"):
        for token in shlex.split(value):
            name, sep, setting = token.partition("=")
            assert sep, f"ENV {value!r}: use the NAME=value form"
            env[name] = setting
    return env


def _image_workdir() -> PurePosixPath:
    return PurePosixPath(_runtime("WORKDIR")[-1])


def _image_uid() -> int:
    return int(_runtime("USER")[-1].split(":")[0])


def _image_cmd() -> list[str]:
    return list(json.loads(_runtime("CMD")[-1]))


def _healthcheck_cmd() -> list[str]:
    (value,) = _runtime("HEALTHCHECK")
    _options, _, command = value.partition("CMD ")
    return list(json.loads(command))


def _build_arg(name: str) -> str:
    for instruction in _dockerfile():
        if instruction.keyword == "ARG" and instruction.value.startswith(f"{name}="):
            return instruction.value.partition("=")[2].strip("\"'")
    raise AssertionError(f"the Dockerfile declares no ARG {name}")


@functools.cache
def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def _k8s_objects() -> list[dict[str, Any]]:
    return [
        doc
        for path in _k8s_files()
        for doc in _yaml_documents(path)
        if doc.get("kind") != "Kustomization"
    ]


def _k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in _k8s_objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = _k8s(kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(workload["spec"]["template"]["spec"])


def _workloads() -> list[dict[str, Any]]:
    return [o for o in _k8s_objects() if o["kind"] in {"Deployment", "CronJob"}]


def _serving_deployment() -> dict[str, Any]:
    (deployment,) = [
        d
        for d in _k8s("Deployment")
        if _command(_pod_spec(d)["containers"][0]) == ["python", "-m", "serving"]
    ]
    return deployment


def _command(container: Mapping[str, Any]) -> list[str]:
    """What a k8s container runs: command + args, the image's CMD when neither is given."""
    command = container.get("command")
    args = container.get("args", [])
    return [*command, *args] if command else (list(args) or _image_cmd())


def _config_values(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in _one("ConfigMap", name).get("data", {}).items()}


def _secret_values(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in _one("Secret", name).get("stringData", {}).items()}


def _container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The environment a k8s container sees: image ENV, then envFrom, then env."""
    env = dict(_image_env())
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_config_values(source["configMapRef"]["name"]))
        if "secretRef" in source:
            env.update(_secret_values(source["secretRef"]["name"]))
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
    return env


@functools.cache
def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _interpolate(value: str) -> str:
    """Compose's ${NAME:-default} as `docker compose` resolves it with NAME unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _service_env(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {name: _interpolate(str(value)) for name, value in raw.items()}


def _service_command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return _image_cmd()
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _uses_our_image(service: Mapping[str, Any]) -> bool:
    return str(service.get("image", "")).split(":")[0] == IMAGE


def _runs_serving(command: list[str]) -> bool:
    return command == ["python", "-m", "serving"]


def _effective_serving_env(extra: Mapping[str, str]) -> dict[str, str]:
    return {**_image_env(), **extra}


def _settings_from(env: Mapping[str, str]) -> Settings:
    """Settings as `python -m serving` reads them from a process environment `env`."""
    read = {k: v for k, v in env.items() if k.startswith(PREFIX) or k == "MLFLOW_TRACKING_URI"}
    with mock.patch.dict(os.environ, read):
        return Settings()


@pytest.fixture(autouse=True)
def _no_serving_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings must see only what the manifests set, never this process's environment."""
    for name in list(os.environ):
        if name.startswith(PREFIX) or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)


# --- where SERVING_* variables are set ------------------------------------------------------------


def _serving_variables() -> list[tuple[str, str]]:
    """(where, name) of every SERVING_* variable any deployment file sets."""
    found = [("Dockerfile ENV", name) for name in _image_env()]
    for service_name, service in _compose()["services"].items():
        found += [(f"compose service {service_name}", name) for name in _service_env(service)]
    for config_map in _k8s("ConfigMap"):
        found += [(f"ConfigMap {config_map['metadata']['name']}", k) for k in config_map["data"]]
    for secret in _k8s("Secret"):
        keys = {**secret.get("stringData", {}), **secret.get("data", {})}
        found += [(f"Secret {secret['metadata']['name']}", k) for k in keys]
    for workload in _workloads():
        for container in _pod_spec(workload)["containers"]:
            where = f"{workload['kind']} {workload['metadata']['name']}"
            found += [(where, variable["name"]) for variable in container.get("env", [])]
    return [(where, name) for where, name in found if name.startswith(PREFIX)]


def test_every_serving_variable_in_the_deployment_files_is_a_real_setting() -> None:
    unknown = [
        f"{name} ({where})" for where, name in _serving_variables() if name not in SETTINGS_ENV
    ]
    assert not unknown, f"not fields of serving.settings.Settings: {unknown}"
    assert _serving_variables(), "no SERVING_* variable found at all: the parser is broken"


def test_the_image_settings_are_valid_and_listen_on_every_interface() -> None:
    settings = _settings_from(_image_env())
    assert settings.host == "0.0.0.0"
    assert settings.port == Settings.model_fields["port"].default


def test_the_compose_serving_settings_are_valid_settings() -> None:
    services = [s for s in _compose()["services"].values() if _uses_our_image(s)]
    serving = [s for s in services if _runs_serving(_service_command(s))]
    assert serving, "no compose service runs python -m serving"
    for service in serving:
        settings = _settings_from(_effective_serving_env(_service_env(service)))
        assert urlsplit(settings.tracking_uri).scheme == "http"


def test_the_configmap_and_secret_values_are_valid_serving_settings() -> None:
    container = _pod_spec(_serving_deployment())["containers"][0]
    settings = _settings_from(_container_env(container))
    assert settings.host == "0.0.0.0"
    assert settings.api_key is not None


def test_an_invalid_value_in_a_manifest_would_be_caught_by_the_settings_check() -> None:
    container = _pod_spec(_serving_deployment())["containers"][0]
    env = {**_container_env(container), f"{PREFIX}PORT": "eighty"}
    with pytest.raises(ValidationError, match="port"):
        _settings_from(env)


# --- routes and probes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def route_matches() -> Any:
    """Whether the real app answers `method path` (built, never started: no model is loaded)."""
    app = create_app(Settings(tracking_uri="sqlite:///unused.db"))

    def matches(path: str, method: str = "GET") -> bool:
        scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
        return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)

    assert not matches("/no/such/route"), "route matching accepts anything: the check is broken"
    return matches


def _probes(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    return {kind: container[kind]["httpGet"] for kind in kinds if kind in container}


def test_the_serving_probes_are_our_liveness_and_readiness_routes(route_matches: Any) -> None:
    container = _pod_spec(_serving_deployment())["containers"][0]
    probes = _probes(container)
    assert probes["livenessProbe"]["path"] == LIVENESS
    assert probes["readinessProbe"]["path"] == READINESS
    for kind, probe in probes.items():
        assert route_matches(probe["path"]), f"{kind} {probe['path']} is not a route of the app"


def test_the_liveness_and_startup_probes_do_not_wait_for_a_model() -> None:
    # A pod waiting for its first Production version is alive: restarting it would not help.
    probes = _probes(_pod_spec(_serving_deployment())["containers"][0])
    assert probes["livenessProbe"]["path"] != READINESS
    assert probes.get("startupProbe", {"path": LIVENESS})["path"] != READINESS


def test_the_image_healthcheck_asks_the_readiness_route_on_the_serving_port(
    route_matches: Any,
) -> None:
    command = " ".join(_healthcheck_cmd())
    (url,) = re.findall(r"http://127\.0\.0\.1:[^/]+(/[\w/]+)", command)
    assert url == READINESS
    assert route_matches(url)
    fallback = re.search(r"os\.environ\.get\('SERVING_PORT', '(\d+)'\)", command)
    assert fallback is not None, "the HEALTHCHECK must follow SERVING_PORT"
    assert fallback.group(1) == _image_env()["SERVING_PORT"]


class _StubHandler(BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _stub_server(status: int) -> Iterator[int]:
    _StubHandler.status = status
    _StubHandler.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_healthcheck(port: int) -> int:
    command = _healthcheck_cmd()
    assert command[0] == "python"
    env = {**os.environ, "SERVING_PORT": str(port)}
    return subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30
    ).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_healthcheck_command_passes_only_when_readiness_answers_200(
    status: int, healthy: bool
) -> None:
    with _stub_server(status) as port:
        returncode = _run_healthcheck(port)
    assert _StubHandler.paths == [READINESS]
    assert (returncode == 0) is healthy


def test_the_healthcheck_command_fails_when_nothing_listens() -> None:
    with _stub_server(200) as port:
        pass  # closed again: the port is free now
    assert _run_healthcheck(port) != 0


# --- ports ----------------------------------------------------------------------------------------


def _container_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (named,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(named)


def test_the_image_port_matches_expose_and_the_settings_default() -> None:
    port = int(_image_env()["SERVING_PORT"])
    exposed = {int(p.split("/")[0]) for value in _runtime("EXPOSE") for p in value.split()}
    assert exposed == {port}
    assert port == Settings.model_fields["port"].default


def test_container_port_service_target_port_and_serving_port_agree() -> None:
    deployment = _serving_deployment()
    container = _pod_spec(deployment)["containers"][0]
    serving_port = _settings_from(_container_env(container)).port
    assert [p["containerPort"] for p in container["ports"]] == [serving_port]
    for probe in _probes(container).values():
        assert _container_port(container, probe["port"]) == serving_port
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [s for s in _k8s("Service") if s["spec"]["selector"].items() <= labels.items()]
    assert services, "no Service selects the serving pods"
    for service in services:
        for port in service["spec"]["ports"]:
            assert _container_port(container, port["targetPort"]) == serving_port
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert int(annotations.get("prometheus.io/port", serving_port)) == serving_port


def test_the_compose_serving_port_is_published_and_is_the_serving_port() -> None:
    for service in _compose()["services"].values():
        if not (_uses_our_image(service) and _runs_serving(_service_command(service))):
            continue
        port = _settings_from(_effective_serving_env(_service_env(service))).port
        published = [int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])]
        assert published == [port]


# --- pods: security, resources, shutdown, volumes -------------------------------------------------


def test_the_image_runs_as_a_fixed_non_root_uid() -> None:
    user = _runtime("USER")
    assert len(user) == 1
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert re.fullmatch(r"\d+(:\d+)?", user[0])
    assert _image_uid() != 0


def test_every_pod_runs_as_the_image_user_without_privileges() -> None:
    for workload in _workloads():
        spec = _pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == _image_uid(), name
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_every_read_only_container_has_a_writable_tmp() -> None:
    # MLflow downloads model artifacts to a temporary directory before loading them.
    for workload in _workloads():
        spec = _pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            if not container["securityContext"].get("readOnlyRootFilesystem"):
                continue
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, workload["metadata"]["name"]
            assert "emptyDir" in volumes[mounts["/tmp"]]


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(quantity)


def test_the_serving_pods_reserve_the_measured_memory_of_each_worker() -> None:
    container = _pod_spec(_serving_deployment())["containers"][0]
    workers = _settings_from(_container_env(container)).workers
    resources = container["resources"]
    assert _bytes(resources["requests"]["memory"]) >= workers * WORKER_MEMORY_BYTES
    assert _bytes(resources["limits"]["memory"]) >= _bytes(resources["requests"]["memory"])


def test_the_pod_grace_period_outlasts_the_pause_and_the_servers_graceful_timeout() -> None:
    spec = _pod_spec(_serving_deployment())
    container = spec["containers"][0]
    graceful = _settings_from(_container_env(container)).graceful_timeout_seconds
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pause = int(pre_stop[-1]) if pre_stop and pre_stop[0] == "sleep" else 0
    assert spec["terminationGracePeriodSeconds"] > pause + graceful


def test_the_autoscaler_scales_the_serving_deployment_on_cpu() -> None:
    deployment = _serving_deployment()
    (hpa,) = _k8s("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # CPU utilisation is measured against the request: without one the autoscaler does nothing.
    for container in _pod_spec(deployment)["containers"]:
        assert container["resources"]["requests"]["cpu"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_every_service_and_budget_selects_the_pods_of_one_deployment() -> None:
    deployments = _k8s("Deployment")
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    selectors = [s["spec"]["selector"] for s in _k8s("Service")]
    selectors += [b["spec"]["selector"]["matchLabels"] for b in _k8s("PodDisruptionBudget")]
    for selector in selectors:
        chosen = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(chosen) == 1, f"selector {selector} matches {len(chosen)} deployments"


def test_every_referenced_configmap_secret_and_claim_exists() -> None:
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in _k8s("Secret")}
    config_maps = {c["metadata"]["name"] for c in _k8s("ConfigMap")}
    claims = {c["metadata"]["name"] for c in _k8s("PersistentVolumeClaim")}
    for workload in _workloads():
        spec = _pod_spec(workload)
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_every_container_runs_our_image_and_kustomize_knows_where_it_lives() -> None:
    for workload in _workloads():
        for container in _pod_spec(workload)["containers"]:
            assert container["image"] == IMAGE, workload["metadata"]["name"]
    for kustomization in K8S.rglob("kustomization.yaml"):
        images = yaml.safe_load(kustomization.read_text()).get("images", [])
        assert IMAGE in [image["name"] for image in images], kustomization


def test_every_kustomization_lists_exactly_the_manifests_beside_it_but_the_examples() -> None:
    # Example secrets stay out, so that `apply -k` never overwrites a real one with a placeholder.
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = set(yaml.safe_load(kustomization.read_text())["resources"])
        present = {p.name for p in kustomization.parent.glob("*.yaml")} - {kustomization.name}
        examples = {name for name in present if name.endswith(".example.yaml")}
        assert listed == present - examples, kustomization
        assert all(
            doc["kind"] == "Secret"
            for name in examples
            for doc in _yaml_documents(kustomization.parent / name)
        )


def test_the_committed_secrets_hold_only_placeholders() -> None:
    for secret in _k8s("Secret"):
        assert "data" not in secret, "use stringData with a visible placeholder"
        for key, value in secret["stringData"].items():
            assert "replace-me" in str(value), f"{secret['metadata']['name']}.{key}"


# --- the prediction log: written by serving, read by the monitoring job ---------------------------


def _mount_of(spec: Mapping[str, Any], container: Mapping[str, Any], claim: str) -> str:
    names = [
        v["name"]
        for v in spec.get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    ]
    mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in names]
    assert len(mounts) == 1, f"{container['name']} does not mount the claim {claim}"
    return str(mounts[0])


def _job_config(command: list[str]) -> str:
    """The config a monitoring command runs on: its --config, or the script's argument."""
    if "--config" in command:
        return command[command.index("--config") + 1]
    script = next(i for i, word in enumerate(command) if word.endswith("monitor-retrain.sh"))
    return command[script + 1]


def test_serving_writes_the_prediction_log_where_the_monitoring_cronjob_reads_it() -> None:
    deployment = _serving_deployment()
    spec = _pod_spec(deployment)
    container = spec["containers"][0]
    log_dir = _settings_from(_container_env(container)).prediction_log_dir
    claim = next(
        v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
        and _mount_of(spec, container, v["persistentVolumeClaim"]["claimName"]) == str(log_dir)
    )
    (cronjob,) = _k8s("CronJob")
    job_spec = _pod_spec(cronjob)
    (job,) = job_spec["containers"]
    config = load_config(REPO_ROOT / _job_config(_command(job)))
    workdir = PurePosixPath(job.get("workingDir", str(_image_workdir())))
    read_from = workdir / config.monitoring.log_dir
    assert _mount_of(job_spec, job, claim) == str(read_from) == str(log_dir)


def test_compose_serving_and_the_jobs_share_the_prediction_log_volume() -> None:
    services = _compose()["services"]
    image_log_dir = _image_env()["SERVING_PREDICTION_LOG_DIR"]
    for name in ("serving", "pipeline", "monitor"):
        mounts = [str(v).split(":") for v in services[name].get("volumes", [])]
        assert ["prediction-log", image_log_dir] in [m[:2] for m in mounts], name
    config = load_config(REPO_ROOT / _job_config(_service_command(services["monitor"])))
    assert str(_image_workdir() / config.monitoring.log_dir) == image_log_dir


# --- the tracking server --------------------------------------------------------------------------


def _mlflow_security_utils() -> ModuleType:
    """MLflow's own Host check, loaded alone: `import mlflow.server` takes seconds."""
    spec = importlib.util.find_spec("mlflow")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "server" / "security_utils.py"
    module_spec = importlib.util.spec_from_file_location("_mlflow_security_utils", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_compose_clients_reach_the_tracking_server_by_an_allowed_host_name() -> None:
    services = _compose()["services"]
    tracking = services["tracking"]
    command = _service_command(tracking)
    assert command[:2] == ["mlflow", "server"]
    allowed = _service_env(tracking)["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    is_allowed = _mlflow_security_utils().is_allowed_host_header
    uris = [
        value
        for service in services.values()
        for name, value in _service_env(service).items()
        if name in {"MLFLOW_TRACKING_URI", f"{PREFIX}TRACKING_URI"}
    ]
    assert uris
    for uri in uris:
        parts = urlsplit(uri)
        assert parts.hostname == "tracking" and parts.port == int(_flag(command, "--port"))
        # Without this mlflow server answers 403 to every API call (its /health still says 200).
        assert is_allowed(allowed, parts.netloc), f"{parts.netloc} not in {allowed}"
        assert not is_allowed(allowed, "attacker.example:5000")


def test_k8s_clients_reach_the_tracking_service_by_an_allowed_host_name() -> None:
    values = _config_values("mlops-config")
    assert values["MLFLOW_TRACKING_URI"] == values[f"{PREFIX}TRACKING_URI"]
    parts = urlsplit(values["MLFLOW_TRACKING_URI"])
    service = _one("Service", parts.hostname)
    assert parts.port in [p["port"] for p in service["spec"]["ports"]]
    deployment = next(
        d
        for d in _k8s("Deployment")
        if service["spec"]["selector"].items()
        <= d["spec"]["template"]["metadata"]["labels"].items()
    )
    (container,) = _pod_spec(deployment)["containers"]
    env = {v["name"]: v.get("value") for v in container["env"]}
    allowed = str(env["MLFLOW_SERVER_ALLOWED_HOSTS"]).split(",")
    is_allowed = _mlflow_security_utils().is_allowed_host_header
    for host in (parts.netloc, f"{parts.hostname}.mlops.svc.cluster.local:{parts.port}"):
        assert is_allowed(allowed, host), f"{host} not in {allowed}"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert _probes(container)["readinessProbe"]["path"] == "/health"


def test_the_tracking_servers_database_driver_is_installed_by_the_image_extras() -> None:
    extras = [e.strip() for e in _build_arg("EXTRAS").split(",") if e.strip()]
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    optional = declared.get("optional-dependencies", {})
    missing = [extra for extra in extras if extra not in optional]
    assert not missing, f"Dockerfile EXTRAS names extras pyproject.toml lacks: {missing}"
    packages = " ".join(req for extra in extras for req in optional[extra]).lower()
    command = _service_command(_compose()["services"]["tracking"])
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3: the URI must name its driver.
    assert _flag(command, "--backend-store-uri").startswith("postgresql+psycopg2://")
    assert "psycopg2" in packages
    (secret,) = [s for s in _k8s("Secret") if "MLFLOW_BACKEND_STORE_URI" in s["stringData"]]
    assert secret["stringData"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")


# --- pipeline commands ----------------------------------------------------------------------------


def _substitute(word: str, variables: Mapping[str, str]) -> str:
    if word.startswith("$"):
        return variables.get(word.strip("${}"), "placeholder")
    return word


def _shell_invocations(text: str, variables: Mapping[str, str]) -> list[list[str]]:
    """Arguments of every `... -m pipeline ARGS` in shell code (comments skipped)."""
    found = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        for match in re.finditer(r"-m pipeline\s+([^)|;&\n]*)", line):
            found.append([_substitute(w, variables) for w in shlex.split(match.group(1))])
    return found


def _invocations_of(command: list[str]) -> list[list[str]]:
    if command[:3] == ["python", "-m", "pipeline"]:
        return [command[3:]]
    for i, word in enumerate(command):
        if word.endswith("monitor-retrain.sh"):
            # The image copies deploy/ to WORKDIR/deploy: the same script as in the repo.
            assert PurePosixPath(word) == _image_workdir() / "deploy" / SCRIPT.name
            config = command[i + 1] if len(command) > i + 1 else "configs/iris.yaml"
            return _shell_invocations(SCRIPT.read_text(), {"config": config})
    return []


def _workflow_runs() -> list[tuple[str, str, dict[str, str]]]:
    """(workflow file, run script, env) of every step of every workflow."""
    runs = []
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = yaml.safe_load(path.read_text())
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                if "run" in step:
                    env = {**workflow.get("env", {}), **job.get("env", {}), **step.get("env", {})}
                    runs.append((path.name, step["run"], {k: str(v) for k, v in env.items()}))
    return runs


def _pipeline_invocations() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for name, service in _compose()["services"].items():
        if _uses_our_image(service):
            found += [(f"compose {name}", a) for a in _invocations_of(_service_command(service))]
    for workload in _workloads():
        for container in _pod_spec(workload)["containers"]:
            where = f"{workload['kind']} {workload['metadata']['name']}"
            found += [(where, args) for args in _invocations_of(_command(container))]
    for workflow, run, env in _workflow_runs():
        found += [(workflow, args) for args in _shell_invocations(run, env)]
    return found


def _parse(args: list[str]) -> None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            _parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`python -m pipeline {shlex.join(args)}` is refused: {stderr.getvalue()}")


@pytest.mark.parametrize(
    ("where", "args"),
    _pipeline_invocations(),
    ids=[f"{where}: {' '.join(args[:1])}" for where, args in _pipeline_invocations()],
)
def test_every_pipeline_command_in_the_deployment_files_is_accepted_by_the_cli(
    where: str, args: list[str]
) -> None:
    _parse(args)


def test_a_command_the_cli_does_not_know_is_refused_by_the_check() -> None:
    with pytest.raises(pytest.fail.Exception, match="no-such-step"):
        _parse(["no-such-step", "--config", "configs/iris.yaml"])


def test_the_scheduled_job_monitors_and_retrains_and_compose_trains_once() -> None:
    commands = {(where, args[0]) for where, args in _pipeline_invocations()}
    assert ("CronJob monitor-retrain", "monitor") in commands
    assert ("CronJob monitor-retrain", "retrain") in commands
    assert ("compose pipeline", "main") in commands
    assert ("compose monitor", "monitor") in commands


def test_every_config_the_deployment_files_name_exists_loads_and_is_in_the_image() -> None:
    copied = {shlex.split(v)[0] for v in _runtime("COPY") if not v.startswith("--from")}
    configs = {
        args[args.index("--config") + 1]
        for _, args in _pipeline_invocations()
        if "--config" in args
    }
    assert configs
    for config in configs:
        assert load_config(REPO_ROOT / config).registered_model
        assert PurePosixPath(config).parts[0] in copied, f"{config} is not copied into the image"


def test_the_cronjob_fails_at_once_on_exactly_the_config_and_data_error_codes() -> None:
    (cronjob,) = _k8s("CronJob")
    job = cronjob["spec"]["jobTemplate"]["spec"]
    (container,) = _pod_spec(cronjob)["containers"]
    assert _pod_spec(cronjob)["restartPolicy"] == "Never"  # required by podFailurePolicy
    (fail_job,) = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_job["onExitCodes"]["containerName"] == container["name"]
    assert set(fail_job["onExitCodes"]["values"]) == {
        ConfigError.exit_code,
        DataValidationError.exit_code,
    }
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


# --- the monitor-retrain script, run by a real shell ----------------------------------------------

_FAKE_PYTHON = """#!/bin/sh
# Stands in for the interpreter: records the arguments, answers with the exit code asked for.
printf '%s\\n' "$*" >> "$CALLS"
case "$3" in
    monitor) exit "$MONITOR_EXIT" ;;
    *) exit "$RETRAIN_EXIT" ;;
esac
"""


def _run_script(
    tmp_path: Path, monitor_exit: int, retrain_exit: int = 0, *args: str
) -> tuple[int, list[str]]:
    fake = tmp_path / "python"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHON": str(fake),
        "CALLS": str(calls),
        "MONITOR_EXIT": str(monitor_exit),
        "RETRAIN_EXIT": str(retrain_exit),
    }
    result = subprocess.run(
        ["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30
    )
    return result.returncode, calls.read_text().splitlines() if calls.exists() else []


MONITOR = "-m pipeline monitor --config configs/x.yaml"
RETRAIN = "-m pipeline retrain --config configs/x.yaml --force"


def test_the_script_does_not_retrain_when_the_monitor_finds_nothing(tmp_path: Path) -> None:
    assert _run_script(tmp_path, 0, 0, "configs/x.yaml") == (0, [MONITOR])


@pytest.mark.parametrize("retrain_exit", [0, 4])
def test_the_script_retrains_on_exit_10_and_reports_the_retrainings_exit_code(
    tmp_path: Path, retrain_exit: int
) -> None:
    assert _run_script(tmp_path, 10, retrain_exit, "configs/x.yaml") == (
        retrain_exit,
        [MONITOR, RETRAIN],
    )


@pytest.mark.parametrize("monitor_exit", [1, 2, 3, 4])
def test_the_script_keeps_a_monitor_errors_exit_code_and_does_not_retrain(
    tmp_path: Path, monitor_exit: int
) -> None:
    assert _run_script(tmp_path, monitor_exit, 0, "configs/x.yaml") == (monitor_exit, [MONITOR])


def test_the_script_monitors_the_default_config_without_an_argument(tmp_path: Path) -> None:
    assert _run_script(tmp_path, 0) == (0, ["-m pipeline monitor --config configs/iris.yaml"])


# --- the image build context ----------------------------------------------------------------------


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = re.sub(r"\\\[(.*?)\\\]", r"[\1]", regex)
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "mlflow.db",
        "mlruns/1/meta.yaml",
        "mlartifacts/1/x",
        "prediction_log/iris/predictions/part-1.parquet",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        "pipeline/__pycache__/cli.cpython-311.pyc",
        "tests/conftest.py",
        ".env",
    ],
)
def test_the_build_context_leaves_out_local_stores_environments_and_caches(path: str) -> None:
    assert _dockerignore_excludes(path)


def test_the_build_context_sends_every_file_the_dockerfile_copies() -> None:
    sources = [
        source
        for value in (i.value for i in _dockerfile() if i.keyword == "COPY")
        if not value.startswith("--from")
        for source in shlex.split(value)[:-1]
    ]
    assert sources
    for source in sources:
        path = REPO_ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files = [f for f in files if "__pycache__" not in f.parts]
        assert files, f"COPY {source}: nothing there"
        for file in files:
            assert not _dockerignore_excludes(file.relative_to(REPO_ROOT).as_posix()), file


def _build_copies() -> list[str]:
    """Repository paths the build stage copies (the runtime stage copies /opt/venv from it)."""
    values = [i.value for i in _dockerfile() if i.keyword == "COPY" and i.stage == 0]
    return [source for value in values for source in shlex.split(value)[:-1]]


def _in_image(path: str) -> bool:
    copied = any(path == s or path.startswith(s.rstrip("/") + "/") for s in _build_copies())
    return copied and not _dockerignore_excludes(path)


def _pipeline_modules_serving_imports() -> set[str]:
    found = set()
    for file in (REPO_ROOT / "serving").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found |= {name for name in names if name.split(".")[0] == "pipeline"}
    return found


def test_the_image_holds_every_pipeline_module_serving_imports() -> None:
    # pipeline.contracts is the one module the import contracts let serving share.
    for module in {"pipeline.contracts"} | _pipeline_modules_serving_imports():
        parts = module.split(".")
        files = [f"{'/'.join(parts[:i])}/__init__.py" for i in range(1, len(parts))]
        files.append(f"{'/'.join(parts)}.py")
        for file in files:
            assert (REPO_ROOT / file).is_file(), f"{module}: no {file}"
            assert _in_image(file), f"serving imports {module}, but the image lacks {file}"


def test_the_image_installs_exactly_the_lock_with_the_uv_release_it_pins() -> None:
    assert {"pyproject.toml", "uv.lock", "tools/lockfile.py"} <= set(_build_copies())
    runs = [i.value for i in _dockerfile() if i.keyword == "RUN" and i.stage == 0]
    (bootstrap,) = [run for run in runs if "pip install" in run]
    assert '"uv==$(python tools/lockfile.py uv-version)"' in bootstrap
    syncs = [run for run in runs if "uv sync" in run]
    assert syncs, "the image does not install with uv sync"
    assert all("--locked" in run for run in syncs), "an install that may ignore uv.lock"
    # The runtime stage copies only /opt/venv: the project must be a real install, not a link.
    assert "--no-install-project" not in syncs[-1]
    assert all("--no-editable" in run for run in syncs)
    build_env = " ".join(i.value for i in _dockerfile() if i.keyword == "ENV" and i.stage == 0)
    assert "UV_COMPILE_BYTECODE=1" in build_env


def test_the_image_serves_with_python_dash_m_serving() -> None:
    assert _image_cmd() == ["python", "-m", "serving"]
    assert _runs_serving(_command(_pod_spec(_serving_deployment())["containers"][0]))


# --- CI -------------------------------------------------------------------------------------------


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", MAKEFILE.read_text(), flags=re.M))


def test_every_yaml_file_parses() -> None:
    files = [COMPOSE, *_k8s_files(), *WORKFLOWS.glob("*.yml")]
    for path in files:
        assert _yaml_documents(path), path


def test_every_make_target_the_workflows_run_exists_in_the_makefile() -> None:
    targets = _make_targets()
    assert {"lint", "test", "pipeline"} <= targets, "the Makefile parser is broken"
    called = {
        (workflow, target)
        for workflow, run, _env in _workflow_runs()
        for target in re.findall(r"(?:^|[;&|]\s*|\s)make\s+(?:-\S+\s+)*([A-Za-z][\w-]*)", run)
    }
    assert {target for _, target in called} >= {"lint", "test", "pipeline"}
    missing = [
        f"make {target} ({workflow})" for workflow, target in called if target not in targets
    ]
    assert not missing


def test_the_workflow_runs_on_pull_requests_with_the_postgres_the_team_tests_expect() -> None:
    workflow = yaml.safe_load((WORKFLOWS / "model-ci.yml").read_text())
    # PyYAML reads the bare key `on` as the boolean True.
    triggers = workflow.get("on", workflow.get(True))
    assert "pull_request" in triggers
    services = [job.get("services", {}) for job in workflow["jobs"].values()]
    (postgres,) = [s["postgres"] for s in services if "postgres" in s]
    assert postgres["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert postgres["env"]["POSTGRES_DB"] == "test"
    assert "5432:5432" in postgres["ports"]
    assert any("GITHUB_STEP_SUMMARY" in run for _, run, _env in _workflow_runs())


def test_make_installs_from_the_lock_whenever_it_or_pyproject_changes() -> None:
    makefile = MAKEFILE.read_text()
    assert re.search(r"^\$\(STAMP\): pyproject\.toml uv\.lock\b", makefile, flags=re.M)
    (sync,) = re.findall(r"^\t.*\$\(UV\) sync .*$", makefile, flags=re.M)
    assert "--locked" in sync
    # uv compiles nothing by default; under PYTHONDONTWRITEBYTECODE every import would recompile.
    assert "--compile-bytecode" in sync
    extras = re.search(r"^EXTRAS := (.*)$", makefile, flags=re.M)
    assert extras is not None and "$(EXTRAS)" in sync
    assert extras.group(1).split() == ["--extra", "dev", "--extra", "spark", "--extra", "team"]


def test_ci_runs_exactly_make_test() -> None:
    commands = [
        line.strip() for line in CI_RUN.read_text().splitlines() if line.strip().startswith("make ")
    ]
    assert commands == ["make test"]


def test_the_deployment_guide_documents_every_serving_setting() -> None:
    # The request limits have their own page (what each refusal looks like), next to the guide.
    guide = "".join(
        (REPO_ROOT / "docs" / page).read_text() for page in ("deployment.md", "serving-limits.md")
    )
    missing = [name for name in SETTINGS_ENV if f"`{name}`" not in guide]
    assert not missing, f"docs/deployment.md and docs/serving-limits.md lack {missing}"
