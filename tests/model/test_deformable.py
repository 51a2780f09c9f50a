"""Multi-scale deformable attention: the gather and grid_sample cores against an explicit bilinear loop."""

from __future__ import annotations

import pytest
import torch

from unihema.model import deformable
from unihema.model.deformable import (
    MultiScaleDeformableAttention,
    ms_deform_attn,
    ms_deform_attn_gather,
    ms_deform_attn_grid_sample,
    ms_deform_attn_reference,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CORES = [ms_deform_attn_gather, ms_deform_attn_grid_sample]


def _random_inputs(shapes, batch, queries, heads, dim, points, dtype, device, generator):
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
    tokens = int(spatial_shapes.prod(1).sum())
    levels = len(shapes)
    value = torch.randn(batch, tokens, heads, dim, dtype=dtype, generator=generator).to(device)
    # Locations partly outside [0, 1] exercise the zero padding.
    locations = (
        torch.rand(batch, queries, heads, levels, points, 2, dtype=dtype, generator=generator) * 1.4 - 0.2
    ).to(device)
    weights = torch.rand(batch, queries, heads, levels, points, dtype=dtype, generator=generator)
    weights = (weights / weights.flatten(-2).sum(-1)[..., None, None]).to(device)
    return value, spatial_shapes, locations, weights


@pytest.mark.parametrize("core", CORES, ids=lambda fn: fn.__name__)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shapes,batch,queries,heads,dim,points",
    [
        ([(6, 5)], 1, 4, 1, 3, 1),
        ([(7, 9), (4, 5), (2, 3)], 2, 5, 2, 4, 3),
        ([(8, 8), (4, 4), (2, 2), (1, 1)], 2, 3, 3, 2, 2),
    ],
)
def test_cores_match_reference_loop(shapes, batch, queries, heads, dim, points, dtype, device, core):
    gen = torch.Generator().manual_seed(len(shapes) * 7 + queries)
    args = _random_inputs(shapes, batch, queries, heads, dim, points, dtype, device, gen)
    fast = core(*args)
    slow = ms_deform_attn_reference(*args)
    assert fast.shape == (batch, queries, heads * dim)
    assert fast.dtype == dtype
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_reference_loop_exact_cell_centre_and_outside():
    # One 2x3 map, one head, one channel: values 0..5 row-major.
    value = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1)
    shapes = torch.tensor([[2, 3]])
    # Centre of cell (row 1, col 2), halfway between cells (0,0)-(0,1), and far outside.
    locations = torch.tensor(
        [[[[[[2.5 / 3, 1.5 / 2]]]], [[[[1.0 / 3, 0.5 / 2]]]], [[[[2.0, 2.0]]]]]], dtype=torch.float64
    )
    weights = torch.ones(1, 3, 1, 1, 1, dtype=torch.float64)
    for fn in (ms_deform_attn_reference, *CORES):
        out = fn(value, shapes, locations, weights)
        assert out[0, :, 0].tolist() == pytest.approx([5.0, 0.5, 0.0])


@pytest.mark.parametrize("core", CORES, ids=lambda fn: fn.__name__)
def test_samples_at_and_beyond_the_edges(core):
    # A 2x3 map of ones: a sample on the outer edge of a border cell reads half of it (the other half is
    # the zero outside), one past that reads nothing; so does the gather core at +-inf and NaN.
    value = torch.ones(1, 6, 1, 1, dtype=torch.float64)
    shapes = torch.tensor([[2, 3]])
    xs = [0.0, 1.0, 1.0 + 1 / 3, -1 / 3, 5.0, -3.0]
    if core is ms_deform_attn_gather:
        xs += [float("inf"), float("-inf"), float("nan")]
    locations = torch.tensor([[x, 0.5] for x in xs], dtype=torch.float64).view(1, len(xs), 1, 1, 1, 2)
    weights = torch.ones(1, len(xs), 1, 1, 1, dtype=torch.float64)
    out = core(value, shapes, locations, weights)[0, :, 0]
    assert out.tolist() == pytest.approx([0.5, 0.5] + [0.0] * (len(xs) - 2))


def test_gather_and_grid_sample_gradients_agree():
    # Gradients for all three inputs, float64; random locations are almost surely off the cell borders,
    # where bilinear interpolation's derivative jumps.
    gen = torch.Generator().manual_seed(3)
    args = _random_inputs([(7, 9), (4, 5), (2, 3)], 2, 11, 2, 4, 3, torch.float64, "cpu", gen)
    upstream = torch.randn(2, 11, 8, dtype=torch.float64, generator=gen)
    grads = []
    for core in CORES:
        leaves = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
        (core(*leaves) * upstream).sum().backward()
        grads.append([leaves[i].grad for i in (0, 2, 3)])
    for gather, grid in zip(*grads, strict=True):
        assert gather.abs().sum() > 0
        torch.testing.assert_close(gather, grid, atol=1e-9, rtol=1e-9)


def test_gather_falls_back_to_int64_rows(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    args = _random_inputs([(5, 6), (3, 3)], 2, 4, 2, 3, 2, torch.float64, "cpu", gen)
    expected = ms_deform_attn_reference(*args)
    monkeypatch.setattr(deformable, "_INT32_MAX", 10)  # a table "too large" for int32 row numbers
    torch.testing.assert_close(ms_deform_attn_gather(*args), expected)


def test_inference_gathers_while_training_and_onnx_export_use_grid_sample(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    value, shapes, locations, weights = _random_inputs([(4, 4)], 1, 3, 1, 2, 2, torch.float32, "cpu", gen)
    called = []
    for name in ("ms_deform_attn_gather", "ms_deform_attn_grid_sample"):
        core = getattr(deformable, name)
        monkeypatch.setattr(deformable, name, lambda *a, _n=name, _c=core: called.append(_n) or _c(*a))
    ms_deform_attn(value, shapes, locations, weights)
    ms_deform_attn(value, shapes, locations, weights.requires_grad_())
    with torch.no_grad():
        ms_deform_attn(value, shapes, locations, weights)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    ms_deform_attn(value, shapes, locations, weights.detach())
    assert called == [
        "ms_deform_attn_gather", "ms_deform_attn_grid_sample", "ms_deform_attn_gather", "ms_deform_attn_grid_sample"
    ]  # fmt: skip


def test_core_rejects_mismatched_shapes():
    gen = torch.Generator().manual_seed(0)
    value, shapes, locations, weights = _random_inputs([(4, 4)], 1, 2, 1, 2, 1, torch.float32, "cpu", gen)
    with pytest.raises(ValueError, match="spatial_shapes cover"):
        ms_deform_attn(value, torch.tensor([[3, 4]]), locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, shapes, locations, weights[..., :0])


def _module_inputs(attn, batch=2, queries=6, shapes=((6, 7), (3, 4)), ref_dim=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    level_start = torch.cat((torch.zeros(1, dtype=torch.long), spatial_shapes.prod(1).cumsum(0)[:-1]))
    tokens = int(spatial_shapes.prod(1).sum())
    query = torch.randn(batch, queries, attn.d_model, generator=gen)
    value = torch.randn(batch, tokens, attn.d_model, generator=gen)
    ref = torch.rand(batch, queries, len(shapes), ref_dim, generator=gen)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1
    return query, ref, value, spatial_shapes, level_start


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_uses_fast_path_and_matches_reference(monkeypatch, ref_dim):
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(d_model=16, num_heads=2, num_levels=2, num_points=3)
    # Non-trivial offsets and weights (the default init zeroes the weight matrices).
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    inputs = _module_inputs(attn, ref_dim=ref_dim)
    calls = []

    def counting(*args):
        calls.append(args)
        return ms_deform_attn(*args)

    monkeypatch.setattr(deformable, "ms_deform_attn", counting)
    fast = attn(*inputs)
    assert len(calls) == 1
    assert fast.shape == (2, 6, 16)

    monkeypatch.setattr(deformable, "ms_deform_attn", ms_deform_attn_reference)
    slow = attn(*inputs)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)

    # Sampling locations follow the documented parameterisation.
    locations = calls[0][2]
    query, ref = inputs[0], inputs[1]
    offsets = attn.sampling_offsets(query).view(2, 6, 2, 2, 3, 2)
    if ref_dim == 2:
        expected = ref[:, :, None, :, None] + offsets / inputs[3].flip(-1)[None, None, None, :, None]
    else:
        expected = ref[:, :, None, :, None, :2] + offsets / 3 * ref[:, :, None, :, None, 2:] * 0.5
    torch.testing.assert_close(locations, expected)


def test_padded_values_do_not_change_output():
    torch.manual_seed(1)
    attn = MultiScaleDeformableAttention(d_model=8, num_heads=2, num_levels=2, num_points=4)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 1.0)
    query, ref, value, shapes, start = _module_inputs(attn, batch=1)
    padding = torch.zeros(1, value.shape[1], dtype=torch.bool)
    padding[0, ::3] = True
    out = attn(query, ref, value, shapes, start, padding)
    changed = value.clone()
    changed[padding] = torch.randn(int(padding.sum()), 8) * 100
    torch.testing.assert_close(attn(query, ref, changed, shapes, start, padding), out)
    # Without the mask the same change does matter (the test can fail).
    assert not torch.allclose(attn(query, ref, changed, shapes, start, None), out)


def test_module_validates_arguments():
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleDeformableAttention(10, 3, 1, 1)
    attn = MultiScaleDeformableAttention(8, 2, 2, 1)
    query, ref, value, shapes, start = _module_inputs(attn)
    with pytest.raises(ValueError, match="reference_points"):
        attn(query, ref[..., :1], value, shapes, start)
    with pytest.raises(ValueError, match="spatial_shapes"):
        attn(query, ref, value, shapes[:1], start)


def test_initial_offsets_point_along_one_ray_per_head():
    attn = MultiScaleDeformableAttention(d_model=8, num_heads=4, num_levels=1, num_points=2)
    bias = attn.sampling_offsets.bias.view(4, 1, 2, 2)
    # Head 0 looks right (+x), head 1 down (+y), head 2 left, head 3 up; point k at k+1 cells.
    expected_dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for head in range(4):
        for point in range(2):
            torch.testing.assert_close(
                bias[head, 0, point], expected_dirs[head] * (point + 1), atol=1e-6, rtol=0
            )


def test_gradients_reach_all_projections():
    attn = MultiScaleDeformableAttention(d_model=8, num_heads=2, num_levels=2, num_points=2)
    with torch.no_grad():  # the default init zeroes these, which blocks the gradient to the query
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    query, ref, value, shapes, start = _module_inputs(attn)
    query.requires_grad_(True)
    attn(query, ref, value, shapes, start).pow(2).sum().backward()
    for name, param in attn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert query.grad.abs().sum() > 0


def test_bfloat16_autocast_cpu():
    attn = MultiScaleDeformableAttention(d_model=8, num_heads=2, num_levels=2, num_points=2)
    inputs = _module_inputs(attn)
    reference = attn(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(*inputs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)
