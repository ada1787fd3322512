"""Integer kernels of Integer-STBP (``istbp.py``): every function here takes and returns integer
tensors and runs no floating-point tensor op (the dtype-closure test of ``istbp`` checks it).

A quantity is an integer tensor ``q`` and a power-of-two exponent held as a Python int (the
"register" a fixed-point datapath keeps beside it): activations ``q · 2^-f``, errors ``m · 2^e``.

* ``imm``: int8 × int8 → int32 matrix product (``torch._int_mm``), the one multiply of the
  datapath; a long reduction (the weight gradient over T·B·positions) is split so that no int32
  partial sum can overflow, and the chunks are added in int64.
* ``im2col`` / ``col2im``: convolution as ``imm`` and its transpose, by strided slicing.
* ``shift`` (multiply by 2^n, rounding half up when n < 0), ``requant`` (to b bits with a dynamic
  exponent chosen from max |m|: the leading-one position), ``stochastic_shift``.
* ``softmax_q12``: a base-2, shift-and-add softmax of mean logits (``istbp.py`` says how).
"""

from __future__ import annotations

import torch

INT8_MAX = 127
# longest reduction whose int8·int8 partial sums cannot leave int32: K · 127² < 2^31
SAFE_K = (2**31 - 1) // (INT8_MAX * INT8_MAX)


def pad_zeros(x: torch.Tensor, *pads: tuple[int, int]) -> torch.Tensor:
    """Zero-pad the last ``len(pads)`` dims by (before, after) each (``F.pad`` takes its fill as a
    float, a float op to the dispatcher)."""
    lead = x.dim() - len(pads)
    shape = [*x.shape[:lead], *(n + a + b for n, (a, b) in zip(x.shape[lead:], pads, strict=True))]
    out = torch.zeros(shape, dtype=x.dtype, device=x.device)
    out[(..., *(slice(a, a + n) for n, (a, _) in zip(x.shape[lead:], pads, strict=True)))] = x
    return out


def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch._int_mm`` with the operand shapes CUDA asks for (M > 16, K and N multiples of 8):
    zero rows / columns are added there and cut off again; the CPU kernel takes any shape."""
    a, b = a.contiguous(), b.contiguous()
    if a.device.type != "cuda":
        return torch._int_mm(a, b)
    m, k = a.shape
    n = b.shape[1]
    pm, pk, pn = max(17 - m, 0), -k % 8, -n % 8
    if pm or pk:
        a = pad_zeros(a, (0, pm), (0, pk))
    if pk or pn:
        b = pad_zeros(b, (0, pk), (0, pn))
    return torch._int_mm(a.contiguous(), b.contiguous())[:m, :n]


def imm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] @ int8 [K, N] → int32 [M, N] exactly (int64 when K > ``SAFE_K``, summed over
    int32 chunks of at most ``SAFE_K``)."""
    k = a.shape[1]
    if k <= SAFE_K:
        return _int_mm(a, b)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64, device=a.device)
    for k0 in range(0, k, SAFE_K):
        out += _int_mm(a[:, k0:k0 + SAFE_K], b[k0:k0 + SAFE_K]).to(torch.int64)
    return out


def shift(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x · 2^n`` for a Python int ``n``: a left shift, or a right shift rounding half up."""
    if n >= 0:
        return x << n if n else x
    return (x + (1 << (-n - 1))) >> -n


def bit_length(x: torch.Tensor) -> int:
    """Bits of max |x| (0 for an all-zero or empty tensor): the leading-one position a hardware
    leading-zero counter gives."""
    if x.numel() == 0:
        return 0
    return int(x.abs().max()).bit_length()


def requant(m: torch.Tensor, e: int, bits: int = 8) -> tuple[torch.Tensor, int]:
    """(m, e) → (m', e') with |m'| ≤ 2^(bits-1) − 1, ``m'`` int8, e' = e + r and ``m' = round(m ·
    2^-r)``: r is the smallest shift that fits max |m| (a per-tensor dynamic exponent)."""
    qmax = 2 ** (bits - 1) - 1
    r = max(bit_length(m) - (bits - 1), 0)
    q = shift(m, -r) if r else m
    return q.clamp(-qmax, qmax).to(torch.int8), e + r


def fit_int8(q: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
    """An activation (q, f) (value q · 2^-f) as int8 codes, dropping low bits only when it does not
    fit (spike counts and input codes always fit)."""
    r = max(bit_length(q) - 7, 0)
    q = shift(q, -r) if r else q
    return q.clamp(-INT8_MAX, INT8_MAX).to(torch.int8), f - r


def stochastic_shift(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``x · 2^-n`` rounded stochastically (x int64): floor((x + r) / 2^n) with r uniform in
    [0, 2^n), so that E[result] = x · 2^-n; a left shift for n ≤ 0. Draws from ``gen``, a CPU
    generator (the same draws on every device)."""
    if n <= 0:
        return x << -n
    n = min(n, 62)
    r = torch.randint(0, 1 << n, x.shape, generator=gen, dtype=torch.int64)
    return (x + r.to(x.device)) >> n


def im2col(
    x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """x [N, C, *S] (one or two spatial dims) → (cols [N · prod(out), C · prod(kernel)], out):
    each row holds the receptive field of one output position, ordered (c, k1, k2) as a conv
    weight [O, C, k1, k2] flattens."""
    d = x.dim() - 2
    if d == 1:
        cols, out = im2col(x.unsqueeze(2), (1, *kernel), (1, *stride), (0, *padding))
        return cols, out[1:]
    (k1, k2), (s1, s2), (p1, p2) = kernel, stride, padding
    n, c, h, w = x.shape
    o1, o2 = (h + 2 * p1 - k1) // s1 + 1, (w + 2 * p2 - k2) // s2 + 1
    xp = pad_zeros(x, (p1, p1), (p2, p2)) if p1 or p2 else x
    taps = [xp[:, :, i:i + s1 * (o1 - 1) + 1:s1, j:j + s2 * (o2 - 1) + 1:s2]
            for i in range(k1) for j in range(k2)]
    cols = torch.stack(taps, dim=2)  # [N, C, k1·k2, o1, o2]
    return cols.permute(0, 3, 4, 1, 2).reshape(n * o1 * o2, c * k1 * k2), (o1, o2)


def col2im(
    cols: torch.Tensor, shape: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
    padding: tuple[int, ...],
) -> torch.Tensor:
    """The transpose of ``im2col``: cols [N · prod(out), C · prod(kernel)] summed back onto the
    input positions → [N, C, *S] (``shape``), in cols' integer dtype."""
    if len(shape) == 3:
        n, c, length = shape
        out = col2im(cols, (n, c, 1, length), (1, *kernel), (1, *stride), (0, *padding))
        return out.squeeze(2)
    (k1, k2), (s1, s2), (p1, p2) = kernel, stride, padding
    n, c, h, w = shape
    o1, o2 = (h + 2 * p1 - k1) // s1 + 1, (w + 2 * p2 - k2) // s2 + 1
    g = cols.reshape(n, o1, o2, c, k1 * k2).permute(0, 3, 4, 1, 2)  # [N, C, k1·k2, o1, o2]
    xp = torch.zeros(n, c, h + 2 * p1, w + 2 * p2, dtype=cols.dtype, device=cols.device)
    for i in range(k1):
        for j in range(k2):
            xp[:, :, i:i + s1 * (o1 - 1) + 1:s1, j:j + s2 * (o2 - 1) + 1:s2] += g[:, :, i * k2 + j]
    return xp[:, :, p1:p1 + h, p2:p2 + w]


# log2(e) as a 16-bit fixed-point multiplier (1.4427 · 2^14 = 23637.3)
_LOG2E_Q14 = 23637


def softmax_q12(z: torch.Tensor, f: int, count: int) -> torch.Tensor:
    """softmax(mean logits) as integers in units of 2^-12 (a row sums to about 4096).

    ``z`` [B, K]: the integer sum over ``count`` steps of the logits (units 2^-f). The exponent
    is taken base 2: u = z · log2(e) / count (a fixed-point multiply, rounded to 8 fraction bits),
    d = u − max u ≤ 0 split into an integer part n and a fraction r, and 2^d ≈ 2^n · (1 + r)
    (Mitchell's piecewise-linear 2^x, at most 6 % off) as a shift; then p = (e << 12) // Σ e.
    """
    z = z.to(torch.int64)
    mult = (2 * _LOG2E_Q14 + count) // (2 * count)  # round(log2(e) / count · 2^14)
    u = shift(z * mult, 8 - f - 14)  # units 2^-8
    d = u - u.amax(dim=1, keepdim=True)  # <= 0
    n, r = d >> 8, d & 255  # d = 256 n + r, n <= 0, 0 <= r < 256
    e = ((256 + r) << 14) >> (8 - n).clamp(max=40)  # 2^(d/256) in units 2^-14
    return torch.div(e << 12, e.sum(dim=1, keepdim=True), rounding_mode="floor")
