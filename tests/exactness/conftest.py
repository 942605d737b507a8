import pytest

from broken_strategies import OneTooMany, RawArgmax, WrongKV


@pytest.fixture
def broken(decodekit_register):
    """Register both broken strategies for one test; returns their names."""
    decodekit_register(OneTooMany)
    decodekit_register(WrongKV)
    decodekit_register(RawArgmax)
    return {"one-too-many": OneTooMany.name, "wrong-kv": WrongKV.name, "raw-argmax": RawArgmax.name}


@pytest.fixture
def questions(tmp_path):
    """Two short real prompts in Spec-Bench's format (one invites copying, one does not)."""
    path = tmp_path / "questions.jsonl"
    path.write_text(
        '{"question_id": 1, "category": "repeat", "turns": ["Repeat this sentence three times: '
        'the quick brown fox jumps over the lazy dog."]}\n'
        '{"question_id": 2, "category": "qa", "turns": ["What is the capital of France? Answer in one sentence."]}\n'
    )
    return path
