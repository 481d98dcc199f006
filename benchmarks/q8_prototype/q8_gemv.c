/* PROTOTYPE: few-row int8 / int4 multiplies for AVX2 CPUs with the input rows quantised to int8 on the fly.

   y[m, n] = x[m, k] . W[n, k]^T (+ b), m = 1..4 per pass (more rows go 4 at a time).

   Why: on an AVX2-only CPU (8 fp32 lanes, 2 FMA ports) widening every weight to fp32 and multiplying by FMA
   costs ~4 vector ops per 8 weights, so the int4 kernel is compute-bound and no faster than int8. Here each
   input row is quantised once per call to int8 in blocks of 32 (symmetric: d = max|x| / 127,
   q = round_half_even(x * (127 / max|x|))),
   the weights stay small integers, and 32 products become one integer instruction pair (AVX2:
   VPMADDUBSW + VPMADDWD, 8 int32 sums) or one VPDPBUSD (AVX-VNNI). Floats only come in once per block of 32:
   convert the 8 int32 sums and multiply-add them by the block's d.

   Weight formats read:
   int8  w [n, k] int8 in -127..127, scales [n]: W = q * scale[row] (the project's int8 format, unchanged).
   int4  w [n, k/2] bytes, per row in chunks of 64 inputs = 32 bytes: byte j of chunk c holds the code of input
         64c + j in its low nibble and of input 64c + 32 + j in its high one, so one 32-byte load gives two
         whole 32-input blocks after an AND and a shift (no shuffles). sz [n, k/g, 2] = (scale, zero) per group
         of g inputs of each row, W = (q - 8) * scale + zero, codes 0..15. Rows are independent (no row
         interleaving), so n needs no multiple; k % 64 == 0 and k % g == 0, g in 32, 64, 128, 256.

   int4 math: a group's share of a dot product is sum_i x_i ((q_i - 8) s + z) = s sum_i x_i q_i + (z - 8 s) sum_i x_i.
   With x_i ~ d_b xq_i (block b): sum_b f_b [sum_{i in b} q_i xq_i] + (z - 8 s) xs_g, where f_b = d_b s_g is
   computed for a weight row's blocks 8 at a time before its dot products, and xs_g = sum_b d_b sum_{i in b} xq_i
   depends on the input row only (once per call). So the hot loop is the same as int8's: per block one integer
   dot, one convert, one FMA; the zero terms are a short vector dot over the groups per output. The codes 0..15
   are unsigned already, which is what VPMADDUBSW / VPDPBUSD want on their unsigned side.

   int8 math: VPMADDUBSW / VPDPBUSD multiply unsigned by signed bytes, so (as llama.cpp does) the weight's sign is
   moved onto the input: |w| * (sign(w) xq). |w| <= 127 and |xq| <= 127 keep VPMADDUBSW's int16 pair sums
   (<= 2 * 127 * 127 = 32258) clear of saturation.

   Scales and zeros, biases, x and y are fp32 or bf16 (dtype 0 or 1), like the project's kernels. Accumulation
   is fp32 after the per-block integer sums, one rounding to the output's dtype, after the bias. Each output is
   computed the same way whatever m is. OpenMP threads split the weight rows (static, so each thread streams one
   contiguous run of rows).

   Builds: -mavx2 -mfma [-mf16c]          -> VPMADDUBSW + VPMADDWD
           -mavx2 -mfma -mavxvnni          -> VPDPBUSD (Intel Alder Lake+, AMD Zen 5)
*/
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "build with -mavx2 -mfma"
#endif

#define QBLOCK 32         /* inputs per activation scale */
#define PREFETCH_BYTES 1024

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* dtype codes: 0 = float32, 1 = bfloat16 */
static inline float load(const void *p, long i, int dtype) {
    return dtype ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store(void *p, long i, float v, int dtype) {
    if (dtype) ((uint16_t *)p)[i] = f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

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
   Each block of 32 inputs: d = max|x| / 127, xq = round_half_even(x * (127 / max|x|)) (0 for an all-zero block).
   Also isum = sum of the block's xq (the int4 zeros need it). m * k work, against n * k for the multiply. */
void q8_quantize(const void *x, long m, long k, int dtype, int8_t *xq, float *xd, int32_t *isum) {
    const __m256 nosign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    /* two VPACKS interleave the 128-bit lanes: 32-bit groups come out as 0 4 1 5 2 6 3 7 */
    const __m256i unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    long nb = k / QBLOCK;
    for (long j = 0; j < m; j++)
        for (long b = 0; b < nb; b++) {
            long i = j * k + b * QBLOCK;
            __m256 v0 = load8(x, i, dtype), v1 = load8(x, i + 8, dtype);
            __m256 v2 = load8(x, i + 16, dtype), v3 = load8(x, i + 24, dtype);
            __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, nosign), _mm256_and_ps(v1, nosign)),
                                      _mm256_max_ps(_mm256_and_ps(v2, nosign), _mm256_and_ps(v3, nosign)));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            float amax = _mm_cvtss_f32(h);
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            xd[j * nb + b] = amax / 127.0f;
            __m256 iv = _mm256_set1_ps(inv);
            const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            __m256i q0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, iv), mode));
            __m256i q1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, iv), mode));
            __m256i q2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, iv), mode));
            __m256i q3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, iv), mode));
            if (isum) isum[j * nb + b] = sum8i(_mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
            __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
            _mm256_storeu_si256((__m256i *)(xq + i), _mm256_permutevar8x32_epi32(bytes, unshuffle));
        }
}

/* ---- the integer dot product of one block: 32 unsigned bytes u times 32 signed bytes s, as 8 int32 sums ---- */
static inline __m256i dot_block(__m256i u, __m256i s) {
#if defined(__AVXVNNI__)
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

/* int4, per weight row, before its dot products: (scale, zero) pairs -> scales s[groups] and z8[groups] = zero - 8
   scale as fp32, 8 groups at a time (a scalar tail). Per-group work done in the hot loop, one group per block when
   g = 32, would cost as much as the blocks' own integer work. */
static inline void row_scales(const void *sz, int dtype, long groups, float *s, float *z8) {
    const __m256 eight = _mm256_set1_ps(8.0f);
    long gi = 0;
    for (; gi + 8 <= groups; gi += 8) {
        __m256 sv, zv;
        if (dtype) { /* a bf16 (scale, zero) pair is one 32-bit word: scale in the low half */
            __m256i p = _mm256_loadu_si256((const __m256i *)((const uint16_t *)sz + 2 * gi));
            sv = _mm256_castsi256_ps(_mm256_slli_epi32(p, 16));
            zv = _mm256_castsi256_ps(_mm256_and_si256(p, _mm256_set1_epi32((int)0xffff0000)));
        } else { /* fp32 pairs: de-interleave (SHUFPS works per 128-bit lane, VPERMPD puts the halves in order) */
            __m256 p0 = _mm256_loadu_ps((const float *)sz + 2 * gi), p1 = _mm256_loadu_ps((const float *)sz + 2 * gi + 8);
            sv = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(p0, p1, 0x88)), 0xd8));
            zv = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(p0, p1, 0xdd)), 0xd8));
        }
        _mm256_storeu_ps(s + gi, sv);
        _mm256_storeu_ps(z8 + gi, _mm256_fnmadd_ps(eight, sv, zv));
    }
    for (; gi < groups; gi++) {
        s[gi] = load(sz, 2 * gi, dtype);
        z8[gi] = load(sz, 2 * gi + 1, dtype) - 8.0f * s[gi];
    }
}

/* f[b] = d[b] * s[group of block b]: the one float factor per block of one (input row, weight row) pair, so the hot
   loop has no group logic at all. s must have 8 readable floats past its groups (padding). */
static inline void block_factors(const float *d, const float *s, long nb, long g, float *f) {
    /* which of 8 consecutive scales (from s[b * 32 / g]) each of 8 consecutive blocks takes */
    __m256i pick = g == 32  ? _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
                 : g == 64  ? _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)
                 : g == 128 ? _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)
                            : _mm256_setzero_si256();
    long b = 0;
    for (; b + 8 <= nb; b += 8)
        _mm256_storeu_ps(f + b, _mm256_mul_ps(_mm256_loadu_ps(d + b),
                                              _mm256_permutevar8x32_ps(_mm256_loadu_ps(s + b * QBLOCK / g), pick)));
    for (; b < nb; b++) f[b] = d[b] * s[b * QBLOCK / g];
}

/* sum_g z8[g] * xs[g]: the zero points' share of one dot product (8 lanes, then a scalar tail) */
static inline float zero_term(const float *z8, const float *xs, long groups) {
    __m256 a = _mm256_setzero_ps();
    long gi = 0;
    for (; gi + 8 <= groups; gi += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(z8 + gi), _mm256_loadu_ps(xs + gi), a);
    float t = sum8(a);
    for (; gi < groups; gi++) t += z8[gi] * xs[gi];
    return t;
}

/* int4 weights: one weight row's codes against `rows` quantised input rows, f [rows, k/32] the per-block factors:
   sum_b f_b * (integer dot of block b). A 32-byte load holds two blocks (low nibbles: inputs c..c+31, high:
   c+32..c+63), each with its own accumulator. (With one input row the two accumulator chains, one FMA per 64
   inputs each, are close to the limit; more accumulators for one row only would change the sums' order between
   a one-row and a four-row call.) */
/* One 64-input chunk (32 bytes of codes at wc) against `rows` input rows (xc: their quantised inputs at this
   chunk, row stride k; fc: their factors at this chunk's first block, row stride nb). */
static inline __attribute__((always_inline)) void int4_chunk(const uint8_t *wc, const int8_t *xc, const float *fc,
                                                             long k, long nb, int rows, __m256 acc[4][2]) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i v = _mm256_loadu_si256((const __m256i *)wc);
    __m256i lo = _mm256_and_si256(v, low);                       /* inputs c .. c+31 */
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low); /* inputs c+32 .. c+63 */
    for (int j = 0; j < rows; j++) {
        __m256i il = dot_block(lo, _mm256_loadu_si256((const __m256i *)(xc + j * k)));
        __m256i ih = dot_block(hi, _mm256_loadu_si256((const __m256i *)(xc + j * k + 32)));
        acc[j][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(il), _mm256_broadcast_ss(fc + j * nb), acc[j][0]);
        acc[j][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ih), _mm256_broadcast_ss(fc + j * nb + 1), acc[j][1]);
    }
}

/* int4 weights: one weight row's codes against `rows` quantised input rows, f [rows, k/32] the per-block factors:
   sum_b f_b * (integer dot of block b). Two chunks (one 64-byte line of codes, one prefetch) per step, walking
   pointers: scalar index arithmetic competes with the vector work for the same ports. Each accumulator sees its
   blocks in the same order whatever `rows` is, so one-row and four-row calls give the same numbers. */
static inline __attribute__((always_inline)) void int4_dots(const uint8_t *wr, const int8_t *xq, const float *f,
                                                            long k, int rows, int prefetch, float *out) {
    const long nb = k / QBLOCK;
    __m256 acc[4][2];
    for (int j = 0; j < rows; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    const uint8_t *wc = wr, *end = wr + (k / 128) * 64;
    const int8_t *xc = xq;
    const float *fc = f;
    for (; wc < end; wc += 64, xc += 128, fc += 4) {
        if (prefetch) _mm_prefetch((const char *)wc + PREFETCH_BYTES, _MM_HINT_T0);
        int4_chunk(wc, xc, fc, k, nb, rows, acc);
        int4_chunk(wc + 32, xc + 64, fc + 2, k, nb, rows, acc);
    }
    if (k % 128) int4_chunk(wc, xc, fc, k, nb, rows, acc); /* k % 128 == 64: one chunk left */
    for (int j = 0; j < rows; j++) out[j] = sum8(_mm256_add_ps(acc[j][0], acc[j][1]));
}

#define BY_ROWS(call)                                     \
    switch (rows) {                                       \
    case 1: call(1); break;                               \
    case 2: call(2); break;                               \
    case 3: call(3); break;                               \
    default: call(4); break;                              \
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
    q8_quantize(x, m, k, dtype, xq, xd, NULL);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < n; r++) {
        const int8_t *wr = w + r * k;
        float scale = load(scales, r, dtype), bias = b ? load(b, r, dtype) : 0.0f, s[4];
        for (long i0 = 0; i0 < m; i0 += 4) {
            int rows = m - i0 < 4 ? (int)(m - i0) : 4;
#define INT8_CALL(R) int8_dots(wr, xq + i0 * k, xd + i0 * nb, k, R, i0 == 0, s)
            BY_ROWS(INT8_CALL)
            for (int j = 0; j < rows; j++) store(y, (i0 + j) * n + r, s[j] * scale + bias, dtype);
        }
    }
    free(xq);
    return 0;
}

/* int4 in this file's layout (top): x [m, k] (dtype), w [n, k/2] bytes, sz [n, k/g, 2] (dtype), b [n] (dtype) or
   NULL, y [m, n] (dtype). Returns 0, -1 when out of memory, -2 for a bad shape or group size. */
int q8_int4_rows(const void *x, const uint8_t *w, const void *sz, const void *b, void *y, long m, long n, long k,
                 long g, int dtype, int threads) {
    if (k % 64 || (g != 32 && g != 64 && g != 128 && g != 256) || k % g) return -2;
    long nb = k / QBLOCK, groups = k / g;
    int8_t *xq = malloc(m * k + sizeof(float) * m * (nb + groups) + sizeof(int32_t) * m * nb);
    if (!xq) return -1;
    float *xd = (float *)(xq + m * k), *xs = xd + m * nb;
    int32_t *isum = (int32_t *)(xs + m * groups);
    q8_quantize(x, m, k, dtype, xq, xd, isum);
    /* xs: each group's sum of the quantised inputs, sum_b d_b * isum_b (blocks in order) */
    for (long j = 0; j < m; j++)
        for (long gi = 0; gi < groups; gi++) {
            float t = 0.0f;
            for (long bi = gi * (g / QBLOCK); bi < (gi + 1) * (g / QBLOCK); bi++) t += xd[j * nb + bi] * (float)isum[j * nb + bi];
            xs[j * groups + gi] = t;
        }
    long pair_bytes = dtype ? 2 * 2 : 2 * 4;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < n; r++) {
        /* this weight row's scales (8 floats of padding for block_factors' reads), z8, and 4 rows' factors: a few
           KB on the stack */
        float s[groups + 8], z8[groups], f[4 * nb], out[4];
        memset(s + groups, 0, sizeof(float) * 8);
        row_scales((const char *)sz + r * groups * pair_bytes, dtype, groups, s, z8);
        const uint8_t *wr = w + r * (k / 2);
        float bias = b ? load(b, r, dtype) : 0.0f;
        for (long i0 = 0; i0 < m; i0 += 4) {
            int rows = m - i0 < 4 ? (int)(m - i0) : 4;
            for (int j = 0; j < rows; j++) block_factors(xd + (i0 + j) * nb, s, nb, g, f + j * nb);
#define INT4_CALL(R) int4_dots(wr, xq + i0 * k, f, k, R, i0 == 0, out)
            BY_ROWS(INT4_CALL)
            for (int j = 0; j < rows; j++)
                store(y, (i0 + j) * n + r, out[j] + zero_term(z8, xs + (i0 + j) * groups, groups) + bias, dtype);
        }
    }
    free(xq);
    return 0;
}

const char *q8_isa(void) {
#if defined(__AVXVNNI__)
    return "AVX2 + AVX-VNNI (vpdpbusd)";
#else
    return "AVX2 (vpmaddubsw + vpmaddwd)";
#endif
}
