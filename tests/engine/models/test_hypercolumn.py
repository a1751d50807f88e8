"""Mix-and-Match's hypercolumn network: grey input, dense head == sparse head at grid points, outputs, export."""

import pytest
import torch

from segadapt import config
from segadapt.config import BGR_MEAN
from segadapt.models import build_segmenter
from segadapt.models.hypercolumn import HypercolumnNet
from segadapt.models.hypercolumn import grid_from_points


def _net(**changes) -> HypercolumnNet:
    settings = {"name": "hypercolumn", "width": 4, "num_classes": 5, "multi_level": False, "channels_last": False}
    return build_segmenter(config.Model(**{**settings, **changes}))


def test_grey_is_the_official_data_gray():
    # Official: BGR pixels * (1/255) - 0.4488, averaged over channels. Ours: mean of the mean-subtracted image / 255.
    pixels = torch.rand(2, 3, 4, 5) * 255
    normalised = pixels - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)
    official = (pixels / 255 - 0.4488).mean(dim=1, keepdim=True)
    torch.testing.assert_close(HypercolumnNet.grey(normalised), official, atol=1e-4, rtol=0)


def test_dense_logits_equal_sparse_logits_at_the_stride_8_grid():
    model = _net().eval()
    image = torch.randn(2, 3, 64, 96) * 50  # H, W multiples of 32: every stage's stride is exact
    with torch.no_grad():
        dense = model(image)["main"]
        rows, cols = torch.meshgrid(torch.arange(8), torch.arange(12), indexing="ij")
        points = torch.stack([cols * 8 + 3.5, rows * 8 + 3.5], dim=-1).reshape(1, -1, 2).expand(2, -1, -1)
        sparse = model(image, output="point_logits", points=points)["main"]
    assert dense.shape == (2, 5, 8, 12) and sparse.shape == (2, 5, 96)
    torch.testing.assert_close(sparse, dense.flatten(2), atol=1e-4, rtol=1e-4)


def test_point_hypercolumn_reads_the_grey_pixel_and_has_every_stage():
    model = _net(width=4).eval()
    image = torch.randn(1, 3, 32, 48) * 50
    points = torch.tensor([[[0.0, 0.0], [47.0, 31.0], [10.0, 20.0]]])
    with torch.no_grad():
        column = model(image, output="hypercolumn", points=points)["hypercolumn"]
    assert column.shape == (1, 1 + 4 + 8 + 16 + 32 + 32 + 64, 3) == (1, model.hypercolumn_channels, 3)
    grey = HypercolumnNet.grey(image)[0, 0]
    torch.testing.assert_close(column[0, 0], torch.stack([grey[0, 0], grey[31, 47], grey[20, 10]]))


def test_grid_from_points_maps_pixel_centres():
    grid = grid_from_points(torch.tensor([[[0.0, 0.0], [9.0, 3.0]]]), (4, 10))
    torch.testing.assert_close(grid[0, :, 0], torch.tensor([[-0.9, -0.75], [0.9, 0.75]]))


def test_outputs_and_parameter_groups():
    model = _net(multi_level=True).train()
    image = torch.randn(2, 3, 33, 47)
    out = model(image)
    assert set(out) == {"main", "aux"} and out["main"].shape == out["aux"].shape == (2, 5, 5, 6)
    pool5 = model(torch.randn(3, 3, 32, 32), output="pool5")["pool5"]
    assert pool5.shape == (3, 32, 1, 1)
    heads, backbone = {id(p) for p in model.head_parameters()}, {id(p) for p in model.backbone_parameters()}
    assert heads.isdisjoint(backbone) and heads | backbone == {id(p) for p in model.parameters()}
    assert model.backbone.features[0].in_channels == 1  # grey network
    with pytest.raises(ValueError, match="output = 'logits'"):
        model(image, output="logits")
    with pytest.raises(ValueError, match=r"points must be \(N, P, 2\), got None"):
        model(image, output="hypercolumn")
    with pytest.raises(ValueError, match="model.width"):
        _net(width=0)
