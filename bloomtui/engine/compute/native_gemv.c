/* Few-row multiplies for decoding, at the memory's speed: y[m, n] = x[m, k] . W[n, k]^T (+ b), m <= a few.

   Built by native.py with the machine's compiler (-O3 -march=native -fopenmp) and loaded with ctypes; needs
   AVX-512F (AVX-512 BF16 where the CPU has it) or AVX2 with FMA. torch's one-row kernels read BLOOM's matrices at 14-25 GB/s on
   a machine that streams 30: these read each weight row once, linearly, with a prefetch a few lines ahead, for
   every input row at once. Each output is computed the same way whatever m is (same chains, same order), so a
   draft-verify pass of m rows gives the numbers m one-row passes would. Accumulation is fp32; one rounding
   (round to nearest even) to the output's dtype, after the bias. OpenMP threads split the weight rows; the
   caller passes its thread count (bloomtui sizes the team to the cores other programs leave free). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

#if defined(__AVX512F__)
#define BF16_X_AS_FLOAT 0

/* 32 bf16 weights against 32 bf16 inputs, accumulated pairwise into 16 fp32 lanes. */
static inline __m512 dot32(__m512 acc, const uint16_t *w, const uint16_t *x) {
#ifdef __AVX512BF16__
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w), (__m512bh)_mm512_loadu_si512(x));
#else
    /* Same sums as VDPBF16PS: per lane, the odd element's product first, then the even one's. */
    __m512i wv = _mm512_loadu_si512(w), xv = _mm512_loadu_si512(x);
    __m512i mask = _mm512_set1_epi32((int)0xffff0000);
    __m512 w_odd = _mm512_castsi512_ps(_mm512_and_si512(wv, mask));
    __m512 x_odd = _mm512_castsi512_ps(_mm512_and_si512(xv, mask));
    __m512 w_even = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16));
    __m512 x_even = _mm512_castsi512_ps(_mm512_slli_epi32(xv, 16));
    acc = _mm512_fmadd_ps(w_odd, x_odd, acc);
    return _mm512_fmadd_ps(w_even, x_even, acc);
#endif
}

/* `rows` (1..4, a constant where it is inlined, so the accumulators stay in registers) input rows against one
   weight row: the dot products, before scale and bias. */
static inline __attribute__((always_inline)) void bf16_dots(const uint16_t *wr, const uint16_t *x, long k, int rows,
                                                            int prefetch, float *out) {
    __m512 a[4][2];
    for (int j = 0; j < rows; j++) a[j][0] = a[j][1] = _mm512_setzero_ps();
    for (long c = 0; c < k; c += 64) {
        if (prefetch) {
            _mm_prefetch((const char *)(wr + c) + PREFETCH_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)(wr + c) + PREFETCH_BYTES + 64, _MM_HINT_T0);
        }
        for (int j = 0; j < rows; j++) {
            a[j][0] = dot32(a[j][0], wr + c, x + j * k + c);
            a[j][1] = dot32(a[j][1], wr + c + 32, x + j * k + c + 32);
        }
    }
    for (int j = 0; j < rows; j++) out[j] = _mm512_reduce_add_ps(_mm512_add_ps(a[j][0], a[j][1]));
}

static inline __attribute__((always_inline)) void int8_dots(const int8_t *wr, const float *x, long k, int rows,
                                                            int prefetch, float *out) {
    __m512 a[4][4];
    for (int j = 0; j < rows; j++) a[j][0] = a[j][1] = a[j][2] = a[j][3] = _mm512_setzero_ps();
    for (long c = 0; c < k; c += 64) {
        if (prefetch) _mm_prefetch((const char *)(wr + c) + 2 * PREFETCH_BYTES, _MM_HINT_T0);
        __m512i v = _mm512_loadu_si512(wr + c);
        __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(v)));
        __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(v, 1)));
        __m512 w2 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(v, 2)));
        __m512 w3 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(v, 3)));
        for (int j = 0; j < rows; j++) {
            const float *xr = x + j * k + c;
            a[j][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), a[j][0]);
            a[j][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), a[j][1]);
            a[j][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xr + 32), a[j][2]);
            a[j][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xr + 48), a[j][3]);
        }
    }
    for (int j = 0; j < rows; j++)
        out[j] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[j][0], a[j][1]), _mm512_add_ps(a[j][2], a[j][3])));
}

#elif defined(__AVX2__) && defined(__FMA__)
/* AVX2: 8 fp32 lanes; bf16 inputs are widened to fp32 once per call, then each product is an fp32 FMA. */
#define BF16_X_AS_FLOAT 1

static inline __m256 bf16x8(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) void bf16_dots(const uint16_t *wr, const float *x, long k, int rows,
                                                            int prefetch, float *out) {
    __m256 a[4][2];
    for (int j = 0; j < rows; j++) a[j][0] = a[j][1] = _mm256_setzero_ps();
    for (long c = 0; c < k; c += 16) {
        if (prefetch && (c & 31) == 0) _mm_prefetch((const char *)(wr + c) + PREFETCH_BYTES, _MM_HINT_T0);
        __m256 w0 = bf16x8(wr + c), w1 = bf16x8(wr + c + 8);
        for (int j = 0; j < rows; j++) {
            a[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + j * k + c), a[j][0]);
            a[j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + j * k + c + 8), a[j][1]);
        }
    }
    for (int j = 0; j < rows; j++) out[j] = sum8(_mm256_add_ps(a[j][0], a[j][1]));
}

static inline __m256 int8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline __attribute__((always_inline)) void int8_dots(const int8_t *wr, const float *x, long k, int rows,
                                                            int prefetch, float *out) {
    __m256 a[4][4];
    for (int j = 0; j < rows; j++) a[j][0] = a[j][1] = a[j][2] = a[j][3] = _mm256_setzero_ps();
    for (long c = 0; c < k; c += 32) {
        if (prefetch && (c & 63) == 0) _mm_prefetch((const char *)(wr + c) + 2 * PREFETCH_BYTES, _MM_HINT_T0);
        __m256 w0 = int8x8(wr + c), w1 = int8x8(wr + c + 8), w2 = int8x8(wr + c + 16), w3 = int8x8(wr + c + 24);
        for (int j = 0; j < rows; j++) {
            const float *xr = x + j * k + c;
            a[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), a[j][0]);
            a[j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), a[j][1]);
            a[j][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), a[j][2]);
            a[j][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), a[j][3]);
        }
    }
    for (int j = 0; j < rows; j++)
        out[j] = sum8(_mm256_add_ps(_mm256_add_ps(a[j][0], a[j][1]), _mm256_add_ps(a[j][2], a[j][3])));
}
#else
#error "the native kernels need AVX-512F, or AVX2 with FMA"
#endif

#define BY_ROWS(call)                                     \
    switch (rows) {                                       \
    case 1: call(1); break;                               \
    case 2: call(2); break;                               \
    case 3: call(3); break;                               \
    default: call(4); break;                              \
    }

/* bf16: x [m, k], w [n, k], b [n] or NULL, y [m, n]; k % 64 == 0. Returns 0, or -1 when out of memory
   (nothing written). */
int bf16_rows(const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *y, long m, long n, long k,
              int threads) {
#if BF16_X_AS_FLOAT
    float *xs = malloc(sizeof(float) * m * k);
    if (!xs) return -1;
    for (long i = 0; i < m * k; i++) xs[i] = bf16_to_f32(x[i]);
#else
    const uint16_t *xs = x;
#endif
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < n; r++) {
        const uint16_t *wr = w + r * k;
        float bias = b ? bf16_to_f32(b[r]) : 0.0f, s[4];
        for (long i0 = 0; i0 < m; i0 += 4) {
            int rows = m - i0 < 4 ? (int)(m - i0) : 4;
#define BF16_CALL(R) bf16_dots(wr, xs + i0 * k, k, R, i0 == 0, s)
            BY_ROWS(BF16_CALL)
            for (int j = 0; j < rows; j++) y[(i0 + j) * n + r] = f32_to_bf16(s[j] + bias);
        }
    }
#if BF16_X_AS_FLOAT
    free(xs);
#endif
    return 0;
}

/* int8, one scale per output row: x [m, k] (dtype), w [n, k] int8, scales [n] (dtype), b [n] (dtype) or NULL,
   y [m, n] (dtype); k % 64 == 0. Returns 0, or -1 when out of memory (nothing written). */
int int8_rows(const void *x, const int8_t *w, const void *scales, const void *b, void *y, long m, long n, long k,
              int dtype, int threads) {
    float *xf = malloc(sizeof(float) * m * k);
    if (!xf) return -1;
    for (long i = 0; i < m * k; i++) xf[i] = load(x, i, dtype);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < n; r++) {
        const int8_t *wr = w + r * k;
        float scale = load(scales, r, dtype), bias = b ? load(b, r, dtype) : 0.0f, s[4];
        for (long i0 = 0; i0 < m; i0 += 4) {
            int rows = m - i0 < 4 ? (int)(m - i0) : 4;
#define INT8_CALL(R) int8_dots(wr, xf + i0 * k, k, R, i0 == 0, s)
            BY_ROWS(INT8_CALL)
            for (int j = 0; j < rows; j++) store(y, (i0 + j) * n + r, s[j] * scale + bias, dtype);
        }
    }
    free(xf);
    return 0;
}

/* Which instructions this build uses, for `bloomtui info`. */
const char *native_isa(void) {
#if defined(__AVX512BF16__)
    return "AVX-512 BF16";
#elif defined(__AVX512F__)
    return "AVX-512";
#else
    return "AVX2";
#endif
}

#if defined(__AVX512F__)
/* int4 in torch's AVX-512 packing: w [n/64, k, 32] bytes; in each 64-row block, byte j of an input's 32 holds
   row lo[j] of the block in its low nibble and row hi[j] in its high one. scales [k/g, n, 2] (scale, zero),
   w = (q - 8) * scale + zero, so a group's share of a dot product is scale * sum(x q) + (zero - 8 scale) *
   sum(x): the codes are multiplied as small integers, the scales applied once per group. */

/* One group's (scale, zero - 8 scale) for 16 rows (row indices `rows`), as fp32 vectors. */
static inline void group_scales(const void *scales, long gi, long n, __m512i rows, int dtype, __m512 *s, __m512 *z8) {
    __m512i at = _mm512_add_epi32(rows, _mm512_set1_epi32((int)(gi * n)));
    __m512 scale, zero;
    if (dtype) { /* a bf16 (scale, zero) pair is one 32-bit word */
        __m512i pair = _mm512_i32gather_epi32(at, scales, 4);
        scale = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
        zero = _mm512_castsi512_ps(_mm512_and_si512(pair, _mm512_set1_epi32((int)0xffff0000)));
    } else {
        __m512i twice = _mm512_slli_epi32(at, 1);
        scale = _mm512_i32gather_ps(twice, scales, 4);
        zero = _mm512_i32gather_ps(_mm512_add_epi32(twice, _mm512_set1_epi32(1)), scales, 4);
    }
    *s = scale;
    *z8 = _mm512_fnmadd_ps(_mm512_set1_ps(8.0f), scale, zero);
}

/* `rows` input rows against one 64-row block: acc[j][lane] for lane q * 16 + l is row map[q][l]. */
static inline __attribute__((always_inline)) void int4_block(const uint8_t *wb, const float *x, const float *xsum,
                                                             const void *scales, const __m512i *map, long n, long k,
                                                             long g, int rows, int prefetch, int dtype,
                                                             float acc[4][64]) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    long groups = k / g;
    for (int j = 0; j < rows; j++) memset(acc[j], 0, sizeof(float) * 64);
    for (long gi = 0; gi < groups; gi++) {
        __m512 a[4][4];
        for (int j = 0; j < rows; j++) a[j][0] = a[j][1] = a[j][2] = a[j][3] = _mm512_setzero_ps();
        for (long i = gi * g; i < (gi + 1) * g; i++) {
            if (prefetch && (i & 1) == 0) _mm_prefetch((const char *)(wb + i * 32) + PREFETCH_BYTES, _MM_HINT_T0);
            __m256i by = _mm256_loadu_si256((const __m256i *)(wb + i * 32));
            __m256i lo = _mm256_and_si256(by, low), hi = _mm256_and_si256(_mm256_srli_epi16(by, 4), low);
            __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(lo)));
            __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(lo, 1)));
            __m512 w2 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(hi)));
            __m512 w3 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(hi, 1)));
            for (int j = 0; j < rows; j++) {
                __m512 xv = _mm512_set1_ps(x[j * k + i]);
                a[j][0] = _mm512_fmadd_ps(w0, xv, a[j][0]);
                a[j][1] = _mm512_fmadd_ps(w1, xv, a[j][1]);
                a[j][2] = _mm512_fmadd_ps(w2, xv, a[j][2]);
                a[j][3] = _mm512_fmadd_ps(w3, xv, a[j][3]);
            }
        }
        for (int q = 0; q < 4; q++) {
            __m512 s, z8;
            group_scales(scales, gi, n, map[q], dtype, &s, &z8);
            for (int j = 0; j < rows; j++) {
                __m512 part = _mm512_fmadd_ps(s, a[j][q], _mm512_mul_ps(z8, _mm512_set1_ps(xsum[j * groups + gi])));
                _mm512_storeu_ps(acc[j] + q * 16, _mm512_add_ps(_mm512_loadu_ps(acc[j] + q * 16), part));
            }
        }
    }
}

/* x [m, k] (dtype), y [m, n] (dtype), b [n] (dtype) or NULL; n % 64 == 0, k % g == 0. Returns 0, or -1 when out
   of memory (nothing written). */
int int4_rows(const void *x, const uint8_t *w, const void *scales, const void *b, void *y, long m, long n, long k,
              long g, const int32_t *lo, const int32_t *hi, int dtype, int threads) {
    long groups = k / g;
    float *xf = malloc(sizeof(float) * m * (k + groups));
    if (!xf) return -1;
    float *xsum = xf + m * k;
    for (long i = 0; i < m * k; i++) xf[i] = load(x, i, dtype);
    for (long j = 0; j < m; j++)
        for (long gi = 0; gi < groups; gi++) {
            float s = 0.0f;
            for (long i = gi * g; i < (gi + 1) * g; i++) s += xf[j * k + i];
            xsum[j * groups + gi] = s;
        }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long blk = 0; blk < n / 64; blk++) {
        const uint8_t *wb = w + blk * k * 32;
        int32_t rowmap[64];
        for (int l = 0; l < 32; l++) {
            rowmap[l] = (int32_t)(blk * 64 + lo[l]);
            rowmap[32 + l] = (int32_t)(blk * 64 + hi[l]);
        }
        __m512i map[4];
        for (int q = 0; q < 4; q++) map[q] = _mm512_loadu_si512(rowmap + q * 16);
        float acc[4][64];
        for (long i0 = 0; i0 < m; i0 += 4) {
            int rows = m - i0 < 4 ? (int)(m - i0) : 4;
#define INT4_CALL(R) int4_block(wb, xf + i0 * k, xsum + i0 * groups, scales, map, n, k, g, R, i0 == 0, dtype, acc)
            BY_ROWS(INT4_CALL)
            for (int j = 0; j < rows; j++)
                for (int l = 0; l < 64; l++) {
                    long r = rowmap[l];
                    store(y, (i0 + j) * n + r, acc[j][l] + (b ? load(b, r, dtype) : 0.0f), dtype);
                }
        }
    }
    free(xf);
    return 0;
}
#endif

/* Whether this build has the int4 kernel (it reads torch's AVX-512 packing only). */
int native_has_int4(void) {
#if defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}
