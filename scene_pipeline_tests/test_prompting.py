"""Which characters a scene involves: it decides their looks in the prompt and the hash."""

import pytest

from scene_pipeline.contract.script import parse_script
from scene_pipeline.providers.prompting import involved_characters


def involved(text: str, names: list[str]) -> list[str]:
    script, _ = parse_script(
        (
            '{"script_metadata": {"script_id": "s", "title": "t", "characters": ['
            + ",".join(f'{{"name": "{n}"}}' for n in names)
            + ']}, "scenes": [{"scene_id": 1, "audios": [{"type": "narration", "text": "'
            + text
            + '"}]}]}'
        ).encode()
    )
    return [c.name for c in involved_characters(script, script.scenes[0])]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("나는 버스를 탔다.", ["나"]),
        ("기사님도 짜증이 나셨는지 물었다.", []),  # 나셨는지 is a verb, not 나
        ("이상한 할아버지께서 벨을 눌렀다.", ["이상한 할아버지"]),
        ("버스 기사님, 안녕하세요!", ["버스 기사님"]),
        ("Minsu smiled.", ["Minsu"]),
        ("Minsuk smiled.", []),
    ],
)
def test_a_name_counts_as_a_whole_word_with_its_particles(text: str, expected: list[str]) -> None:
    names = ["나", "이상한 할아버지", "버스 기사님", "Minsu"]
    assert involved(text, names) == expected


def test_the_narrator_is_not_in_scenes_that_only_use_the_verb(sample_path) -> None:
    script, _ = parse_script(sample_path.read_bytes())
    for scene_id in ("10", "12"):
        names = [c.name for c in involved_characters(script, script.scene(scene_id))]
        assert "나" not in names, scene_id
