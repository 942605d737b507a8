"""The command line's argument forms: KEY=VALUE strategy parameters anywhere after the subcommand."""

import pytest

from decodekit.cli import is_param_word, main, parse_args
from decodekit.cli_generate import split_prompt
from decodekit.errors import InputError


@pytest.mark.parametrize("argv", [
    ["generate", "Hi there", "--strategy", "lookahead", "W=2", "N=3"],  # the README's form
    ["generate", "W=2", "Hi there", "--strategy", "lookahead", "N=3"],
    ["generate", "--strategy", "lookahead", "W=2", "N=3", "Hi there"],
    ["generate", "W=2", "--strategy", "lookahead", "Hi there", "N=3"],
    ["generate", "W=2", "--strategy=lookahead", "N=3", "--max-new-tokens", "9", "Hi there"],
])
def test_generate_takes_parameters_anywhere(argv):
    args = parse_args(argv)
    prompt, params = split_prompt(args.words)
    assert prompt == "Hi there"
    assert params == ["W=2", "N=3"]
    assert args.strategy == "lookahead"


def test_verify_takes_parameters_after_its_options():
    args = parse_args(["verify", "--strategy", "lookahead", "W=2", "--limit", "3", "G=4"])
    assert args.params == ["W=2", "G=4"] and args.limit == 3


@pytest.mark.parametrize("argv, says", [
    (["generate", "Hi", "--strategy", "greedy", "--nope"], "unrecognized arguments: --nope"),
    (["strategies", "W=2"], "unrecognized arguments: W=2"),  # a command without parameters
    (["bench", "W=2"], "unrecognized arguments: W=2"),
])
def test_stray_words_are_errors_of_their_subcommand(argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and f"decodekit {argv[0]}" in err


@pytest.mark.parametrize("words, says", [
    (["W=2"], "got no prompt beside the parameters W=2"),
    (["Hi", "there"], "got 2 prompts ('Hi', 'there')"),
])
def test_one_prompt_is_required(words, says):
    with pytest.raises(InputError, match="generate takes one PROMPT") as exc:
        split_prompt(words)
    assert says in str(exc.value)


def test_several_prompts_need_batch_and_then_each_word_is_a_prompt():
    with pytest.raises(InputError, match="to decode several prompts as one batch, add --batch"):
        split_prompt(["Hi", "there"])
    args = parse_args(["generate", "First prompt", "W=2", "Second one", "--batch", "--strategy", "lookahead"])
    assert args.batch and split_prompt(args.words, args.batch) == (["First prompt", "Second one"], ["W=2"])
    with pytest.raises(InputError, match="got no prompt"):
        split_prompt(["W=2"], batch=True)


@pytest.mark.parametrize("word, is_param", [
    ("W=2", True), ("max_ngram=3", True), ("top_p=0.9", True), ("x=", True),
    ("What is 2+2=?", False), ("a = b", False), ("=3", False), ("2W=1", False), ("Hi", False),
])
def test_what_counts_as_a_parameter_word(word, is_param):
    assert is_param_word(word) is is_param


@pytest.mark.parametrize("argv, says", [
    (["generate", "Hi", "--strategy", "lookahead", "w=2"], "unknown parameter 'w' for 'lookahead'; did you mean 'W'?"),
    (["generate", "Hi", "--strategy", "lookahead", "W=0"], "W must be >= 1, got 0"),
    (["generate", "Hi", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["generate", "Hi", "--strategy", "greedy", "--draft-layers", "2"], "--draft-layers was given but strategy 'greedy'"),
    (["generate", "Hi", "--device", "tpu"], "--device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
])
def test_bad_values_fail_before_anything_loads(argv, says, capsys, monkeypatch):
    import decodekit.models

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model cache was touched before the arguments were checked")

    monkeypatch.setattr(decodekit.models, "default_folder", must_not_run)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
