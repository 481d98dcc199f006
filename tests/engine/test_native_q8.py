"""The integer-dot kernels (native_q8.c): inputs quantised per block (32 for int8 weights, the group for int4)
exactly as documented, the sums those integers give (bit for bit where every float step is exact), each row's
numbers independent of how many rows share the call and of the CPU family, and the error against the exact
product within the quantiser's bound."""

from __future__ import annotations

import pytest
import torch

from bloomtui.engine.compute import native
from bloomtui.engine.weights.quant import pack_int4_rows
from tests.engine.conftest import BUILDS


def _quantize(
    kernels: native.NativeKernels, x: torch.Tensor, block: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The C quantiser's (xq [m, k] int8, d [m, k/block] fp32, block sums [m, k/block] int32)."""
    m, k = x.shape
    xq, d = torch.empty(m, k, dtype=torch.int8), torch.empty(m, k // block)
    sums = torch.empty(m, k // block, dtype=torch.int32)
    bf16 = int(x.dtype == torch.bfloat16)
    kernels.lib.q8_quantize(x.data_ptr(), m, k, bf16, block, xq.data_ptr(), d.data_ptr(), sums.data_ptr())
    return xq, d, sums


def _same_math_int8(xq: torch.Tensor, d: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """scale_r * sum_b d_b * (integer dot of block b), the integers exact and the floats in fp64."""
    m, k = xq.shape
    dots = torch.einsum("jbi,rbi->jrb", xq.double().view(m, k // 32, 32), q.double().view(-1, k // 32, 32))
    return (dots * d.double()[:, None, :]).sum(-1) * scales.double()[None, :]


def _same_math_int4(xq, d, codes, scale, zero, g: int) -> torch.Tensor:  # noqa: ANN001
    """sum_g [d_g s_g idot_g + (z_g - 8 s_g) d_g sum_{i in g} xq_i], the inputs quantised per group (d [m, groups])."""
    m, k = xq.shape
    n = codes.shape[0]
    xg = xq.double().view(m, k // g, g)
    dots = torch.einsum("jgi,rgi->jrg", xg, codes.double().view(n, k // g, g)) * d.double()[:, None, :]
    xs = xg.sum(-1) * d.double()
    s, z = scale.double(), zero.double()
    return (dots * s[None]).sum(-1) + (xs[:, None, :] * (z - 8 * s)[None]).sum(-1)


def _exact_float_inputs(m: int, k: int, gen: torch.Generator, block: int = 32) -> torch.Tensor:
    """Inputs whose every block has max|x| = 127 * 2^e: d = 2^e and x * (127 / max|x|) are exact, so every float
    step of the kernels is exact and the result must equal the fp64 reference bit for bit."""
    xi = torch.randint(-127, 128, (m, k), generator=gen)
    xi.view(m, k // block, block)[:, :, 5] = 127 * (torch.randint(0, 2, (m, k // block), generator=gen) * 2 - 1)
    e = torch.randint(-3, 2, (m, k // block, 1), generator=gen).double()
    return (xi.view(m, k // block, block).double() * 2.0**e).view(m, k).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [32, 128])
def test_the_quantiser_rounds_each_block_as_documented(kernels, dtype: torch.dtype, block: int) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 256, generator=gen) * 3).to(dtype)
    x[1, :128] = 0  # an all-zero block: d = 0, codes 0
    x[2, 128:160] = (torch.arange(32) - 15.5) * (127 / 15.5)  # halves of a step: round to even
    xq, d, sums = _quantize(kernels, x, block)
    blocks = x.float().view(3, 256 // block, block)
    amax = blocks.abs().amax(-1)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    assert torch.equal(xq, torch.round(blocks * inverse[..., None]).to(torch.int8).view(3, 256))
    assert torch.equal(d, amax / 127.0)
    assert torch.equal(sums, xq.view(3, 256 // block, block).int().sum(-1))


@pytest.mark.parametrize(("k", "n"), [(64, 8), (256, 33)])  # k = 64: one chunk, no 128-input steps
def test_exact_float_cases_equal_the_integer_math_bit_for_bit(kernels, k: int, n: int) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(k)
    for m in (1, 3, 6):
        x = _exact_float_inputs(m, k, gen)
        xq, d, _ = _quantize(kernels, x)
        q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        scales = 2.0 ** torch.randint(-8, 0, (n,), generator=gen).float()
        got = kernels.int8(x, q, scales, None, quantized=True)
        assert torch.equal(got.double(), _same_math_int8(xq, d, q, scales))
        for g in (32, 64, 128, 256):
            if k % g:
                continue
            codes = torch.randint(0, 16, (n, k), generator=gen)
            scale = 2.0 ** torch.randint(-6, -1, (n, k // g), generator=gen).float()
            zero = torch.randint(-8, 9, (n, k // g), generator=gen).float() * scale
            pairs = torch.stack([scale, zero], dim=-1)
            x = _exact_float_inputs(m, k, gen, g)
            xq, d, _ = _quantize(kernels, x, g)
            got = kernels.int4(x, pack_int4_rows(codes), pairs, g, None, quantized=True)
            assert torch.equal(got.double(), _same_math_int4(xq, d, codes, scale, zero, g)), (m, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_rows_are_close_to_the_exact_product_and_independent(kernels, dtype: torch.dtype) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(1)
    m, n, k, g = 6, 70, 384, 64
    x = torch.randn(m, k, generator=gen).to(dtype)
    bias = torch.randn(n, generator=gen).to(dtype)
    q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scales = (torch.rand(n, generator=gen) / 50).to(dtype)
    codes = torch.randint(0, 16, (n, k), generator=gen)
    scale, zero = torch.rand(n, k // g, generator=gen) / 8, torch.randn(n, k // g, generator=gen) / 4
    pairs = torch.stack([scale, zero], dim=-1).to(dtype)
    w4 = ((codes - 8) * pairs[..., 0].double().repeat_interleave(g, 1)) + pairs[..., 1].double().repeat_interleave(g, 1)
    packed = pack_int4_rows(codes)
    cases = (
        (lambda rows: kernels.int8(rows, q, scales, bias, quantized=True), q.double() * scales.double()[:, None]),
        (lambda rows: kernels.int4(rows, packed, pairs, g, bias, quantized=True), w4),
    )
    for multiply, w in cases:
        got = multiply(x)
        assert got.dtype == dtype
        exact = x.double() @ w.T + bias.double()
        # Each input within half a step of its block's 127 levels: about 0.5% of the output's scale, plus
        # bf16's rounding of the output.
        assert (got.double() - exact).abs().max() <= 1e-2 * exact.abs().max()
        for i in range(m):  # a verify pass's rows give the numbers of one-row passes
            assert torch.equal(got[i], multiply(x[i : i + 1])[0])


def test_every_family_gives_the_same_numbers() -> None:
    """The integer sums are exact and the float steps are in the same order on every build, so an AVX2 desktop
    and an AVX-512 VNNI server decode the same tokens."""
    builds = [native.build(arch) for family in BUILDS if not isinstance(arch := native.family_arch(family), str)]
    builds = [b for b in builds if not isinstance(b, str)]
    if len(builds) < 2:
        pytest.skip("this machine runs fewer than two families' kernels")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 512, generator=gen).bfloat16()
    q = torch.randint(-127, 128, (40, 512), generator=gen, dtype=torch.int8)
    scales = torch.rand(40, generator=gen).bfloat16()
    pairs = torch.rand(40, 8, 2, generator=gen).bfloat16()
    packed = pack_int4_rows(torch.randint(0, 16, (40, 512), generator=gen))
    first, *others = builds
    for other in others:
        assert torch.equal(first.int8(x, q, scales, None, True), other.int8(x, q, scales, None, True))
        assert torch.equal(first.int4(x, packed, pairs, 64, None, True), other.int4(x, packed, pairs, 64, None, True))


def test_bad_shapes_are_refused_not_read_past() -> None:
    built = native.kernels()
    if built is None:
        pytest.skip("no native kernels here")
    x = torch.randn(1, 96)
    with pytest.raises(ValueError, match="cannot take this shape"):
        built.int4(x, torch.zeros(8, 48, dtype=torch.uint8), torch.ones(8, 3, 2), 32, None, quantized=True)
    with pytest.raises(ValueError, match="cannot take this shape"):
        built.int4(torch.randn(1, 128), torch.zeros(8, 64, dtype=torch.uint8), torch.ones(8, 3, 2), 48, None)
