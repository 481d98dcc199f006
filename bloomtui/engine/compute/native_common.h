/* What native_gemv.c (float kernels) and native_q8.c (integer-dot kernels) share: number conversions, the
   dtype-coded loads and stores, and the int4 rows layout's per-row helpers. Every build has AVX2 + FMA (the
   AVX-512 families include them), so the 256-bit helpers here serve every family.

   int4 rows layout (bloomtui's prepared format 2): codes w [n, k/2] bytes, each row a run of 64-input chunks of
   32 bytes, byte j of chunk c = code(64c + j) | code(64c + 32 + j) << 4, codes 0..15; pairs sz [n, k/g, 2] =
   (scale, zero) per group of g inputs of each row, W = (q - 8) * scale + zero. One 32-byte load gives two whole
   32-input blocks after an AND and a shift, rows are independent (any n), and the bytes are the same on every
   CPU. k % 64 == 0, g in 32, 64, 128, 256. */
#ifndef BLOOMTUI_NATIVE_COMMON_H
#define BLOOMTUI_NATIVE_COMMON_H

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "the native kernels need AVX2 with FMA (every AVX-512 family has them)"
#endif

#define PREFETCH_BYTES 2048
/* How far ahead of the read the kernels ask for weight lines. 1024 left bf16 rows at 0.8x of the memory's read
   speed; 2048 reaches it (measured on the Xeon, 400 MB of matrices, AVX2 and AVX-512 builds: bf16 1.08-1.25x,
   int4 1.16-1.21x, int8 unchanged). */

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

/* Up to 4 input rows per inner call, a constant where inlined so the accumulators stay in registers. */
#define BY_ROWS(call)                                     \
    switch (rows) {                                       \
    case 1: call(1); break;                               \
    case 2: call(2); break;                               \
    case 3: call(3); break;                               \
    default: call(4); break;                              \
    }

/* int4, per weight row, before its dot products: (scale, zero) pairs -> scales s[groups] and z8[groups] = zero - 8
   scale as fp32, 8 groups at a time (a scalar tail). */
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
            __m256 p0 = _mm256_loadu_ps((const float *)sz + 2 * gi);
            __m256 p1 = _mm256_loadu_ps((const float *)sz + 2 * gi + 8);
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

/* sum_g z8[g] * xs[g]: the zero points' share of one dot product, xs[g] the input row's sum over group g (8 lanes,
   then a scalar tail) */
static inline float zero_term(const float *z8, const float *xs, long groups) {
    __m256 a = _mm256_setzero_ps();
    long gi = 0;
    for (; gi + 8 <= groups; gi += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(z8 + gi), _mm256_loadu_ps(xs + gi), a);
    float t = sum8(a);
    for (; gi < groups; gi++) t += z8[gi] * xs[gi];
    return t;
}

/* Both int8 kernels' loop over weight rows (threads split them): DOTS(R) fills s[0..R) with up to 4 input rows'
   dot products (from i0) with weight row wr, then the row's scale, the bias and one rounding. Expects x, w,
   scales, b, y, m, n, k, dtype and threads in scope. */
#define INT8_ROWS_LOOP(DOTS)                                                                                   \
    _Pragma("omp parallel for num_threads(threads) schedule(static)") for (long r = 0; r < n; r++) {          \
        const int8_t *wr = w + r * k;                                                                         \
        float scale = load(scales, r, dtype), bias = b ? load(b, r, dtype) : 0.0f, s[4];                      \
        for (long i0 = 0; i0 < m; i0 += 4) {                                                                  \
            int rows = m - i0 < 4 ? (int)(m - i0) : 4;                                                        \
            BY_ROWS(DOTS)                                                                                     \
            for (int j = 0; j < rows; j++) store(y, (i0 + j) * n + r, s[j] * scale + bias, dtype);           \
        }                                                                                                     \
    }

/* Both int4 kernels' loop over weight rows (threads split them): each row's scales, then its dot products with
   up to 4 input rows at a time (DOTS(R) fills out[0..R) for R rows from i0), the zero term from XS (the input
   rows' group sums), the bias and one rounding. Expects x, w, sz, b, y, m, n, k, g, groups, pair_bytes, dtype
   and threads in scope. */
#define INT4_ROWS_LOOP(DOTS, XS)                                                                               \
    _Pragma("omp parallel for num_threads(threads) schedule(static)") for (long r = 0; r < n; r++) {          \
        float s[groups], z8[groups], out[4];                                                                  \
        row_scales((const char *)sz + r * groups * pair_bytes, dtype, groups, s, z8);                         \
        const uint8_t *wr = w + r * (k / 2);                                                                  \
        float bias = b ? load(b, r, dtype) : 0.0f;                                                            \
        for (long i0 = 0; i0 < m; i0 += 4) {                                                                  \
            int rows = m - i0 < 4 ? (int)(m - i0) : 4;                                                        \
            BY_ROWS(DOTS)                                                                                     \
            for (int j = 0; j < rows; j++)                                                                    \
                store(y, (i0 + j) * n + r, out[j] + zero_term(z8, (XS) + (i0 + j) * groups, groups) + bias, dtype); \
        }                                                                                                     \
    }

static inline int int4_shape_ok(long k, long g) {
    return k % 64 == 0 && (g == 32 || g == 64 || g == 128 || g == 256) && k % g == 0;
}

#endif
