"""Every GPU recipe, unchanged but for its model and data, trains 2 steps on stand-ins of the real
setup (gmt.standins): a random-init model of the recipe's family with that family's tokenizer
settings and chat template, and local rows in the exact layout of the hub data set it names."""

import pytest
import yaml
from datasets import load_dataset

from conftest import ACCELERATE_CPU_ZERO3, REPO
from gmt.standins import check_output, data_standin, model_standin, standin_run
from gmt.standins.recipes import run

# tiny and smollm2-135m are offline recipes, run for real (tests/test_smollm2.py for the latter)
GPU_RECIPES = sorted(p for p in (REPO / "recipes").glob("*/*.yaml")
                     if p.parent.name not in ("tiny", "smollm2-135m", "accelerate"))
TULU = REPO / "recipes/llama2-7b/sft_tulu_gmt.yaml"


def expected_kept(recipe) -> float:
    return 1.0 - yaml.safe_load(recipe.read_text())["mask_ratio"]


def assert_trained(recipe, output_dir) -> dict:
    summary = check_output(output_dir)  # finite losses, a kept fraction at every step, a loadable checkpoint
    assert len(summary["losses"]) == 2
    for kept in summary["kept_fraction"]:  # entries tied at T are kept too: a little above 1 - mask_ratio
        assert expected_kept(recipe) <= kept < expected_kept(recipe) + 0.01
    return summary


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_trains_on_its_standins(recipe, standin_cache, tmp_path):
    standin = standin_run(recipe, tmp_path / "out", standin_cache)
    finished = run(standin)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    summary = assert_trained(recipe, standin.output_dir)
    settings = yaml.safe_load(recipe.read_text())
    assert settings["bf16"] and "--bf16" not in standin.arguments  # the recipe's precision: bf16 autocast
    assert summary["dtype"] == settings["dtype"]
    if settings.get("chat_template_path"):  # the SFT checkpoint carries the template for DPO and eval
        assert summary["chat_template"] == (REPO / settings["chat_template_path"]).read_text()


def test_tulu_recipe_under_two_process_zero3(standin_cache, tmp_path):
    standin = standin_run(TULU, tmp_path / "out", standin_cache)
    finished = run(standin, launcher=ACCELERATE_CPU_ZERO3, extra=("--ddp_backend", "gloo"))
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    assert_trained(TULU, standin.output_dir)


def test_standin_data_has_the_hub_layout(standin_cache):
    ultrafeedback = load_dataset(str(data_standin("HuggingFaceH4/ultrafeedback_binarized", standin_cache)))
    assert sorted(ultrafeedback) == sorted(["train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen",
                                            "test_gen"])  # fmt: skip
    row = ultrafeedback["train_prefs"][0]
    assert list(row) == ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"]
    assert isinstance(row["prompt"], str) and row["chosen"][0] == {"content": row["prompt"], "role": "user"}
    tulu = load_dataset(str(data_standin("allenai/tulu-v2-sft-mixture", standin_cache)))["train"]
    assert tulu.column_names == ["dataset", "id", "messages"]
    columns = {"meta-math/MetaMathQA": ["type", "query", "original_question", "response"],
               "ise-uiuc/Magicoder-Evol-Instruct-110K": ["instruction", "response"]}  # fmt: skip
    for name, expected in columns.items():
        assert load_dataset(str(data_standin(name, standin_cache)))["train"].column_names == expected


def test_standin_tokenizers_follow_their_family(standin_cache):
    from transformers import AutoTokenizer

    llama2 = AutoTokenizer.from_pretrained(model_standin("meta-llama/Llama-2-7b-hf", standin_cache))
    ids = llama2("7 apples")["input_ids"]
    assert ids[0] == llama2.bos_token_id == 1 and llama2.eos_token_id == 2 and ids[-1] != 2
    assert llama2.pad_token is None and llama2.chat_template is None  # the base checkpoint ships neither
    assert llama2.convert_tokens_to_ids("<0x0A>") == 13  # byte fallback pieces where Llama-2 has them
    llama3 = AutoTokenizer.from_pretrained(model_standin("meta-llama/Meta-Llama-3-8B", standin_cache))
    assert llama3("7 apples")["input_ids"][0] == llama3.convert_tokens_to_ids("<|begin_of_text|>")
    assert llama3.eos_token == "<|end_of_text|>" and llama3.pad_token is None
    tulu = AutoTokenizer.from_pretrained(model_standin("outputs/llama2-7b/sft_tulu_gmt", standin_cache))
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tulu.apply_chat_template(chat, tokenize=False) == "<s><|user|>\nHi\n<|assistant|>\nHello</s>\n"


def parsed_recipe(recipe, standin_cache, tmp_path, *overrides):
    from gmt import dpo, sft

    standin = standin_run(recipe, tmp_path / "out", standin_cache)
    parser = (dpo if standin.arguments[0] == "gmt/dpo.py" else sft).make_parser()
    return parser.parse_args_and_config(list(standin.arguments[1:]) + list(overrides))


def test_tulu_recipe_trains_on_the_assistant_turns_only(standin_cache, tmp_path, monkeypatch):
    from gmt.cli import build_trainer
    from gmt.trainer import GMTSFTTrainer

    monkeypatch.chdir(REPO)  # the recipe's chat_template_path is relative to the repository root
    trainer = build_trainer(GMTSFTTrainer, *parsed_recipe(TULU, standin_cache, tmp_path, "--report_to", "none"))
    tokenizer = trainer.processing_class
    for row in trainer.train_dataset.select(range(5)):
        trained = [label for label in row["labels"] if label != -100]
        assert trained, "every TULU row has an assistant turn"
        text = tokenizer.decode(trained)
        assert "<|user|>" not in text and "<|assistant|>" not in text and text.endswith("</s>")
        assert text.count("</s>") == tokenizer.decode(row["input_ids"]).count("<|assistant|>")
