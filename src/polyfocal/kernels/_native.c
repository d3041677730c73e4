/* polyfocal native CPU kernels (float32): loss and input gradient of the PolyLoss family in one pass.
 *
 * Same math as polyfocal/kernels/_torch_impl.py (softmax_row_terms, sigmoid_terms); see there for the
 * formulas.  Compiled on first use by polyfocal/kernels/_native.py with the system C compiler
 * (-O3 -march=native -fopenmp), vectorised through glibc's libmvec (expf/logf/log1pf declared SIMD below).
 * Per-row scalars are computed in double.  No Python or torch headers: plain pointers through ctypes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float logf(float);

#define BLK 256
#define SUM_BLK 1024

/* exp(v) for v <= 0 (softmax's x - max): Cody-Waite reduction and Cephes' degree-6 polynomial (max relative
 * error ~2 ulp), inlined so the row loops vectorise with no call; values below -87.3 (results under
 * float32's normal range, negligible against a row sum >= 1) flush to 0, -inf included. */
static inline float exp_nonpos(float v) {
    const float c = v < -87.3f ? -87.3f : v;
    const float n = rintf(c * 1.44269504088896341f);
    const float r = (c - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        float f;
        int32_t i;
    } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return v < -87.3f ? 0.0f : p * scale.f;
}

/* sum_j eps_j u^j and sum_j eps_j (j + gamma) u^(j-1) */
static void poly_terms(double u, const double *eps, int n_eps, double gamma, double *poly, double *dpoly) {
    double p = 0.0, d = 0.0;
    for (int k = n_eps; k >= 1; k--) {
        p = (p + eps[k - 1]) * u;
        d = (k == n_eps) ? eps[k - 1] * (k + gamma) : d * u + eps[k - 1] * (k + gamma);
    }
    *poly = p;
    *dpoly = d;
}

/* Softmax PolyLoss for class-index targets; x is (R, C) row-major.  loss: (R,) per row, scaled by validity,
 * 1/norm and (mean) 1/denominator; *total: their sum (sequential, deterministic).  g: (R, C) gradient for
 * grad_output = 1 of the reduced loss, or NULL.  The mean denominator (valid rows, or their summed target
 * weights) and the class sums are computed here too: a few O(N + C) loops instead of torch ops. */
/* Returns 0, or 1 with *bad = the first class index outside [0, C) that is not ignore_index (nothing written). */
int pf_softmax_f32(const float *x, const int64_t *y, const float *a, const float *w, const float *norm,
                   const double *eps, int n_eps, double gamma, double ls, int64_t ignore_index, int64_t R, int64_t C,
                   int mean, float *loss, double *total, float *g, int nthreads, int64_t *bad) {
    double a_sum = 0.0, w_sum = 0.0, den = 0.0;
    for (int64_t r = 0; r < R; r++) { /* the index check: before any memory is touched through an index */
        const int64_t t = y[r];
        if (t == ignore_index) continue;
        if (t < 0 || t >= C) {
            *bad = t;
            return 1;
        }
        den += w ? w[t] : 1.0;
    }
    for (int64_t c = 0; c < C; c++) {
        a_sum += a ? a[c] : 1.0;
        w_sum += w ? w[c] : 1.0;
    }
    const double grad_scale = mean ? 1.0 / den : 1.0;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * C;
        float *gr = g ? g + r * C : NULL;
        const int64_t t = y[r];
        if (t == ignore_index) {
            loss[r] = 0.0f;
            if (gr) memset(gr, 0, (size_t)C * sizeof(float));
            continue;
        }
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < C; c++) m = xr[c] > m ? xr[c] : m;
        if (m == -INFINITY) m = 0.0f;
        /* Row sums: float SIMD lanes within blocks of SUM_BLK classes, blocks added in double, so the rounding
         * error stays at torch's level for vocabulary-sized C.  The reductions need "omp simd reduction" to
         * vectorise without -ffast-math. */
        double s_all = 0.0, s_rest = 0.0, x_a = 0.0;
        for (int64_t c0 = 0; c0 < C; c0 += SUM_BLK) {
            const int64_t c1 = (C - c0) < SUM_BLK ? C : c0 + SUM_BLK;
            float b_all = 0.0f, b_rest = 0.0f;
            if (gr) {
#pragma omp simd reduction(+ : b_all, b_rest)
                for (int64_t c = c0; c < c1; c++) {
                    const float e = exp_nonpos(xr[c] - m);
                    gr[c] = e;
                    b_all += e;
                    b_rest += (c == t) ? 0.0f : e;
                }
            } else {
#pragma omp simd reduction(+ : b_all, b_rest)
                for (int64_t c = c0; c < c1; c++) {
                    const float e = exp_nonpos(xr[c] - m);
                    b_all += e;
                    b_rest += (c == t) ? 0.0f : e;
                }
            }
            s_all += b_all;
            s_rest += b_rest;
            if (ls > 0.0) {
                float b_a = 0.0f;
                if (a) {
#pragma omp simd reduction(+ : b_a)
                    for (int64_t c = c0; c < c1; c++) b_a += a[c] * xr[c];
                } else {
#pragma omp simd reduction(+ : b_a)
                    for (int64_t c = c0; c < c1; c++) b_a += xr[c];
                }
                x_a += b_a;
            }
        }
        const double x_t = xr[t];
        const double lse = (double)m + log(s_all);
        const double p1 = exp(x_t - lse);
        const double d1 = 1.0 - p1; /* a comparison, not fmax: fmax would turn a NaN row (NaN/inf logits) into 0 */
        const double u1 = gamma == 0.0 ? (d1 < 0.0 ? 0.0 : d1) : s_rest / s_all;
        const double ce1 = u1 < 0.5 ? -log1p(-u1) : lse - x_t;
        const double a_y = a ? a[t] : 1.0, w_y = w ? w[t] : 1.0;
        double ce_a, u, w_poly;
        if (ls > 0.0) {
            ce_a = (1.0 - ls) * a_y * ce1 + (ls / C) * (a_sum * lse - x_a);
            u = (1.0 - ls) * u1 + (ls - ls / C);
            w_poly = (1.0 - ls) * w_y + (ls / C) * w_sum;
        } else {
            ce_a = a_y * ce1;
            u = u1;
            w_poly = w_y;
        }
        const double mod = gamma == 0.0 ? 1.0 : exp(gamma * log(u));
        double poly = 0.0, dpoly = 0.0;
        if (n_eps > 0) poly_terms(u, eps, n_eps, gamma, &poly, &dpoly);
        double dl_du = w_poly * dpoly;
        if (gamma != 0.0) dl_du += gamma * (u > 0.0 ? ce_a / u : a_y);
        const double scale = norm ? 1.0 / norm[r] : 1.0;
        loss[r] = (float)(mod * (ce_a + w_poly * poly) * scale * grad_scale);
        if (gr) {
            const double k1 = (1.0 - ls) * mod * (a_y + dl_du * p1) * scale * grad_scale;
            const double k2 = mod * (ls / C) * scale * grad_scale;
            const float pc = (float)((k1 + k2 * a_sum) / s_all);
            if (ls > 0.0) {
                const float k2f = (float)k2;
                if (a)
                    for (int64_t c = 0; c < C; c++) gr[c] = pc * gr[c] - k2f * a[c];
                else
                    for (int64_t c = 0; c < C; c++) gr[c] = pc * gr[c] - k2f;
            } else {
                for (int64_t c = 0; c < C; c++) gr[c] *= pc;
            }
            gr[t] = (float)((double)gr[t] - k1);
        }
    }
    double sum = 0.0;
    for (int64_t r = 0; r < R; r++) sum += loss[r];
    *total = (mean && den == 0.0) ? NAN : sum; /* a mean over nothing is nan, as in torch */
    return 0;
}

/* Sigmoid PolyLoss, element-wise over x viewed as (N, L), processed in flat blocks of BLK elements.
 * Targets: dense float t (N, L), or class indices y (N,) with L = C classes per row (index C = background,
 * ignore_index masks the row).  w / pw: NULL, per-class (length L, mode 1) or full (N, L, mode 2); norm: NULL
 * or full.  loss: (N, L) element losses, or NULL to write per-thread partial sums to partial[nthreads]. */
int pf_sigmoid_f32(const float *x, const float *t, const int64_t *y, int64_t ignore_index, int64_t N, int64_t L,
                   const float *w, int w_mode, const float *pw, int pw_mode, const float *norm, int has_alpha,
                   double alpha, const double *eps, int n_eps, double gamma, double ls, int mean, float *loss,
                   double *partial, float *g, int nthreads, double *den_out, int64_t *bad) {
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
    *den_out = den;
    /* all ignored: the mean is nan (0/0, computed by the caller) and the gradient 0, as in torch */
    const double grad_scale = mean ? (den > 0.0 ? 1.0 / den : 0.0) : 1.0;
    const int64_t chunks = (numel + BLK - 1) / BLK;
    const int walk = (y != NULL) || w_mode == 1 || pw_mode == 1; /* needs the (row, column) of each element */
    const float gm = (float)gamma, al = (float)alpha, lsf = (float)ls, gs = (float)grad_scale;
    float epsf[16], coef[16];
    for (int j = 0; j < n_eps && j < 16; j++) {
        epsf[j] = (float)eps[j];
        coef[j] = (float)(eps[j] * (j + 1 + gamma));
    }
#pragma omp parallel num_threads(nthreads)
    {
        double acc = 0.0;
        float tt[BLK], ce[BLK], u[BLK], p[BLK], q[BLK], mod[BLK], at[BLK], fac[BLK], pw_t[BLK], poly[BLK], dpoly[BLK];
#pragma omp for schedule(static)
        for (int64_t k = 0; k < chunks; k++) {
            const int64_t base = k * BLK;
            const int64_t len = (numel - base) < BLK ? (numel - base) : BLK;
            const float *xb = x + base;
            if (walk) { /* row segments of the block: each has one target index and one validity */
                int64_t i = 0, row = base / L, col = base % L;
                while (i < len) {
                    const int64_t seg = (L - col) < (len - i) ? (L - col) : (len - i);
                    float *ts = tt + i, *fs = fac + i, *ps = pw_t + i;
                    if (y) {
                        const int64_t yv = y[row];
                        const float f = (yv == ignore_index) ? 0.0f : 1.0f;
                        for (int64_t k = 0; k < seg; k++) {
                            ts[k] = 0.0f;
                            fs[k] = f;
                        }
                        if (yv >= col && yv < col + seg) ts[yv - col] = 1.0f;
                    } else {
                        for (int64_t k = 0; k < seg; k++) {
                            ts[k] = t[base + i + k];
                            fs[k] = 1.0f;
                        }
                    }
                    if (w_mode == 1)
                        for (int64_t k = 0; k < seg; k++) fs[k] *= w[col + k];
                    for (int64_t k = 0; k < seg; k++) ps[k] = pw_mode == 1 ? pw[col + k] : 1.0f;
                    i += seg;
                    row++;
                    col = 0;
                }
            } else {
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    tt[i] = t[base + i];
                    fac[i] = 1.0f;
                    pw_t[i] = 1.0f;
                }
            }
            if (ls > 0.0)
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) tt[i] = tt[i] * (1.0f - lsf) + 0.5f * lsf;
            if (w_mode == 2)
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) fac[i] *= w[base + i];
            if (norm)
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) fac[i] /= norm[base + i];
            if (pw_mode == 2)
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) pw_t[i] = pw[base + i];
            /* one libm call per loop (GCC vectorises these through libmvec); e = exp(-|x|) gives everything:
             * log1p(e), and sigmoid(x), sigmoid(-x) as 1/(1+e), e/(1+e) */
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) p[i] = exp_nonpos(-fabsf(xb[i]));
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) { /* log1p(e) = log(1 + e) * e / ((1 + e) - 1), exact for tiny e */
                const float e = p[i], w1 = 1.0f + e;
                q[i] = w1 == 1.0f ? e : logf(w1) * (e / (w1 - 1.0f));
            }
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                const float xv = xb[i], ti = tt[i], tail = q[i], e = p[i];
                const float a_pos = (xv > 0.0f ? xv : 0.0f) + tail; /* -log sigmoid(-x); no fmaxf: it blocks SIMD */
                const float a_neg = (xv < 0.0f ? -xv : 0.0f) + tail; /* -log sigmoid(x) */
                ce[i] = (1.0f - ti) * a_pos + pw_t[i] * ti * a_neg;
                const float big = 1.0f / (1.0f + e), small = e * big;
                p[i] = xv >= 0.0f ? big : small; /* sigmoid(x) */
                q[i] = xv >= 0.0f ? small : big; /* sigmoid(-x) */
            }
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                const float ti = tt[i];
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
            #pragma omp simd
            for (int64_t i = 0; i < len; i++) {
                const float l = mod[i] * (at[i] * ce[i] + poly[i]) * fac[i];
                poly[i] = l;
                block_sum += l;
            }
            if (loss) memcpy(loss + base, poly, (size_t)len * sizeof(float));
            acc += block_sum;
            if (g) {
                #pragma omp simd
                for (int64_t i = 0; i < len; i++) {
                    const float ti = tt[i];
                    const float dce = (1.0f - ti) * p[i] - pw_t[i] * ti * q[i];
                    const float ratio = u[i] > 0.0f ? p[i] * q[i] / u[i] : 1.0f;
                    const float inner = u[i] * dpoly[i] + gm * at[i] * ce[i];
                    g[base + i] = mod[i] * (at[i] * dce + (1.0f - 2.0f * ti) * ratio * inner) * fac[i] * gs;
                }
            }
        }
        if (partial) partial[omp_get_thread_num()] = acc;
    }
    return 0;
}
