import pytest

from sarathi_serve.scheduler.block_manager import BlockManager
from tests.scheduler.helpers import make_request


def test_allocates_whole_blocks_and_frees_them():
    blocks = BlockManager(num_blocks=10, block_size=4)
    req = make_request("a", 9)
    assert blocks.num_blocks_needed(req, 9) == 3
    blocks.allocate(req, 9)
    assert len(req.block_ids) == 3 and blocks.num_free_blocks == 7
    req.num_computed_tokens = 9
    assert blocks.num_blocks_needed(req, 3) == 0  # slots 9..11 are in block 2
    assert blocks.num_blocks_needed(req, 4) == 1
    blocks.free(req)
    assert req.block_ids == [] and blocks.num_free_blocks == 10


def test_block_ids_are_distinct_across_requests():
    blocks = BlockManager(num_blocks=6, block_size=2)
    a, b = make_request("a", 5), make_request("b", 6)
    blocks.allocate(a, 5)
    blocks.allocate(b, 6)
    assert len(set(a.block_ids) | set(b.block_ids)) == 6
    assert blocks.num_free_blocks == 0
    assert not blocks.can_allocate(make_request("c", 1), 1)


def test_watermark_applies_to_admission_only():
    blocks = BlockManager(num_blocks=100, block_size=1, watermark=0.1)
    req = make_request("a", 95)
    assert blocks.can_allocate(req, 95)
    assert not blocks.can_allocate(req, 95, admit=True)
    assert blocks.can_allocate(req, 90, admit=True)


def test_over_allocation_raises():
    blocks = BlockManager(num_blocks=2, block_size=2)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        blocks.allocate(make_request("a", 5), 5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_blocks=0, block_size=4),
        dict(num_blocks=4, block_size=0),
        dict(num_blocks=4, block_size=4, watermark=1.0),
    ],
)
def test_rejects_bad_geometry(kwargs):
    with pytest.raises(ValueError):
        BlockManager(**kwargs)
