import numpy as np
import pytest
import torch

from pyro_vae.mapped_rows import MappedRows, in_memory


def _observe(stored: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(stored.reshape(len(stored), -1) / 255, dtype=torch.float32)


@pytest.fixture
def rows(tmp_path):
    stored = np.random.default_rng(0).integers(0, 256, (40, 2, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", stored)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    index = np.random.default_rng(1).permutation(40)[:25]
    return stored, index, MappedRows(mapped, index, _observe, 6)


def test_rows_are_gathered_in_the_order_asked_for_bit_for_bit(rows):
    stored, index, x = rows
    whole = _observe(stored[index])
    assert x.shape == (25, 6) and len(x) == 25 and x.dim() == 2
    asked = torch.tensor([7, 0, 24, 7, 3])
    assert torch.equal(x.index_select(0, asked), whole[asked])
    assert torch.equal(x[3:11], whole[3:11])
    assert torch.equal(x[np.array([2, 1])], whole[[2, 1]])
    assert torch.equal(x[-1], whole[-1])
    assert torch.equal(torch.cat(list(x.chunks(7))), whole)
    assert torch.equal(x.to_tensor(), whole)
    with pytest.raises(ValueError, match="dim: 1"):
        x.index_select(1, asked)


def test_a_subset_is_an_index_set_into_the_same_map(rows):
    stored, index, x = rows
    part = x.subset(slice(5, 9))
    assert isinstance(part.array, np.memmap) and part.array is x.array
    assert np.array_equal(part.index, index[5:9])
    assert torch.equal(part[:], _observe(stored[index[5:9]]))
    assert torch.equal(in_memory(x, 4), x[:4])
    tensor = torch.zeros(3, 6)
    assert in_memory(tensor) is tensor


def test_rows_sent_to_a_device_are_gathered_there(rows):
    from pyro_vae.devices import to_device

    _, _, x = rows
    meta = to_device(x, torch.device("meta"))
    assert isinstance(meta, MappedRows) and meta.device.type == "meta" and x.device.type == "cpu"
    assert meta[:3].device.type == "meta" and meta.subset(slice(2)).device.type == "meta"
