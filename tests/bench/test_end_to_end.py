"""One tiny bench run end to end on a tiny random model, and the CLI's early errors."""

import json

import pytest

from decodekit.bench import Question, check_document, run_bench
from decodekit.bench.results import FIGURE_KEYS
from decodekit.cli import main

PROMPTS = [[1, 5, 7, 9, 5, 7, 9, 5, 7], [1, 3, 4, 3, 4, 3, 4, 3]]


def test_tiny_bench_run_writes_every_output(tiny, tmp_path, chunk_strategy, synthetic_costs):
    methods = ["hf-greedy", "greedy", "hf-prompt-lookup:num_tokens=4", f"{chunk_strategy}:k=2"]
    doc = run_bench(tiny, prompts=PROMPTS, methods=methods, max_new_tokens=12, progress=False,
                    sweep=chunk_strategy, sweep_grid="k=1,3", out=tmp_path, command=["decodekit", "bench", "test"])
    check_document(doc)
    assert [m["label"] for m in doc["methods"]] == methods + [f"{chunk_strategy}:k=1", f"{chunk_strategy}:k=3"]
    assert len(doc["records"]) == len(PROMPTS) * len(doc["methods"])
    overall = doc["summary"]["overall"]
    for label, figs in overall.items():
        assert set(FIGURE_KEYS) <= set(figs)
        assert figs["identical_fraction"] == 1.0, label  # every method here is exact
        assert figs["tokens_per_second"] > 0
    assert overall["hf-greedy"]["speedup"] == pytest.approx(1.0)
    assert overall["hf-greedy"]["mean_tokens_per_forward"] == pytest.approx(1.0)  # counted by the forward hook
    assert overall["hf-greedy"]["tokens_computed_per_step"] == pytest.approx(1.0)
    assert overall["hf-prompt-lookup:num_tokens=4"]["tokens_computed_per_step"] >= 1.0
    assert doc["sweep"]["fastest"] in (f"{chunk_strategy}:k=1", f"{chunk_strategy}:k=3")
    assert doc["command"] == ["decodekit", "bench", "test"]
    assert doc["machine"]["cpu_cores"] >= 1 and doc["software"]["torch"]
    assert isinstance(doc["machine"]["cpu_flags"], list) and "cpu_family" in doc["machine"]
    curve = doc["machine"]["cost_curve"]  # the target's, measured once (synthetic here)
    assert synthetic_costs == [tiny] and curve["cached"] == 256 and curve["tokens"][:3] == [1, 2, 4]
    assert curve["x_one_token"][curve["tokens"].index(16)] == pytest.approx(2.0)
    written = json.loads((tmp_path / "results.json").read_text())
    check_document(written)
    markdown = (tmp_path / "results.md").read_text()
    assert "| hf-prompt-lookup:num_tokens=4 |" in markdown and "fastest configuration" in markdown
    assert "- forward cost: one token 10.0 ms after 256 cached; x a one-token forward for k tokens: 2: 1.07," in markdown
    for png in ("speedup_by_category.png", "tokens_per_step_vs_compute.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_turn_questions_through_a_chat_template(tiny, toy_tokenizer):
    questions = [Question(question_id=7, category="writing", turns=["hello there", "and again"]),
                 Question(question_id=8, category="qa", turns=["why?"])]
    doc = run_bench(tiny, tokenizer=toy_tokenizer, questions=questions, methods=["greedy"], max_new_tokens=6,
                    multi_turn=True, progress=False, warmup=False)
    turns = [(r["question_id"], r["turn"]) for r in doc["records"] if r["method"] == "greedy"]
    assert turns == [(7, 0), (7, 1), (8, 0)]
    assert set(doc["summary"]["by_category"]) == {"writing", "qa"}
    first = run_bench(tiny, tokenizer=toy_tokenizer, questions=questions, methods=["greedy"], max_new_tokens=6,
                      progress=False, warmup=False)
    assert len(first["records"]) == 2 * 2  # first turns only: 2 prompts x (hf-greedy, greedy)


def test_time_limit_stops_between_prompts(tiny):
    doc = run_bench(tiny, prompts=PROMPTS * 3, methods=["greedy"], max_new_tokens=4, progress=False,
                    time_limit=1e-9)
    assert doc["config"]["prompts_run"] == 1 and doc["config"]["prompts_planned"] == 6


@pytest.mark.parametrize("argv, says", [
    (["bench", "--strategies", "greedy:W=3"], "unknown parameter 'W' for 'greedy'"),
    (["bench", "--strategies", "hf-prompt-lookup:num_tokens=0"], "num_tokens must be >= 1, got 0"),
    (["bench", "--questions", "/nonexistent/q.jsonl"], "does not exist"),
    (["bench", "--sweep-grid", "W=1"], "--sweep-grid needs --sweep"),
])
def test_cli_fails_before_loading_any_model(argv, says, capsys):
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_hf_assisted_with_a_draft_model(tiny):
    from decodekit.errors import InputError
    from decodekit.testing.models import tiny_model

    draft = tiny_model("llama", seed=1, init=0.5, layers=1)
    doc = run_bench(tiny, prompts=PROMPTS[:1], methods=["hf-greedy", "hf-assisted:draft=small"], max_new_tokens=8,
                    progress=False, warmup=False, draft_models={"small": draft})
    figs = doc["summary"]["overall"]["hf-assisted:draft=small"]
    assert figs["identical_fraction"] == 1.0 and figs["tokens_computed_per_step"] >= 1.0
    with pytest.raises(InputError, match="names draft 'other', which was not given in draft_models"):
        run_bench(tiny, prompts=PROMPTS[:1], methods=["hf-assisted:draft=other"], progress=False)


def _interrupt_on_prompt(monkeypatch, number):
    from decodekit.bench import runner

    real = runner.run_prompt
    calls = []

    def run_prompt(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_prompt", run_prompt)


def test_an_interrupt_keeps_the_finished_prompts(tiny, tmp_path, monkeypatch):
    _interrupt_on_prompt(monkeypatch, 3)
    doc = run_bench(tiny, prompts=PROMPTS * 2, methods=["greedy"], max_new_tokens=4, progress=False, warmup=False,
                    out=tmp_path)
    assert doc["config"]["interrupted"] is True
    assert doc["config"]["prompts_run"] == 2 and doc["config"]["prompts_planned"] == 4
    assert len(doc["records"]) == 2 * 2  # (hf-greedy, greedy) on the two finished prompts, nothing of the third
    check_document(json.loads((tmp_path / "results.json").read_text()))
    assert "cut short by an interrupt (Ctrl-C): 2 of 4 prompts ran" in (tmp_path / "results.md").read_text()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_an_interrupt_before_any_prompt_finished_writes_nothing(tiny, tmp_path, monkeypatch):
    _interrupt_on_prompt(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_bench(tiny, prompts=PROMPTS, methods=["greedy"], max_new_tokens=4, progress=False, warmup=False,
                  out=tmp_path)
    assert list(tmp_path.iterdir()) == []
