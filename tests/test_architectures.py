"""The masking core on every model family a user fine-tunes, random-init and scaled down: the
`layer` scope finds each family's real blocks, gmt `update` mode changes exactly the kept entries,
and a per-matrix fixed mask (gps) keeps exactly its budget, rows read as [out, in] weights."""

import pytest
import torch
import transformers

from gmt.masking import (
    GradientMasker,
    LocalGradientAccess,
    MaskedAdamW,
    SparseMaskedAdamW,
    build_strategy,
    freeze_parameters,
)
from gmt.masking.base import keep_count
from gmt.masking.scopes import layer_name

VOCAB, HIDDEN, SEQ = 96, 32, 24
DECODER = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)  # fmt: skip
LLAMA_BLOCKS = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]
FAMILIES = {  # name -> (config class, settings, the blocks the layer scope must find)
    "llama": ("LlamaConfig", DECODER, LLAMA_BLOCKS),
    "qwen2-tied": ("Qwen2Config", {**DECODER, "tie_word_embeddings": True},
                   ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm"]),
    "mistral": ("MistralConfig", DECODER, LLAMA_BLOCKS),
    "qwen3": ("Qwen3Config", {**DECODER, "head_dim": 8, "tie_word_embeddings": False},
              ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]),
    "gemma2": ("Gemma2Config", {**DECODER, "head_dim": 8},  # ties its head to the embedding
               ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm"]),
    "phi3": ("Phi3Config", {**DECODER, "pad_token_id": 0},
             ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]),
    "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=SEQ),
             ["transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.h.1", "transformer.ln_f"]),
    "gpt-neox": ("GPTNeoXConfig", dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=SEQ),
                 ["gpt_neox.embed_in", "gpt_neox.layers.0", "gpt_neox.layers.1", "gpt_neox.final_layer_norm",
                  "lm_head"]),
    "qwen3-moe": ("Qwen3MoeConfig", {**DECODER, "head_dim": 8, "moe_intermediate_size": 16, "num_experts": 4,
                                     "num_experts_per_tok": 2},
                  ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]),
}  # fmt: skip


def random_model(family: str) -> torch.nn.Module:
    config_name, settings, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**settings)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def backward(model) -> None:
    # Every token id and every position appears, so no embedding row has an all-zero gradient.
    generator = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.randperm(VOCAB, generator=generator) for _ in range(2)]).view(-1, SEQ)
    model(input_ids=ids, labels=ids).loss.backward()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_update_mode_changes_exactly_the_kept_entries_per_block(family):
    model = random_model(family)
    backward(model)
    params = dict(model.named_parameters())
    masker = GradientMasker(build_strategy("gmt", mask_ratio=0.9, mask_scope="layer", gmt_mode="update"),
                            LocalGradientAccess(model.named_parameters()))  # fmt: skip
    optimizer = MaskedAdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    start = {name: param.detach().clone() for name, param in params.items()}
    masker.apply(0, optimizer)
    optimizer.step()

    blocks = FAMILIES[family][2]
    assert masker.layer_names == blocks  # the layer scope is the model's own blocks, in order
    numel = dict.fromkeys(blocks, 0)
    changed = dict.fromkeys(blocks, 0)
    for name, param in params.items():
        numel[layer_name(name)] += param.numel()
        changed[layer_name(name)] += int((param.detach() != start[name]).sum())
    assert changed == {block: keep_count(numel[block], 0.9) for block in blocks}
    logs = masker.pop_logs()
    for block in blocks:
        assert logs[f"mask/kept_fraction/{block}"] == pytest.approx(keep_count(numel[block], 0.9) / numel[block])


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"gpt2"}))  # GPT-2's [in, out] Conv1D: refused below
def test_gps_keeps_k_inputs_of_every_output_row(family):
    model = random_model(family)
    strategy = build_strategy("gps", gps_k=2)
    freeze_parameters(model.named_parameters(), type(strategy).default_frozen_params)
    optimizer = SparseMaskedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    masker = GradientMasker(strategy, LocalGradientAccess(model.named_parameters()), total_steps=3)
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    for step in range(3):  # the selection pass, then the fixed mask
        backward(model)
        masker.apply(step, optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    kept = {name: indices for name, indices in zip(strategy.layout.names, strategy.kept_indices) if indices is not None}
    assert kept, "every family has weight matrices to select in"
    rows = dense = 0
    for name, param in model.named_parameters():
        moved = param.detach() != start[name]
        if name not in kept:  # norms frozen, biases dense (gps's defaults), never a matrix
            assert param.dim() < 2 and ("bias" in name if param.requires_grad else not moved.any()), name
            dense += param.numel() if param.requires_grad else 0
            continue
        mask = torch.zeros(param.numel(), dtype=torch.bool)
        mask[kept[name]] = True
        mask = mask.view(param.shape)
        assert (mask.sum(dim=-1) == 2).all(), name  # exactly gps_k per output row [.., out, in]
        assert not (moved & ~mask).any(), name
        rows += param.numel() // param.shape[-1]
    assert strategy.kept_count() == 2 * rows + dense


@pytest.mark.parametrize("strategy", ["gps", "grft"])
def test_per_matrix_rules_refuse_gpt2_conv1d(tiny_assets, tmp_path, strategy):
    # GPT-2's Conv1D weights are [in, out]: gps's "inputs per output row" would pick outputs per input.
    from datasets import load_dataset

    from gmt.config import GMTSFTConfig
    from gmt.trainer import GMTSFTTrainer

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_assets / "base")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1,
                                                                 n_head=4, n_positions=128))  # fmt: skip
    rows = load_dataset("json", data_files=str(tiny_assets / "data/sft/train.jsonl"))["train"].select(range(4))
    args = GMTSFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", mask_strategy=strategy)
    with pytest.raises(ValueError, match=f"mask_strategy '{strategy}' selects per output neuron .* Conv1D"):
        GMTSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
