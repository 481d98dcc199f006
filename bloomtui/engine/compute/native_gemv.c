/* Few-row multiplies for decoding, at the memory's speed: y[m, n] = x[m, k] . W[n, k]^T (+ b), m <= a few.

   Built by native.py with the machine's compiler (-O3 -march=native -fopenmp) and loaded with ctypes; needs
   AVX-512F (AVX-512 BF16 where the CPU has it) or AVX2 with FMA. torch's one-row kernels read BLOOM's matrices at 14-25 GB/s on
   a machine that streams 30: these read each weight row once, linearly, with a prefetch a few lines ahead, for
   every input row at once (bf16, int8 and int4, the last two in fp32 with no rounding of the inputs: the exact
   path; native_q8.c holds the faster integer-dot one). Each output is computed the same way whatever m is (same chains, same order), so a
   draft-verify pass of m rows gives the numbers m one-row passes would. Accumulation is fp32; one rounding
   (round to nearest even) to the output's dtype, after the bias. OpenMP threads split the weight rows; the
   caller passes its thread count (bloomtui sizes the team to the cores other programs leave free). */
#include "native_common.h"

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

/* int4 (rows layout, native_common.h), exact: one weight row's codes against `rows` fp32 input rows, sum over
   groups of s_g * sum_{i in g} q_i x_i (the zero term is added by the caller). Each 32-input block's codes become
   fp32 and meet x by FMA into T; at a group's end A += s_g * T. */
static inline __attribute__((always_inline)) void int4_dots(const uint8_t *wr, const float *x, const float *s,
                                                            long k, long g, int rows, int prefetch, float *out) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    const long per = g / 32, nb = k / 32;
    __m512 A[4][2], T[4][2];
    for (int j = 0; j < rows; j++) A[j][0] = A[j][1] = _mm512_setzero_ps();
    for (long b0 = 0; b0 < nb; b0 += per) {
        for (int j = 0; j < rows; j++) T[j][0] = T[j][1] = _mm512_setzero_ps();
        for (long bi = b0; bi < b0 + per; bi++) {
            const uint8_t *wc = wr + (bi >> 1) * 32;
            if (prefetch && (bi & 3) == 0) _mm_prefetch((const char *)wc + PREFETCH_BYTES, _MM_HINT_T0);
            __m256i by = _mm256_loadu_si256((const __m256i *)wc);
            __m256i q = (bi & 1) ? _mm256_and_si256(_mm256_srli_epi16(by, 4), low) : _mm256_and_si256(by, low);
            __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(q)));
            __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(q, 1)));
            for (int j = 0; j < rows; j++) {
                const float *xr = x + j * k + bi * 32;
                T[j][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), T[j][0]);
                T[j][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), T[j][1]);
            }
        }
        __m512 sv = _mm512_set1_ps(s[b0 / per]);
        for (int j = 0; j < rows; j++) {
            A[j][0] = _mm512_fmadd_ps(T[j][0], sv, A[j][0]);
            A[j][1] = _mm512_fmadd_ps(T[j][1], sv, A[j][1]);
        }
    }
    for (int j = 0; j < rows; j++) out[j] = _mm512_reduce_add_ps(_mm512_add_ps(A[j][0], A[j][1]));
}

#elif defined(__AVX2__)
/* AVX2: 8 fp32 lanes; bf16 inputs are widened to fp32 once per call, then each product is an fp32 FMA. */
#define BF16_X_AS_FLOAT 1

static inline __m256 bf16x8(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
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
/* int4 (rows layout), exact, AVX2: as the AVX-512 int4_dots, 8 lanes; two T chains a row (eight codes each per
   FMA), so four rows' T and A stay in the 16 registers. */
static inline __attribute__((always_inline)) void int4_dots(const uint8_t *wr, const float *x, const float *s,
                                                            long k, long g, int rows, int prefetch, float *out) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    const long per = g / 32, nb = k / 32;
    __m256 A[4], T[4][2];
    for (int j = 0; j < rows; j++) A[j] = _mm256_setzero_ps();
    for (long b0 = 0; b0 < nb; b0 += per) {
        for (int j = 0; j < rows; j++) T[j][0] = T[j][1] = _mm256_setzero_ps();
        for (long bi = b0; bi < b0 + per; bi++) {
            const uint8_t *wc = wr + (bi >> 1) * 32;
            if (prefetch && (bi & 3) == 0) _mm_prefetch((const char *)wc + PREFETCH_BYTES, _MM_HINT_T0);
            __m256i by = _mm256_loadu_si256((const __m256i *)wc);
            __m256i q = (bi & 1) ? _mm256_and_si256(_mm256_srli_epi16(by, 4), low) : _mm256_and_si256(by, low);
            __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
            __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q0));
            __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q0, 8)));
            __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q1));
            __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q1, 8)));
            for (int j = 0; j < rows; j++) {
                const float *xr = x + j * k + bi * 32;
                T[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), T[j][0]);
                T[j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), T[j][1]);
                T[j][0] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), T[j][0]);
                T[j][1] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), T[j][1]);
            }
        }
        __m256 sv = _mm256_set1_ps(s[b0 / per]);
        for (int j = 0; j < rows; j++) A[j] = _mm256_fmadd_ps(_mm256_add_ps(T[j][0], T[j][1]), sv, A[j]);
    }
    for (int j = 0; j < rows; j++) out[j] = sum8(A[j]);
}
#endif

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
#define INT8_CALL(R) int8_dots(wr, xf + i0 * k, k, R, i0 == 0, s)
    INT8_ROWS_LOOP(INT8_CALL)
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


/* int4 in the rows layout (native_common.h), exact: x [m, k] (dtype), w [n, k/2] bytes, sz [n, k/g, 2] (dtype),
   b [n] (dtype) or NULL, y [m, n] (dtype). A group's share of a dot product is s sum(x q) + (zero - 8 s) sum(x):
   the codes are multiplied as they are and the zero points come in once per group. Returns 0, -1 when out of
   memory, -2 for a bad shape or group size (nothing written). */
int int4_rows(const void *x, const uint8_t *w, const void *sz, const void *b, void *y, long m, long n, long k, long g,
              int dtype, int threads) {
    if (!int4_shape_ok(k, g)) return -2;
    const long groups = k / g, pair_bytes = dtype ? 4 : 8;
    float *xf = malloc(sizeof(float) * m * (k + groups));
    if (!xf) return -1;
    float *xsum = xf + m * k;
    for (long i = 0; i < m * k; i++) xf[i] = load(x, i, dtype);
    for (long j = 0; j < m; j++)
        for (long gi = 0; gi < groups; gi++) {
            float t = 0.0f;
            for (long i = gi * g; i < (gi + 1) * g; i++) t += xf[j * k + i];
            xsum[j * groups + gi] = t;
        }
#define INT4_CALL(R) int4_dots(wr, xf + i0 * k, s, k, g, R, i0 == 0, out)
    INT4_ROWS_LOOP(INT4_CALL, xsum)
    free(xf);
    return 0;
}
