"""Fused mixture-of-experts weights under the per-matrix rules (gps, grft), on random-init
Qwen3-MoE and Mixtral: every expert is its own stack of matrices, never trained densely."""

import math

import pytest
import torch
from transformers import MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from gmt.masking import GradientMasker, LocalGradientAccess, SparseMaskedAdamW, build_strategy, freeze_parameters
from gmt.masking.sparse_optim import optimizer_state_bytes

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64)  # fmt: skip


def moe_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "qwen3_moe":
        config = Qwen3MoeConfig(**COMMON, intermediate_size=96, moe_intermediate_size=32, num_experts=4,
                                num_experts_per_tok=2, head_dim=16)  # fmt: skip
        return Qwen3MoeForCausalLM(config)
    return MixtralForCausalLM(MixtralConfig(**COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2))


def train(model, strategy, steps: int = 3):
    """``steps`` optimizer steps of the masking core as the trainer runs it (freezing, sparse AdamW)."""
    freeze_parameters(model.named_parameters(), type(strategy).default_frozen_params)
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    optimizer = SparseMaskedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    masker = GradientMasker(strategy, LocalGradientAccess(model.named_parameters()), total_steps=steps)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        batch = torch.randint(0, VOCAB, (8, 16), generator=generator)
        model(input_ids=batch, labels=batch).loss.backward()
        masker.apply(step, optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return start, masker, optimizer


def masks_by_name(masker) -> dict[str, torch.Tensor]:
    strategy = masker.strategy
    masks = {}
    for name, indices, param in zip(strategy.layout.names, strategy.kept_indices, masker.access.params):
        if indices is not None:
            mask = torch.zeros(param.numel(), dtype=torch.bool)
            mask[indices] = True
            masks[name] = mask.view(param.shape)
    return masks


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_gps_keeps_k_inputs_per_row_of_every_expert(family):
    model = moe_model(family)
    start, masker, optimizer = train(model, build_strategy("gps", gps_k=3))
    masks = masks_by_name(masker)
    experts = [name for name in masks if ".experts." in name]
    assert len(experts) == 4  # gate_up_proj and down_proj of both layers: selected, not dense
    total = kept = moved_experts = expert_entries = 0
    for name, param in model.named_parameters():
        changed = param.detach() != start[name]
        total += param.numel()
        if name not in masks:
            assert "norm" in name and not changed.any(), name  # norms are gps's frozen default
            continue
        mask = masks[name]
        assert (mask.sum(dim=-1) == 3).all(), name  # exactly k per row, in every expert
        assert not (changed & ~mask).any(), name
        kept += int(mask.sum())
        if name in experts:
            moved_experts, expert_entries = moved_experts + int(changed.sum()), expert_entries + param.numel()
    rows = sum(math.prod(p.shape[:-1]) for n, p in model.named_parameters() if n in masks)
    assert masker.strategy.kept_count() == kept == 3 * rows
    assert 0 < moved_experts <= 3 / 32 * expert_entries  # k of the shortest rows (32 inputs), not dense
    # Sparse state: 16 bytes per kept entry (plus step counts), against dense AdamW's 8 per entry.
    assert optimizer_state_bytes(optimizer) <= 16 * kept + 8 * len(masks)
    assert optimizer_state_bytes(optimizer) < 0.2 * 8 * total
    logs = masker.pop_logs()  # layer telemetry names the decoder layers, experts included
    assert {"mask/kept_fraction/model.layers.0", "mask/kept_fraction/model.layers.1"} <= set(logs)


@pytest.mark.parametrize("axis", ["row", "column"])
def test_grft_keeps_k_lines_of_every_expert(axis):
    model = moe_model("qwen3_moe")
    start, masker, _ = train(model, build_strategy("grft", grft_k=2, grft_axis=axis))
    masks = masks_by_name(masker)
    for name in ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"):
        mask = masks[name]
        lines = mask.all(dim=-1) if axis == "row" else mask.all(dim=-2)  # [experts, lines]
        assert lines.sum(dim=-1).tolist() == [2] * mask.shape[0], name  # 2 lines in each expert
        expanded = lines.unsqueeze(-1).expand_as(mask) if axis == "row" else lines.unsqueeze(-2).expand_as(mask)
        assert torch.equal(mask, expanded), name  # whole lines only
        changed = dict(model.named_parameters())[name].detach() != start[name]
        assert not (changed & ~mask).any(), name
