"""The deployed topology, in CI: docker-compose.yml's services run as local processes.

`docker compose up` needs a Docker daemon, which CI does not have; what the stack does can
still be run. scene_pipeline_tests/stack.py reads each service's command and environment from
docker-compose.yml (and the image's ENV from the Dockerfile) and starts, on 127.0.0.1:

- the code server (`user_code`: `dagster code-server start ... -m scene_pipeline.definitions`),
  the only service with the pipeline's settings and keys, which starts every run;
- the webserver and the daemon, with the Postgres connection only, loading the code location
  over gRPC from a copy of deploy/workspace.yaml that names the code server's local port;

all on deploy/dagster.yaml (copied into DAGSTER_HOME, as the image does) on a real PostgreSQL,
with S3 on moto's server and the fake KLING (an account of 2 parallel tasks) and the fake
OpenAI as the providers. Then, as a user would, three scripts and one invalid file are put into
the bucket's inbox, and what the user sees is checked: every valid script was drawn by a run
that the sensor requested and the queue launched (SUCCESS in Postgres), its manifest is
complete, a script dropped again (changed) while its run draws gets a second run that waits
in the queue until the first has finished (one run per script), the invalid file got its
rejection report, the `kling` pool is KLING_MAX_CONCURRENCY
and kept the account from refusing a task, the webserver serves the runs, and no secret is in
any service's output or in the steps' compute logs.

The waits are long (a cold start of three Dagster processes and three runs takes a while on
a busy 2-core machine) and each says what it was waiting for; nothing here asserts how fast.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from scene_pipeline.constants import TAG_LAUNCHED_BY

from .fakes.kling import FakeKlingServer
from .fakes.openai import FakeOpenAIServer
from .postgres import PostgresServer, postgres_fixture  # noqa: F401 (the `postgres` fixture)
from .resilience import fake_env, script_document
from .stack import (
    REPO,
    Service,
    executable,
    free_port,
    host_path,
    image_environment,
    kill_pids,
    load_compose,
    port_open,
    processes_with_env,
    service_environment,
    wait_for,
    with_option,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

KLING_LIMIT = 2
SCRIPT_IDS = ("stack-a", "stack-b", "stack-c")
SCENES = 3
REDROPPED = SCRIPT_IDS[0]  # dropped again, changed, while its first run draws
CHANGED = "wistful"  # scene 1's new emotion: the fake OpenAI copies it into the prompt
INBOX = "scripts/incoming/"
INVALID = "not-a-script.json"
SENSOR = "script_inbox_sensor"
# Distinctive keys, so that finding one in a log means it leaked.
OPENAI_KEY = "oai-stack-Rk3Tq9Lm2Wx7Pz4Nc8"
KLING_ACCESS_KEY = "kling-ak-stack-Qe5Yu1Io8Pa3Sd6F"
KLING_SECRET_KEY = "kling-sk-stack-Gh2Jk7Lz4Xc9Vb1Nm6Qw3Er8T"
AWS_ACCESS_KEY = "AKIASTACKTEST4Q7W2E9R"
AWS_SECRET_KEY = "awsStackSecret/Mn42Bv81Cx/Zl73Kj09Hg56Fd"
JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")
# The fake KLING's pictures are tiny by default; its portraits go back to it as references,
# which (like KLING's) must be at least 300 px on each side.
IMAGE_LONG_SIDE = 640

START_TIMEOUT = 180  # code server, webserver and daemon up
DRAWN_TIMEOUT = 420  # every script drawn after the drop

# A run that went through the queue: enqueued (sensor), starting (the daemon's
# QueuedRunCoordinator dequeued it and asked the code server to launch it), started, done.
RUN_LIFECYCLE = [
    DagsterEventType.RUN_ENQUEUED,
    DagsterEventType.RUN_STARTING,
    DagsterEventType.RUN_START,
    DagsterEventType.RUN_SUCCESS,
]

GRAPHQL_RUNS = """
{ runsOrError { __typename ... on Runs { results { runId status tags { key value } } } } }
"""
GRAPHQL_WORKSPACE = """
{ workspaceOrError { __typename ... on Workspace {
    locationEntries { name locationOrLoadError { __typename } } } } }
"""


def compose_services() -> dict[str, Any]:
    services = load_compose()["services"]
    return {name: services[name] for name in ("user_code", "webserver", "daemon")}


def local_workspace(path: Path, compose_port: str, port: int) -> str:
    """deploy/workspace.yaml with the code server's container address made local."""
    workspace = yaml.safe_load(host_path("/opt/dagster/app/deploy/workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    grpc = entry["grpc_server"]
    assert grpc["host"] == "user_code" and str(grpc["port"]) == compose_port, grpc
    grpc.update(host="127.0.0.1", port=port)
    path.write_text(yaml.safe_dump(workspace), "utf-8")
    return str(path)


def build_services(
    logs: Path,
    home: Path,
    workspace_dir: Path,
    dotenv: dict[str, str],
    postgres: PostgresServer,
    grpc_port: int,
    web_port: int,
) -> dict[str, Service]:
    """The three Dagster services with compose's commands and environments, made local."""
    services = compose_services()
    image = image_environment()
    assert image["DAGSTER_HOME"] == "/opt/dagster/dagster_home", image
    base = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home.parent / "user-home"),
        "LANG": "C.UTF-8",
        **image,
        "DAGSTER_HOME": str(home),
    }
    code_command = services["user_code"]["command"]
    compose_grpc_port = code_command[code_command.index("-p") + 1]
    workspace_path = "/opt/dagster/app/deploy/workspace.yaml"
    workspace = local_workspace(workspace_dir / "workspace.yaml", compose_grpc_port, grpc_port)
    commands = {
        "user_code": with_option(
            with_option(code_command, "-h", "127.0.0.1"), "-p", str(grpc_port)
        ),
        "webserver": with_option(
            with_option(
                with_option(services["webserver"]["command"], "-h", "127.0.0.1"),
                "-p",
                str(web_port),
            ),
            "-w",
            workspace,
        ),
        "daemon": with_option(services["daemon"]["command"], "-w", workspace),
    }
    for name in ("webserver", "daemon"):
        command = services[name]["command"]
        assert command[command.index("-w") + 1] == workspace_path, (name, command)
    built = {}
    for name, service in services.items():
        env = service_environment(service, dotenv)
        # The container network: the `postgres` service on its container port.
        assert (env["DAGSTER_PG_HOST"], env["DAGSTER_PG_PORT"]) == ("postgres", "5432"), name
        env.update(DAGSTER_PG_HOST=postgres.host, DAGSTER_PG_PORT=str(postgres.port))
        argv = [executable(commands[name][0]), *commands[name][1:]]
        built[name] = Service(name, argv, {**base, **env}, logs)
    return built


def healthcheck(service: dict[str, Any], port: int) -> list[str]:
    """The service's compose healthcheck command, pointed at the local port."""
    test = list(service["healthcheck"]["test"])
    assert test[0] == "CMD", test
    argv = test[1:]
    if argv[:3] == ["dagster", "api", "grpc-health-check"]:
        # In the container `localhost` is the code server itself.
        return [executable("dagster"), *with_option(argv, "-p", str(port))[1:], "-h", "127.0.0.1"]
    assert argv[0] == "python" and "localhost:3000" in argv[-1], argv
    return [sys.executable, *argv[1:-1], argv[-1].replace("localhost:3000", f"127.0.0.1:{port}")]


def healthy(argv: list[str], env: dict[str, str]) -> bool:
    try:
        return subprocess.run(argv, env=env, capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (127.0.0.1)
        return response.status, json.loads(response.read())


def read_json(s3: Any, bucket: str, key: str) -> Any | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def leaks_in(text: str, tokens: list[str], signatures: list[str]) -> list[str]:
    secrets = [OPENAI_KEY, KLING_ACCESS_KEY, KLING_SECRET_KEY, AWS_SECRET_KEY]
    found = [f"key {s[:10]}..." for s in secrets if s in text]
    found += [f"KLING token {t[:12]}..." for t in set(tokens) if t.split(".")[1] in text]
    found += [f"JWT {m.group()[:16]}..." for m in JWT_LIKE.finditer(text)]
    found += [f"image URL signature {s[:8]}..." for s in signatures if s in text]
    if "signature=" in text:
        found.append("a signed URL (signature=)")
    return found


def test_the_compose_stack_draws_the_scripts_dropped_into_the_inbox(
    postgres: PostgresServer,
    s3_endpoint: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dbname = postgres.create_database("deployed_stack")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")  # as the image does
    (tmp_path / "user-home").mkdir()
    grpc_port, web_port = free_port(), free_port()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    # This process reads the instance the stack writes, as the webserver does.
    for name, value in postgres.dagster_env(dbname).items():
        monkeypatch.setenv(name, value)

    with (
        FakeOpenAIServer(api_key=OPENAI_KEY) as openai,
        FakeKlingServer(
            access_key=KLING_ACCESS_KEY,
            secret_key=KLING_SECRET_KEY,
            task_latency_seconds=2.0,
            concurrency_limit=KLING_LIMIT,
            image_long_side=IMAGE_LONG_SIDE,
        ) as kling,
    ):
        # The operator's .env (and shell): compose hands each service its share of it.
        dotenv = {
            "DAGSTER_PG_USERNAME": postgres.user,
            "DAGSTER_PG_PASSWORD": postgres.password,
            "DAGSTER_PG_DB": dbname,
            "S3_BUCKET_NAME": s3_bucket,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3_endpoint,
            "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY,
            **fake_env(
                openai,
                kling,
                KLING_MAX_CONCURRENCY=str(KLING_LIMIT),
                SCENE_PIPELINE_INBOX_INTERVAL_SECONDS="2",
            ),
        }
        services = build_services(
            tmp_path / "logs", home, tmp_path, dotenv, postgres, grpc_port, web_port
        )
        user_code, webserver, daemon = (services[n] for n in ("user_code", "webserver", "daemon"))
        compose = compose_services()
        # Least privilege, as compose gives it: no pipeline setting or key outside user_code.
        for service in (webserver, daemon):
            assert not {k for k in dotenv if k in service.env and not k.startswith("DAGSTER_")}
        assert user_code.env["KLING_SECRET_KEY"] == KLING_SECRET_KEY

        running: list[Service] = []
        try:
            # depends_on: user_code healthy, then the webserver and the daemon.
            running.append(user_code)
            user_code.start()
            check = healthcheck(compose["user_code"], grpc_port)
            wait_for(
                lambda: port_open(grpc_port) and healthy(check, user_code.env),
                START_TIMEOUT,
                "the code server's compose healthcheck (dagster api grpc-health-check)",
                running,
            )
            for service in (webserver, daemon):
                running.append(service)
                service.start()
            check = healthcheck(compose["webserver"], web_port)
            wait_for(
                lambda: port_open(web_port) and healthy(check, webserver.env),
                START_TIMEOUT,
                "the webserver's compose healthcheck (GET /server_info)",
                running,
            )

            def drop(script_id: str, emotions: dict[int, str] | None = None) -> None:
                document = script_document(script_id, SCENES, emotions=emotions)
                body = json.dumps(document, ensure_ascii=False).encode()
                s3.put_object(Bucket=s3_bucket, Key=f"{INBOX}{script_id}.json", Body=body)

            # A user drops three scripts and a file that is not one into the inbox.
            for script_id in SCRIPT_IDS:
                drop(script_id)
            s3.put_object(
                Bucket=s3_bucket,
                Key=f"{INBOX}{INVALID}",
                Body=json.dumps({"script_metadata": {"script_id": "no scenes!"}}).encode(),
            )

            with DagsterInstance.from_config(str(home)) as instance:
                # While the first script's run draws, the backend drops a new version of it
                # (scene 1 changed): its run must wait in the queue for the first one.
                wait_for(
                    lambda: any(
                        r.status == DagsterRunStatus.STARTED
                        for r in instance.get_runs()
                        if r.tags.get("dagster/partition") == REDROPPED
                    ),
                    DRAWN_TIMEOUT,
                    f"a started run of {REDROPPED}",
                    running,
                )
                drop(REDROPPED, {1: CHANGED})

                def manifests() -> dict[str, Any]:
                    return {
                        sid: read_json(s3, s3_bucket, f"results/{sid}/manifest.json")
                        for sid in SCRIPT_IDS
                    }

                def runs_by_script() -> dict[str, list[Any]]:
                    found: dict[str, list[Any]] = {sid: [] for sid in SCRIPT_IDS}
                    for run in instance.get_runs():
                        partition = run.tags.get("dagster/partition")
                        if partition in found:
                            found[partition].append(run)
                    return found

                def progress() -> str:
                    statuses = {sid: m and m["status"] for sid, m in manifests().items()}
                    runs = {
                        sid: [r.status.value for r in rs] for sid, rs in runs_by_script().items()
                    }
                    rejected = read_json(s3, s3_bucket, f"scripts/rejected/{INVALID}.error.json")
                    return (
                        f"every script drawn: manifests {statuses}, runs {runs}, rejection"
                        f" report {'written' if rejected else 'missing'}; fake KLING"
                        f" {len(kling.tasks)} task(s), answers {dict(kling.answers)}"
                    )

                def everything_done() -> bool:
                    done = all(
                        m is not None and m["status"] == "complete" for m in manifests().values()
                    )
                    done = done and all(
                        len(rs) == (2 if sid == REDROPPED else 1)
                        and all(r.status == DagsterRunStatus.SUCCESS for r in rs)
                        for sid, rs in runs_by_script().items()
                    )
                    report = f"scripts/rejected/{INVALID}.error.json"
                    return done and read_json(s3, s3_bucket, report) is not None

                wait_for(everything_done, DRAWN_TIMEOUT, progress, running, interval=2)

                # -- what the user sees ------------------------------------------------------
                drawn = manifests()
                for script_id, manifest in drawn.items():
                    assert manifest["status"] == "complete", (script_id, manifest)
                    # The real clients (against the fakes), not the offline placeholders: the
                    # settings reached the code server and its runs.
                    assert manifest["offline"] is False, (script_id, manifest["providers"])
                    assert len(manifest["scenes"]) == SCENES
                    for scene in manifest["scenes"]:
                        key = scene["image_s3url"].removeprefix(f"s3://{s3_bucket}/")
                        s3.head_object(Bucket=s3_bucket, Key=key)  # the picture is there
                report = read_json(s3, s3_bucket, f"scripts/rejected/{INVALID}.error.json")
                assert report["errors"], report
                assert not read_json(s3, s3_bucket, "results/no scenes!/manifest.json")

                # -- the runs, in Postgres: requested by the sensor, launched by the queue ---
                run_ids = []
                for script_id, runs in runs_by_script().items():
                    assert len(runs) == (2 if script_id == REDROPPED else 1), (script_id, runs)
                    for run in runs:
                        run_ids.append(run.run_id)
                        assert run.status == DagsterRunStatus.SUCCESS, (script_id, run.status)
                        assert run.tags.get("dagster/sensor_name") == SENSOR, run.tags
                        assert run.tags.get(TAG_LAUNCHED_BY) == "sensor", run.tags
                        # Queued in Postgres, then dequeued and launched by the daemon.
                        lifecycle = [
                            e.dagster_event.event_type
                            for e in instance.all_logs(run.run_id, of_type=set(RUN_LIFECYCLE))
                            if e.dagster_event is not None
                        ]
                        assert lifecycle == RUN_LIFECYCLE, (script_id, lifecycle)
                # One run per script at a time: the re-drop's run was queued while the first
                # run drew, and the queue started it only once the first had finished.
                first, second = sorted(
                    (instance.get_run_record_by_id(r.run_id) for r in runs_by_script()[REDROPPED]),
                    key=lambda record: record.create_timestamp,
                )
                assert second.create_timestamp.timestamp() < first.end_time, (
                    "the re-drop's run was created after the first run ended: the queue's"
                    " one-run-per-script limit was not put to the test"
                )
                assert first.end_time <= second.start_time, (first.end_time, second.start_time)
                scene_1 = next(s for s in drawn[REDROPPED]["scenes"] if s["scene_id"] == "1")
                assert CHANGED in scene_1["image_prompt"], scene_1  # the new version was drawn
                # None for the invalid file; two for the re-dropped script.
                assert len(instance.get_runs()) == len(SCRIPT_IDS) + 1

                # -- the KLING pool, in Postgres ---------------------------------------------
                pool = instance.event_log_storage.get_concurrency_info("kling")
                assert pool.slot_count == KLING_LIMIT
                assert not pool.claimed_slots and not pool.pending_steps

            # -- the webserver: alive, and it serves the same runs from Postgres ----------
            status, info = http(f"http://127.0.0.1:{web_port}/server_info")
            assert status == 200 and info.get("dagster_webserver_version"), info
            status, answer = http(f"http://127.0.0.1:{web_port}/graphql", {"query": GRAPHQL_RUNS})
            listed = {r["runId"]: r["status"] for r in answer["data"]["runsOrError"]["results"]}
            assert listed == dict.fromkeys(run_ids, "SUCCESS"), listed
            status, answer = http(
                f"http://127.0.0.1:{web_port}/graphql", {"query": GRAPHQL_WORKSPACE}
            )
            entries = answer["data"]["workspaceOrError"]["locationEntries"]
            assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
                ("scene_pipeline", "RepositoryLocation")
            ], entries
        finally:
            for service in reversed(running):
                service.stop()
            # Anything of the stack that left its process group (none expected).
            kill_pids(processes_with_env("DAGSTER_HOME", str(home)))

        refused = kling.answers[(429, 1303)]
        most_in_flight = kling.max_in_flight
        tokens = list(kling.tokens)
        signatures = [t.signature for t in kling.tasks]
        references = len(kling.tasks_of("multi-image2image"))

    # -- the KLING account: never over its limit, though the runs drew at once ------------
    assert most_in_flight >= 2, "KLING tasks never overlapped: the limit was not put to the test"
    assert refused == 0, f"the fake KLING refused {refused} task(s) over the account's limit"
    assert references, "no scene was drawn with its characters' reference portraits"

    # -- no secret in any service's output, nor in the steps' compute logs --------------------
    assert tokens and signatures  # there were tokens and signed URLs to leak
    leaks = {}
    outputs = {s.name: s.output() for s in services.values()}
    outputs |= {
        str(p.relative_to(home)): p.read_text("utf-8", "replace")
        for p in (home / "storage").rglob("*")
        if p.is_file()
    }
    for where, text in outputs.items():
        found = leaks_in(text, tokens, signatures)
        if postgres.password in text:
            found.append("the Postgres password")
        if found:
            leaks[where] = found
    assert not leaks, leaks
    # The services did log (the check above looked at something).
    assert "script_inbox_sensor" in outputs["daemon"], outputs["daemon"][-2000:]
