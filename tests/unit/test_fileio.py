"""Result files are written whole or not at all."""

import pytest

from decodekit.fileio import replacing, write_text


def test_write_text_replaces_the_file_whole(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "golden.jsonl"
    path.write_text("old")
    with pytest.raises(error):
        with replacing(path) as temporary:
            temporary.write_text("half of the new")
            raise error
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["golden.jsonl"]
