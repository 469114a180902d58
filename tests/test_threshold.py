"""The exact top-k threshold against torch.kthvalue on the concatenated magnitudes."""

import pytest
import torch

from gmt.masking import NonFiniteGradientError, keep_count, scope_groups, topk_thresholds


def reference_threshold(tensors: list[torch.Tensor], k: int) -> float:
    magnitudes = torch.cat([t.float().abs().reshape(-1) for t in tensors])
    # k-th largest = (n - k + 1)-th smallest
    return float(torch.kthvalue(magnitudes, magnitudes.numel() - k + 1).values)


def random_tensors(sizes, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(size, generator=generator).to(dtype) for size in sizes]
    # Ties and zeros: repeat a few values and zero a block in each tensor.
    for t in tensors:
        flat = t.view(-1)
        flat[: len(flat) // 5] = 0
        flat[len(flat) // 5 : len(flat) // 3] = flat[len(flat) // 3]
    return tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes", [[1], [7], [1000], [333, 1, 4096, 50]])
@pytest.mark.parametrize("scope", ["global", "tensor", "layer"])
def test_threshold_matches_kthvalue(dtype, sizes, scope):
    tensors = random_tensors(sizes, dtype, seed=len(sizes) * 31 + sizes[0])
    names = [f"model.layers.{i // 2}.w{i}.weight" for i in range(len(tensors))]
    group_of, group_names = scope_groups(names, scope)
    for k_rule in ("one", "all", "half", "third"):
        keep_counts = []
        members = []
        for g in range(len(group_names)):
            members.append([t for t, gi in zip(tensors, group_of) if gi == g])
            n = sum(t.numel() for t in members[-1])
            keep_counts.append({"one": 1, "all": n, "half": keep_count(n, 0.5), "third": max(1, n // 3)}[k_rule])
        thresholds = topk_thresholds(tensors, group_of, keep_counts)
        for g, k in enumerate(keep_counts):
            expected = reference_threshold(members[g], k)
            assert float(thresholds[g]) == expected, (scope, k_rule, g)
            # Keeping |x| >= T keeps at least k, and exactly k when there is no tie at T.
            kept = sum(int((t.float().abs() >= thresholds[g]).sum()) for t in members[g])
            ties = sum(int((t.float().abs() == thresholds[g]).sum()) for t in members[g])
            assert k <= kept <= k + ties - 1


def test_threshold_with_all_ties():
    tensors = [torch.full((100,), 0.25), torch.full((10,), 0.25)]
    thresholds = topk_thresholds(tensors, [0, 0], [3])
    assert float(thresholds[0]) == 0.25  # everything ties, so everything is kept


def test_threshold_of_empty_group_and_missing_entries():
    # Group 1 has k = 0: nothing to keep. Group 0 asks for more entries than are present
    # (a parameter got no gradient): its missing entries count as zeros, so T = 0.
    thresholds = topk_thresholds([torch.ones(4)], [0], [6, 0])
    assert float(thresholds[0]) == 0.0
    assert float(thresholds[1]) == float("inf")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradient_is_refused(bad):
    tensor = torch.randn(100)
    tensor[17] = bad
    with pytest.raises(NonFiniteGradientError, match="NaN or inf"):
        topk_thresholds([tensor], [0], [10])


def test_keep_count_uses_dropped_fraction():
    assert keep_count(10, 0.0) == 10
    assert keep_count(10, 0.9) == 1
    assert keep_count(7, 0.5) == 4  # n - floor(r n)
