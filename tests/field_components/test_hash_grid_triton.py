"""The Triton hash grid equals the torch path, forward and backward (GPU, or CPU with TRITON_INTERPRET=1)."""

import os

import pytest
import torch

from fourdfy.field_components.hash_grid import grid_layout, hash_grid_encode
from fourdfy.field_components import hash_grid_triton as ht

RUNNABLE = ht.triton_available() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
pytestmark = pytest.mark.skipif(
    not RUNNABLE, reason="needs triton and a CUDA device (or TRITON_INTERPRET=1 to run the kernels on the CPU)"
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("dims, levels, log2_t, feats", [(3, 6, 10, 2), (4, 5, 11, 2), (2, 4, 8, 4), (3, 3, 9, 1)])
def test_triton_matches_torch_forward_and_backward(dims, levels, log2_t, feats):
    layout = grid_layout(dims, levels, feats, log2_t, 4, 1.7)
    assert any(lv.hashed for lv in layout.levels) and any(not lv.hashed for lv in layout.levels)
    g = torch.Generator().manual_seed(dims * 100 + levels)
    n = 300
    x = (torch.rand(n, dims, generator=g) * 1.4 - 0.2).to(DEVICE)  # includes points outside [0, 1]
    params = (torch.rand(layout.n_params, generator=g) * 2 - 1).to(DEVICE)
    grad_out = torch.randn(n, layout.n_output_dims, generator=g).to(DEVICE)

    xt, pt = x.clone().requires_grad_(True), params.clone().requires_grad_(True)
    ref = hash_grid_encode(xt, pt, layout)
    ref.backward(grad_out)
    xk, pk = x.clone().requires_grad_(True), params.clone().requires_grad_(True)
    out = ht.hash_grid_encode_triton(xk, pk, layout)
    out.backward(grad_out)

    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pk.grad, pt.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(xk.grad, xt.grad, atol=1e-3, rtol=1e-4)


def test_params_only_gradient():
    layout = grid_layout(3, 4, 2, 9, 4, 1.5)
    x = torch.rand(100, 3, device=DEVICE)
    p = torch.randn(layout.n_params, device=DEVICE, requires_grad=True)
    ht.hash_grid_encode_triton(x, p, layout).sum().backward()
    p2 = p.detach().clone().requires_grad_(True)
    hash_grid_encode(x, p2, layout).sum().backward()
    torch.testing.assert_close(p.grad, p2.grad, atol=1e-5, rtol=1e-5)


def test_module_routes_to_triton_and_matches():
    from fourdfy.field_components.hash_grid import HashGrid

    torch.manual_seed(0)
    ref = HashGrid(3, n_levels=4, log2_hashmap_size=9, base_resolution=4, per_level_scale=1.5, implementation="torch")
    fast = HashGrid(3, n_levels=4, log2_hashmap_size=9, base_resolution=4, per_level_scale=1.5, implementation="triton")
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.to(DEVICE), fast.to(DEVICE)
    x = torch.rand(50, 3, device=DEVICE)
    assert fast.uses_triton(x) and not ref.uses_triton(x)
    torch.testing.assert_close(fast(x), ref(x), atol=1e-6, rtol=1e-6)


def test_attach_gradient_on_the_triton_path_matches_its_forward():
    """``HashGrid.attach_gradient`` runs the Triton backward alone: the table gradient of the Triton forward's."""
    from fourdfy.field_components.hash_grid import HashGrid

    torch.manual_seed(1)
    grid = HashGrid(4, n_levels=5, log2_hashmap_size=10, base_resolution=4, per_level_scale=1.5, implementation="triton")
    grid = grid.to(DEVICE)
    grid.params.data.uniform_(-1.0, 1.0)
    x = torch.rand(200, 4, device=DEVICE)
    weight = torch.randn(200, grid.n_output_dims, device=DEVICE)
    grid(x).mul(weight).sum().backward()
    ref = grid.params.grad.clone()
    grid.zero_grad()
    with torch.no_grad():
        values = grid(x)
    grid.attach_gradient(x, values).mul(weight).sum().backward()
    assert float(ref.abs().sum()) > 0
    torch.testing.assert_close(grid.params.grad, ref, atol=1e-5, rtol=1e-5)


def compiled_variants(kernel) -> int:
    """Compiled specialisations of a Triton kernel on any device (``device_caches`` in Triton 3.2+, ``cache`` before)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is not None:
        return sum(len(entry[0]) for entry in caches.values())
    return sum(len(c) for c in kernel.cache.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiles the kernels: needs a CUDA device")
def test_point_count_does_not_recompile_the_kernels():
    # N changes every training step; multiples of 16 (and 1) must not make new specialisations mid-training
    layout = grid_layout(3, 4, 2, 9, 4, 1.5)
    p = torch.randn(layout.n_params, device=DEVICE, requires_grad=True)

    def call(n: int) -> None:
        x = torch.rand(n, 3, device=DEVICE, requires_grad=True)
        ht.hash_grid_encode_triton(x, p, layout).sum().backward()

    call(1001)
    before = compiled_variants(ht._hash_grid_fwd), compiled_variants(ht._hash_grid_bwd)
    for n in (1024, 1, 4096, 999):
        call(n)
    assert (compiled_variants(ht._hash_grid_fwd), compiled_variants(ht._hash_grid_bwd)) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the vector atomics run on a CUDA device of sm_90 or newer")
@pytest.mark.parametrize("dims", [3, 4])
def test_vector_atomics_give_the_scalar_atomics_gradient(dims, monkeypatch):
    """Where the backward scatters 2-feature rows with red.global.add.v2.f32 (Hopper+), the table gradient equals the
    one of Triton's scalar atomics (and the torch path's) up to summation order."""
    layout = grid_layout(dims, 8, 2, 14, 16, 1.45)
    g = torch.Generator().manual_seed(dims)
    n = 50_000
    x = torch.rand(n, dims, generator=g).cuda()
    x[: n // 2, :3] = x[0, :3] + 0.01 * x[: n // 2, :3]  # half the points in one small blob: rows hit many times
    params = (torch.rand(layout.n_params, generator=g) * 2 - 1).cuda()
    grad_out = torch.randn(n, layout.n_output_dims, generator=g).cuda()
    grads = {}
    for vector in (True, False):
        monkeypatch.setattr(ht, "VECTOR_ATOMICS", vector)
        p = params.clone().requires_grad_(True)
        ht.hash_grid_encode_triton(x, p, layout).backward(grad_out)
        grads[vector] = p.grad
    ref = params.clone().requires_grad_(True)
    hash_grid_encode(x, ref, layout).backward(grad_out)
    monkeypatch.setattr(ht, "VECTOR_ATOMICS", True)
    assert ht.uses_vector_atomics(2, x.device) == (torch.cuda.get_device_capability()[0] >= 9)
    assert grads[True].abs().sum() > 0
    # atomic adds sum a row's terms in any order: fp32 rounding grows with the row's sum of |terms| (thousands of
    # terms in the blob's coarse rows), so the bound is relative to that sum, from the torch path on |grad_out|
    magnitude = params.clone().requires_grad_(True)
    hash_grid_encode(x, magnitude, layout).backward(grad_out.abs())
    bound = 1e-4 * magnitude.grad + 1e-6
    assert ((grads[True] - grads[False]).abs() <= bound).all()
    assert ((grads[True] - ref.grad).abs() <= bound).all()


def blob_problem(dims: int, seed: int):
    """A 6-level grid, 3000 points of which half sit in a small blob (coarse rows hit by many points), a table and
    an upstream gradient; on ``DEVICE``."""
    layout = grid_layout(dims, 6, 2, 12, 8, 1.5)
    g = torch.Generator().manual_seed(seed)
    n = 3000
    x = torch.rand(n, dims, generator=g)
    x[: n // 2, :3] = x[0, :3] + 0.02 * x[: n // 2, :3]  # a small blob: coarse rows hit by many points
    x = x.to(DEVICE)
    params = ((torch.rand(layout.n_params, generator=g) * 2 - 1) * 0.1).to(DEVICE)
    grad_out = torch.randn(n, layout.n_output_dims, generator=g).to(DEVICE)
    return layout, x, params, grad_out


def encode_with_grads(encode, x, params, grad_out, layout):
    """``encode(x, params, layout)`` and its backward from ``grad_out``: (encoding, table gradient, input gradient)."""
    p = params.clone().requires_grad_(True)
    xi = x.clone().requires_grad_(True)
    out = encode(xi, p, layout)
    out.backward(grad_out)
    return out.detach(), p.grad, xi.grad


@pytest.mark.parametrize("dims", [3, 4])
def test_launch_order_changes_no_result(dims, monkeypatch):
    """Which leading levels launch level-fastest (none, three, all: ``INTERLEAVE_BYTES``) changes which programs run
    together, not what they compute: the same encoding bit for bit, the same gradients up to the atomic adds'
    summation order, all equal to the torch path's."""
    layout, x, params, grad_out = blob_problem(dims, 10 + dims)
    three = 8 * layout.levels[3].offset  # the fp32 bytes of levels 0..2
    results = {}
    for budget, levels in ((0, 1), (three, 3), (2**40, 6)):
        monkeypatch.setattr(ht, "INTERLEAVE_BYTES", budget)
        assert ht.interleaved_levels(layout) == levels
        results[levels] = encode_with_grads(ht.hash_grid_encode_triton, x, params, grad_out, layout)
    ref, ref_grad_p, ref_grad_x = encode_with_grads(hash_grid_encode, x, params, grad_out, layout)
    assert torch.equal(results[1][0], results[3][0]) and torch.equal(results[1][0], results[6][0])
    torch.testing.assert_close(results[3][0], ref, atol=1e-6, rtol=1e-5)
    assert results[3][1].abs().sum() > 0 and results[3][2].abs().sum() > 0
    for out, grad_p, grad_x in results.values():
        torch.testing.assert_close(grad_p, ref_grad_p, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grad_x, ref_grad_x, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dims", [3, 4])
def test_private_gradient_copies_change_no_result(dims, monkeypatch):
    """Adding the coarse levels' rows into private gradient copies (``PRIVATE_COPIES``, ``PRIVATE_BYTES``) and summing
    them afterwards gives the table gradient of one shared copy and of the torch path, up to summation order; the
    encoding and the input gradient do not change."""
    layout, x, params, grad_out = blob_problem(dims, 20 + dims)
    two = 8 * layout.levels[2].offset  # the fp32 bytes of levels 0..1
    results = {}
    for copies, budget, levels in ((1, 2**40, 0), (4, two, 2), (3, 2**40, 6)):
        monkeypatch.setattr(ht, "PRIVATE_COPIES", copies)
        monkeypatch.setattr(ht, "PRIVATE_BYTES", budget)
        assert ht.private_levels(layout) == levels
        results[levels] = encode_with_grads(ht.hash_grid_encode_triton, x, params, grad_out, layout)
        assert results[levels][1].shape == params.shape
    _, ref_grad_p, ref_grad_x = encode_with_grads(hash_grid_encode, x, params, grad_out, layout)
    assert results[2][1].abs().sum() > 0
    for out, grad_p, grad_x in results.values():
        assert torch.equal(out, results[0][0])
        torch.testing.assert_close(grad_p, ref_grad_p, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grad_x, ref_grad_x, atol=1e-3, rtol=1e-4)


def test_private_levels_of_4dfy_grids(monkeypatch):
    """The default budget gives 4D-fy's 3-D grid (16 levels from 16^3, 2^19 rows) four private levels and its 4-D grid
    one; one copy means none."""
    monkeypatch.setattr(ht, "PRIVATE_COPIES", 16)
    monkeypatch.setattr(ht, "PRIVATE_BYTES", 2 * 2**20)
    scale = 1.447269237440378
    assert ht.private_levels(grid_layout(3, 16, 2, 19, 16, scale)) == 4
    assert ht.private_levels(grid_layout(4, 16, 2, 19, 16, scale)) == 1
    monkeypatch.setattr(ht, "PRIVATE_COPIES", 1)
    assert ht.private_levels(grid_layout(3, 16, 2, 19, 16, scale)) == 0
