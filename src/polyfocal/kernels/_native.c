/* polyfocal native CPU kernels: loss and input gradient of the PolyLoss family in one pass.
 *
 * Same math as polyfocal/kernels/_torch_impl.py (softmax_row_terms, sigmoid_terms); see there for the
 * formulas.  Compiled on first use by polyfocal/kernels/_native.py with the system C compiler
 * (-O3 -march=native -fopenmp), vectorised through glibc's libmvec (expf/logf/log1pf declared SIMD below).
 * Per-row scalars are computed in double.  No Python or torch headers: plain pointers through ctypes.
 *
 * Input dtypes (codes DT_*): float32 is read and written in place; bfloat16 / float16 logits are converted to
 * float32 one row (softmax) or one block of BLK elements (sigmoid) at a time in per-thread scratch, and the
 * gradient is rounded back to the input dtype (round to nearest even) as it is stored: float32 math, no
 * logits-sized float32 copy.  Softmax layouts: (N, C) rows, or (N, C, S) class-dim-1 maps (segmentation),
 * processed in tiles of TS spatial positions transposed into scratch.
 *
 * Long-tail options of the softmax family: the loss sees z' = s (x + b - m_t onehot_t) (prior bias b = tau log
 * prior, target margin m, logit scale s), applied to each logit as it is loaded (no adjusted copy), and the z-loss
 * zl * lse(z')^2 per row; the gradient gets the factor s and the extra 2 zl lse softmax(z').
 * Logit soft-capping (Gemma 2/3): with softcap c > 0 each raw logit x becomes c tanh(x / c) as it is loaded, before
 * the options above, and the gradient with respect to x gets the factor 1 - tanh(x / c)^2.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef PF_LIBMVEC /* glibc's vector math library (x86_64; aarch64 from glibc 2.38): SIMD expf / logf in the loops */
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float logf(float);
#endif

#define BLK 256
#define SUM_BLK 1024
#define TS 16 /* spatial positions per tile of the (N, C, S) softmax layout: SIMD lanes */
/* tiles ahead that the tile path prefetches each class's logits and gradient lines: a map's tile reads C strided
 * streams, more than the hardware prefetcher follows (8x21x96x96: 2.5-2.7 -> 2.2-2.4 ms at 1 thread) */
#define PF_AHEAD 4

enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2, DT_U8 = 3 };

static inline float bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even; NaN stays a (quiet) NaN */
    union {
        uint32_t u;
        float f;
    } v;
    v.f = f;
    const uint32_t rounded = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;
    return (v.u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((v.u >> 16) | 0x40u) : (uint16_t)rounded;
}

#ifdef __FLT16_MAX__
static inline float f16_to_f32(uint16_t h) {
    _Float16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}
static inline uint16_t f32_to_f16(float f) {
    const _Float16 v = (_Float16)f;
    uint16_t h;
    memcpy(&h, &v, 2);
    return h;
}
#else /* portable IEEE half conversions (compilers without _Float16) */
static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    union {
        uint32_t u;
        float f;
    } v;
    if (e == 0x1fu) {
        v.u = sign | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        v.u = sign | ((e + 112u) << 23) | (m << 13);
    } else {
        v.f = (float)m * 5.9604644775390625e-8f; /* subnormal: m * 2^-24 */
        v.u |= sign;
    }
    return v.f;
}
static inline uint16_t f32_to_f16(float f) {
    union {
        uint32_t u;
        float f;
    } v;
    v.f = f;
    const uint32_t sign = (v.u >> 16) & 0x8000u, a = v.u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
    if (a < 0x38800000u) {                                    /* subnormal or zero half */
        const float s = fabsf(f) * 16777216.0f;               /* in units of 2^-24 */
        return (uint16_t)(sign | (uint32_t)rintf(s));
    }
    const uint32_t mant = a + 0xc8000fffu + ((a >> 13) & 1u); /* rebias the exponent (-112 << 23) and round */
    return (uint16_t)(sign | (mant >> 13));
}
#endif

/* dst[0:len] = float(src[off : off + len]) for a dtype code */
__attribute__((noinline)) static void load_f32(float *dst, const void *src, int dt, int64_t off, int64_t len) {
    if (dt == DT_F32) {
        memcpy(dst, (const float *)src + off, (size_t)len * sizeof(float));
    } else if (dt == DT_BF16) {
        const uint16_t *s = (const uint16_t *)src + off;
#pragma omp simd
        for (int64_t i = 0; i < len; i++) dst[i] = bf16_to_f32(s[i]);
    } else if (dt == DT_F16) {
        const uint16_t *s = (const uint16_t *)src + off;
#pragma omp simd
        for (int64_t i = 0; i < len; i++) dst[i] = f16_to_f32(s[i]);
    } else {
        const uint8_t *s = (const uint8_t *)src + off;
#pragma omp simd
        for (int64_t i = 0; i < len; i++) dst[i] = (float)s[i];
    }
}

/* dst[off : off + len] = src[0:len] rounded to the dtype (float32, bfloat16 or float16) */
__attribute__((noinline)) static void store_from_f32(void *dst, int dt, int64_t off, const float *src, int64_t len) {
    if (dt == DT_F32) {
        memcpy((float *)dst + off, src, (size_t)len * sizeof(float));
    } else if (dt == DT_BF16) {
        uint16_t *d = (uint16_t *)dst + off;
#pragma omp simd
        for (int64_t i = 0; i < len; i++) d[i] = f32_to_bf16(src[i]);
    } else {
        uint16_t *d = (uint16_t *)dst + off;
#pragma omp simd
        for (int64_t i = 0; i < len; i++) d[i] = f32_to_f16(src[i]);
    }
}

/* Branch-free building blocks.  The hot loops (marked PF_HOT: the line after the marker starts the loop; the
 * test tests/test_native_vectorize.py compiles every unit at x86-64-v2/v3/v4 and -march=native and asserts
 * that GCC vectorised each marked loop) must not depend on if-conversion: GCC only if-converts a float select
 * when no operand can trap, which it cannot prove under the default -ftrapping-math after jump threading has
 * split the loop body on the select's condition; AVX-512 hid this (masked ops), AVX2 and NEON do not.  So the
 * selects of the hot loops are integer blends of the float bits, and exp_nonpos has no float select at all.
 * Plain C (no intrinsics, no vector extensions): it compiles and vectorises the same way for aarch64 (NEON). */
static inline int32_t pf_bits(float f) {
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}
static inline float pf_float(int32_t i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
/* cond ? a : b for a comparison result cond (0 or 1): both sides are computed, the bits are blended */
static inline float pf_sel(int cond, float a, float b) {
    const int32_t m = -(int32_t)cond;
    return pf_float((pf_bits(a) & m) | (pf_bits(b) & ~m));
}

/* exp(v) for v <= 0 (softmax's x - max): Cody-Waite reduction and a degree-6 polynomial 1 + r + r^2 q(r) in
 * Horner form (six multiply-adds), inlined so the row loops vectorise with no call.  q is a minimax fit of
 * (exp(r) - 1 - r) / r^2 on [-ln2/2, ln2/2] (relative error 3.3e-9 with its float32 coefficients); over every float in
 * [-87.3, 0] the result is within 0.90 ulp of exp with FMA, 1.18 ulp without (tests/test_native_math.py).
 * Values below -87.3 (results under float32's normal range, negligible against a row sum >= 1) flush to 0, -inf
 * included; NaN stays NaN.  Branch-free: the flush is an integer AND of the result, the rounding to an integer is the
 * 1.5 * 2^23 trick (exact for |n| < 2^22, and it gives n's integer bits directly: no float-to-int conversion).
 * The exp pass of the softmax rows is bound by its arithmetic, so every operation counts: this replaced Cephes' expf
 * polynomial evaluated as p r r + r + 1 (1.02 ulp; one multiply and one add more) and a clamp of v at -87.3 before
 * the reduction (two blends; the AND already zeroes those lanes, whatever they computed: the 2^n bits are then 0,
 * inf or a normal number, never a subnormal).  16384x1000 rows, 2 threads: ce 0.87 -> 0.78x one torch.softmax at
 * AVX-512, 0.81 -> 0.64x at AVX2. */
static inline float exp_nonpos(float v) {
    const int32_t keep = (int32_t)(v < -87.3f) - 1; /* 0 below -87.3, all ones otherwise (NaN included) */
    /* v is not clamped: below -87.3 the lanes compute garbage (inf, NaN) that keep masks to 0 */
    const float big = v * 1.44269504088896341f + 12582912.0f; /* round(v / ln 2) + 1.5 * 2^23 */
    const float n = big - 12582912.0f;
    const uint32_t ni = (uint32_t)pf_bits(big) - 0x4b400000u; /* n as a two's complement integer */
    const float r = (v - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.3814589474e-3f;
    p = p * r + 8.3687053993e-3f;
    p = p * r + 4.1668355465e-2f;
    p = p * r + 1.6666521132e-1f;
    p = p * r + 4.9999994040e-1f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const float scale = pf_float((int32_t)((ni + 127u) << 23)); /* 2^n, n in [-126, 0] */
    return pf_float(pf_bits(p * scale) & keep);
}

/* log1p(e) for e in [0, 1] (the sigmoid's tail log(1 + exp(-|x|))), inlined like exp_nonpos: log1p(e) = 2 atanh(s),
 * s = e / (2 + e) in [0, 1/3], as 2s + 2s s^2 P(s^2) with P a minimax fit of (atanh(s) / s - 1) / s^2 (relative
 * error 5.5e-9 with its float32 coefficients).  Relative precision for every e, tiny ones included (the
 * result is then ~e, with no cancellation); 0 -> 0, NaN -> NaN.  It replaced glibc's vector logf(1 + e) times
 * e / ((1 + e) - 1), whose call took a third of the asymmetric loss's kernel time. */
static inline float log1p_unit(float e) {
    const float t = (e + e) / (2.0f + e), z = t * t; /* 2s and 4 s^2: a subnormal e keeps its bits (e + e is exact) */
    float p = 5.4710725e-4f; /* P's coefficients over 4^(k+1), exactly (powers of two): P(z / 4) / 4 */
    p = p * z + 2.1876425e-3f;
    p = p * z + 1.2506727e-2f;
    p = p * z + 8.333302e-2f;
    return t * z * p + t;
}

/* log(v) for every float v, inlined: v = 2^k m with m in [sqrt(1/2), sqrt(2)) from the bits (subnormals scaled by
 * 2^23 first), log(m) = 2 atanh(s), s = (m - 1) / (m + 1) in [-0.172, 0.172], as t + t z P(z) (P a minimax fit,
 * relative error 9.3e-10), plus k ln 2 in two parts.  0 -> -inf, +inf -> +inf, negative or NaN -> NaN. */
static inline float pf_log(float v) {
    const int sub = v < 1.17549435e-38f; /* subnormal (0 and negatives too: masked at the end) */
    const float w = pf_sel(sub, v * 8388608.0f, v);
    const int32_t ix = pf_bits(w), k0 = (ix - 0x3f3504f3) >> 23; /* 0x3f3504f3: sqrt(1/2) */
    const float m = pf_float(ix - k0 * 8388608), kf = (float)(k0 - 23 * sub);
    const float f = m - 1.0f, s = f / (2.0f + f), z = s * s, t = s + s;
    float p = 1.4936877787e-1f;
    p = p * z + 1.9988739491e-1f;
    p = p * z + 3.3333387971e-1f;
    float r = kf * 0.693359375f + (t * z * p + t + kf * -2.12194440e-4f);
    r = pf_sel(v == INFINITY, v, r);
    r = pf_sel(v == 0.0f, -INFINITY, r);
    return pf_sel(!(v >= 0.0f), NAN, r);
}

/* sum_j eps_j u^j and sum_j eps_j (j + gamma) u^(j-1) */
__attribute__((unused)) static void poly_terms(double u, const double *eps, int n_eps, double gamma, double *poly, double *dpoly) {
    double p = 0.0, d = 0.0;
    for (int k = n_eps; k >= 1; k--) {
        p = (p + eps[k - 1]) * u;
        d = (k == n_eps) ? eps[k - 1] * (k + gamma) : d * u + eps[k - 1] * (k + gamma);
    }
    *poly = p;
    *dpoly = d;
}

/* Ask for transparent huge pages on the 2 MiB-aligned interior of a gradient buffer of `bytes` about to be written
 * for the first time (a fresh torch.empty_like: glibc maps large blocks freshly, so every call would otherwise take
 * one page fault per 4 KiB, which on a VM costs more than the loss itself: filling a fresh 64 MiB buffer measured
 * ~190 ms with 4 KiB faults against ~25-40 ms after this call on the loaded 2-core test VM).  Only for a buffer whose
 * first interior page is not resident (a fresh mapping): a buffer recycled from the heap is already faulted in, and
 * flagging it made khugepaged collapse its pages in the background, on the cores the loss runs on (16384x1000 in
 * the default benchmark: a third of the LDAM calls took 7-13 ms instead of 5.2).  A hint only: without THP (or off
 * Linux) nothing changes; the buffer's contents and size do not change either. */
__attribute__((unused)) static void pf_hugepages(void *buf, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21, start = ((uintptr_t)buf + huge - 1) & ~(huge - 1);
    const uintptr_t end = ((uintptr_t)buf + (uintptr_t)bytes) & ~(huge - 1);
    unsigned char resident = 0;
    if (bytes < ((int64_t)4 << 20) || end <= start) return;
    if (mincore((void *)start, 4096, &resident) == 0 && (resident & 1)) return; /* recycled: already faulted in */
    madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)buf;
    (void)bytes;
#endif
}

/* Flush-to-zero for the duration of a kernel call, on each thread that runs it (pf_ftz_begin at the top of every
 * parallel region, pf_ftz_end restoring the thread's previous mode at its end, so no caller and no pooled OpenMP
 * thread keeps it): a float result below FLT_MIN (a subnormal, |v| < 1.2e-38) is stored as 0.  Without it the
 * gradient passes produce subnormals wherever a tiny softmax / sigmoid term meets a small scale (LDAM's logit_scale
 * 30 with a 1/N mean: ~8% of the elements), and on x86 every vector instruction with a subnormal result lane takes a
 * microcode assist: LDAM at 16384x1000 measured 10.0 ms without, 9.3 ms with (the same as logit_scale 1), the sigmoid
 * family 8-12% less.  The numbers it changes are gradient entries under 1.2e-38 in magnitude (and loss terms below
 * the row's rounding), which become 0.  x86: MXCSR.FTZ only (subnormal inputs are still read as they are);
 * aarch64: FPCR.FZ (which also reads subnormal inputs as 0); elsewhere nothing changes. */
#if defined(__x86_64__) || defined(__i386__)
typedef unsigned int pf_fpmode;
static inline pf_fpmode pf_ftz_begin(void) {
    const unsigned int mode = __builtin_ia32_stmxcsr();
    __builtin_ia32_ldmxcsr(mode | 0x8000u);
    return mode;
}
static inline void pf_ftz_end(pf_fpmode mode) { __builtin_ia32_ldmxcsr(mode); }
#elif defined(__aarch64__)
typedef uint64_t pf_fpmode;
static inline pf_fpmode pf_ftz_begin(void) {
    uint64_t mode;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(mode));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(mode | ((uint64_t)1 << 24)));
    return mode;
}
static inline void pf_ftz_end(pf_fpmode mode) { __asm__ __volatile__("msr fpcr, %0" : : "r"(mode)); }
#else
typedef int pf_fpmode;
static inline pf_fpmode pf_ftz_begin(void) { return 0; }
static inline void pf_ftz_end(pf_fpmode mode) { (void)mode; }
#endif

/* An ignored row is not read, but its cache lines are requested when the row after it is not ignored: a gap in the
 * stream of logits rows stops the hardware prefetcher, and the next row then waits for memory line by line (10% of
 * rows ignored at 16384x1000: 9.6 ms with the gap, 8.0 ms with this, against 8.5 ms for no row ignored; a run of
 * ignored rows, as padding is, only requests its last row). */
static inline void pf_keep_stream(const void *row, int64_t bytes) {
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)row + o);
}

/* The file builds as one unit, or as four compiled in parallel and linked into one library by _native.py
 * (PF_PART=1: softmax, 2: the sigmoid kernel, 3: its detection block, 4: the two-phase class-parallel softmax):
 * the cold first build's wall time is about half its CPU time on two cores. */
#if !defined(PF_PART) || PF_PART == 1

/* tanh(u) and *d = 1 - tanh(u)^2 (the soft-cap's derivative), branch-free: for |u| < 0.625 Cephes' tanhf polynomial
 * (no cancellation near 0), else tanh|u| = (1 - e) / (1 + e) and 1 - tanh^2 = 4 e / (1 + e)^2 with e = exp(-2|u|)
 * (no cancellation as tanh -> 1: the derivative keeps its digits down to exp_nonpos's flush at |u| ~ 43.6, where
 * both become exactly 1 and 0); the sign of u is put back on the bits.  NaN stays NaN. */
static inline float pf_tanh_d(float u, float *d) {
    const float a = fabsf(u), z = a * a;
    const float e = exp_nonpos(-2.0f * a), r = 1.0f / (1.0f + e);
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const float small = p * z * a + a;
    const int lo = a < 0.625f;
    const float t = pf_sel(lo, small, (1.0f - e) * r);
    *d = pf_sel(lo, 1.0f - small * small, 4.0f * e * r * r);
    return pf_float(pf_bits(t) | (pf_bits(u) & (int32_t)0x80000000u));
}

static inline float pf_tanh(float u) {
    float d;
    return pf_tanh_d(u, &d);
}

/* v[i] = cap tanh(v[i] / cap) and d[i] = 1 - tanh(v[i] / cap)^2 (or no d) for i in [0, n): the logit soft-cap */
static inline __attribute__((always_inline)) void pf_softcap(float *restrict v, float *restrict d, int64_t n,
                                                             float cap) {
    const float inv = 1.0f / cap;
    if (d) {
        /* PF_HOT: the soft-cap of a row or a tile's class, with its derivative */
#pragma omp simd
        for (int64_t i = 0; i < n; i++) v[i] = cap * pf_tanh_d(v[i] * inv, d + i);
    } else {
        /* PF_HOT: the soft-cap of a row or a tile's class, loss only */
#pragma omp simd
        for (int64_t i = 0; i < n; i++) v[i] = cap * pf_tanh(v[i] * inv);
    }
}

typedef struct {
    const float *a, *w; /* class_weight = alpha * weight, weight: (C,) or NULL */
    const double *eps;
    int n_eps;
    double gamma, ls, a_sum, w_sum;
    int64_t C;
    const float *b, *mg; /* long-tail options: bias (C,) or NULL (none: only margin / scale), margin or NULL */
    double sc, zl;       /* logit scale s, z-loss weight */
    int adj;             /* 1: logits are adjusted on load (b, mg, s); 0: read as they are */
    float bmax;          /* max_c b_c when s (max b - min b) <= 40 (the row maximum is then bounded), else NaN */
    float cap;           /* logit soft-cap c > 0 (applied before the options, in the caller's scratch), or 0 */
} sm_ctx;

/* One row of the softmax PolyLoss for class index t: xr (C floats), gr (C floats, or NULL for no gradient).
 * Returns the row loss times `scale` (validity, 1/norm and the mean's 1/denominator); the gradient carries it.
 * ADJ (a compile-time constant of the three instances below): the logit of class c is read as XB(c) = s (x_c + b_c)
 * (ADJ = 1: a prior bias is set) or s x_c (ADJ = 2: only margin / scale, as LDAM: no bias stream, one multiply,
 * folded with the subtraction of the maximum into one FMA; the same values as s (x_c + 0)) or x_c (ADJ = 0),
 * adjusted but without the target's margin, which the row loops leave out (no per-element select): the maximum
 * is then an upper bound (a valid stabiliser), the sum over c != t is unchanged, and the target's own terms are
 * corrected once after the loops. */
#define XB(c) (ADJ == 1 ? sc * (xr[c] + bb[c]) : ADJ == 2 ? sc * xr[c] : xr[c])
/* The exp pass over [lo, hi): returns the sum of e_c = exp(XB(c) - m), stores each e_c to gr[c] (STORE), and with LS
 * adds label smoothing's class sum, the sum of a_c XB(c) (a_c = aa[c] with W, else 1), to *xa: one read of the row
 * block for both.  STORE, LS and W are compile-time constants of each instance (sm_exp_sum picks it), so every
 * instance is a loop without control flow: SSE4.2 does not if-convert a branch, and a ones vector in place of absent
 * weights would add a load per element. */
static inline __attribute__((always_inline)) float sm_exp_run(const float *xr, const float *bb, float sc, float m,
                                                              float *gr, int64_t lo, int64_t hi, const int ADJ,
                                                              const int STORE, const int LS, const int W,
                                                              const float *aa, float *xa) {
    float s = 0.0f, b = 0.0f;
    /* PF_HOT: the softmax row's exp pass (e stored or not, label smoothing's class sum or not: per instance) */
#pragma omp simd reduction(+ : s, b)
    for (int64_t c = lo; c < hi; c++) {
        const float v = XB(c), e = exp_nonpos(v - m);
        if (STORE) gr[c] = e;
        s += e;
        if (LS) b += W ? aa[c] * v : v;
    }
    if (LS) *xa += b;
    return s;
}
/* sm_exp_run's instance for gr (NULL: loss only), LS and aa (NULL: no class weights) */
static inline __attribute__((always_inline)) float sm_exp_sum(const float *xr, const float *bb, float sc, float m,
                                                              float *gr, int64_t lo, int64_t hi, const int ADJ,
                                                              const int LS, const float *aa, float *xa) {
    if (gr)
        return LS && aa ? sm_exp_run(xr, bb, sc, m, gr, lo, hi, ADJ, 1, LS, 1, aa, xa)
                        : sm_exp_run(xr, bb, sc, m, gr, lo, hi, ADJ, 1, LS, 0, aa, xa);
    return LS && aa ? sm_exp_run(xr, bb, sc, m, gr, lo, hi, ADJ, 0, LS, 1, aa, xa)
                    : sm_exp_run(xr, bb, sc, m, gr, lo, hi, ADJ, 0, LS, 0, aa, xa);
}
/* One PF_VL-wide window [w, w + PF_VL) of the exp pass (inside the row), counting only the classes c in [lo, hi) and
 * leaving the target t out of the sum of e (not out of label smoothing's class sum, LS).  The classes of the window
 * outside [lo, hi) were counted by the whole-vector loops around it; e_c is stored for all of them (the same value
 * again).  A block is then whole-vector loops plus at most two windows (the one holding t, the block's last partial
 * vector) with a constant trip count: no scalar remainder.  Splitting a block at t itself left two loops of arbitrary
 * length per row, each ending in a scalar remainder, which took 7-9% of the row's time at 16384x1000. */
#define PF_VL 16 /* floats per AVX-512 vector (two AVX2 vectors, four NEON ones) */
static inline __attribute__((always_inline)) float sm_exp_window_run(const float *xr, const float *bb, float sc,
                                                                     float m, float *gr, int64_t w, int64_t lo,
                                                                     int64_t hi, int64_t t, const int ADJ,
                                                                     const int STORE, const int LS, const int W,
                                                                     const float *aa, float *xa) {
    float s = 0.0f, b = 0.0f;
    /* PF_HOT: the softmax row's exp pass over a window (per instance, as sm_exp_run) */
#pragma omp simd reduction(+ : s, b)
    for (int64_t c = w; c < w + PF_VL; c++) {
        const float v = XB(c), e = exp_nonpos(v - m);
        const int in = (c >= lo) & (c < hi); /* in / keep as integer ANDs: no control flow */
        if (STORE) gr[c] = e;
        s += pf_sel(in & (c != t), e, 0.0f);
        if (LS) b += pf_sel(in, W ? aa[c] * v : v, 0.0f);
    }
    if (LS) *xa += b;
    return s;
}
static inline __attribute__((always_inline)) float sm_exp_window(const float *xr, const float *bb, float sc, float m,
                                                                 float *gr, int64_t w, int64_t lo, int64_t hi,
                                                                 int64_t t, const int ADJ, const int LS,
                                                                 const float *aa, float *xa) {
    if (gr)
        return LS && aa ? sm_exp_window_run(xr, bb, sc, m, gr, w, lo, hi, t, ADJ, 1, LS, 1, aa, xa)
                        : sm_exp_window_run(xr, bb, sc, m, gr, w, lo, hi, t, ADJ, 1, LS, 0, aa, xa);
    return LS && aa ? sm_exp_window_run(xr, bb, sc, m, gr, w, lo, hi, t, ADJ, 0, LS, 1, aa, xa)
                    : sm_exp_window_run(xr, bb, sc, m, gr, w, lo, hi, t, ADJ, 0, LS, 0, aa, xa);
}
/* The exp pass over the block [c0, c1) of a row of C >= PF_VL classes: its sum of e over c != t, label smoothing's
 * class sum (LS) into *xa */
static inline __attribute__((always_inline)) float sm_exp_block(const float *xr, const float *bb, float sc, float m,
                                                                float *gr, int64_t c0, int64_t c1, int64_t t,
                                                                const int ADJ, const int LS, const float *aa,
                                                                float *xa) {
    const int in_block = t >= c0 && t < c1;
    const int64_t ta = in_block ? c0 + (t - c0) / PF_VL * PF_VL : c1; /* the target's vector [ta, tb) */
    const int64_t tb = in_block ? (ta + PF_VL < c1 ? ta + PF_VL : c1) : c1;
    const int64_t te = tb + (c1 - tb) / PF_VL * PF_VL; /* whole vectors after it: [tb, te) */
    float s = sm_exp_sum(xr, bb, sc, m, gr, c0, ta, ADJ, LS, aa, xa);
    if (in_block) {
        const int64_t w = ta + PF_VL <= c1 ? ta : c1 - PF_VL; /* shifted back to end at c1: still inside the row */
        s += sm_exp_window(xr, bb, sc, m, gr, w, ta, tb, t, ADJ, LS, aa, xa);
    }
    s += sm_exp_sum(xr, bb, sc, m, gr, tb, te, ADJ, LS, aa, xa);
    if (te < c1) s += sm_exp_window(xr, bb, sc, m, gr, c1 - PF_VL, te, c1, t, ADJ, LS, aa, xa);
    return s;
}
static inline __attribute__((always_inline)) float sm_row_impl(const sm_ctx *k, const float *xr, float *gr, int64_t t,
                                                               double scale, const int ADJ) {
    const int64_t C = k->C;
    const float *a = k->a, *w = k->w;
    const double gamma = k->gamma, ls = k->ls;
    const float *bb = k->b, sc = (float)k->sc, smt = ADJ && k->mg ? (float)k->sc * k->mg[t] : 0.0f;
    float m = -INFINITY;
    if (ADJ && smt > 40.0f) { /* a huge target margin: the exact maximum (the bound could underflow every exp) */
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < C; c++) {
            const float v = XB(c) - pf_sel(c == t, smt, 0.0f);
            m = v > m ? v : m;
        }
    } else if (ADJ == 1 && k->bmax == k->bmax) { /* the bound s (max x + max b) (s > 0, a gap <= 40) */
        /* PF_HOT: the softmax row's maximum, bounded */
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < C; c++) m = xr[c] > m ? xr[c] : m;
        m = sc * (m + k->bmax);
    } else if (ADJ == 2 && sc > 0.0f) { /* max_c s x_c = s max_c x_c exactly (s > 0: rounding is monotone) */
        /* PF_HOT: the softmax row's maximum, unscaled */
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < C; c++) m = xr[c] > m ? xr[c] : m;
        m *= sc;
    } else {
        /* PF_HOT: the softmax row's maximum */
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < C; c++) {
            const float v = XB(c);
            m = v > m ? v : m;
        }
    }
    if (m == -INFINITY) m = 0.0f;
    /* Row sums: float SIMD lanes within blocks of SUM_BLK classes, blocks added in double, so the rounding
     * error stays at torch's level for vocabulary-sized C.  The reductions need "omp simd reduction" to
     * vectorise without -ffast-math. */
    /* The sum over c != t, block by block (sm_exp_block: whole vectors and two masked windows, no remainder; rows
     * under PF_VL classes: split at t); the target's own term is added once after the loops (with its margin
     * under ADJ).  Label smoothing's class sum covers every c, t included (its margin is taken off after). */
    double s_rest = 0.0, x_a = 0.0;
    for (int64_t c0 = 0; c0 < C; c0 += SUM_BLK) {
        const int64_t c1 = (C - c0) < SUM_BLK ? C : c0 + SUM_BLK;
        float b_a = 0.0f;
        if (C < PF_VL) { /* a short row: the loops around t, and t's class-sum term */
            const int64_t ta = t < c0 ? c0 : (t < c1 ? t : c1), tb = t < c0 ? c0 : (t < c1 ? t + 1 : c1);
            if (ls > 0.0) {
                s_rest += (double)sm_exp_sum(xr, bb, sc, m, gr, c0, ta, ADJ, 1, a, &b_a);
                s_rest += (double)sm_exp_sum(xr, bb, sc, m, gr, tb, c1, ADJ, 1, a, &b_a);
                if (ta < tb) b_a += (a ? a[t] : 1.0f) * XB(t);
            } else {
                s_rest += (double)sm_exp_sum(xr, bb, sc, m, gr, c0, ta, ADJ, 0, NULL, NULL);
                s_rest += (double)sm_exp_sum(xr, bb, sc, m, gr, tb, c1, ADJ, 0, NULL, NULL);
            }
        } else if (ls > 0.0) {
            s_rest += (double)sm_exp_block(xr, bb, sc, m, gr, c0, c1, t, ADJ, 1, a, &b_a);
        } else {
            s_rest += (double)sm_exp_block(xr, bb, sc, m, gr, c0, c1, t, ADJ, 0, NULL, NULL);
        }
        x_a += b_a;
    }
    const float xt_f = ADJ ? XB(t) - smt : xr[t];
    const float e_t = exp_nonpos(xt_f - m); /* the target's terms (with its margin under ADJ) */
    if (gr) gr[t] = e_t;
    const double s_all = s_rest + (double)e_t;
    if (ADJ && ls > 0.0) x_a -= (double)(a ? a[t] : 1.0f) * (double)smt;
    const double x_t = xt_f;
    const double lse = (double)m + log(s_all);
    /* p_t and 1 - p_t from the row's own sums: divisions, not exp(x_t - lse) and 1 - p_t (no transcendental call
     * besides the row's log, and 1 - p_t to relative precision for every gamma; a NaN row stays NaN) */
    const double p1 = (double)e_t / s_all, u1 = s_rest / s_all;
    const double ce1 = u1 < 0.5 ? -log1p(-u1) : lse - x_t;
    const double a_y = a ? a[t] : 1.0, w_y = w ? w[t] : 1.0;
    double ce_a, u, w_poly;
    if (ls > 0.0) {
        ce_a = (1.0 - ls) * a_y * ce1 + (ls / C) * (k->a_sum * lse - x_a);
        u = (1.0 - ls) * u1 + (ls - ls / C);
        w_poly = (1.0 - ls) * w_y + (ls / C) * k->w_sum;
    } else {
        ce_a = a_y * ce1;
        u = u1;
        w_poly = w_y;
    }
    const double mod = gamma == 0.0 ? 1.0 : exp(gamma * log(u));
    double poly = 0.0, dpoly = 0.0;
    if (k->n_eps > 0) poly_terms(u, k->eps, k->n_eps, gamma, &poly, &dpoly);
    double dl_du = w_poly * dpoly;
    if (gamma != 0.0) dl_du += gamma * (u > 0.0 ? ce_a / u : a_y);
    const double gsc = ADJ ? k->sc : 1.0; /* chain rule through z' = s (...) */
    if (gr) {
        const double k1 = (1.0 - ls) * mod * (a_y + dl_du * p1) * scale * gsc;
        const double k2 = mod * (ls / C) * scale * gsc;
        double coef = k1 + k2 * k->a_sum;
        if (k->zl != 0.0) coef += 2.0 * k->zl * lse * scale * gsc; /* d(zl lse^2) = 2 zl lse softmax */
        const float pc = (float)(coef / s_all);
        if (ls > 0.0) {
            const float k2f = (float)k2;
            if (a)
                /* PF_HOT: the softmax row's gradient scale */
#pragma omp simd
                for (int64_t c = 0; c < C; c++) gr[c] = pc * gr[c] - k2f * a[c];
            else
                /* PF_HOT: the softmax row's gradient scale */
#pragma omp simd
                for (int64_t c = 0; c < C; c++) gr[c] = pc * gr[c] - k2f;
        } else {
            /* PF_HOT: the softmax row's gradient scale */
#pragma omp simd
            for (int64_t c = 0; c < C; c++) gr[c] *= pc;
        }
        gr[t] = (float)((double)gr[t] - k1);
    }
    if (k->zl != 0.0) return (float)((mod * (ce_a + w_poly * poly) + k->zl * lse * lse) * scale);
    return (float)(mod * (ce_a + w_poly * poly) * scale);
}
#undef XB

__attribute__((noinline)) static float sm_row(const sm_ctx *k, const float *xr, float *gr, int64_t t, double scale) {
    if (!k->adj) return sm_row_impl(k, xr, gr, t, scale, 0);
    return k->b ? sm_row_impl(k, xr, gr, t, scale, 1) : sm_row_impl(k, xr, gr, t, scale, 2);
}

/* One tile of the (N, C, S) layout: TS spatial positions of image n from s0 (ts of them valid), vectorised
 * across the positions (the contiguous axis): the logits are converted into es (C x TS floats, class-major),
 * which then holds the exponentials, and every per-position scalar is computed in float32 SIMD lanes (libmvec
 * expf / logf).  Same formulas as sm_row.  OPT (a compile-time constant of the two instances below): any
 * long-tail option or the soft-cap is set; the OPT = 0 instance is the plain kernel, with every option term folded
 * away.  df (C x TS floats, or NULL without the soft-cap or a gradient): the soft-cap's derivative per logit. */
static inline __attribute__((always_inline)) void sm_tile_impl(const sm_ctx *k, const void *x, int xdt,
                                                               const int64_t *y, int64_t ignore_index,
                                                               const float *norm, double grad_scale, int64_t n,
                                                               int64_t s0, int64_t ts, int64_t S, float *loss, void *g,
                                                               float *es, float *df, const int OPT) {
    const int64_t C = k->C, base = n * C * S + s0, r0 = n * S + s0, width = xdt == DT_F32 ? 4 : 2;
    const float *a = k->a, *w = k->w;
    const float gm = (float)k->gamma, ls = (float)k->ls, inv_c = 1.0f / (float)C;
    const int adj = OPT && k->adj, capped = OPT && k->cap > 0.0f;
    const float sc = (float)k->sc, gsc = adj ? sc : 1.0f, zl = OPT ? (float)k->zl : 0.0f;
    float m[TS], sa[TS], sr[TS], xt[TS], xa[TS], valid[TS], pc[TS], k1[TS], k2[TS], smt[TS], lse_j[TS];
    int64_t tj[TS];
    int32_t tc[TS]; /* the target class as int32: the per-class compares of the hot loops, in float-wide lanes */
    for (int64_t j = 0; j < TS; j++) {
        const int64_t t = j < ts ? y[r0 + j] : ignore_index;
        valid[j] = (t != ignore_index) ? 1.0f : 0.0f;
        tj[j] = (t != ignore_index) ? t : 0;
        tc[j] = (int32_t)tj[j];
        m[j] = -INFINITY;
        sa[j] = sr[j] = xt[j] = xa[j] = 0.0f;
        smt[j] = adj && k->mg ? sc * k->mg[tj[j]] : 0.0f;
    }
    for (int64_t c = 0; c < C; c++) { /* load (converted) and the per-position maximum */
        float *ec = es + c * TS;
        __builtin_prefetch((const char *)x + (base + c * S + PF_AHEAD * TS) * width);
        if (xdt == DT_F32) {
            const float *xc = (const float *)x + base + c * S;
            for (int64_t j = 0; j < ts; j++) ec[j] = xc[j];
        } else {
            load_f32(ec, x, xdt, base + c * S, ts);
        }
        if (capped) { /* c tanh(x / c) (padded lanes: 0), before the options */
            for (int64_t j = ts; j < TS; j++) ec[j] = 0.0f;
            pf_softcap(ec, df ? df + c * TS : NULL, TS, k->cap);
        }
        if (adj) { /* z' = s (x + b_c) - s m_t [c = t], on the tile scratch */
            const float bc = k->b ? k->b[c] : 0.0f;
            for (int64_t j = 0; j < ts; j++) ec[j] = sc * (ec[j] + bc) - pf_sel(tc[j] == (int32_t)c, smt[j], 0.0f);
        }
        for (int64_t j = ts; j < TS; j++) ec[j] = 0.0f;
        /* PF_HOT: the tile's maximum */
#pragma omp simd
        for (int64_t j = 0; j < TS; j++) m[j] = ec[j] > m[j] ? ec[j] : m[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < TS; j++) m[j] = m[j] == -INFINITY ? 0.0f : m[j];
    for (int64_t c = 0; c < C; c++) {
        float *ec = es + c * TS;
        const float ac = a ? a[c] : 1.0f;
        const int32_t ci = (int32_t)c;
        /* PF_HOT: the tile's exp pass */
#pragma omp simd
        for (int64_t j = 0; j < TS; j++) {
            const float xv = ec[j], e = exp_nonpos(xv - m[j]);
            const int hit = tc[j] == ci;
            xt[j] = pf_sel(hit, xv, xt[j]);
            xa[j] += ac * xv;
            sa[j] += e;
            sr[j] += pf_sel(hit, 0.0f, e);
            ec[j] = e;
        }
    }
    float u[TS], ce_a[TS], w_poly[TS], a_y[TS], p1[TS], mod[TS], poly[TS], dpoly[TS], scale[TS];
    for (int64_t j = 0; j < TS; j++) { /* gathers and the normaliser: scalar */
        a_y[j] = a ? a[tj[j]] : 1.0f;
        w_poly[j] = w ? w[tj[j]] : 1.0f;
        scale[j] = (j < ts && norm ? 1.0f / norm[r0 + j] : 1.0f) * (float)grad_scale;
    }
    /* PF_HOT: the tile's per-position terms */
#pragma omp simd
    for (int64_t j = 0; j < TS; j++) {
        const float lse = m[j] + logf(sa[j]);
        lse_j[j] = lse;
        p1[j] = expf(xt[j] - lse);
        const float d1 = 1.0f - p1[j];
        /* d1 < 0 ? 0 : d1 as a comparison, not fmaxf: fmaxf would turn a NaN row into 0 */
        const float u1 = pf_sel(gm == 0.0f, pf_sel(d1 < 0.0f, 0.0f, d1), sr[j] / sa[j]);
        const float z = -u1, w1 = 1.0f + z; /* log1p(z) = log(1 + z) * z / ((1 + z) - 1), exact for tiny z */
        const float l1p = pf_sel(w1 == 1.0f, z, logf(w1) * (z / (w1 - 1.0f)));
        const float ce1 = pf_sel(u1 < 0.5f, -l1p, lse - xt[j]);
        /* label smoothing by blends, not a branch (the loop vectorises); unselected lanes may hold NaN */
        const int smooth = ls > 0.0f;
        const float ce_s = (1.0f - ls) * a_y[j] * ce1 + ls * inv_c * ((float)k->a_sum * lse - xa[j]);
        ce_a[j] = pf_sel(smooth, ce_s, a_y[j] * ce1);
        u[j] = pf_sel(smooth, (1.0f - ls) * u1 + (ls - ls * inv_c), u1);
        w_poly[j] = pf_sel(smooth, (1.0f - ls) * w_poly[j] + ls * inv_c * (float)k->w_sum, w_poly[j]);
        poly[j] = dpoly[j] = 0.0f;
    }
    if (gm == 0.0f) {
#pragma omp simd
        for (int64_t j = 0; j < TS; j++) mod[j] = 1.0f;
    } else {
#pragma omp simd
        for (int64_t j = 0; j < TS; j++) mod[j] = expf(gm * logf(u[j]));
    }
    for (int jj = k->n_eps; jj >= 1; jj--) {
        const float e = (float)k->eps[jj - 1], cf = e * ((float)jj + gm);
#pragma omp simd
        for (int64_t j = 0; j < TS; j++) {
            poly[j] = (poly[j] + e) * u[j];
            dpoly[j] = dpoly[j] * u[j] + cf;
        }
    }
    /* PF_HOT: the tile's per-position loss and gradient coefficients */
#pragma omp simd
    for (int64_t j = 0; j < TS; j++) {
        const float focal = gm * pf_sel(u[j] > 0.0f, ce_a[j] / u[j], a_y[j]);
        const float dl_du = w_poly[j] * dpoly[j] + pf_sel(gm != 0.0f, focal, 0.0f); /* gm = 0: no 0 * inf */
        const int ok = valid[j] != 0.0f;
        const float sc = scale[j];
        const float row = mod[j] * (ce_a[j] + w_poly[j] * poly[j]);
        const float l = pf_sel(zl != 0.0f, row + zl * lse_j[j] * lse_j[j], row) * sc; /* + the z-loss */
        xa[j] = pf_sel(ok, l, 0.0f); /* the row loss (xa is free now) */
        const float gs = sc * gsc; /* gsc = s: the chain rule through z' = s (...); 1 without the options */
        k1[j] = pf_sel(ok, (1.0f - ls) * mod[j] * (a_y[j] + dl_du * p1[j]) * gs, 0.0f);
        k2[j] = pf_sel(ok, mod[j] * ls * inv_c * gs, 0.0f);
        const float coef = k1[j] + k2[j] * (float)k->a_sum;
        const float q = pf_sel(zl != 0.0f, coef + 2.0f * zl * lse_j[j] * gs, coef) / sa[j]; /* + d(z-loss) */
        pc[j] = pf_sel(ok, q, 0.0f);
    }
    for (int64_t j = 0; j < ts; j++) loss[r0 + j] = xa[j];
    if (!g) return;
    for (int64_t c = 0; c < C; c++) {
        float *ec = es + c * TS;
        const float ac = a ? a[c] : 1.0f;
        const int32_t ci = (int32_t)c;
        /* PF_HOT: the tile's gradient */
#pragma omp simd
        for (int64_t j = 0; j < TS; j++) {
            const float v = pc[j] * ec[j] - k2[j] * ac - pf_sel(tc[j] == ci, k1[j], 0.0f);
            ec[j] = pf_sel(valid[j] != 0.0f, v, 0.0f); /* ignored positions: 0, also for NaN logits */
        }
        if (capped && df) { /* the chain rule through the soft-cap */
            const float *dc = df + c * TS;
            /* PF_HOT: the tile's gradient through the soft-cap */
#pragma omp simd
            for (int64_t j = 0; j < TS; j++) ec[j] = pf_sel(valid[j] != 0.0f, ec[j] * dc[j], 0.0f);
        }
        __builtin_prefetch((char *)g + (base + c * S + PF_AHEAD * TS) * width, 1);
        if (xdt == DT_F32) {
            float *gc = (float *)g + base + c * S;
            for (int64_t j = 0; j < ts; j++) gc[j] = ec[j];
        } else {
            store_from_f32(g, xdt, base + c * S, ec, ts);
        }
    }
}

__attribute__((noinline)) static void sm_tile(const sm_ctx *k, const void *x, int xdt, const int64_t *y, int64_t ignore_index,
                    const float *norm, double grad_scale, int64_t n, int64_t s0, int64_t ts, int64_t S, float *loss,
                    void *g, float *es, float *df) {
    if (k->adj || k->zl != 0.0 || k->cap > 0.0f)
        sm_tile_impl(k, x, xdt, y, ignore_index, norm, grad_scale, n, s0, ts, S, loss, g, es, df, 1);
    else
        sm_tile_impl(k, x, xdt, y, ignore_index, norm, grad_scale, n, s0, ts, S, loss, g, es, df, 0);
}

/* One call of pf_softmax, as its three loop bodies read it.  Each body is an orphaned worksharing loop: inside
 * pf_softmax's parallel region the threads split it, outside one (a call too small to share) the calling thread
 * runs it all. */
typedef struct {
    const sm_ctx *k;
    const void *x;
    int xdt;
    const int64_t *y;
    int64_t ignore_index;
    const float *norm;
    double grad_scale;
    int64_t R, N, C, S;
    float cap;
    float *loss;
    void *g;
    int failed; /* set when a thread's scratch could not be allocated */
} sm_job;

/* (N, C) float32 rows read in place, the gradient into its own buffer */
static void sm_rows_f32(sm_job *j) {
    const int64_t R = j->R, C = j->C, ignore_index = j->ignore_index, *y = j->y;
    const float *xf = (const float *)j->x, *norm = j->norm;
    float *gf = (float *)j->g, *loss = j->loss;
    const pf_fpmode mode = pf_ftz_begin();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; r++) {
        float *gr = gf ? gf + r * C : NULL;
        if (y[r] == ignore_index) {
            loss[r] = 0.0f;
            if (r + 1 < R && y[r + 1] != ignore_index) pf_keep_stream(xf + r * C, C * 4);
            if (gr) memset(gr, 0, (size_t)C * sizeof(float));
            continue;
        }
        loss[r] = sm_row(j->k, xf + r * C, gr, y[r], (norm ? 1.0 / norm[r] : 1.0) * j->grad_scale);
    }
    pf_ftz_end(mode);
}

/* (N, C) rows through float32 scratch: bfloat16 / float16, a gradient written over x, or soft-capped logits */
static void sm_rows_scratch(sm_job *j) {
    const int64_t R = j->R, C = j->C, ignore_index = j->ignore_index, *y = j->y;
    const int xdt = j->xdt, width = xdt == DT_F32 ? 4 : 2;
    const float cap = j->cap, *norm = j->norm;
    const void *x = j->x;
    void *g = j->g;
    float *loss = j->loss;
    const pf_fpmode mode = pf_ftz_begin();
    float *xs = (float *)malloc((size_t)((cap > 0.0f ? 3 : 2) * C) * sizeof(float));
    float *gs = xs ? xs + C : NULL, *ds = xs && cap > 0.0f && g ? xs + 2 * C : NULL;
    if (!xs) {
#pragma omp atomic write
        j->failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; r++) {
        if (!xs) continue;
        if (y[r] == ignore_index) {
            loss[r] = 0.0f;
            if (r + 1 < R && y[r + 1] != ignore_index) pf_keep_stream((const char *)x + r * C * width, C * width);
            if (g) {
                memset(gs, 0, (size_t)C * sizeof(float));
                store_from_f32(g, xdt, r * C, gs, C);
            }
            continue;
        }
        load_f32(xs, x, xdt, r * C, C);
        if (cap > 0.0f) pf_softcap(xs, ds, C, cap);
        loss[r] = sm_row(j->k, xs, g ? gs : NULL, y[r], (norm ? 1.0 / norm[r] : 1.0) * j->grad_scale);
        if (ds) {
            /* PF_HOT: the row's gradient through the soft-cap */
#pragma omp simd
            for (int64_t c = 0; c < C; c++) gs[c] *= ds[c];
        }
        if (g) store_from_f32(g, xdt, r * C, gs, C);
    }
    free(xs);
    pf_ftz_end(mode);
}

/* (N, C, S): tiles of TS positions, vectorised across the positions */
static void sm_tiles(sm_job *j) {
    const int64_t N = j->N, C = j->C, S = j->S, tiles = (S + TS - 1) / TS;
    const float cap = j->cap;
    const pf_fpmode mode = pf_ftz_begin();
    float *es = (float *)malloc((size_t)((cap > 0.0f && j->g ? 2 : 1) * TS * C) * sizeof(float));
    float *df = es && cap > 0.0f && j->g ? es + TS * C : NULL; /* the soft-cap's derivatives */
    if (!es) {
#pragma omp atomic write
        j->failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t item = 0; item < N * tiles; item++) {
        if (!es) continue;
        const int64_t n = item / tiles, s0 = (item % tiles) * TS;
        const int64_t ts = (S - s0) < TS ? (S - s0) : TS;
        sm_tile(j->k, j->x, j->xdt, j->y, j->ignore_index, j->norm, j->grad_scale, n, s0, ts, S, j->loss, j->g, es,
                df);
    }
    free(es);
    pf_ftz_end(mode);
}

/* Softmax PolyLoss for class-index targets.  x: (N, C, S) in the dtype xdt (S = 1: (N, C) rows); y, norm: the
 * R = N * S rows (n, s) in row-major order.  loss: (R,) per row, scaled by validity, 1/norm and (mean)
 * 1/denominator, or NULL for a reduced loss (then a scratch buffer holds the rows); *out: their sum (summed in
 * row order: deterministic), written as the 0-D float32 result.  g: gradient of x's layout and dtype for
 * grad_output = 1 of the reduced loss, or NULL.  The mean denominator (valid rows, or their summed target
 * weights) and the class sums are computed here too: a few O(R + C) loops instead of torch ops.  bias (C,) / margin
 * (C,) / logit_scale / z_loss: the long-tail options (see the top of the file); bias may be NULL (no prior bias:
 * margin and / or logit_scale alone take the cheaper instance without a bias stream).  softcap > 0: the logit
 * soft-cap c tanh(x / c) (<= 0: off); capped (N, C) rows go through the float32 scratch rows.
 * Returns 0; 1 with *bad = the first class index outside [0, C) that is not ignore_index (nothing written);
 * 2 when scratch memory could not be allocated. */
int pf_softmax(const void *x, int xdt, const int64_t *y, const float *a, const float *w, const float *norm,
               const double *eps, int n_eps, double gamma, double ls, int64_t ignore_index, int64_t N, int64_t C,
               int64_t S, int mean, float *loss_out, float *out, void *g, int nthreads, int64_t *bad,
               const float *bias, const float *margin, double logit_scale, double z_loss, double softcap) {
    const int64_t R = N * S;
    double den = 0.0;
    for (int64_t r = 0; r < R; r++) { /* the index check: before any memory is touched through an index */
        const int64_t t = y[r];
        if (t == ignore_index) continue;
        if (t < 0 || t >= C) {
            *bad = t;
            return 1;
        }
        den += w ? w[t] : 1.0;
    }
    const float cap = softcap > 0.0 ? (float)softcap : 0.0f; /* NaN: off */
    sm_ctx k = {a, w, eps, n_eps, gamma, ls, 0.0, 0.0, C, bias, margin, logit_scale, z_loss,
                bias != NULL || margin != NULL || logit_scale != 1.0, NAN, cap};
    if (bias && logit_scale > 0.0) {
        float lo = INFINITY, hi = -INFINITY;
        for (int64_t c = 0; c < C; c++) {
            lo = bias[c] < lo ? bias[c] : lo;
            hi = bias[c] > hi ? bias[c] : hi;
        }
        if (logit_scale * ((double)hi - (double)lo) <= 40.0) k.bmax = hi;
    }
    for (int64_t c = 0; c < C; c++) {
        k.a_sum += a ? a[c] : 1.0;
        k.w_sum += w ? w[c] : 1.0;
    }
    const double grad_scale = mean ? 1.0 / den : 1.0;
    const int parallel = R * C >= 16384 && nthreads > 1;
    if (g && g != x) pf_hugepages(g, R * C * (xdt == DT_F32 ? 4 : 2)); /* a fresh gradient buffer */
    float stack_rows[256];
    float *loss = loss_out ? loss_out : (R <= 256 ? stack_rows : (float *)malloc((size_t)R * sizeof(float)));
    if (!loss) return 2;
    sm_job job = {&k, x, xdt, y, ignore_index, norm, grad_scale, R, N, C, S, cap, loss, g, 0};
    void (*body)(sm_job *) = S == 1 && xdt == DT_F32 && g != x && cap == 0.0f ? sm_rows_f32
                             : S == 1                                        ? sm_rows_scratch
                                                                             : sm_tiles;
    if (parallel) {
#pragma omp parallel num_threads(nthreads)
        body(&job);
    } else {
        body(&job); /* no OpenMP region at all: an if(0) region still costs ~0.3 us and a futex call per call */
    }
    const int failed = job.failed;
    double sum = 0.0;
    for (int64_t r = 0; r < R; r++) sum += loss[r];
    if (loss != loss_out && loss != stack_rows) free(loss);
    if (failed) return 2;
    if (out) *out = (mean && den == 0.0) ? NAN : (float)sum; /* a mean over nothing is nan, as in torch */
    return 0;
}

/* pf_softmax's arguments as one struct of 8-byte fields, in the order of its parameters (ints widened to int64;
 * `bad` is written back in place).  _native.py's _SoftmaxArgs mirrors it field for field: ctypes then converts one
 * argument per call instead of 25 (the 8x10 call through ctypes, C included: 4.4 -> 2.5 us, on every small call's
 * path). */
typedef struct {
    const void *x;
    int64_t xdt;
    const int64_t *y;
    const float *a, *w, *norm;
    const double *eps;
    int64_t n_eps;
    double gamma, ls;
    int64_t ignore_index, N, C, S, mean;
    float *loss_out, *out;
    void *g;
    int64_t nthreads, bad;
    const float *bias, *margin;
    double logit_scale, z_loss, softcap;
} pf_softmax_args;
_Static_assert(sizeof(pf_softmax_args) == 25 * 8, "pf_softmax_args: 25 fields of 8 bytes, no padding");

int pf_softmax_packed(pf_softmax_args *p) {
    return pf_softmax(p->x, (int)p->xdt, p->y, p->a, p->w, p->norm, p->eps, (int)p->n_eps, p->gamma, p->ls,
                      p->ignore_index, p->N, p->C, p->S, (int)p->mean, p->loss_out, p->out, p->g, (int)p->nthreads,
                      &p->bad, p->bias, p->margin, p->logit_scale, p->z_loss, p->softcap);
}

#endif /* PF_PART 1 */
#if !defined(PF_PART) || PF_PART >= 2

/* u^k for k in {0, 1, 2, 3, 4} (a per-element float) by products: selects, so the loop vectorises */
static inline float ipow4(float a, float k) {
    const float b = a * a;
    return pf_sel(k == 0.0f, 1.0f, pf_sel(k == 1.0f, a, pf_sel(k == 2.0f, b, pf_sel(k == 3.0f, b * a, b * b))));
}

static inline int small_int_gamma(double g) { return g == 0.0 || g == 1.0 || g == 2.0 || g == 3.0 || g == 4.0; }

#ifdef PF_PART /* det_block is shared between parts 2 and 3 (hidden: not exported from the library) */
#define PF_DET __attribute__((noinline, visibility("hidden")))
#else
#define PF_DET __attribute__((noinline)) static
#endif
PF_DET float det_block(int variant, const float *xb, const float *tt, const float *pw_t, const float *fac,
                       int64_t len, int has_alpha, float al, float gm, float gn, float clip, int iou_weighted,
                       int n_eps, const float *epsf, const float *coef0, float gs, float *out, float *gb,
                       float *restrict p, float *restrict q, float *restrict u, float *restrict ce,
                       float *restrict mod, float *restrict at, float *restrict dpoly);
#if !defined(PF_PART) || PF_PART == 3
/* The detection / multi-label members on one block (same math as _torch_impl.detection_terms): variant 1 = poly
 * with gamma_neg / clip (asymmetric loss), 2 = varifocal, 3 = quality focal.  Inputs: xb (len floats), tt targets,
 * pw_t, fac (weight * validity / normaliser).  Writes the scaled element losses to out and, if gb, the gradient
 * (times gs) to gb; returns the block's loss sum. */
PF_DET float det_block(int variant, const float *xb, const float *tt, const float *pw_t, const float *fac,
                       int64_t len, int has_alpha, float al, float gm, float gn, float clip, int iou_weighted,
                       int n_eps, const float *epsf, const float *coef0, float gs, float *out, float *gb,
                       float *restrict p, float *restrict q, float *restrict u, float *restrict ce,
                       float *restrict mod, float *restrict at, float *restrict dpoly) {
    /* p .. dpoly: the caller's block scratch (keeps the working set in L1); out: the loss; gb: the gradient */
    float ap[BLK], an[BLK], dce[BLK], du[BLK], gt[BLK];
    float *poly = out;
    /* PF_HOT: the detection block's exp pass */
#pragma omp simd
    for (int64_t i = 0; i < len; i++) p[i] = exp_nonpos(-fabsf(xb[i]));
    /* PF_HOT: the detection block's log1p pass */
#pragma omp simd
    for (int64_t i = 0; i < len; i++) q[i] = log1p_unit(p[i]);
    /* PF_HOT: the detection block's cross-entropy terms */
#pragma omp simd
    for (int64_t i = 0; i < len; i++) {
        const float xv = xb[i], tail = q[i], e = p[i];
        ap[i] = pf_sel(xv > 0.0f, xv, 0.0f) + tail;  /* -log(1 - s) */
        an[i] = pf_sel(xv < 0.0f, -xv, 0.0f) + tail; /* -log s */
        const float big = 1.0f / (1.0f + e), small = e * big;
        const int nonneg = xv >= 0.0f;
        p[i] = pf_sel(nonneg, big, small);
        q[i] = pf_sel(nonneg, small, big);
    }
    int hard = 1;
#pragma omp simd reduction(& : hard)
    for (int64_t i = 0; i < len; i++) hard &= (tt[i] == 0.0f) | (tt[i] == 1.0f);
    if (variant == 2) { /* varifocal: t > 0: w BCE(x, t); t = 0: alpha s^gamma (-log(1 - s)) */
        const float a = has_alpha ? al : 1.0f;
        const int ig = small_int_gamma(gm);
        if (ig) {
            /* PF_HOT: varifocal's modulator by products */
#pragma omp simd
            for (int64_t i = 0; i < len; i++) mod[i] = ipow4(p[i], gm);
        } else {
            /* PF_HOT: varifocal's modulator */
#pragma omp simd
            for (int64_t i = 0; i < len; i++) mod[i] = expf(-gm * an[i]);
        }
        float sum = 0.0f;
        /* PF_HOT: varifocal's loss and gradient */
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < len; i++) {
            const float ti = tt[i], w = pf_sel(iou_weighted, ti, 1.0f);
            const float bce = (1.0f - ti) * ap[i] + pw_t[i] * ti * an[i];
            const int pos = ti > 0.0f;
            const float l = pf_sel(pos, w * bce, a * mod[i] * ap[i]) * fac[i];
            poly[i] = l;
            sum += l;
            const float g = pf_sel(pos, w * ((1.0f - ti) * p[i] - pw_t[i] * ti * q[i]),
                                   a * mod[i] * (p[i] + gm * q[i] * ap[i]));
            gb[i] = g * fac[i] * gs;
        }
        return sum;
    }
    if (variant == 3) { /* quality: u = |t - s| = |t q - (1 - t) p| */
        /* PF_HOT: quality focal's terms */
#pragma omp simd
        for (int64_t i = 0; i < len; i++) {
            const float ti = tt[i], delta = ti * q[i] - (1.0f - ti) * p[i];
            u[i] = fabsf(delta);
            ce[i] = (1.0f - ti) * ap[i] + pw_t[i] * ti * an[i];
            dce[i] = (1.0f - ti) * p[i] - pw_t[i] * ti * q[i];
            /* -sign(delta) (0 at 0) */
            du[i] = (pf_sel(delta < 0.0f, 1.0f, 0.0f) - pf_sel(delta > 0.0f, 1.0f, 0.0f)) * p[i] * q[i];
            gt[i] = gm;
            at[i] = 1.0f;
        }
    } else { /* asymmetric: s_m = max(s - clip, 0), u = t q + (1 - t) s_m, g_t = gamma t + gamma_neg (1 - t) */
        if (clip > 0.0f) {
            /* 1 - s_m = min(q + clip, 1), and the clipped cross-entropy -log(1 - s_m) its log: q = sigmoid(-x) has full
             * relative precision (from exp(-|x|)), and q + clip adds two positive numbers, so no digit of q is lost
             * as s -> 1 for a tiny clip, where 1 - (s - clip) and log1p(-s_m) lose them all (issue 18).  One log
             * (pf_log, inlined): it replaced -logaddexp(-a_pos, log clip), an exp and a log1p. */
            /* PF_HOT: the asymmetric loss's clipped terms */
#pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                const float d = p[i] - clip, r = q[i] + clip;
                const float one_m = pf_sel(r > 1.0f, 1.0f, r); /* 1 - s_m; a comparison: NaN stays NaN */
                const int on = p[i] >= clip;
                u[i] = pf_sel(d > 0.0f, d, 0.0f); /* s_m for now */
                ce[i] = -pf_log(one_m);
                dce[i] = pf_sel(on, p[i] * q[i] / one_m, 0.0f);
                du[i] = pf_sel(on, 1.0f, 0.0f);
            }
        } else {
#pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                u[i] = p[i];
                ce[i] = ap[i];
                dce[i] = p[i];
                du[i] = 1.0f;
            }
        }
        /* PF_HOT: the asymmetric loss's terms */
#pragma omp simd
        for (int64_t i = 0; i < len; i++) {
            const float ti = tt[i], sm = u[i], on = du[i];
            u[i] = ti * q[i] + (1.0f - ti) * sm;
            ce[i] = (1.0f - ti) * ce[i] + pw_t[i] * ti * an[i];
            dce[i] = (1.0f - ti) * dce[i] - pw_t[i] * ti * q[i];
            du[i] = ((1.0f - ti) * on - ti) * p[i] * q[i];
            gt[i] = gm * ti + gn * (1.0f - ti);
            at[i] = pf_sel(has_alpha, (2.0f * al - 1.0f) * ti + (1.0f - al), 1.0f);
        }
    }
    /* u^g_t: products for small integer exponents (hard targets, or one exponent), else exp(g log u) */
    const int products = small_int_gamma(gm) && (variant == 3 || (small_int_gamma(gn) && (hard || gm == gn)));
    if (products) {
        /* PF_HOT: the modulator by products */
#pragma omp simd
        for (int64_t i = 0; i < len; i++) mod[i] = ipow4(u[i], gt[i]);
    } else {
        /* PF_HOT: the modulator's log */
#pragma omp simd
        for (int64_t i = 0; i < len; i++) mod[i] = logf(u[i]);
        /* PF_HOT: the modulator's exp */
#pragma omp simd
        for (int64_t i = 0; i < len; i++) mod[i] = pf_sel(gt[i] == 0.0f, 1.0f, expf(gt[i] * mod[i]));
    }
#pragma omp simd
    for (int64_t i = 0; i < len; i++) poly[i] = dpoly[i] = 0.0f;
    for (int jj = n_eps; jj >= 1; jj--) { /* sum_j eps_j u^j and sum_j j eps_j u^(j-1) */
        const float e = epsf[jj - 1], c = coef0[jj - 1];
#pragma omp simd
        for (int64_t i = 0; i < len; i++) {
            poly[i] = (poly[i] + e) * u[i];
            dpoly[i] = dpoly[i] * u[i] + c;
        }
    }
    float sum = 0.0f;
    /* PF_HOT: the detection block's loss and gradient */
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < len; i++) {
        const float body = at[i] * ce[i] + poly[i];
        const float l = mod[i] * body * fac[i];
        poly[i] = l;
        sum += l;
        const float bracket = pf_sel(u[i] > 0.0f, gt[i] * body / u[i], 0.0f) + dpoly[i];
        gb[i] = mod[i] * (at[i] * dce[i] + du[i] * bracket) * fac[i] * gs;
    }
    return sum;
}
#endif /* PF_PART 3 */
#if !defined(PF_PART) || PF_PART == 2

/* Sigmoid PolyLoss, element-wise over x (dtype xdt) viewed as (N, L), processed in flat blocks of BLK elements.
 * Targets: dense t (N, L) contiguous in the dtype tdt (float32 / bfloat16 / float16 / uint8), or class indices
 * y (N,) with L = C classes per row (index C = background, ignore_index masks the row).  w / pw / norm: NULL
 * or float32 arrays addressed as v[row * s0 + col * s1] (a broadcast view has a zero stride: nothing is
 * expanded).  loss: (N, L) element losses, or NULL for a reduced loss: *out = the sum (or the mean) of the
 * elements, from per-thread partial sums added in thread order (deterministic for a thread count).
 * g: the gradient in x's dtype, or NULL. */
int pf_sigmoid(const void *x, int xdt, const void *t, int tdt, const int64_t *y, int64_t ignore_index, int64_t N,
               int64_t L, const float *w, int64_t ws0, int64_t ws1, const float *pw, int64_t ps0, int64_t ps1,
               const float *norm, int64_t ns0, int64_t ns1, int has_alpha, double alpha, const double *eps,
               int n_eps, double gamma, double ls, int mean, float *loss, float *out, void *g, int nthreads,
               int64_t *bad, int variant, double gamma_neg, double clip, int iou_weighted, const float *score) {
    const int64_t numel = N * L;
    /* The mean denominator (non-ignored elements) and, for class indices, the range check [0, L] (L = background):
     * returns 1 with *bad = the first offending index, before anything is written. */
    double den = (double)numel;
    if (y) {
        int64_t valid_rows = 0;
        for (int64_t r = 0; r < N; r++) {
            const int64_t yv = y[r];
            if (yv == ignore_index) continue;
            if (yv < 0 || yv > L) {
                *bad = yv;
                return 1;
            }
            valid_rows++;
        }
        den = (double)valid_rows * (double)L;
    }
    if (g && g != x) pf_hugepages(g, numel * (xdt == DT_F32 ? 4 : 2)); /* a fresh gradient buffer */
    double partial[256] = {0.0};
    if (nthreads > 256) nthreads = 256;
    /* all ignored: the mean is nan (0/0, computed by the caller) and the gradient 0, as in torch */
    const double grad_scale = mean ? (den > 0.0 ? 1.0 / den : 0.0) : 1.0;
    const int64_t chunks = (numel + BLK - 1) / BLK;
    /* flat: every vector is absent or a contiguous (N, L) array; else walk the blocks' row segments */
    const int flat_w = !w || (ws0 == L && ws1 == 1), flat_pw = !pw || (ps0 == L && ps1 == 1);
    const int flat_n = !norm || (ns0 == L && ns1 == 1);
    const int walk = (y != NULL) || !flat_w || !flat_pw || !flat_n;
    const float gm = (float)gamma, al = (float)alpha, lsf = (float)ls, gs = (float)grad_scale;
    float epsf[16], coef[16], coef0[16];
    for (int j = 0; j < n_eps && j < 16; j++) {
        epsf[j] = (float)eps[j];
        coef[j] = (float)(eps[j] * (j + 1 + gamma));
        coef0[j] = (float)(eps[j] * (j + 1));
    }
#pragma omp parallel num_threads(nthreads) if (numel >= 16384 && nthreads > 1)
    {
        const pf_fpmode mode = pf_ftz_begin();
        double acc = 0.0;
        float tt[BLK], ce[BLK], u[BLK], p[BLK], q[BLK], mod[BLK], at[BLK], fac[BLK], pw_t[BLK], poly[BLK], dpoly[BLK];
        float xs[BLK], gb[BLK];
#pragma omp for schedule(static)
        for (int64_t k = 0; k < chunks; k++) {
            const int64_t base = k * BLK;
            const int64_t len = (numel - base) < BLK ? (numel - base) : BLK;
            const float *xb = (const float *)x + base;
            if (xdt != DT_F32) {
                load_f32(xs, x, xdt, base, len);
                xb = xs;
            }
            /* the block's targets: a float32 t read in place (no copy pass), else converted into tt (label
             * smoothing rewrites them there); its gradient: written in place into a float32 g (not over x), else
             * into gb and stored after.  The two copy passes were 20% of the asymmetric loss's kernel time. */
            const float *tp = tt;
            if (t && tdt == DT_F32 && !(ls > 0.0))
                tp = (const float *)t + base;
            else if (t)
                load_f32(tt, t, tdt, base, len);
            float *gp = xdt == DT_F32 && g && g != x ? (float *)g + base : gb;
            if (walk) { /* row segments of the block: each has one row index (one target index, one validity) */
                int64_t i = 0, row = base / L, col = base % L;
                while (i < len) {
                    const int64_t seg = (L - col) < (len - i) ? (L - col) : (len - i);
                    float *ts = tt + i, *fs = fac + i, *ps = pw_t + i;
                    if (y) {
                        const int64_t yv = y[row];
                        const float f = (yv == ignore_index) ? 0.0f : 1.0f;
                        for (int64_t j = 0; j < seg; j++) {
                            ts[j] = 0.0f;
                            fs[j] = f;
                        }
                        if (yv >= col && yv < col + seg) ts[yv - col] = score ? score[row] : 1.0f;
                    } else {
                        for (int64_t j = 0; j < seg; j++) fs[j] = 1.0f;
                    }
                    if (w) {
                        const float *wr = w + row * ws0 + col * ws1;
                        for (int64_t j = 0; j < seg; j++) fs[j] *= wr[j * ws1];
                    }
                    if (norm) {
                        const float *nr = norm + row * ns0 + col * ns1;
                        for (int64_t j = 0; j < seg; j++) fs[j] /= nr[j * ns1];
                    }
                    if (pw) {
                        const float *pr = pw + row * ps0 + col * ps1;
                        for (int64_t j = 0; j < seg; j++) ps[j] = pr[j * ps1];
                    } else {
                        for (int64_t j = 0; j < seg; j++) ps[j] = 1.0f;
                    }
                    i += seg;
                    row++;
                    col = 0;
                }
            } else {
#pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    fac[i] = 1.0f;
                    pw_t[i] = 1.0f;
                }
                if (w)
#pragma omp simd
                    for (int64_t i = 0; i < len; i++) fac[i] *= w[base + i];
                if (norm)
#pragma omp simd
                    for (int64_t i = 0; i < len; i++) fac[i] /= norm[base + i];
                if (pw)
#pragma omp simd
                    for (int64_t i = 0; i < len; i++) pw_t[i] = pw[base + i];
            }
            if (ls > 0.0)
#pragma omp simd
                for (int64_t i = 0; i < len; i++) tt[i] = tt[i] * (1.0f - lsf) + 0.5f * lsf;
            if (variant != 0) { /* asymmetric / varifocal / quality focal: det_block, same store and sum */
                acc += det_block(variant, xb, tp, pw_t, fac, len, has_alpha, al, gm, (float)gamma_neg, (float)clip,
                                 iou_weighted, n_eps, epsf, coef0, gs, poly, gp, p, q, u, ce, mod, at, dpoly);
                if (loss) memcpy(loss + base, poly, (size_t)len * sizeof(float));
                if (g && gp == gb) store_from_f32(g, xdt, base, gb, len);
                continue;
            }
            /* e = exp(-|x|) gives everything: log1p(e), and sigmoid(x), sigmoid(-x) as 1/(1+e), e/(1+e) */
            /* PF_HOT: the sigmoid block's exp pass */
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) p[i] = exp_nonpos(-fabsf(xb[i]));
            /* PF_HOT: the sigmoid block's log1p pass */
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) q[i] = log1p_unit(p[i]);
            /* PF_HOT: the sigmoid block's cross-entropy terms */
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                const float xv = xb[i], ti = tp[i], tail = q[i], e = p[i];
                const float a_pos = pf_sel(xv > 0.0f, xv, 0.0f) + tail; /* -log sigmoid(-x); no fmaxf: NaN */
                const float a_neg = pf_sel(xv < 0.0f, -xv, 0.0f) + tail; /* -log sigmoid(x) */
                ce[i] = (1.0f - ti) * a_pos + pw_t[i] * ti * a_neg;
                const float big = 1.0f / (1.0f + e), small = e * big;
                const int nonneg = xv >= 0.0f;
                p[i] = pf_sel(nonneg, big, small); /* sigmoid(x) */
                q[i] = pf_sel(nonneg, small, big); /* sigmoid(-x) */
            }
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                const float ti = tp[i];
                u[i] = ti * q[i] + (1.0f - ti) * p[i];
                at[i] = has_alpha ? (2.0f * al - 1.0f) * ti + (1.0f - al) : 1.0f;
            }
            if (gamma == 0.0) {
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) mod[i] = 1.0f;
            } else if (gamma == 1.0 || gamma == 2.0 || gamma == 3.0 || gamma == 4.0) { /* u^gamma by products */
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    const float a = u[i], b = a * a;
                    mod[i] = gamma == 1.0 ? a : (gamma == 2.0 ? b : (gamma == 3.0 ? b * a : b * b));
                }
            } else if (gamma == 0.5 || gamma == 1.5 || gamma == 2.5 || gamma == 3.5) { /* u^k sqrt(u) */
                /* PF_HOT: the sigmoid block's modulating factor, half-integer gamma (one sqrt instead of
                 * expf(gamma logf(u)): sigmoid_focal_loss(gamma=1.5) at 100000x80, 2 threads, 0.74 -> 0.60x BCE) */
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    const float a = u[i], r = sqrtf(a);
                    mod[i] = gamma == 0.5 ? r : (gamma == 1.5 ? a * r : (gamma == 2.5 ? a * a * r : a * a * a * r));
                }
            } else {
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) mod[i] = expf(gm * logf(u[i]));
            }
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) poly[i] = dpoly[i] = 0.0f;
            for (int jj = n_eps; jj >= 1; jj--) {
                const float e = epsf[jj - 1], c = coef[jj - 1];
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    poly[i] = (poly[i] + e) * u[i];
                    dpoly[i] = dpoly[i] * u[i] + c;
                }
            }
            float block_sum = 0.0f;
            /* PF_HOT: the sigmoid block's loss */
            #pragma omp simd reduction(+ : block_sum)
            for (int64_t i = 0; i < len; i++) {
                const float l = mod[i] * (at[i] * ce[i] + poly[i]) * fac[i];
                poly[i] = l;
                block_sum += l;
            }
            if (loss) memcpy(loss + base, poly, (size_t)len * sizeof(float));
            acc += block_sum;
            if (g) {
                /* PF_HOT: the sigmoid block's gradient */
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    const float ti = tp[i];
                    const float dce = (1.0f - ti) * p[i] - pw_t[i] * ti * q[i];
                    const float ratio = pf_sel(u[i] > 0.0f, p[i] * q[i] / u[i], 1.0f);
                    const float inner = u[i] * dpoly[i] + gm * at[i] * ce[i];
                    gp[i] = mod[i] * (at[i] * dce + (1.0f - 2.0f * ti) * ratio * inner) * fac[i] * gs;
                }
                if (gp == gb) store_from_f32(g, xdt, base, gb, len);
            }
        }
        partial[omp_get_thread_num()] = acc;
        pf_ftz_end(mode);
    }
    if (out) {
        double total = 0.0;
        for (int i = 0; i < nthreads; i++) total += partial[i];
        *out = (float)(mean ? (den > 0.0 ? total / den : NAN) : total);
    }
    return 0;
}

/* pf_sigmoid's arguments as one struct, as pf_softmax_args (_native.py's _SigmoidArgs mirrors it) */
typedef struct {
    const void *x;
    int64_t xdt;
    const void *t;
    int64_t tdt;
    const int64_t *y;
    int64_t ignore_index, N, L;
    const float *w;
    int64_t ws0, ws1;
    const float *pw;
    int64_t ps0, ps1;
    const float *norm;
    int64_t ns0, ns1, has_alpha;
    double alpha;
    const double *eps;
    int64_t n_eps;
    double gamma, ls;
    int64_t mean;
    float *loss, *out;
    void *g;
    int64_t nthreads, bad, variant;
    double gamma_neg, clip;
    int64_t iou_weighted;
    const float *score;
} pf_sigmoid_args;
_Static_assert(sizeof(pf_sigmoid_args) == 34 * 8, "pf_sigmoid_args: 34 fields of 8 bytes, no padding");

int pf_sigmoid_packed(pf_sigmoid_args *p) {
    return pf_sigmoid(p->x, (int)p->xdt, p->t, (int)p->tdt, p->y, p->ignore_index, p->N, p->L, p->w, p->ws0, p->ws1,
                      p->pw, p->ps0, p->ps1, p->norm, p->ns0, p->ns1, (int)p->has_alpha, p->alpha, p->eps,
                      (int)p->n_eps, p->gamma, p->ls, (int)p->mean, p->loss, p->out, p->g, (int)p->nthreads, &p->bad,
                      (int)p->variant, p->gamma_neg, p->clip, (int)p->iou_weighted, p->score);
}

#endif /* PF_PART 2 */
#endif /* PF_PART >= 2 */
#if !defined(PF_PART) || PF_PART == 4
/* PF_PART=4: the two-phase form of the softmax family for class-parallel fused linear + loss
 * (polyfocal/linear_parallel.py).  Each rank holds a (R, V) chunk of its shard's logits x (dtype xdt, read in
 * place; the gradient is written over it).  The loss sees z'_c = s ((x_c + b_c) - m_t [c = t]) with t the row's
 * local target (-1: not in this shard, or an ignored row): b (V,) the shard's bias (zeros when none), m the
 * target margins (V,) or NULL, s the logit scale.
 *
 * Phase 1, pf_lp_stats: per row, into st (4, R) float32 (row-major: st[k * R + r]):
 *   st[0] = M_r = max_c z'_c (the local max), st[1] = sum_{c != t} exp(z'_c - M_r),
 *   st[2] = z'_t (0 when t = -1), st[3] = sum_c a_c z'_c (a: class weights (V,) or NULL for 1; only when ls != 0).
 * Phase 2, pf_lp_grad: given the global per-row lse and coefficients (co, k1, k2: the gradient of the row is
 *   co exp(z'_c - lse) - k1 [c = t] - k2 a_c), writes it over x in x's dtype; a row whose three coefficients
 *   are all 0 (an ignored row) is written as zeros.
 * Row sums: float SIMD lanes within blocks of SUM_BLK classes, the blocks added in double (as pf_softmax). */

/* z' of one row into zr (V floats): zr[c] = s (x_c + b_c) (xr may be zr); the caller sets the target's entry */
static void lp_adjust(float *zr, const float *xr, const float *b, float sc, int64_t V) {
    /* PF_HOT: the two-phase row's adjusted logits */
#pragma omp simd
    for (int64_t c = 0; c < V; c++) zr[c] = sc * (xr[c] + b[c]);
}

static inline float lp_target(const float *xr_raw, const float *b, const float *mg, float sc, int64_t t) {
    return sc * ((xr_raw[t] + b[t]) - (mg ? mg[t] : 0.0f));
}

static float lp_max(const float *zr, int64_t lo, int64_t hi, float m) {
    /* PF_HOT: the two-phase row's maximum */
#pragma omp simd reduction(max : m)
    for (int64_t c = lo; c < hi; c++) m = zr[c] > m ? zr[c] : m;
    return m;
}

static double lp_exp_sum(const float *zr, float m, int64_t lo, int64_t hi) {
    double s = 0.0;
    for (int64_t c0 = lo; c0 < hi; c0 += SUM_BLK) {
        const int64_t c1 = (hi - c0) < SUM_BLK ? hi : c0 + SUM_BLK;
        float b_s = 0.0f;
        /* PF_HOT: the two-phase row's exp pass */
#pragma omp simd reduction(+ : b_s)
        for (int64_t c = c0; c < c1; c++) b_s += exp_nonpos(zr[c] - m);
        s += (double)b_s;
    }
    return s;
}

static double lp_weighted_sum(const float *zr, const float *a, int64_t V) {
    double s = 0.0;
    for (int64_t c0 = 0; c0 < V; c0 += SUM_BLK) {
        const int64_t c1 = (V - c0) < SUM_BLK ? V : c0 + SUM_BLK;
        float b_s = 0.0f;
        if (a) {
            /* PF_HOT: the two-phase row's label smoothing sum */
#pragma omp simd reduction(+ : b_s)
            for (int64_t c = c0; c < c1; c++) b_s += a[c] * zr[c];
        } else {
            /* PF_HOT: the two-phase row's label smoothing sum */
#pragma omp simd reduction(+ : b_s)
            for (int64_t c = c0; c < c1; c++) b_s += zr[c];
        }
        s += (double)b_s;
    }
    return s;
}

/* one row of phase 1 over zr = z' with the target's value already in zr[t] (t in [0, V) or -1) */
static void lp_stats_row(const float *zr, const float *a, int64_t t, int64_t V, int ls, float *st, int64_t R,
                         int64_t r) {
    const int64_t ta = t < 0 ? V : t, tb = t < 0 ? V : t + 1; /* the row split around its target */
    float m = lp_max(zr, 0, ta, -INFINITY);
    m = lp_max(zr, tb, V, m);
    if (t >= 0) m = zr[t] > m ? zr[t] : m;
    const double rest = lp_exp_sum(zr, m, 0, ta) + lp_exp_sum(zr, m, tb, V);
    st[r] = m;
    st[R + r] = (float)rest;
    st[2 * R + r] = t >= 0 ? zr[t] : 0.0f;
    st[3 * R + r] = ls ? (float)lp_weighted_sum(zr, a, V) : 0.0f;
}

/* Returns 0, or 2 when per-thread scratch could not be allocated. */
int pf_lp_stats(const void *x, int xdt, const int64_t *t, const float *b, const float *mg, double logit_scale,
                const float *a, int ls, int64_t R, int64_t V, float *st, int nthreads) {
    const float sc = (float)logit_scale;
    const int parallel = R * V >= 16384 && nthreads > 1 && R > 1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (parallel)
    {
        const pf_fpmode mode = pf_ftz_begin();
        float *zr = (float *)malloc((size_t)(V > 0 ? V : 1) * sizeof(float));
        if (!zr) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            if (!zr) continue;
            const int64_t tr = t[r];
            const float *xr = (const float *)x + r * V; /* float32: adjusted straight from x, no copy */
            if (xdt != DT_F32) {
                load_f32(zr, x, xdt, r * V, V);
                xr = zr;
            }
            const float zt = tr >= 0 ? lp_target(xr, b, mg, sc, tr) : 0.0f;
            lp_adjust(zr, xr, b, sc, V);
            if (tr >= 0) zr[tr] = zt;
            lp_stats_row(zr, a, tr, V, ls, st, R, r);
        }
        free(zr);
        pf_ftz_end(mode);
    }
    return failed ? 2 : 0;
}

/* gr[c] = co exp(s (x_c + b_c) - lse) - k2 a_c over one row (xr, gr: V floats, may alias) */
static void lp_grad_row(const float *xr, float *gr, const float *b, const float *a, float sc, float lse, float co,
                        float k2, int64_t V) {
    if (a && k2 != 0.0f) {
        /* PF_HOT: the two-phase row's gradient */
#pragma omp simd
        for (int64_t c = 0; c < V; c++) gr[c] = co * exp_nonpos(sc * (xr[c] + b[c]) - lse) - k2 * a[c];
    } else {
        /* PF_HOT: the two-phase row's gradient */
#pragma omp simd
        for (int64_t c = 0; c < V; c++) gr[c] = co * exp_nonpos(sc * (xr[c] + b[c]) - lse) - k2;
    }
}

int pf_lp_grad(void *x, int xdt, const int64_t *t, const float *b, const float *mg, double logit_scale, const float *a,
               const float *lse, const float *co, const float *k1, const float *k2, int64_t R, int64_t V,
               int nthreads) {
    const float sc = (float)logit_scale;
    const int parallel = R * V >= 16384 && nthreads > 1 && R > 1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (parallel)
    {
        const pf_fpmode mode = pf_ftz_begin();
        float *zr = xdt == DT_F32 ? NULL : (float *)malloc((size_t)(V > 0 ? V : 1) * sizeof(float));
        if (xdt != DT_F32 && !zr) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            if (xdt != DT_F32 && !zr) continue;
            float *row = xdt == DT_F32 ? (float *)x + r * V : zr;
            if (xdt != DT_F32) load_f32(zr, x, xdt, r * V, V);
            const int64_t tr = t[r];
            if (co[r] == 0.0f && k1[r] == 0.0f && k2[r] == 0.0f) { /* an ignored row: zeros, also for NaN logits */
                memset(row, 0, (size_t)V * sizeof(float));
            } else {
                /* the target's term before the row is overwritten (its logit carries the margin) */
                const float gt = tr >= 0 ? co[r] * exp_nonpos(lp_target(row, b, mg, sc, tr) - lse[r]) - k1[r] -
                                               k2[r] * (a ? a[tr] : 1.0f)
                                         : 0.0f;
                lp_grad_row(row, row, b, a, sc, lse[r], co[r], k2[r], V);
                if (tr >= 0) row[tr] = gt;
            }
            if (xdt != DT_F32) store_from_f32(x, xdt, r * V, zr, V);
        }
        free(zr);
        pf_ftz_end(mode);
    }
    return failed ? 2 : 0;
}
#endif /* PF_PART 4 */
