"""Settings: every variable is parsed once, the same way for every entry point; a bad value is
one line that names the variable; the documentation lists exactly what the code reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from scene_pipeline.cli import main
from scene_pipeline.settings import ConfigurationError, Settings, variable_names

from .conftest import EXAMPLES, REPO

# One bad value per kind of check (a value the variable's parser refuses).
BAD_VALUES = [
    ("KLING_MAX_CONCURRENCY", "0"),
    ("KLING_MAX_CONCURRENCY", "five"),
    ("KLING_TASK_TIMEOUT_SECONDS", "-1"),
    ("KLING_MODEL", "kling-v9"),
    ("KLING_REFERENCE_MODEL", "kling-v1"),
    ("SCENE_PIPELINE_IMAGE_PROVIDER", "dall-e-9"),
    ("SCENE_PIPELINE_PROMPT_MAX_CHARS", "50"),
    ("SCENE_PIPELINE_CANDIDATES", "5"),
    ("SCENE_PIPELINE_CHARACTER_REFERENCES", "maybe"),
    ("SCENE_PIPELINE_REDRAW_STALE", "2"),
    ("SCENE_PIPELINE_INBOX_PREFIX", "results/"),
    ("SCENE_PIPELINE_INBOX_PREFIX", "scripts/incoming"),
    ("SCENE_PIPELINE_INBOX_TICK_SECONDS", "0"),
    ("SCENE_PIPELINE_NIGHTLY_CRON", "0 3 * *"),
    ("SCENE_PIPELINE_NIGHTLY_TIMEZONE", "Mars/Olympus"),
    ("SCENE_PIPELINE_NIGHTLY_MAX_IMAGES", "-1"),
]
IDS = [f"{name}={value}" for name, value in BAD_VALUES]


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    return str(caught.value)


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=IDS)
def test_a_bad_value_is_refused_in_one_line_naming_the_variable(name: str, value: str) -> None:
    line = refusal({name: value})
    assert "\n" not in line and line.strip() == line
    assert line.startswith(f"{name}="), line
    assert len(line) < 300


def test_the_first_bad_variable_is_named_when_several_are_bad() -> None:
    line = refusal({"KLING_MAX_CONCURRENCY": "0", "SCENE_PIPELINE_CANDIDATES": "9"})
    assert "\n" not in line
    assert "KLING_MAX_CONCURRENCY" in line or "SCENE_PIPELINE_CANDIDATES" in line


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"SCENE_PIPELINE_IMAGE_PROVIDER": "kling"},
            ["SCENE_PIPELINE_IMAGE_PROVIDER", "KLING_ACCESS_KEY"],
        ),
        (
            {"SCENE_PIPELINE_IMAGE_PROVIDER": "openai-images"},
            ["SCENE_PIPELINE_IMAGE_PROVIDER", "OPENAI_IMAGES_API_KEY"],
        ),
        (
            {
                "KLING_ACCESS_KEY": "ak",
                "KLING_SECRET_KEY": "sk",
                "KLING_MAX_CONCURRENCY": "2",
                "SCENE_PIPELINE_CANDIDATES": "3",
            },
            ["SCENE_PIPELINE_CANDIDATES", "KLING_MAX_CONCURRENCY"],
        ),
    ],
    ids=["kling-without-keys", "openai-images-without-key", "candidates-over-slots"],
)
def test_settings_that_contradict_each_other_name_both_sides(
    env: dict[str, str], names: list[str]
) -> None:
    line = refusal(env)
    assert "\n" not in line
    for name in names:
        assert name in line, line


def test_a_refusal_never_shows_a_key() -> None:
    line = refusal(
        {
            "KLING_ACCESS_KEY": "ak-very-secret",
            "KLING_SECRET_KEY": "sk-very-secret",
            "OPENAI_API_KEY": "oai-very-secret",
            "KLING_MAX_CONCURRENCY": "0",
        }
    )
    assert "very-secret" not in line


def test_blank_values_count_as_unset() -> None:
    settings = Settings.from_env(
        {
            "S3_BUCKET_NAME": "",
            "OPENAI_API_KEY": "   ",
            "KLING_ACCESS_KEY": "",
            "KLING_SECRET_KEY": " ",
            "SCENE_PIPELINE_IMAGE_PROVIDER": "",
            "KLING_MAX_CONCURRENCY": " ",
            "SCENE_PIPELINE_CANDIDATES": "",
            "SCENE_PIPELINE_CHARACTER_REFERENCES": "",
            "SCENE_PIPELINE_NIGHTLY_TIMEZONE": "",
        }
    )
    assert settings == Settings.from_env({})
    assert settings.storage == "local" and settings.prompt_writer == "offline"
    assert settings.image_maker == "offline" and settings.offline
    assert settings.kling_max_concurrency == 5 and settings.candidates == 1
    assert settings.character_references is True
    assert settings.nightly_timezone == "Asia/Seoul"


def test_values_are_read_and_trimmed() -> None:
    settings = Settings.from_env(
        {
            "S3_BUCKET_NAME": " scenes ",
            "KLING_ACCESS_KEY": "ak",
            "KLING_SECRET_KEY": "sk",
            "KLING_MAX_CONCURRENCY": " 8 ",
            "SCENE_PIPELINE_CANDIDATES": "3",
            "OPENAI_API_KEY": "oai",
        }
    )
    assert settings.storage == "s3" and settings.s3_bucket_name == "scenes"
    assert settings.image_maker == "kling" and settings.prompt_writer == "openai"
    assert not settings.offline
    assert settings.kling_max_concurrency == 8 and settings.candidates == 3


@pytest.mark.parametrize(
    "name", ["SCENE_PIPELINE_CHARACTER_REFERENCES", "SCENE_PIPELINE_REDRAW_STALE"]
)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("on", True),
        ("ON", True),
        ("true", True),
        ("1", True),
        ("yes", True),
        ("off", False),
        ("Off", False),
        ("false", False),
        ("0", False),
        ("no", False),
    ],
)
def test_booleans_are_on_or_off(name: str, raw: str, expected: bool) -> None:
    field = {
        "SCENE_PIPELINE_CHARACTER_REFERENCES": "character_references",
        "SCENE_PIPELINE_REDRAW_STALE": "redraw_stale",
    }[name]
    assert getattr(Settings.from_env({name: raw}), field) is expected


def test_describe_says_what_runs_offline_and_never_shows_credentials() -> None:
    offline = "\n".join(Settings.from_env({}).describe())
    assert "OFFLINE template writer" in offline and "OFFLINE placeholder maker" in offline
    real = Settings.from_env(
        {
            "OPENAI_API_KEY": "oai-key-secret",
            "OPENAI_BASE_URL": "https://user:pw-secret@proxy.example/v1?api-key=q-secret",
            "S3_BUCKET_NAME": "b",
            "AWS_ENDPOINT_URL": "http://ak:sk-secret@127.0.0.1:9000",
            "KLING_ACCESS_KEY": "ak-key-secret",
            "KLING_SECRET_KEY": "sk-key-secret",
            "SCENE_PIPELINE_CANDIDATES": "2",
            "SCENE_PIPELINE_CHARACTER_REFERENCES": "off",
        }
    ).describe()
    text = "\n".join(real)
    assert "OFFLINE" not in text
    assert "proxy.example/v1" in text and "127.0.0.1:9000" in text and "s3://b" in text
    assert "character references off" in text and "2 candidate(s)" in text
    assert "secret" not in text


# -- the same refusal through every entry point ----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["run", str(EXAMPLES / "bus_stop_request.json")],
        ["status", "2024"],
        ["pick", "2024", "1", "1"],
        ["submit", str(EXAMPLES / "bus_stop_request.json")],
    ],
    ids=["run", "status", "pick", "submit"],
)
def test_the_cli_refuses_a_bad_value_with_that_line_and_exit_2(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local = tmp_path / "storage"
    monkeypatch.setenv("SCENE_PIPELINE_LOCAL_DIR", str(local))
    monkeypatch.setenv("SCENE_PIPELINE_CANDIDATES", "7")
    expected = refusal({"SCENE_PIPELINE_CANDIDATES": "7"})

    code = main(args)

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.splitlines() == [f"configuration error: {expected}"]
    assert not local.exists()  # nothing was read or written


def test_the_code_location_refuses_a_bad_value_with_that_line(tmp_path: Path) -> None:
    expected = refusal({"KLING_MAX_CONCURRENCY": "0"})
    done = subprocess.run(
        [sys.executable, "-c", "import scene_pipeline.definitions"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"KLING_MAX_CONCURRENCY": "0", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode != 0
    assert f"ConfigurationError: {expected}" in done.stderr.splitlines()[-1]


# -- what the documentation lists -------------------------------------------------------------

OUR_PREFIXES = re.compile(r"\b(?:SCENE_PIPELINE|KLING|OPENAI)_[A-Z0-9_]+\b")


def compose_variables() -> set[str]:
    """Variables docker-compose.yml itself interpolates (the image tag, Postgres): compose's,
    not the pipeline's."""
    text = (REPO / "docker-compose.yml").read_text("utf-8")
    return set(re.findall(r"\$\{([A-Z0-9_]+)", text))


def env_example_names() -> set[str]:
    """Every variable .env.example lists, set or commented out."""
    names = set()
    for line in (REPO / ".env.example").read_text("utf-8").splitlines():
        found = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if found:
            names.add(found.group(1))
    return names


def readme_table_names() -> set[str]:
    """Variables in the first column of the tables of README.md's Configuration section."""
    text = (REPO / "README.md").read_text("utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("|"):
            first = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first))
    return names


def test_env_example_lists_every_variable_the_settings_read() -> None:
    missing = sorted(set(variable_names()) - env_example_names())
    assert not missing, f".env.example does not list: {missing}"


def test_env_example_names_no_pipeline_variable_the_settings_do_not_read() -> None:
    text = (REPO / ".env.example").read_text("utf-8")
    unknown = set(OUR_PREFIXES.findall(text)) - set(variable_names()) - compose_variables()
    assert not unknown, f".env.example names variables nothing reads: {sorted(unknown)}"


def test_the_readme_configuration_tables_list_every_variable_the_settings_read() -> None:
    missing = sorted(set(variable_names()) - readme_table_names())
    assert not missing, f"README.md's configuration tables do not list: {missing}"


def test_the_readme_names_no_pipeline_variable_the_settings_do_not_read() -> None:
    text = (REPO / "README.md").read_text("utf-8")
    unknown = set(OUR_PREFIXES.findall(text)) - set(variable_names()) - compose_variables()
    assert not unknown, f"README.md names variables nothing reads: {sorted(unknown)}"
