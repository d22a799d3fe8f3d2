"""The deployable package (Dockerfile, .dockerignore, deploy/), checked as far as a machine with
no container engine and no cluster allows. docs/operations.md, "Deploying with containers and
Kubernetes", says the same, what is exercised and what is not:

- the Dockerfile: hadolint finds nothing; it is multi-stage and installs exactly what
  ``test_install.py`` installs into a fresh venv and serves from (the runtime lock with
  ``--require-hashes``, the wheel with ``--no-deps``); it runs as a numeric non-root user,
  and its HEALTHCHECK and CMD are exec form naming programs the image has. ``.dockerignore``
  lets in all it copies and keeps out secrets, venvs and tests;
- every Kubernetes manifest validates against the schemas of Kubernetes 1.30 and 1.37
  (kubernetes-validate ``--strict``); the Deployment's grace period, preStop, probes and
  memory fit the gateway's drain and its measured memory; the example Secret is refused;
- compose.yaml parses, builds the gateways from the Dockerfile, pins every other image to a
  release and names only programs its images have;
- ``nginx -t`` and ``haproxy -c`` accept the load-balancer examples, whose timeouts outlast
  the heartbeat and the backend's deadline;
- what a compose gateway and a Kubernetes pod run (their command, environment and secrets as
  files) runs here as PID 1 of a PID namespace, as in a container, against the local Redis:
  it serves, answers its health checks and probes, and on SIGTERM drains (a learner's open
  session: 1012, to resume elsewhere) and exits 0.

Not exercised: ``docker build``, ``docker compose up``, a cluster, and nginx or HAProxy relaying
a real WebSocket. Runs as root (a PID namespace), with nginx and HAProxy installed; without
them it fails, never skips, naming what to install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Final

import pytest
import redis
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from kalami_gateway.adapters.jwt_decoder import mint_token
from kalami_gateway.app.settings import TABLE, SettingsError, load_settings

ROOT: Final = Path(__file__).resolve().parents[2]
DOCKERFILE: Final = ROOT / "Dockerfile"
DOCKERIGNORE: Final = ROOT / ".dockerignore"
COMPOSE: Final = ROOT / "deploy" / "compose" / "compose.yaml"
KUBERNETES: Final = ROOT / "deploy" / "kubernetes"
NGINX_CONF: Final = ROOT / "deploy" / "loadbalancer" / "nginx.conf"
HAPROXY_CFG: Final = ROOT / "deploy" / "loadbalancer" / "haproxy.cfg"
HEALTHCHECK: Final = ROOT / "deploy" / "docker" / "healthcheck.py"
# The venv's bin: hadolint and kubernetes-validate (the dev set), kalami-gateway.
TOOLS: Final = Path(sys.executable).parent
REDIS_URL: Final = "redis://127.0.0.1:6379/0"
# The venv the Dockerfile builds and the runtime image runs from.
VENV: Final = "/opt/kalami-gateway"
# The oldest Kubernetes release still maintained when this was written, and the newest the
# installed kubernetes-validate has schemas for.
KUBERNETES_VERSIONS: Final = ("1.30.0", "1.37.0")
# Programs of the public images compose uses, from those images' documentation (no image
# can be pulled here to look), and of the base image (Debian's coreutils, the Python image's).
PUBLIC_IMAGE_PROGRAMS: Final = {"redis": {"redis-server", "redis-cli"}, "nginx": {"nginx"}}
BASE_PROGRAMS: Final = {"sleep", "sh", "python", "python3"}
# An image pinned to a release (major.minor.patch), optionally to a digest too.
PINNED: Final = re.compile(r"[a-z0-9][a-z0-9./-]*:\d+\.\d+\.\d+[a-z0-9.-]*(@sha256:[0-9a-f]{64})?")
# Measured (README "Performance", bench/README.md): a fresh process's RSS, one idle
# WebSocket's, and the streamed-upload window of a learner speaking. The Deployment is sized
# for 10,000 open WebSockets with 200 learners speaking at once (its comment says so).
PROCESS_RSS: Final = 90_000_000
PER_IDLE_SOCKET: Final = 15_000
PER_SPEAKER: Final = 256 * 1024
SIZED_FOR_SOCKETS: Final = 10_000
SIZED_FOR_SPEAKERS: Final = 200
KNOWN_VARIABLES: Final = {row.name for row in TABLE} | {
    row.name + "_FILE" for row in TABLE if row.variable.from_file
}


def default_of(name: str) -> Any:
    return next(row.default for row in TABLE if row.name == name)


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(
            f"{name} is not in {TOOLS}: it comes with the dev set (pyproject.toml's dev "
            "group); run `make sync-dev`",
            pytrace=False,
        )
    return str(path)


def system_tool(name: str, install: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(f"{name} is not installed; on Debian: {install}", pytrace=False)
    return found


def run(*command: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(  # noqa: S603  # our own commands
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def seconds(text: str) -> float:
    """``90s``, ``2m``, ``500ms``: a duration as nginx, HAProxy and compose write one."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert match, f"{text!r}: give a duration its unit"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def quantity(text: str) -> int:
    """A Kubernetes memory quantity in bytes: ``320Mi``, ``1Gi``, ``500M``."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", text)
    assert match, text
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    return int(match[1]) * units.get(match[2] or "", 1)


# ---- the Dockerfile and .dockerignore ----


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile() -> tuple[dict[str, str], list[list[Instruction]]]:
    """The ARGs before the first FROM, and each stage's instructions (its FROM first)."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    arguments: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(rest.split()))
        if instruction.keyword == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        elif instruction.keyword == "ARG":
            name, _, value = instruction.args.partition("=")
            arguments[name] = value
    return arguments, stages


def runtime_stage() -> dict[str, str]:
    """The runtime stage's instructions by keyword (the last of each; COPY and ENV joined)."""
    found: dict[str, str] = {}
    for instruction in dockerfile()[1][-1]:
        if instruction.keyword in ("COPY", "ENV") and instruction.keyword in found:
            found[instruction.keyword] += "\n" + instruction.args
        else:
            found[instruction.keyword] = instruction.args
    return found


def image_env() -> dict[str, str]:
    """The runtime image's ENV, but PATH (the image's venv is this venv here)."""
    pairs = (item.partition("=") for item in runtime_stage()["ENV"].split())
    return {name: value for name, _, value in pairs if name != "PATH"}


def image_programs() -> set[str]:
    """What the image can run by name: the gateway's console scripts (its venv is first on
    PATH) and the interpreters."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(project["project"]["scripts"]) | BASE_PROGRAMS


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(let back in, pattern) in order; Docker's rules: ``*`` within a path segment, ``**``
    across them, a pattern matching a directory matches all below it, the last match wins."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        parts = line.removeprefix("!").strip("/").split("/")
        regex = ""
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "**":
                regex += ".*" if last else "(?:[^/]+/)*"
                continue
            regex += "".join(
                "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part
            )
            regex += "" if last else "/"
        rules.append((negated, re.compile(regex)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    # No configuration but the file's own: a home of its own, no HADOLINT_* variables.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    done = subprocess.run(  # noqa: S603
        [tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip(), done.stdout


def test_the_dockerfile_installs_what_test_install_installs_and_nothing_else() -> None:
    arguments, stages = dockerfile()
    assert len(stages) >= 2, "multi-stage: pip, the build backend and the wheel stay behind"
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", arguments["PYTHON_IMAGE"]
    ), arguments["PYTHON_IMAGE"]
    assert all(stage[0].args.split()[0] == "${PYTHON_IMAGE}" for stage in stages)
    build, runtime = stages[0], stages[-1]
    assert build[0].args.endswith(" AS build")
    commands = [
        " ".join(command.split())
        for instruction in build
        if instruction.keyword == "RUN"
        for command in instruction.args.split("&&")
    ]
    assert commands == [
        f"python -m venv {VENV}",
        f"{VENV}/bin/pip install --require-hashes -r requirements/runtime.txt",
        f"{VENV}/bin/pip wheel --no-deps -w /dist .",
        f"{VENV}/bin/pip install --no-deps /dist/kalami_gateway-*.whl",
    ]
    # test_install.py runs those steps into a fresh venv and serves from it (not repeated here).
    install_test = (ROOT / "tests" / "integration" / "test_install.py").read_text(encoding="utf-8")
    for step in ('"wheel",', '"--no-deps",', '"--require-hashes",', "RUNTIME_LOCK,"):
        assert step in install_test, f"test_install.py no longer runs {step}"
    assert not any(i.keyword == "RUN" and "install" in i.args for i in runtime)
    copied = runtime_stage()["COPY"].splitlines()
    assert [c for c in copied if c.startswith("--from=")] == [f"--from=build {VENV} {VENV}"]


def test_the_image_runs_the_gateway_as_pid_1_as_a_numeric_user_with_a_healthcheck() -> None:
    runtime = runtime_stage()
    user = runtime["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), runtime["USER"]
    assert "ENTRYPOINT" not in runtime
    # Exec form: a JSON array, no shell in between to swallow SIGTERM.
    assert runtime["CMD"].startswith("["), f"CMD {runtime['CMD']}: give it in exec form"
    command = json.loads(runtime["CMD"])
    assert command[0] in image_programs()
    assert command[1:] == ["serve"]
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    _, _, probe = runtime["HEALTHCHECK"].partition(" CMD ")
    assert json.loads(probe) == [f"{VENV}/bin/python", f"{VENV}/healthcheck.py"]
    assert f"deploy/docker/healthcheck.py {VENV}/healthcheck.py" in runtime["COPY"].splitlines()
    assert runtime["EXPOSE"] == str(default_of("GATEWAY_PORT"))


def test_dockerignore_lets_in_what_the_dockerfile_copies_and_keeps_out_the_rest() -> None:
    rules = dockerignore_rules()
    sources = [
        source
        for stage in dockerfile()[1]
        for instruction in stage
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from=")
        for source in instruction.args.split()[:-1]
    ]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        wanted = [
            f.relative_to(ROOT).as_posix()
            for f in files
            if "__pycache__" not in f.parts and not any(p.endswith(".egg-info") for p in f.parts)
        ]
        assert wanted, source
        for name in wanted:
            assert not ignored(name, rules), f"{name} is copied but .dockerignore leaves it out"
    for kept_out in (
        ".env",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/__init__.py",
        "dist/kalami_gateway-0.1.0-py3-none-any.whl",
        "test-artifacts/shot.png",
        "deploy/compose/secrets/jwt_secret.dev",
        "src/kalami_gateway/__pycache__/cli.cpython-311.pyc",
        "src/kalami_gateway.egg-info/PKG-INFO",
    ):
        assert ignored(kept_out, rules), f".dockerignore lets {kept_out} into the build"


# ---- Kubernetes ----


def kubernetes(name: str) -> dict[str, Any]:
    return load(KUBERNETES / name)


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = kubernetes("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    [container] = pod_spec()["containers"]
    assert isinstance(container, dict)
    return container


def pod_environment(files: Path, secrets: dict[str, str]) -> tuple[dict[str, str], dict[str, Path]]:
    """The pod's environment as declared (the ConfigMap, then the container's own), and where
    its secret files are here: ``secrets`` (by key) written under ``files``."""
    container = gateway_container()
    [volume] = [v for v in pod_spec()["volumes"] if "secret" in v]
    [mount] = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"]]
    [source] = container["envFrom"]
    assert source["configMapRef"]["name"] == kubernetes("configmap.yaml")["metadata"]["name"]
    env = {name: str(value) for name, value in kubernetes("configmap.yaml")["data"].items()}
    mounted: dict[str, Path] = {}
    for item in container["env"]:
        env[item["name"]] = item["value"]
        if item["name"].endswith("_FILE"):
            key = PurePosixPath(item["value"]).relative_to(mount).as_posix()
            mounted[item["value"]] = files / key
            mounted[item["value"]].write_text(secrets[key] + "\n", encoding="utf-8")
    return env, mounted


def test_every_kubernetes_manifest_validates_against_the_schemas() -> None:
    manifests = sorted(KUBERNETES.rglob("*.yaml"))
    assert {p.name for p in manifests} >= {
        "configmap.yaml",
        "deployment.yaml",
        "poddisruptionbudget.yaml",
        "service.yaml",
        "kalami-gateway-secrets.yaml",
    }
    versions = [arg for version in KUBERNETES_VERSIONS for arg in ("-k", version)]
    run(tool("kubernetes-validate"), "--strict", "--quiet", *versions, *manifests)


def test_the_deployment_gives_the_drain_its_time_and_probes_the_health_routes() -> None:
    deployment = kubernetes("deployment.yaml")
    config = kubernetes("configmap.yaml")["data"]
    pod, container = pod_spec(), gateway_container()
    # The 1012-and-resume drain: sessions are parked in Redis for another pod to resume.
    assert "REDIS_URL_FILE" in {item["name"] for item in container["env"]}
    assert int(config["RESUME_GRACE"]) > 0
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] in BASE_PROGRAMS
    shutdown = int(config["SHUTDOWN_TIMEOUT"]) / 1000
    # preStop, then the drain (SHUTDOWN_TIMEOUT), then uvicorn's wait for in-flight HTTP
    # (SHUTDOWN_TIMEOUT again: app/server.py), with docs/operations.md's 5 s of margin.
    assert pod["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + 2 * shutdown + 5
    [port] = container["ports"]
    assert port["containerPort"] == default_of("GATEWAY_PORT")
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    # /health/ready waits up to 5 s for the backend's own /health.
    assert container["readinessProbe"]["timeoutSeconds"] > 5
    assert container["command"][0] in image_programs()
    user = runtime_stage()["USER"].split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert [pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]] == [
        int(part) for part in user
    ]
    assert set(config) | {item["name"] for item in container["env"]} <= KNOWN_VARIABLES
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget, service = kubernetes("poddisruptionbudget.yaml"), kubernetes("service.yaml")
    assert budget["spec"]["selector"]["matchLabels"] == labels
    assert budget["spec"]["maxUnavailable"] == 1
    assert service["spec"]["selector"] == labels
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]


def test_the_memory_request_covers_the_measured_cost_of_the_load_it_is_sized_for() -> None:
    resources = gateway_container()["resources"]
    requested = quantity(resources["requests"]["memory"])
    assert requested >= (
        PROCESS_RSS + SIZED_FOR_SOCKETS * PER_IDLE_SOCKET + SIZED_FOR_SPEAKERS * PER_SPEAKER
    )
    assert quantity(resources["limits"]["memory"]) >= requested
    assert "cpu" not in resources["limits"], "CPU throttling delays pings and turns"


def test_the_example_secrets_placeholders_are_refused_at_start(tmp_path: Path) -> None:
    secret = kubernetes("example-secret/kalami-gateway-secrets.yaml")
    [volume] = [v for v in pod_spec()["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    declared, mounted = pod_environment(tmp_path, secret["stringData"])
    env = {
        **declared,
        **{name: str(mounted[path]) for name, path in declared.items() if path in mounted},
    }
    with pytest.raises(SettingsError) as refused:
        load_settings(env, env_file=None)
    assert "JWT_SECRET" in str(refused.value)
    assert "PUSH_API_KEY" in str(refused.value)


# ---- compose ----


def compose() -> dict[str, Any]:
    return load(COMPOSE)


def gateways() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if "build" in s}


def test_compose_builds_the_gateways_and_pins_every_other_image() -> None:
    services = compose()["services"]
    assert {"redis", "gateway-1", "gateway-2", "loadbalancer"} <= set(services)
    for name, service in services.items():
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE, name
        else:
            assert PINNED.fullmatch(service["image"]), f"{name}: {service['image']} is not pinned"


def test_compose_names_only_programs_its_images_have() -> None:
    for name, service in compose()["services"].items():
        if "build" in service:
            programs = image_programs()
        else:
            programs = PUBLIC_IMAGE_PROGRAMS[service["image"].split(":")[0]]
        for command in (service.get("command"), service.get("entrypoint")):
            if command is not None:
                assert isinstance(command, list), f"{name}: give the command in exec form"
                assert command[0] in programs, f"{name}: its image has no {command[0]}"
        check = service.get("healthcheck", {}).get("test")
        if check is not None:
            assert check[0] == "CMD", f"{name}: exec form"
            assert check[1] in programs, f"{name}: its image has no {check[1]}"


def test_compose_runs_two_gateway_clusters_behind_the_load_balancer() -> None:
    document = compose()
    balancer = document["services"]["loadbalancer"]
    address = balancer["networks"]["edge"]["ipv4_address"]
    [(source, target, _)] = [volume.split(":") for volume in balancer["volumes"]]
    assert (COMPOSE.parent / source).resolve() == NGINX_CONF
    assert target == "/etc/nginx/nginx.conf"
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", NGINX_CONF.read_text(), re.MULTILINE)
    assert sorted(host for host, _ in upstreams) == sorted(gateways()) == ["gateway-1", "gateway-2"]
    dev_secret = re.search(r"^DEV_SECRET := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert dev_secret
    for name, gateway in gateways().items():
        env = {key: str(value) for key, value in gateway["environment"].items()}
        assert set(env) <= KNOWN_VARIABLES, name
        command = gateway["command"]
        assert int(command[command.index("--workers") + 1]) >= 2, name
        assert "REDIS_URL_FILE" in env, f"{name}: --workers needs Redis"
        assert env["TRUSTED_PROXIES"] == address, f"{name}: believe the balancer only"
        port = env.get("GATEWAY_PORT", str(default_of("GATEWAY_PORT")))
        assert {p for _, p in upstreams} == {port}
        for variable, path in env.items():
            if variable.endswith("_FILE"):
                secret = PurePosixPath(path).name
                assert path == f"/run/secrets/{secret}", variable
                assert secret in gateway["secrets"], variable
                assert (COMPOSE.parent / document["secrets"][secret]["file"]).is_file()
        # The supervisor gives a worker SHUTDOWN_TIMEOUT + 10 s to drain (app/workers.py).
        shutdown = int(env["SHUTDOWN_TIMEOUT"]) / 1000
        assert seconds(gateway["stop_grace_period"]) > shutdown + 10, name
    # The one secret file committed is `make run`'s published development secret.
    jwt_file = COMPOSE.parent / document["secrets"]["jwt_secret"]["file"]
    assert jwt_file.read_text(encoding="utf-8").strip() == dev_secret[1]


# ---- the load balancers ----


def test_nginx_accepts_the_example(tmp_path: Path) -> None:
    nginx = system_tool("nginx", "apt-get install nginx-light")
    # The compose services' names resolve only inside compose: here they are 127.0.0.1.
    conf = tmp_path / "nginx.conf"
    text = NGINX_CONF.read_text(encoding="utf-8")
    conf.write_text(re.sub(r"(server\s+)gateway-\d+:", r"\g<1>127.0.0.1:", text), encoding="utf-8")
    run(nginx, "-t", "-q", "-c", conf, "-p", f"{tmp_path}/", "-e", "stderr", cwd=tmp_path)


def test_haproxy_accepts_the_example_without_a_warning(tmp_path: Path) -> None:
    haproxy = system_tool("haproxy", "apt-get install haproxy")
    cfg = tmp_path / "haproxy.cfg"
    text = HAPROXY_CFG.read_text(encoding="utf-8")
    cfg.write_text(re.sub(r" gateway-(\d+):3000", r" 127.0.0.1:300\1", text), encoding="utf-8")
    run(haproxy, "-c", "-dW", "-f", cfg, cwd=tmp_path)


def test_the_load_balancers_outwait_the_heartbeat_and_the_backend() -> None:
    configured = int(kubernetes("configmap.yaml")["data"]["WS_HEARTBEAT_INTERVAL"])
    heartbeat = max(default_of("WS_HEARTBEAT_INTERVAL"), configured) / 1000
    backend = default_of("BACKEND_TIMEOUT") / 1000
    nginx = NGINX_CONF.read_text(encoding="utf-8")
    blocks = dict(re.findall(r"location (= /ws|/) \{(.*?)\n        \}", nginx, re.DOTALL))

    def directive(block: str, name: str) -> float:
        found = re.search(rf"^\s*{name}\s+(\S+);", blocks[block], re.MULTILINE)
        assert found, f"nginx: no {name} in location {block}"
        return seconds(found[1])

    # An idle limit of at least twice the heartbeat (docs/operations.md).
    assert directive("= /ws", "proxy_read_timeout") >= 2 * heartbeat
    assert directive("= /ws", "proxy_send_timeout") >= 2 * heartbeat
    assert directive("/", "proxy_read_timeout") > backend
    haproxy = HAPROXY_CFG.read_text(encoding="utf-8")

    def timeout(name: str) -> float:
        found = re.search(rf"^\s*timeout {name}\s+(\S+)", haproxy, re.MULTILINE)
        assert found, f"haproxy: no timeout {name}"
        return seconds(found[1])

    assert timeout("tunnel") >= 2 * heartbeat
    assert timeout("server") > backend
    assert timeout("check") > 5
    assert "location ^~ /internal/ {\n            return 404;" in nginx
    assert "http-request deny deny_status 404 if { path_beg /internal/ }" in haproxy
    assert "proxy_set_header Upgrade $http_upgrade;" in blocks["= /ws"]
    assert "proxy_set_header Connection $connection_upgrade;" in blocks["= /ws"]


# ---- what the containers run, run here as PID 1 ----


@dataclass
class Contained:
    process: subprocess.Popen[bytes]
    pid: int  # as seen from here; 1 in its own PID namespace
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def healthcheck(self) -> int:
        """The image's HEALTHCHECK, as Docker runs it in the container."""
        env = {"PATH": os.environ["PATH"], "GATEWAY_PORT": str(self.port)}
        done = subprocess.run(  # noqa: S603
            [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30
        )
        return done.returncode

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text(encoding="utf-8")
            try:
                self.get("/health")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the gateway did not serve within 60 s")

    def terminate(self) -> None:
        """SIGTERM to PID 1, as `docker stop` and the kubelet send it."""
        os.kill(self.pid, signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        return self.process.wait(timeout=120)

    def events(self) -> list[str]:
        found = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            try:
                found.append(json.loads(line).get("event"))
            except (ValueError, AttributeError):
                continue
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def container_env(
    declared: dict[str, str], files: dict[str, Path], workdir: Path, prefix: str
) -> dict[str, str]:
    """The image's ENV, then the declared environment, for a process here: its secret files
    where they are here, 127.0.0.1 and a free port to listen on, a Redis key prefix of its own."""
    env = {"PATH": f"{TOOLS}{os.pathsep}{os.environ['PATH']}", "HOME": str(workdir)}
    env |= image_env() | declared
    for name, value in env.items():
        if name.endswith("_FILE"):
            assert value in files, f"{name}={value}: not a secret file the container mounts"
            env[name] = str(files[value])
    env |= {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(free_port())}
    return env | {"REDIS_KEY_PREFIX": prefix}


@contextmanager
def as_pid_1(command: list[str], env: dict[str, str], workdir: Path) -> Iterator[Contained]:
    """``command`` as PID 1 of a PID namespace of its own, found on PATH as the image finds
    it; its output (the JSON log lines) in a file."""
    if os.geteuid() != 0:
        pytest.fail("runs the container's command as PID 1 of a PID namespace: needs root")
    unshare = system_tool("unshare", "apt-get install util-linux")
    log = workdir / "container.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [unshare, "--pid", "--fork", "--kill-child", "--", *command],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.01)
        [pid] = [int(child) for child in children.read_text().split()]
        status = Path(f"/proc/{pid}/status").read_text()
        [nspid] = [line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")]
        assert nspid[-1] == "1", f"not PID 1 in its namespace: {nspid}"
        yield Contained(process, pid, int(env["GATEWAY_PORT"]), log)
    finally:
        if process.poll() is None:
            process.kill()  # --kill-child: the gateway goes with it
            process.wait(timeout=30)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc})", pytrace=False)
    prefix = f"kalami-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@contextmanager
def health_backend() -> Iterator[str]:
    """A stand-in for the backend's Service: ``GET /health`` answers 200."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/health"
            body = b'{"status": "healthy"}' if ok else b"{}"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def read_until_closed(ws: ClientConnection) -> None:
    while True:
        ws.recv(timeout=60)


def test_a_compose_gateway_serves_as_pid_1_and_drains_on_sigterm(
    tmp_path: Path, redis_prefix: str
) -> None:
    document = compose()
    gateway = document["services"]["gateway-1"]
    files = {
        f"/run/secrets/{name}": COMPOSE.parent / document["secrets"][name]["file"]
        for name in gateway["secrets"]
    }
    # `redis` is compose's name for its Redis; here it is the local one.
    files["/run/secrets/redis_url"] = tmp_path / "redis_url"
    files["/run/secrets/redis_url"].write_text(REDIS_URL + "\n", encoding="utf-8")
    declared = {name: str(value) for name, value in gateway["environment"].items()}
    env = container_env(declared, files, tmp_path, redis_prefix)
    with as_pid_1(gateway["command"], env, tmp_path) as container:
        container.wait_until_serving()
        assert container.healthcheck() == 0
        status, ready = container.get("/health/ready")
        assert (status, ready["backend"], ready["redis"]) == (200, "stub", "connected")
        # Both workers are instances of one cluster, through the Redis of the secret file.
        deadline = time.monotonic() + 30
        while container.get("/stats")[1]["cluster"]["instances"] != 2:
            assert time.monotonic() < deadline, container.get("/stats")
            time.sleep(0.1)
        # A learner with a session open is told to resume elsewhere: the drain of a cluster.
        token = mint_token(
            files["/run/secrets/jwt_secret"].read_text().strip(), "u1", time.time() + 600
        )
        with connect(f"ws://127.0.0.1:{container.port}/ws?token={token}", proxy=None) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "connected"
            ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p1"}}))
            assert json.loads(ws.recv(timeout=10))["type"] == "session_started"
            container.terminate()
            with pytest.raises(ConnectionClosed) as closed:
                read_until_closed(ws)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "Service restart")
        assert container.process.wait(timeout=120) == 0
    assert "workers_stopped" in container.events()
    assert container.healthcheck() == 1


def test_a_kubernetes_pod_serves_as_pid_1_answers_its_probes_and_drains(
    tmp_path: Path, redis_prefix: str
) -> None:
    container_spec = gateway_container()
    secrets = {
        "jwt-secret": "deploy-test-secret-" + "0123456789abcdef" * 2,
        "redis-url": REDIS_URL,
        "push-api-key": "deploy-test-push-key-0123",
    }
    declared, files = pod_environment(tmp_path, secrets)
    with health_backend() as backend_url:
        # BACKEND_URL names the backend's Service in the cluster; here, a local stand-in.
        env = container_env(declared | {"BACKEND_URL": backend_url}, files, tmp_path, redis_prefix)
        with as_pid_1(container_spec["command"], env, tmp_path) as pod:
            pod.wait_until_serving()
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                status, body = pod.get(container_spec[probe]["httpGet"]["path"])
                assert status == 200, (probe, body)
            assert pod.get("/health/ready")[1] == {
                "status": "ready",
                "backend": "connected",
                "redis": "connected",
            }
            assert shutil.which(container_spec["lifecycle"]["preStop"]["exec"]["command"][0])
            assert pod.stop() == 0
    assert "gateway_stopped" in pod.events()
