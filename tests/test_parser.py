"""gmt's command line (gmt/parser.py): typos get a suggestion, one flag switches strategies, and
--help shows gmt's own settings first."""

import re

import pytest

from gmt.dpo import make_parser as dpo_parser
from gmt.sft import make_parser

RECIPE = "recipes/tiny/sft_gmt.yaml"


def parse(*args: str):
    return make_parser().parse_args_and_config(["--config", RECIPE, *args])


def test_a_misspelled_flag_gets_a_suggestion():
    with pytest.raises(ValueError, match=re.escape("unknown setting --mask_ration (did you mean --mask_ratio?)")):
        parse("--mask_ration", "0.5")
    with pytest.raises(ValueError, match=r"unknown setting --learnig_rate \(did you mean --learning_rate\?\)"):
        parse("--learnig_rate", "1e-4")
    # a value that starts with "--" is a value, not a flag
    _, training_args, _ = parse("--max_steps", "3")
    script_args, _, _ = parse("--eval_args", "--backend vllm")
    assert script_args.eval_args == "--backend vllm" and training_args.max_steps == 3


def test_a_misspelled_yaml_key_gets_a_suggestion(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(open(RECIPE).read() + "mask_ration: 0.3\n")
    with pytest.raises(ValueError, match=re.escape("unknown setting 'mask_ration' in the --config file (did you mean "
                                                   "mask_ratio?)")):  # fmt: skip
        make_parser().parse_args_and_config(["--config", str(recipe)])


@pytest.mark.parametrize("strategy", ["gps", "grft", "gspf", "full"])
def test_one_flag_switches_the_strategy_of_a_gmt_recipe(strategy, capsys):
    _, training_args, _ = parse("--mask_strategy", strategy)
    assert training_args.mask_strategy == strategy and training_args.mask_ratio is None
    assert training_args.gmt_mode is None  # gmt's own option, not inherited
    said = capsys.readouterr().out
    assert f"--mask_strategy {strategy}: the --config file's mask_ratio: 0.2" in said and "left out" in said
    _, dpo_args, _ = dpo_parser().parse_args_and_config(["--config", "recipes/tiny/dpo_gmt.yaml", "--mask_strategy",
                                                         strategy])  # fmt: skip
    assert dpo_args.mask_strategy == strategy and dpo_args.mask_ratio is None


def test_an_option_of_another_strategy_given_on_the_command_line_is_still_refused():
    with pytest.raises(ValueError, match=r"mask_ratio applies to mask_strategy 'gmt' or 'random' or 'magnitude' only"):
        parse("--mask_strategy", "gps", "--mask_ratio", "0.3")
    _, random_args, _ = parse("--mask_strategy", "random")  # random takes mask_ratio: the recipe's 0.2 stays
    assert random_args.mask_ratio == 0.2


def test_eval_suite_none_switches_off_the_recipes_scoring_settings(capsys):
    """The SmolLM2 DPO recipe scores with eval_args (the SFT rows' test split): --eval_suite none
    leaves them out and says so, rather than refusing eval_args without a suite."""
    command = ["--config", "recipes/smollm2-135m/dpo_gmt.yaml", "--bf16", "false"]
    script_args, _, _ = dpo_parser().parse_args_and_config([*command, "--eval_suite", "none"])
    assert script_args.eval_suite == "none" and script_args.eval_args is None
    said = capsys.readouterr().out
    assert "--eval_suite none: the --config file's eval_args: '--task_data" in said and "left out" in said
    kept, _, _ = dpo_parser().parse_args_and_config([*command, "--eval_suite", "none", "--eval_limit", "4"])
    assert kept.eval_limit == 4  # given on the command line: kept, and refused later with the reason
    scored, _, _ = dpo_parser().parse_args_and_config(command)
    assert scored.eval_suite == "reasoning_gym" and scored.eval_args.startswith("--task_data")


def test_help_shows_gmt_settings_first():
    text = make_parser().format_help()
    lines = text.splitlines()
    assert len(lines[0]) < 120 and "--config" in lines[0]  # no usage line listing every option
    masking = text.index("gradient masking (gmt):")
    assert masking < text.index("data and evaluation (gmt):") < text.index("--learning_rate")
    assert text.index("--mask_strategy") < 300 and masking < text.index("--mask_ratio") < text.index("--output_dir")


def test_a_prefix_of_a_setting_is_not_taken_for_it():
    with pytest.raises(ValueError, match="unknown setting --learning_rat \\(did you mean --learning_rate\\?\\)"):
        parse("--learning_rat", "1e-4")


@pytest.mark.parametrize(("old", "value", "new"), [("warmup_ratio", "0.1", "warmup_steps"), ("torch_dtype", "bfloat16",
                                                    "dtype"), ("max_seq_length", "64", "max_length")])  # fmt: skip
def test_a_renamed_setting_is_refused_with_its_new_name(tmp_path, old, value, new):
    with pytest.raises(ValueError, match=f"unknown setting --{old} \\(renamed: use {new}"):
        parse(f"--{old}", value)
    (tmp_path / "old.yaml").write_text(f"{old}: {value}\n")
    with pytest.raises(ValueError, match=f"unknown setting '{old}' in the --config file \\(renamed: use {new}"):
        make_parser().parse_args_and_config(["--config", str(tmp_path / "old.yaml"), "--output_dir", "x"])


def test_a_refusal_is_one_line_and_exit_status_2():
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, "gmt/sft.py", "--config", "recipes/tiny/sft_gmt.yaml", "--mask_ratio",
                             "1.5"], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("gmt sft: error:")]
    assert len(errors) == 1 and "mask_ratio" in errors[0]
    assert "Traceback" not in result.stderr
