/* Few-row int8 / int4 multiplies with the input rows quantised to int8 on the fly: the fast path for quantised
   weights (llama.cpp's way), chosen per machine by measurement, with native_gemv.c's exact kernels selectable.

   y[m, n] = x[m, k] . W[n, k]^T (+ b), input rows 4 at a time.

   Why: on an AVX2-only CPU (8 fp32 lanes, 2 FMA ports) widening every weight to fp32 and multiplying by FMA
   costs ~4 vector ops per 8 weights, so an int4 kernel is compute-bound and no faster than int8. Here each
   input row is quantised once per call to int8 in blocks (symmetric: d = max|x| / 127, q = round_half_even(x *
   (127 / max|x|))): of 32 inputs for int8 weights, of the weight group (32..256) for int4 ones. The weights stay
   small integers, and 32 products become one integer instruction pair (AVX2: VPMADDUBSW + VPMADDWD, 8 int32
   sums) or one VPDPBUSD (AVX-VNNI, or AVX-512 VNNI on 256-bit registers). Floats only come in once per block:
   convert the 8 int32 sums and multiply-add them by the block's factor. Every family builds this file (the
   AVX-512 ones include AVX2).

   Weight formats: int8 w [n, k] int8 in -127..127, scales [n]: W = q * scale[row] (the project's int8 format).
   int4 in the rows layout (native_common.h).

   int4 math: a group's share of a dot product is sum_i x_i ((q_i - 8) s + z) = s sum_i x_i q_i + (z - 8 s) sum_i x_i.
   The inputs are quantised per group, x_i ~ d_g xq_i, so a group is d_g s_g [sum_{i in g} q_i xq_i] + (z - 8 s)
   xs_g, where xs_g = d_g sum_{i in g} xq_i depends on the input row only (once per call). The hot loop is integer
   sums through the group, then one convert and one FMA a group (by d_g s_g: a scalar product); the zero terms are
   a short vector dot over the groups per output. The codes 0..15 are unsigned already, which is what VPMADDUBSW /
   VPDPBUSD want on their unsigned side. (Per group rather than per 32 halves the float work at g = 64 and quarters
   it at the usual 128; llama.cpp's K-quants take their activation scales per 256.)

   int8 math: VPMADDUBSW / VPDPBUSD multiply unsigned by signed bytes, so (as llama.cpp does) the weight's sign is
   moved onto the input: |w| * (sign(w) xq). |w| <= 127 and |xq| <= 127 keep VPMADDUBSW's int16 pair sums
   (<= 2 * 127 * 127 = 32258) clear of saturation.

   Scales and zeros, biases, x and y are fp32 or bf16 (dtype 0 or 1). Accumulation is fp32 after the per-block
   integer sums, one rounding to the output's dtype, after the bias. Each output is computed the same way whatever
   m is, and the integer sums are exact, so the AVX2 and VNNI builds give the same numbers. OpenMP threads split
   the weight rows (static, so each thread streams one contiguous run of rows). */
#include "native_common.h"
#define QBLOCK 32         /* inputs per activation scale */
static inline int32_t sum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/* 8 consecutive inputs as fp32 */
static inline __m256 load8(const void *x, long i, int dtype) {
    if (dtype) {
        __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + i)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
    return _mm256_loadu_ps((const float *)x + i);
}

/* ---- activation quantisation -------------------------------------------------------------------------------
   Each block of `block` inputs (32 for int8 weights, the group size for int4 ones; a multiple of 32): d =
   max|x| / 127, xq = round_half_even(x * (127 / max|x|)) (0 for an all-zero block). Also isum = sum of the block's
   xq (the int4 zeros need it). m * k work, against n * k for the multiply. */
static inline float amax32(const void *x, long i, int dtype) {
    const __m256 nosign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v0 = load8(x, i, dtype), v1 = load8(x, i + 8, dtype), v2 = load8(x, i + 16, dtype), v3 = load8(x, i + 24, dtype);
    __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, nosign), _mm256_and_ps(v1, nosign)),
                              _mm256_max_ps(_mm256_and_ps(v2, nosign), _mm256_and_ps(v3, nosign)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

void q8_quantize(const void *x, long m, long k, int dtype, long block, int8_t *xq, float *xd, int32_t *isum) {
    /* two VPACKS interleave the 128-bit lanes: 32-bit groups come out as 0 4 1 5 2 6 3 7 */
    const __m256i unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    long nb = k / block;
    for (long j = 0; j < m; j++)
        for (long b = 0; b < nb; b++) {
            long start = j * k + b * block;
            float amax = 0.0f;
            for (long i = start; i < start + block; i += QBLOCK) {
                float a = amax32(x, i, dtype);
                amax = a > amax ? a : amax;
            }
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            xd[j * nb + b] = amax / 127.0f;
            __m256 iv = _mm256_set1_ps(inv);
            __m256i sums = _mm256_setzero_si256();
            for (long i = start; i < start + block; i += QBLOCK) {
                __m256i q0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(load8(x, i, dtype), iv), mode));
                __m256i q1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(load8(x, i + 8, dtype), iv), mode));
                __m256i q2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(load8(x, i + 16, dtype), iv), mode));
                __m256i q3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(load8(x, i + 24, dtype), iv), mode));
                sums = _mm256_add_epi32(sums, _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
                __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
                _mm256_storeu_si256((__m256i *)(xq + i), _mm256_permutevar8x32_epi32(bytes, unshuffle));
            }
            if (isum) isum[j * nb + b] = sum8i(sums);
        }
}

/* ---- the integer dot product of one block: 32 unsigned bytes u times 32 signed bytes s, as 8 int32 sums ---- */
static inline __m256i dot_block(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    /* u8 x s8 -> pairs summed to int16 (no saturation for our ranges, see top), then pairs of those to int32 */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* int8 weights: `rows` (1..4, a constant where inlined, so accumulators stay in registers) quantised input
   rows against one weight row: sum_b d_b * (integer dot of block b), before the row's scale. Two accumulators
   per input row (even / odd block) so consecutive FMAs do not wait on each other. */
static inline __attribute__((always_inline)) void int8_dots(const int8_t *wr, const int8_t *xq, const float *xd,
                                                            long k, int rows, int prefetch, float *out) {
    __m256 a[4][2];
    const long nb = k / QBLOCK;
    for (int j = 0; j < rows; j++) a[j][0] = a[j][1] = _mm256_setzero_ps();
    const int8_t *xc = xq;
    const float *dc = xd;
    for (const int8_t *wc = wr; wc < wr + k; wc += 64, xc += 64, dc += 2) { /* walk pointers: see int4_dots */
        if (prefetch) _mm_prefetch((const char *)wc + 2 * PREFETCH_BYTES, _MM_HINT_T0);
        __m256i w0 = _mm256_loadu_si256((const __m256i *)wc);
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(wc + 32));
        __m256i u0 = _mm256_sign_epi8(w0, w0), u1 = _mm256_sign_epi8(w1, w1); /* |w| */
        for (int j = 0; j < rows; j++) {
            __m256i s0 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xc + j * k)), w0); /* sign(w) xq */
            __m256i s1 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xc + j * k + 32)), w1);
            a[j][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_block(u0, s0)), _mm256_broadcast_ss(dc + j * nb), a[j][0]);
            a[j][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_block(u1, s1)), _mm256_broadcast_ss(dc + j * nb + 1), a[j][1]);
        }
    }
    for (int j = 0; j < rows; j++) out[j] = sum8(_mm256_add_ps(a[j][0], a[j][1]));
}

/* int4: the integer sums of a group. On AVX2, VPMADDUBSW's int16 pair sums are added as int16 through the group
   (each <= 2 * 15 * 127 = 3810, and a group of 256 has 8 blocks of 32: <= 30480 < 2^15) and widened once a group;
   VPDPBUSD adds into int32 directly. Either way the sums are exact, so every family gives the same numbers. */
static inline __m256i group_add(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, s));
#endif
}

static inline __m256 group_float(__m256i acc) {
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
    return _mm256_cvtepi32_ps(acc);
#else
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(acc, _mm256_set1_epi16(1)));
#endif
}

/* One group of g >= 64 inputs (whole chunks) of one weight row against `rows` input rows: acc[j][which] += d_g s_g
   (integer dot of the group), d at d0[j * groups]. Advances the code and input pointers past the group. */
static inline __attribute__((always_inline)) void int4_group(const uint8_t **wc, const int8_t **xc, const uint8_t *wr,
                                                             const float *d0, float s, long k, long g, long groups,
                                                             int rows, int prefetch, __m256 acc[4][2], int which) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i sums[4];
    for (int j = 0; j < rows; j++) sums[j] = _mm256_setzero_si256();
    for (long c = 0; c < g / 64; c++, *wc += 32, *xc += 64) {
        if (prefetch && ((*wc - wr) & 63) == 0) _mm_prefetch((const char *)*wc + PREFETCH_BYTES, _MM_HINT_T0);
        __m256i v = _mm256_loadu_si256((const __m256i *)*wc);
        __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        for (int j = 0; j < rows; j++) {
            sums[j] = group_add(sums[j], lo, _mm256_loadu_si256((const __m256i *)(*xc + j * k)));
            sums[j] = group_add(sums[j], hi, _mm256_loadu_si256((const __m256i *)(*xc + j * k + 32)));
        }
    }
    for (int j = 0; j < rows; j++)
        acc[j][which] = _mm256_fmadd_ps(group_float(sums[j]), _mm256_set1_ps(d0[j * groups] * s), acc[j][which]);
}

/* int4 weights: one weight row's codes against `rows` input rows quantised per group (xq, and d [rows, groups]),
   with the row's group scales s: sum_g d_g s_g (integer dot of group g), before the zero term. Per group and input
   row one convert and one FMA; two accumulators (even and odd groups) so the FMAs do not wait on each other. Each
   accumulator sees its groups in the same order whatever `rows` is, so one-row and four-row calls agree. */
static inline __attribute__((always_inline)) void int4_dots(const uint8_t *wr, const int8_t *xq, const float *xd,
                                                            const float *s, long k, long g, int rows, int prefetch,
                                                            float *out) {
    const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    const long groups = k / g;
    __m256 acc[4][2];
    for (int j = 0; j < rows; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    const uint8_t *wc = wr;
    const int8_t *xc = xq;
    if (g == 32) { /* a chunk's low nibbles are group gi, its high ones group gi + 1 */
        for (long gi = 0; gi < groups; gi += 2, wc += 32, xc += 64) {
            if (prefetch && (gi & 2) == 0) _mm_prefetch((const char *)wc + PREFETCH_BYTES, _MM_HINT_T0);
            __m256i v = _mm256_loadu_si256((const __m256i *)wc);
            __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            for (int j = 0; j < rows; j++) {
                __m256 i0 = group_float(group_add(zero, lo, _mm256_loadu_si256((const __m256i *)(xc + j * k))));
                __m256 i1 = group_float(group_add(zero, hi, _mm256_loadu_si256((const __m256i *)(xc + j * k + 32))));
                acc[j][0] = _mm256_fmadd_ps(i0, _mm256_set1_ps(xd[j * groups + gi] * s[gi]), acc[j][0]);
                acc[j][1] = _mm256_fmadd_ps(i1, _mm256_set1_ps(xd[j * groups + gi + 1] * s[gi + 1]), acc[j][1]);
            }
        }
    } else { /* whole chunks a group: the low and high nibbles of each are in the same group. Two groups a step,
                one per accumulator (an index the compiler knows keeps them in registers). */
        long gi = 0;
        for (; gi + 2 <= groups; gi += 2) {
            int4_group(&wc, &xc, wr, xd + gi, s[gi], k, g, groups, rows, prefetch, acc, 0);
            int4_group(&wc, &xc, wr, xd + gi + 1, s[gi + 1], k, g, groups, rows, prefetch, acc, 1);
        }
        if (gi < groups) int4_group(&wc, &xc, wr, xd + gi, s[gi], k, g, groups, rows, prefetch, acc, 0);
    }
    for (int j = 0; j < rows; j++) out[j] = sum8(_mm256_add_ps(acc[j][0], acc[j][1]));
}

/* int8, one scale per output row: x [m, k] (dtype), w [n, k] int8 (-127..127), scales [n] (dtype), b [n] (dtype)
   or NULL, y [m, n] (dtype); k % 64 == 0. Returns 0, -1 when out of memory, -2 for a bad shape (nothing
   written). Same arguments as native_gemv.c's int8_rows. */
int q8_int8_rows(const void *x, const int8_t *w, const void *scales, const void *b, void *y, long m, long n, long k,
                 int dtype, int threads) {
    if (k % 64) return -2;
    long nb = k / QBLOCK;
    int8_t *xq = malloc(m * k + sizeof(float) * m * nb);
    if (!xq) return -1;
    float *xd = (float *)(xq + m * k); /* m * k is a multiple of 64: aligned for floats */
    q8_quantize(x, m, k, dtype, QBLOCK, xq, xd, NULL);
#define INT8_CALL(R) int8_dots(wr, xq + i0 * k, xd + i0 * nb, k, R, i0 == 0, s)
    INT8_ROWS_LOOP(INT8_CALL)
    free(xq);
    return 0;
}

/* int4 in the rows layout (native_common.h): x [m, k] (dtype), w [n, k/2] bytes, sz [n, k/g, 2] (dtype), b [n]
   (dtype) or NULL, y [m, n] (dtype). The inputs are quantised per group of g (one scale per weight group, as
   llama.cpp's K-quants take theirs per 256). Returns 0, -1 when out of memory, -2 for a bad shape or group size. */
int q8_int4_rows(const void *x, const uint8_t *w, const void *sz, const void *b, void *y, long m, long n, long k,
                 long g, int dtype, int threads) {
    if (!int4_shape_ok(k, g)) return -2;
    const long groups = k / g, pair_bytes = dtype ? 2 * 2 : 2 * 4;
    int8_t *xq = malloc(m * k + (2 * sizeof(float) + sizeof(int32_t)) * m * groups);
    if (!xq) return -1;
    float *xd = (float *)(xq + m * k), *xs = xd + m * groups; /* m * k is a multiple of 64: aligned for floats */
    int32_t *isum = (int32_t *)(xs + m * groups);
    q8_quantize(x, m, k, dtype, g, xq, xd, isum);
    for (long i = 0; i < m * groups; i++) xs[i] = xd[i] * (float)isum[i]; /* each group's sum of the inputs */
/* g and the rows as constants in each inlined copy: the group's chunk loop unrolls */
#define INT4_G(R, G) int4_dots(wr, xq + i0 * k, xd + i0 * groups, s, k, G, R, i0 == 0, out)
#define INT4_CALL(R)                                                                                          \
    switch (g) {                                                                                              \
    case 32: INT4_G(R, 32); break;                                                                            \
    case 64: INT4_G(R, 64); break;                                                                            \
    case 128: INT4_G(R, 128); break;                                                                          \
    default: INT4_G(R, 256); break;                                                                           \
    }
    INT4_ROWS_LOOP(INT4_CALL, xs)
    free(xq);
    return 0;
}

/* The instruction the integer dots use, for `bloomtui info`. */
const char *q8_isa(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return "VPDPBUSD (AVX-512 VNNI)";
#elif defined(__AVXVNNI__)
    return "VPDPBUSD (AVX-VNNI)";
#else
    return "VPMADDUBSW (AVX2)";
#endif
}
