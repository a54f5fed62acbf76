"""batch_transfer.py: a packed batch's tensors through one byte buffer keep every value, type and shape."""

import torch

from loranlg import batch_transfer, data


def packed_batch():
    gen = torch.Generator().manual_seed(0)
    items = [(torch.randint(0, 50257, (length,), generator=gen).tolist(), 2) for length in (5, 9, 3)]
    return data.collate_packed(items, 16, length_multiple=4, tokens_multiple=8, positions_multiple=8)


def test_a_packed_batch_comes_back_whole_from_one_buffer():
    batch = packed_batch()
    assert len(batch) == 10 and {t.dtype for t in batch.values()} >= {torch.int64, torch.float32}
    moved = batch_transfer.to_device(batch, torch.device("cpu"))
    assert sorted(moved) == sorted(batch)
    for name, tensor in batch.items():
        view = moved[name]
        assert view.dtype == tensor.dtype and view.shape == tensor.shape and torch.equal(view, tensor), name
        assert view.untyped_storage().data_ptr() == moved.flat.untyped_storage().data_ptr(), name
        assert view.data_ptr() % max(view.element_size(), 1) == 0, name
    # the views do not overlap: writing one leaves the others as they were
    moved["weights"].fill_(-7)
    assert all(torch.equal(moved[name], batch[name]) for name in batch if name != "weights")


def test_the_layout_depends_only_on_names_types_and_shapes():
    batch = packed_batch()
    other = {name: torch.zeros_like(tensor) for name, tensor in reversed(list(batch.items()))}
    assert batch_transfer.byte_layout(batch) == batch_transfer.byte_layout(other)
    longer = dict(batch, input=torch.zeros(batch["input"].numel() + 1, dtype=torch.int64))
    assert batch_transfer.byte_layout(longer) != batch_transfer.byte_layout(batch)
    layout, size = batch_transfer.byte_layout(batch)
    ends = [offset + torch.Size(shape).numel() * dtype.itemsize
            for _, dtype, shape, offset in layout]
    assert all(offset % batch_transfer.ALIGN == 0 for *_, offset in layout)
    assert all(end <= next_offset for end, (*_, next_offset) in zip(ends, layout[1:])) and ends[-1] <= size
