"""The command line sees the plugin: `decodekit strategies` lists it, `decodekit verify` passes it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from decodekit.cli import main


def test_decodekit_strategies_lists_it():
    done = subprocess.run([sys.executable, "-m", "decodekit.cli", "strategies"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "prompt-lookup:" in done.stdout and "[plugin: prompt-lookup]" in done.stdout
    assert "max_ngram=3" in done.stdout and "num_pred_tokens=10" in done.stdout


@pytest.mark.realmodel
def test_decodekit_verify_passes_on_the_default_model(tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        '{"question_id": 1, "category": "copy", "turns": ["Repeat this sentence twice: the quick brown fox '
        'jumps over the lazy dog."]}\n'
        '{"question_id": 2, "category": "summary", "turns": ["Summarize: The city council met on Monday to '
        'discuss the new park. The council approved the park, which will open next spring near the river."]}\n'
        '{"question_id": 3, "category": "qa", "turns": ["Name three primary colors."]}\n')
    rc = main(["verify", "--strategy", "prompt-lookup", "--questions", str(questions), "--limit", "3",
               "--max-new-tokens", "32"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 real mismatches" in out
