"""Which characters a scene involves: it decides their looks in the prompt and the hash."""

import json

import pytest

from scene_pipeline.contract.script_parsing import parse_script
from scene_pipeline.providers.base import CharacterLook, ScenePromptRequest
from scene_pipeline.providers.offline import TemplatePromptWriter
from scene_pipeline.providers.prompting import cap_prompt, involved_characters


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


@pytest.mark.parametrize("limit", [100, 180, 1500])
def test_a_capped_prompt_fits_and_ends_at_a_sentence_or_a_word(limit: int) -> None:
    text = " ".join(
        f"Sentence {i} describes the rooftop, the grey cat, and the brass key." for i in range(40)
    )
    capped = cap_prompt(text, limit)
    assert 0.6 * limit <= len(capped) <= limit
    assert text.startswith(capped) and capped.endswith(".")  # whole sentences only
    assert cap_prompt("one two three four five six", 20) == "one two three four"  # whole words
    assert cap_prompt("short  and\n\nspaced ", limit) == "short and spaced"


def test_the_template_prompt_describes_characters_by_look_not_by_name() -> None:
    script, _ = parse_script(
        json.dumps(
            {
                "script_metadata": {
                    "script_id": "s",
                    "title": "t",
                    "characters": [{"name": "민수", "gender": 0, "description": "안경"}],
                },
                "scenes": [
                    {
                        "scene_id": 1,
                        "audios": [{"type": "dialogue", "character": "민수", "text": "안녕"}],
                    }
                ],
                "options": {"style": "ghibli"},
            },
            ensure_ascii=False,
        ).encode()
    )
    scene = script.scenes[0]
    written = TemplatePromptWriter().write_scene_prompt(
        ScenePromptRequest(
            script_title=script.title,
            scene=scene,
            previous_scene=None,
            next_scene=None,
            characters=involved_characters(script, scene),
            looks=[CharacterLook(name="민수", look="a man in round glasses and a navy suit")],
            style=script.options.style,
            aspect_ratio=script.options.aspect_ratio,
            max_prompt_chars=300,
        )
    )
    assert "a man in round glasses and a navy suit says" in written.image_prompt
    assert "민수" not in written.image_prompt
    assert len(written.image_prompt) <= 300
    assert written.characters_present == ["민수"]
    # The other known styles are kept out of the picture.
    assert "pixar style" in written.negative_prompt and "ghibli" not in written.negative_prompt
