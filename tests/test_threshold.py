"""The exact top-k threshold against torch.kthvalue on the concatenated magnitudes."""

import pytest
import torch

from gmt.masking import NonFiniteGradientError, ThresholdSearch, check_finite, keep_count, scope_groups, topk_thresholds


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scope", ["global", "tensor"])
@pytest.mark.parametrize(
    "sizes, chunk_entries",
    [
        ([3000, 7, 1, 2500, 40, 40, 999], 1000),  # packed tensors that split 8-entry rows
        ([3000, 8, 16, 2504, 40, 40, 1000], 1000),  # every packed tensor a multiple of 8
        ([3000, 7, 1, 2500, 40, 40, 999], 8192),  # all resident in one buffer
    ],
)
@pytest.mark.parametrize("band_select", ["kthvalue", "radix"])  # radix: as on CUDA (KTHVALUE_DEVICES)
def test_small_samples_and_chunks_still_give_the_exact_threshold(dtype, scope, sizes, chunk_entries, band_select,
                                                                 monkeypatch):  # fmt: skip
    # A sample of ~16 entries per group and small chunks: tensors are packed and cut, and brackets
    # are loose or miss; the threshold and the kept counts must be exact either way.
    if band_select == "radix":
        monkeypatch.setattr("gmt.masking.search.KTHVALUE_DEVICES", frozenset())
    tensors = random_tensors(sizes, dtype, seed=5)
    tensors[1].mul_(1000)  # one tensor on another scale: a skewed mix of magnitudes
    names = [f"model.layers.{i}.w.weight" for i in range(len(tensors))]
    group_of, group_names = scope_groups(names, scope)
    search = ThresholdSearch(sample_entries=16, chunk_entries=chunk_entries, small_entries=100)
    counted = 0
    for ratio in (0.0, 0.3, 0.5, 0.99):
        members = [[t for t, g in zip(tensors, group_of) if g == group] for group in range(len(group_names))]
        keep_counts = [keep_count(sum(t.numel() for t in m), ratio) for m in members]
        thresholds = search(tensors, group_of, keep_counts)
        for group, k in enumerate(keep_counts):
            assert float(thresholds[group]) == reference_threshold(members[group], k), (ratio, group)
        # Where the search counted the kept entries of a tensor on its way, the count is exact.
        for tensor, group, kept in zip(tensors, group_of, search.kept_counts.tolist()):
            if kept >= 0:
                assert kept == int((tensor.float().abs() >= thresholds[group]).sum())
                counted += 1
    assert counted > 0


def test_a_missed_bracket_falls_back_to_the_exact_search():
    # The sampled entries (every 3rd, from index 1) are all small; the top entries hide between them.
    tensor = torch.full((3000,), 1e-3)
    tensor[0::3] = torch.linspace(1.0, 2.0, 1000)
    search = ThresholdSearch(sample_entries=1000, chunk_entries=1000)
    (threshold,) = search([tensor], [0], [500]).tolist()
    assert threshold == reference_threshold([tensor], 500)
    assert search.fallback_groups == 1
    # The usual case, a sample that represents the tensor, needs no fallback.
    search([torch.randn(100_000)], [0], [40_000])
    assert search.fallback_groups == 1


@pytest.mark.parametrize("total_entries", [None, 10_000])  # None: the bracket path; 10_000: the small path
def test_many_tiny_tensors_that_fill_the_buffer_only_unpadded(total_entries):
    # 1000 tensors of 3 entries: 3000 entries fit a 4096-entry buffer, but not padded to 8 each.
    tensors = random_tensors([3] * 1000, torch.float32, seed=2)
    search = ThresholdSearch(chunk_entries=4096, small_entries=16 if total_entries is None else 10_000)
    (threshold,) = search(tensors, [0] * 1000, [1200], total_entries=total_entries).tolist()
    assert threshold == reference_threshold(tensors, 1200)


def test_buffers_are_reused_between_searches():
    search = ThresholdSearch(chunk_entries=4096)
    search([torch.randn(10_000)], [0], [10])
    buffers = [b.data_ptr() for b in search._buffers[torch.device("cpu")]]
    search([torch.randn(10_000)], [0], [10])
    assert [b.data_ptr() for b in search._buffers[torch.device("cpu")]] == buffers


def test_check_finite_counts_only_nan_and_inf():
    # Entries too large to square make a norm inf; the exact count behind the norm screen lets them pass.
    huge = torch.full((100,), 1e30)
    check_finite([torch.randn(50), huge])
    poisoned = torch.randn(50)
    poisoned[[3, 7]] = torch.tensor([float("-inf"), float("nan")])
    with pytest.raises(NonFiniteGradientError, match="^2 gradient entries are NaN or inf"):
        check_finite([huge, poisoned, torch.empty(0)])
