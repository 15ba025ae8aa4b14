/* SPAM's CPU step: spike clip + Adam moments + update, one pass over memory.
 *
 * Plain C with OpenMP, called through ctypes on tensors' data pointers (optimizers/spam_native.py
 * builds it on first use). Why not torch's own ops: a SPAM step is AdamW plus one comparison per
 * entry, yet chaining torch ops makes several passes over 58M-entry tensors, and on CPU the
 * index_select/index_add_ of masked entries are scalar and single-threaded. Why C and not a
 * torch C++ extension: compiling against torch's headers is slow, while this file includes only
 * the C library, so it can be built on first use without benchmark processes waiting on it.
 *
 * Arithmetic per entry, float32, in the order of docs/spam.md#update-rule (the optimizer's tests compare it
 * with a literal oracle): with v the previous second moment,
 *     if clip and g*g > theta*v (and v > 0 when guarding): g = copysign(sqrt(theta*v), g)
 *     m = beta1*m + (1-beta1)*g;   v = beta2*v + (1-beta2)*g*g;
 *     p = p - step_size * (m / (sqrt(v) + eps))
 * Built with -ffp-contract=off (no fused multiply-add) and -fno-math-errno (so sqrtf vectorises),
 * never -ffast-math. Entries are independent, so results do not depend on the thread count.
 * Each chunk first looks for a spike with a cheap comparison; spikes are rare, so most chunks
 * run the branch-free Adam loop that the compiler vectorises. Each function returns the number of
 * entries it clipped (-1 if out of memory).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define CHUNK 2048
#define PARALLEL_MIN (1 << 16) /* below this many entries, one thread: forking costs more */

typedef struct {
    float theta, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps;
    int clip, guard;
} hyper_t;

static hyper_t make_hyper(double theta, double beta1, double one_minus_beta1, double beta2,
                          double one_minus_beta2, double step_size, double eps, int clip, int guard) {
    hyper_t h = {(float)theta, (float)beta1, (float)one_minus_beta1, (float)beta2,
                 (float)one_minus_beta2, (float)step_size, (float)eps, clip, guard};
    return h;
}

/* Whether any entry of the chunk may spike (the guard is applied later, entry by entry). */
static int any_spike(const float *restrict g, const float *restrict v, int64_t n, float theta) {
    int found = 0;
    for (int64_t i = 0; i < n; i++)
        found |= g[i] * g[i] > v[i] * theta;
    return found;
}

/* Replace spikes of g (in place) by sign(g) * sqrt(theta * v); returns how many. */
static int64_t clip_spikes(float *restrict g, const float *restrict v, int64_t n, const hyper_t *h) {
    int64_t clipped = 0;
    for (int64_t i = 0; i < n; i++) {
        float limit2 = v[i] * h->theta;
        if (g[i] * g[i] > limit2 && (!h->guard || v[i] > 0.0f)) {
            g[i] = copysignf(sqrtf(limit2), g[i]);
            clipped++;
        }
    }
    return clipped;
}

/* One entry's Adam moments (updated in place) and the amount to subtract from its parameter. */
static inline float adam_entry(float g, float *m, float *v, const hyper_t *h) {
    float mi = h->beta1 * *m + h->one_minus_beta1 * g;
    float vi = h->beta2 * *v + h->one_minus_beta2 * (g * g);
    *m = mi;
    *v = vi;
    return h->step_size * (mi / (sqrtf(vi) + h->eps));
}

/* Adam on contiguous g, m, v; writes the update's subtrahend into u (masked entries). */
static void adam_update(const float *restrict g, float *restrict m, float *restrict v, float *restrict u,
                        int64_t n, const hyper_t *h) {
    for (int64_t i = 0; i < n; i++)
        u[i] = adam_entry(g[i], &m[i], &v[i], h);
}

/* Adam on contiguous p, g, m, v, updating p in place (dense tensors). */
static void adam_inplace(float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                         int64_t n, const hyper_t *h) {
    for (int64_t i = 0; i < n; i++)
        p[i] = p[i] - adam_entry(g[i], &m[i], &v[i], h);
}

static int64_t dense_chunk(float *p, const float *g, float *m, float *v, int64_t n, const hyper_t *h) {
    if (!h->clip || !any_spike(g, v, n, h->theta)) {
        adam_inplace(p, g, m, v, n, h);
        return 0;
    }
    float gc[CHUNK];   /* the gradient is never modified: clip a copy */
    for (int64_t i = 0; i < n; i++)
        gc[i] = g[i];
    int64_t clipped = clip_spikes(gc, v, n, h);
    adam_inplace(p, gc, m, v, n, h);
    return clipped;
}

int64_t spam_dense(float *p, const float *g, float *m, float *v, int64_t n, double theta, double beta1,
                   double one_minus_beta1, double beta2, double one_minus_beta2, double step_size, double eps,
                   int clip, int guard, int threads) {
    hyper_t h = make_hyper(theta, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps, clip, guard);
    int64_t chunks = (n + CHUNK - 1) / CHUNK, clipped = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : clipped) if (n >= PARALLEL_MIN)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t s = c * CHUNK, e = s + CHUNK < n ? s + CHUNK : n;
        clipped += dense_chunk(p + s, g + s, m + s, v + s, e - s, &h);
    }
    return clipped;
}

/* Sparse momentum: the mask is a bitmap, bit j of byte b set when flat position 8b + j is masked
 * (bytes padded to a multiple of 8, so it reads as little-endian 64-bit words), and m, v hold the
 * masked entries in position order. Positions are processed in chunks of CHUNK: the masked
 * gradient entries of a chunk are packed into a buffer (AVX-512: one compress per 16 positions;
 * elsewhere: one count-trailing-zeros per set bit), clipped and run through Adam contiguously, and
 * the updates are unpacked back onto p. Every cache line of p and g is read about once, in order,
 * which is what makes d = 0.25 cheaper than dense: gathering at sorted int32 indices streamed at
 * half the bandwidth on the reference machine. */
static uint64_t word_at(const uint8_t *bits, int64_t w) {
    uint64_t word;
    memcpy(&word, bits + 8 * w, 8);
    return word;
}

static int64_t masked_chunk(float *p, const float *g, const uint8_t *bits, int64_t a, int64_t b, float *m,
                            float *v, const hyper_t *h) {
    float gc[CHUNK + 16], u[CHUNK + 16];
    int64_t n = 0;
#ifdef __AVX512F__
    for (int64_t j = a; j < b; j += 16) {
        uint16_t lanes;
        memcpy(&lanes, bits + j / 8, 2);
        __mmask16 tail = b - j >= 16 ? 0xFFFF : (__mmask16)((1u << (b - j)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(tail, g + j);
        _mm512_storeu_ps(gc + n, _mm512_maskz_compress_ps(lanes, x));   /* gc has 16 floats of slack */
        n += __builtin_popcount(lanes);
    }
#else
    for (int64_t w = a / 64; w < (b + 63) / 64; w++)
        for (uint64_t word = word_at(bits, w); word; word &= word - 1)
            gc[n++] = g[64 * w + __builtin_ctzll(word)];
#endif
    if (n == 0)
        return 0;
    int64_t clipped = 0;
    if (h->clip && any_spike(gc, v, n, h->theta))
        clipped = clip_spikes(gc, v, n, h);
    adam_update(gc, m, v, u, n, h);
    int64_t k = 0;
#ifdef __AVX512F__
    for (int64_t j = a; j < b; j += 16) {
        uint16_t lanes;
        memcpy(&lanes, bits + j / 8, 2);
        __mmask16 tail = b - j >= 16 ? 0xFFFF : (__mmask16)((1u << (b - j)) - 1);
        /* unmasked lanes subtract +0, which leaves every value (-0 included) as it was */
        __m512 step = _mm512_maskz_expand_ps(lanes, _mm512_loadu_ps(u + k));
        _mm512_mask_storeu_ps(p + j, tail, _mm512_sub_ps(_mm512_maskz_loadu_ps(tail, p + j), step));
        k += __builtin_popcount(lanes);
    }
#else
    for (int64_t w = a / 64; w < (b + 63) / 64; w++)
        for (uint64_t word = word_at(bits, w); word; word &= word - 1) {
            int64_t i = 64 * w + __builtin_ctzll(word);
            p[i] = p[i] - u[k++];
        }
#endif
    return clipped;
}

int64_t spam_masked(float *p, const float *g, const uint8_t *bits, float *m, float *v, int64_t n, double theta,
                    double beta1, double one_minus_beta1, double beta2, double one_minus_beta2, double step_size,
                    double eps, int clip, int guard, int threads) {
    hyper_t h = make_hyper(theta, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps, clip, guard);
    int64_t chunks = (n + CHUNK - 1) / CHUNK, clipped = 0;
    int64_t *offset = malloc(sizeof(int64_t) * (size_t)(chunks + 1));   /* compact index of each chunk's first entry */
    if (offset == NULL)
        return -1;
    offset[0] = 0;
    for (int64_t c = 0; c < chunks; c++) {
        int64_t count = 0, words_end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK / 64 : (n + 63) / 64;
        for (int64_t w = c * CHUNK / 64; w < words_end; w++)
            count += __builtin_popcountll(word_at(bits, w));
        offset[c + 1] = offset[c] + count;
    }
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : clipped) if (n >= PARALLEL_MIN)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t a = c * CHUNK, b = a + CHUNK < n ? a + CHUNK : n;
        clipped += masked_chunk(p, g, bits, a, b, m + offset[c], v + offset[c], &h);
    }
    free(offset);
    return clipped;
}
