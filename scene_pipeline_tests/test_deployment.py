"""The deployment: deploy/dagster.yaml on a real PostgreSQL, the compose stack, Helm and ECS.

- A script runs through the deployed instance config (Postgres storage) against the fake
  KLING and OpenAI servers, and the run, its materializations and the `kling` pool land in
  Postgres.
- The `kling` pool is KLING_MAX_CONCURRENCY, whatever it was before: an operator had set it
  to 7, a run with KLING_MAX_CONCURRENCY=3 leaves it at 3. And it is honoured: a script of
  more scenes than slots, drawn by the fake KLING that refuses a task over the account's
  limit of 3 with 429/1303, got no such refusal while its tasks overlapped.
- docker-compose.yml, .env.example, the Dockerfile, deploy/helm/values.yaml and deploy/ecs/
  are parsed and checked against what the engines expect (we cannot run Docker or a cluster
  here; test_deployed_stack.py runs the compose services' commands as local processes). The
  list of environment variables is the settings model's (`settings.variable_names()`) plus
  what the code reads outside it, so a new setting that is not passed to the containers
  fails here.

The runs go through `scene-pipeline run` in a subprocess (which accepts the script and calls
cli.execute_scene_job): the job's forkserver preloads scene_pipeline.definitions, which builds
its resources from the environment of the moment the forkserver starts, so running it inside
the pytest process could reuse a forkserver started by an earlier test with another env.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from scene_pipeline.settings import variable_names

from .conftest import PIPELINE_ENV, REPO
from .fakes.kling import FakeKlingServer
from .fakes.openai import FakeOpenAIServer
from .postgres import PostgresServer, postgres_fixture  # noqa: F401 (the `postgres` fixture)
from .resilience import fake_env, script_document

BIN = Path(sys.executable).parent
DEPLOY = REPO / "deploy"
# What a run materializes (script_document is reported when the script is accepted).
SCENE_JOB_ASSETS = {
    "character_sheet",
    "character_portraits",
    "scene_prompts",
    "scene_images",
    "manifest",
}
POOL_TEST_LIMIT = 3  # KLING_MAX_CONCURRENCY of the run, and the fake account's limit
OPERATOR_LIMIT = 7  # what an operator had set the pool to before the run
POOL_TEST_SCENES = 8
# The fake KLING's pictures are tiny by default (48 px), under the 300 px per side that its
# multi-image2image endpoint (like KLING's) asks of a reference; the portraits it draws here
# are passed back to it as references, so they are drawn at a realistic size.
REFERENCE_LONG_SIDE = 640

# Variables of the Dagster instance itself (deploy/dagster.yaml).
INSTANCE_ENV = {
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USERNAME",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
}
# Read by the code but provided by the image, not by the operator.
SET_BY_IMAGE = {"DAGSTER_HOME"}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY)")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text("utf-8"))


# -- which environment variables the code reads -----------------------------------------------

ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
ENVISH = re.compile(r"env|environ", re.IGNORECASE)


def _env_names_in(source: str) -> set[str]:
    """Names read with os.environ[...] / .get(...), os.getenv, EnvVar(...), env["..."],
    helper(env, "NAME") and constants assigned to *_ENV / *_ENV_VAR names."""
    tree = ast.parse(source)
    names: set[str] = set()

    def text(node: ast.AST) -> str:
        return node.id if isinstance(node, ast.Name) else ast.unparse(node)

    def literals(nodes: list[ast.expr]) -> set[str]:
        return {
            n.value
            for n in nodes
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and ENV_NAME.match(n.value)
        }

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            args = [*node.args, *(k.value for k in node.keywords)]
            if ENVISH.search(text(node.func)) or any(
                isinstance(a, ast.Name | ast.Attribute) and ENVISH.search(text(a)) for a in args
            ):
                names |= literals(args)
        elif isinstance(node, ast.Subscript) and ENVISH.search(text(node.value)):
            names |= literals([node.slice])
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and re.search(r"_ENV(_VAR)?$", t.id) for t in targets):
                names |= literals([node.value])
    return names


@functools.cache
def env_scanned_in_code() -> frozenset[str]:
    """The names the scanner finds in scene_pipeline/ (reads outside the settings model)."""
    names: set[str] = set()
    for path in sorted((REPO / "scene_pipeline").rglob("*.py")):
        names |= _env_names_in(path.read_text("utf-8"))
    return frozenset(names)


def env_read_by_code() -> frozenset[str]:
    """Every variable the code reads: the settings model's, and the few read elsewhere."""
    return frozenset(variable_names()) | env_scanned_in_code()


def test_env_scanner_finds_the_usual_forms() -> None:
    found = _env_names_in(
        "import os\nfrom dagster import EnvVar\n"
        'A_ENV = "FROM_CONSTANT"\n'
        'os.environ["FROM_SUBSCRIPT"]\nos.environ.get("FROM_GET")\nos.getenv("FROM_GETENV")\n'
        'EnvVar("FROM_ENVVAR")\nEnvVar.int("FROM_ENVVAR_INT")\n'
        'def f(env):\n    return env.get("FROM_MAPPING"), _set(env, "FROM_HELPER")\n'
        'LOG = "NOT_AN_ENV_NAME"\nprint("ALSO_NOT")\n'
    )
    assert found == {
        "FROM_CONSTANT",
        "FROM_SUBSCRIPT",
        "FROM_GET",
        "FROM_GETENV",
        "FROM_ENVVAR",
        "FROM_ENVVAR_INT",
        "FROM_MAPPING",
        "FROM_HELPER",
    }
    # The real code reads its settings through the settings model only: what the scanner
    # finds outside it is Dagster's own DAGSTER_HOME (the CLI's instance), set by the image.
    scanned = env_scanned_in_code()
    assert "DAGSTER_HOME" in scanned  # the scanner does see the real code
    outside = sorted(scanned - set(variable_names()) - SET_BY_IMAGE)
    assert not outside, f"read from the environment but not a setting: {outside}"
    assert {"S3_BUCKET_NAME", "SCENE_PIPELINE_LOCAL_DIR", "KLING_MAX_CONCURRENCY"} <= set(
        variable_names()
    )


# -- a PostgreSQL server and an instance home with deploy/dagster.yaml ------------------------


def test_missing_postgres_fails_when_required_and_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from . import postgres as postgres_module

    monkeypatch.setattr(postgres_module, "find_bin_dir", lambda: None)
    monkeypatch.setenv(postgres_module.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="SCENE_PIPELINE_REQUIRE_POSTGRES is set"):
        with postgres_module.running_postgres():
            pass
    monkeypatch.delenv(postgres_module.REQUIRE_ENV)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        with postgres_module.running_postgres():
            pass


@dataclass(frozen=True)
class DeployedHome:
    home: Path
    env: dict[str, str]  # the environment of the stack's processes (no pipeline settings)
    server: PostgresServer
    dbname: str

    def instance(self, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        return DagsterInstance.from_config(str(self.home))

    def run(
        self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess:
        """A command of the project or of Dagster, as an operator in the container runs it
        (`env`: the pipeline's settings on top of the instance's)."""
        return subprocess.run(
            [str(BIN / str(args[0])), *map(str, args[1:])],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            cwd=REPO,
        )


def _deployed_home(server: PostgresServer, root: Path, dbname: str) -> DeployedHome:
    home = root / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")  # what the Dockerfile does
    base = {k: v for k, v in os.environ.items() if k not in PIPELINE_ENV}
    env = {
        **base,
        **server.dagster_env(server.create_database(dbname)),
        "DAGSTER_HOME": str(home),
        "SCENE_PIPELINE_LOCAL_DIR": str(root / "storage"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    return DeployedHome(home=home, env=env, server=server, dbname=dbname)


def pool_limit_in_postgres(deployed: DeployedHome) -> int | None:
    """The `kling` pool's limit as stored in the instance's table (None: no such pool)."""
    conn = deployed.server.connect(deployed.dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(
                'SELECT "limit" FROM concurrency_limits WHERE concurrency_key = %s', ["kling"]
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    return rows[0][0] if rows else None


@dataclass(frozen=True)
class PoolRun:
    deployed: DeployedHome
    run_id: str
    script_id: str
    cli_stdout: str
    limit_before: int
    kling_answers: dict[tuple[int, int], int]
    kling_tasks: int
    kling_max_in_flight: int


@pytest.fixture(scope="module")
def pool_run(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> PoolRun:
    """One 8-scene script run through deploy/dagster.yaml with KLING_MAX_CONCURRENCY=3, on
    an instance where an operator had set the `kling` pool to 7, against a fake KLING account
    of 3 parallel tasks."""
    root = tmp_path_factory.mktemp("deployed")
    deployed = _deployed_home(postgres, root, "pool_run")
    # An operator's earlier limit (the README's way to change it by hand), now stale.
    limit = deployed.run("dagster", "instance", "concurrency", "set", "kling", OPERATOR_LIMIT)
    assert limit.returncode == 0, limit.stderr[-3000:]
    limit_before = pool_limit_in_postgres(deployed)
    script_id = "deploy-pool"
    script = root / "deploy_pool.json"
    script.write_text(
        json.dumps(script_document(script_id, POOL_TEST_SCENES), ensure_ascii=False), "utf-8"
    )
    with (
        FakeOpenAIServer() as openai,
        FakeKlingServer(
            task_latency_seconds=2.0,
            concurrency_limit=POOL_TEST_LIMIT,
            image_long_side=REFERENCE_LONG_SIDE,
        ) as kling,
    ):
        env = fake_env(openai, kling, KLING_MAX_CONCURRENCY=str(POOL_TEST_LIMIT))
        done = deployed.run("scene-pipeline", "run", script, env=env)
        answers = dict(kling.answers)
        tasks, most = len(kling.tasks), kling.max_in_flight
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    match = re.search(r"^run (\S+) succeeded", done.stderr, re.MULTILINE)
    assert match, done.stderr[-3000:]
    return PoolRun(
        deployed=deployed,
        run_id=match.group(1),
        script_id=script_id,
        cli_stdout=done.stdout,
        limit_before=limit_before,
        kling_answers=answers,
        kling_tasks=tasks,
        kling_max_in_flight=most,
    )


# -- the instance configs -----------------------------------------------------------------------


def test_root_dagster_yaml_stays_usable_without_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster dev` on a fresh machine: SQLite, the deployment's run limit and one run per
    script, and no pool limit of its own (the runs set `kling`, as in the deployment)."""
    for name in INSTANCE_ENV:
        monkeypatch.delenv(name, raising=False)
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    deployed = load_yaml(DEPLOY / "dagster.yaml")["concurrency"]["runs"]
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert "Sqlite" in type(instance.run_storage).__name__
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit is None
        queue = concurrency.run_queue_config
        assert queue is not None
        assert queue.max_concurrent_runs == deployed["max_concurrent_runs"]
        one_per_script = {
            "key": "dagster/partition",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        }
        assert one_per_script in queue.tag_concurrency_limits
        assert one_per_script in deployed["tag_concurrency_limits"]
        assert not instance.telemetry_enabled


@pytest.mark.postgres
def test_deploy_instance_is_postgres_queued_monitored_and_retried(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed = _deployed_home(postgres, tmp_path, "instance_config")
    with deployed.instance(monkeypatch) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"

        concurrency = instance.get_concurrency_config()
        # No pool limit in the config: a default here would be a second number for the
        # KLING account next to KLING_MAX_CONCURRENCY (the runs set the `kling` pool).
        assert concurrency.pool_config.default_pool_limit is None
        queue = concurrency.run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4
        assert queue.tag_concurrency_limits == [
            {"key": "dagster/backfill", "limit": 2},
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
        ]
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 300
        assert instance.run_monitoring_max_runtime_seconds == 21600
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert not instance.telemetry_enabled
        # `dagster-daemon run` starts these daemons from this config.
        assert {
            "SCHEDULER",
            "SENSOR",
            "BACKFILL",
            "QUEUED_RUN_COORDINATOR",
            "MONITORING",
            "EVENT_LOG_CONSUMER",
        } <= set(instance.get_required_daemon_types())

    # The config names the password only through the environment.
    text = (DEPLOY / "dagster.yaml").read_text("utf-8")
    assert postgres.password not in text
    assert load_yaml(DEPLOY / "dagster.yaml")["storage"]["postgres"]["postgres_db"]["password"] == {
        "env": "DAGSTER_PG_PASSWORD"
    }


# -- a run through the deployed instance --------------------------------------------------------


@pytest.mark.postgres
def test_a_script_runs_and_is_stored_in_postgres(
    pool_run: PoolRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert f"complete ({POOL_TEST_SCENES}/{POOL_TEST_SCENES} scenes succeeded)" in (
        pool_run.cli_stdout
    )
    deployed = pool_run.deployed
    # Straight from the tables, as the webserver and the daemon see them.
    conn = deployed.server.connect(deployed.dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT status, pipeline_name FROM runs WHERE run_id = %s", [pool_run.run_id]
            )
            assert cur.fetchall() == [("SUCCESS", "scene_job")]
            cur.execute(
                "SELECT DISTINCT asset_key FROM event_logs"
                " WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                [pool_run.run_id],
            )
            stored = {json.loads(row[0])[-1] for row in cur.fetchall()}
    finally:
        conn.close()
    assert SCENE_JOB_ASSETS <= stored, sorted(SCENE_JOB_ASSETS - stored)

    with deployed.instance(monkeypatch) as instance:
        run = instance.get_run_by_id(pool_run.run_id)
        assert run is not None and run.status == DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == pool_run.script_id
        assert instance.has_dynamic_partition("scripts", pool_run.script_id)
        event = instance.get_latest_materialization_event(AssetKey("manifest"))
        assert event is not None and event.run_id == pool_run.run_id
        # The accepted script, reported by the CLI before the run.
        assert instance.get_latest_materialization_event(AssetKey("script_document"))


@pytest.mark.postgres
def test_the_kling_pool_is_kling_max_concurrency_and_keeps_the_account_under_its_limit(
    pool_run: PoolRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's stale 7 is gone: the pool is the run's KLING_MAX_CONCURRENCY. And with
    more scenes (and portraits) than slots, drawn at once where slots allowed, the account
    never had to refuse a task for being over its parallel-task limit.

    (One test, not two: the run behind it takes most of a minute, and pytest-xdist may give
    the tests of one module to different workers, each running the module fixture.)"""
    assert pool_run.limit_before == OPERATOR_LIMIT
    with pool_run.deployed.instance(monkeypatch) as instance:
        info = instance.event_log_storage.get_concurrency_info("kling")
        assert info.slot_count == POOL_TEST_LIMIT
        # Every slot was given back when the run ended: none held, none waited for.
        assert not info.claimed_slots and not info.pending_steps
    assert pool_limit_in_postgres(pool_run.deployed) == POOL_TEST_LIMIT

    assert pool_run.kling_tasks > POOL_TEST_LIMIT  # the limit was reached, not only respected
    assert pool_run.kling_max_in_flight >= 2, "tasks never overlapped: the test proves nothing"
    refused = pool_run.kling_answers.get((429, 1303), 0)
    assert refused == 0, f"the fake KLING refused {refused} task(s) over the account's limit"


# -- docker-compose.yml, .env.example, Dockerfile -----------------------------------------------


def compose() -> dict[str, Any]:
    return load_yaml(REPO / "docker-compose.yml")


def env_example() -> dict[str, str]:
    """Every variable .env.example lists, set or commented out, with its value."""
    listed = {}
    for line in (REPO / ".env.example").read_text("utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            listed[match.group(1)] = match.group(2).strip()
    return listed


def test_compose_has_the_four_services_wired_on_healthy_postgres() -> None:
    services = compose()["services"]
    assert {"postgres", "user_code", "webserver", "daemon", "minio", "minio-init"} <= set(services)

    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"]  # a named volume, not a bind mount

    for name in ("user_code", "webserver", "daemon"):
        service = services[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert service["build"] == "." and service.get("init") is True, name
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["user_code"]["condition"] == "service_healthy"

    user_code = services["user_code"]["command"]
    assert user_code[:3] == ["dagster", "code-server", "start"]
    assert "scene_pipeline.definitions" in user_code
    workspace = load_yaml(DEPLOY / "workspace.yaml")["load_from"][0]["grpc_server"]
    assert workspace == {"host": "user_code", "port": 4000, "location_name": "scene_pipeline"}
    assert str(workspace["port"]) in user_code and "0.0.0.0" in user_code
    # The webserver and the daemon load the code location from the gRPC server only.
    for name in ("webserver", "daemon"):
        command = services[name]["command"]
        path = command[command.index("-w") + 1]
        assert path == "/opt/dagster/app/deploy/workspace.yaml", name
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]

    for name in ("minio", "minio-init"):
        assert services[name]["profiles"] == ["minio"], name
    assert "mc mb" in " ".join(services["minio-init"]["entrypoint"])


def test_every_setting_the_code_reads_reaches_the_code_and_nothing_else() -> None:
    services = compose()["services"]
    read = env_read_by_code() - SET_BY_IMAGE
    user_code_env = services["user_code"]["environment"]
    missing = sorted(read - set(user_code_env))
    assert not missing, f"read by scene_pipeline but not passed to user_code: {missing}"
    for name in ("user_code", "webserver", "daemon"):
        environment = services[name]["environment"]
        assert INSTANCE_ENV <= set(environment), name
        if name != "user_code":
            # Least privilege: the daemon and the webserver run no pipeline code.
            assert not read & set(environment) - INSTANCE_ENV, name


def test_compose_holds_no_secret_literal() -> None:
    text = (REPO / "docker-compose.yml").read_text("utf-8")
    assert "minioadmin" not in text
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) or key.endswith(("_USER", "_PASSWORD")):
                # Either passed through from .env (no value) or interpolated from it.
                assert value is None or str(value).startswith("${"), f"{name}: {key}={value!r}"


def test_env_example_lists_every_variable_without_a_real_value() -> None:
    listed = env_example()
    wanted = (env_read_by_code() | INSTANCE_ENV) - SET_BY_IMAGE
    missing = sorted(wanted - set(listed))
    assert not missing, f".env.example does not list: {missing}"
    for name, value in listed.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example gives {name} a value"
    # And every variable compose interpolates is documented there.
    interpolated = set(
        re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", (REPO / "docker-compose.yml").read_text())
    )
    assert not interpolated - set(listed), sorted(interpolated - set(listed))


def test_dockerfile_builds_a_slim_non_root_image_with_a_cached_dependency_layer() -> None:
    lines = [
        line.strip()
        for line in (REPO / "Dockerfile").read_text("utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert lines[0].startswith("FROM python:3.11-slim")
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ")]
    first_install = next(i for i, line in enumerate(lines) if "pip install" in line)
    # Only pyproject.toml is copied before the dependencies are installed.
    assert [lines[i] for i in copies if i < first_install] == ["COPY pyproject.toml ./"]
    assert any(line.startswith("COPY scene_pipeline") for line in lines[first_install:])
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "DAGSTER_HOME=/opt/dagster/dagster_home" in " ".join(lines)
    assert any('deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"' in line for line in lines)
    ignored = (REPO / ".dockerignore").read_text("utf-8").splitlines()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker CLI has no compose plugin")
    env_file = tmp_path / ".env"
    env_file.write_text("DAGSTER_PG_PASSWORD=test-only\n")
    done = subprocess.run(
        [docker, "compose", "--env-file", str(env_file), "--profile", "minio", "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr


# -- scale-out: Helm and ECS --------------------------------------------------------------------

# Fields of the Dagster Helm chart's values schema (dagster repository,
# helm/dagster/schema/schema/charts/...: K8sRunLauncherConfig, UserDeployment, Concurrency*,
# Daemon.runMonitoring as rendered by templates/configmap-instance.yaml, RunRetries).
HELM_K8S_RUN_LAUNCHER = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
    "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
    "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
}  # fmt: skip
HELM_USER_DEPLOYMENT = {
    "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
    "port", "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity",
    "tolerations", "podSecurityContext", "securityContext", "resources", "livenessProbe",
    "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName",
}  # fmt: skip
HELM_RUN_MONITORING = {
    "enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts",
    "pollIntervalSeconds", "freeSlotsAfterRunEndSeconds",
}  # fmt: skip
HELM_RUNS = {"maxConcurrentRuns", "tagConcurrencyLimits"}


def test_helm_values_carry_the_instance_over_to_kubernetes() -> None:
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    instance = load_yaml(DEPLOY / "dagster.yaml")

    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert set(k8s) <= HELM_K8S_RUN_LAUNCHER, set(k8s) - HELM_K8S_RUN_LAUNCHER
    assert k8s["envSecrets"] == [{"name": "scene-pipeline-env"}]

    user = values["dagster-user-deployments"]
    assert user["enabled"] is True
    (deployment,) = user["deployments"]
    assert set(deployment) <= HELM_USER_DEPLOYMENT, set(deployment) - HELM_USER_DEPLOYMENT
    assert {"repository", "tag", "pullPolicy"} <= set(deployment["image"])
    assert "scene_pipeline.definitions" in deployment["codeServerArgs"]
    assert deployment["envSecrets"] == [{"name": "scene-pipeline-env"}]

    postgresql = values["postgresql"]
    assert {"enabled", "postgresqlHost", "postgresqlUsername", "postgresqlDatabase"} <= set(
        postgresql
    )
    assert postgresql["postgresqlPassword"] == ""  # from global.postgresqlSecretName instead
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]

    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["enabled"] is True
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    # Run limits only under concurrency.runs (the chart fails on both); the queue is read
    # every second, as the instance's dagster.yaml does.
    assert daemon["runCoordinator"]["config"]["queuedRunCoordinator"] == {
        "dequeueIntervalSeconds": 1
    }
    assert set(daemon["runMonitoring"]) <= HELM_RUN_MONITORING
    assert daemon["runMonitoring"]["enabled"] is True
    assert daemon["runRetries"] == {
        "enabled": True,
        "maxRetries": instance["run_retries"]["max_retries"],
        "retryOnAssetOrOpFailure": False,
    }

    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert set(concurrency) <= {"enabled", "pools", "runs"}
    assert set(concurrency["runs"]) <= HELM_RUNS
    # No pool limit of its own, like deploy/dagster.yaml: the runs set `kling` from
    # KLING_MAX_CONCURRENCY (the user code's Secret), so the cluster cannot disagree with it.
    assert not concurrency.get("pools"), concurrency.get("pools")
    # The chart renders these to the same dagster.yaml block as deploy/dagster.yaml's.
    assert {
        "runs": {
            "max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
            "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"],
        },
    } == instance["concurrency"]
    assert values["telemetry"] == {"enabled": False}


def test_ecs_instance_config_is_valid_for_dagster_and_the_ecs_launcher() -> None:
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_aws.ecs import EcsRunLauncher

    config, _ = dagster_instance_config(str(DEPLOY / "ecs"), "dagster.yaml")
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    launcher = validate_config(EcsRunLauncher.config_type(), config["run_launcher"]["config"])
    assert launcher.success, [e.message for e in launcher.errors]
    assert config["run_launcher"]["config"]["secrets_tag"] == "scene-pipeline"
    # Everything but the launcher is the docker-compose instance.
    deployed = load_yaml(DEPLOY / "dagster.yaml")
    for key in ("storage", "run_coordinator", "concurrency", "run_retries", "telemetry"):
        assert config[key] == deployed[key], key
    assert config["run_monitoring"]["max_resume_run_attempts"] >= 1  # ECS can resume


def test_ecs_task_definition_is_what_register_task_definition_accepts() -> None:
    import botocore.session
    from botocore.validate import ParamValidator

    task = json.loads((DEPLOY / "ecs" / "task-definition.json").read_text("utf-8"))
    shape = (
        botocore.session.get_session()
        .get_service_model("ecs")
        .operation_model("RegisterTaskDefinition")
        .input_shape
    )
    report = ParamValidator().validate(task, shape)
    assert not report.has_errors(), report.generate_report()

    (container,) = task["containerDefinitions"]
    assert container["command"][:3] == ["dagster", "code-server", "start"]
    environment = {e["name"]: e["value"] for e in container["environment"]}
    secret_names = {s["name"] for s in container["secrets"]}
    assert "DAGSTER_CURRENT_IMAGE" in environment  # the image EcsRunLauncher gives each run
    assert environment["DAGSTER_CURRENT_IMAGE"] == container["image"]
    assert INSTANCE_ENV <= set(environment) | secret_names
    # Secrets come from Secrets Manager, never as plain environment values.
    assert not [name for name in environment if SECRET_NAME.search(name)]
    assert all(s["valueFrom"].startswith("arn:aws:secretsmanager:") for s in container["secrets"])
