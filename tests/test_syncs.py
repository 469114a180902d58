"""Host synchronisations per mask step do not grow with the number of tensors or scopes
(scripts/count_syncs.py counts the ops that would wait for the GPU on CUDA: device-to-host reads,
ops whose output size depends on the data, and tensors made on the device from host data), in all
three scopes, both modes and every strategy's per-step path, on one process and on the sharded path."""

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from count_syncs import CASES, TENSOR_COUNTS, count_mask_step  # noqa: E402

# A step's syncs: the search's few host decisions (about 7 reads of per-group tables), 4 copies of
# host data to the device (the layout's own tables are copied once, not every step) and one
# compaction per pass chunk (the entries, not the tensors, set how many chunks there are).
MOST_SYNCS = 24


@pytest.mark.parametrize("sharded", [False, True], ids=["one-process", "sharded"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_mask_step_syncs_do_not_grow_with_the_tensors(case, sharded):
    few, many = (sum(count_mask_step(CASES[case], tensors, sharded).values()) for tensors in TENSOR_COUNTS)
    assert many <= few <= MOST_SYNCS, (few, many)


def test_the_layouts_own_tables_are_copied_to_the_device_once():
    # 13 copies of host data a step before the search kept the layout's tables (strides, keep
    # counts, piece ends) on the device; the 4 left carry the step's own decisions.
    for tensors in TENSOR_COUNTS:
        counts = count_mask_step(CASES["gmt global grad"], tensors)
        assert counts["host data to device"] == 4, (tensors, counts)
