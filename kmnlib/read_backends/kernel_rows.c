/* KMN's Gaussian kernel applied to rows of read logits, in one pass over each row.
 *
 * For every row p of `logits` (rows of h*w float32 query logits, the query grid row-major):
 *   q̂(p)   = the index of the first maximum (the first NaN if the row holds one), as PyTorch's
 *            argmax / max(dim).indices give it;
 *   row[q] = (row[q] + gy[y]) + gx[x]   for q = y*w + x, with
 *            gy[y] = -((y - ŷ)²) * inv, gx[x] = -((x - x̂)²) * inv, (ŷ, x̂) = divmod(q̂, w),
 *            the arithmetic and its order exactly as kmnlib.memory's PyTorch path does it, so the
 *            results are the same floats;
 *   col_max[b, q] = the maximum over the rows of batch b of row[q] after that — torch.amax(dim=1),
 *            which the read's softmax over memory positions needs next.
 * The row is read from memory once and stays in L1 for the four sweeps — the point of this file:
 * PyTorch spends a pass over the whole chunk on each of arg-max, two broadcast additions and amax.
 * Build without -ffast-math (it would reassociate the two additions), with -ffp-contract=off.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

static int64_t first_max(const float *row, int64_t n) {
    int64_t i = 0;
    float m = row[0];
    if (m != m) return 0;
#if defined(__AVX2__)
    if (n >= 16) {
        __m256 acc = _mm256_loadu_ps(row);
        __m256 nan = _mm256_cmp_ps(acc, acc, _CMP_UNORD_Q);
        for (i = 8; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(row + i);
            acc = _mm256_max_ps(acc, v);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
        if (_mm256_movemask_ps(nan)) {              /* a NaN: its first position is the answer */
            for (int64_t k = 0; k < n; ++k)
                if (row[k] != row[k]) return k;
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, acc);
        m = lanes[0];
        for (int k = 1; k < 8; ++k) m = lanes[k] > m ? lanes[k] : m;
        for (; i < n; ++i) {
            if (row[i] != row[i]) return i;       /* NaN in the tail (none before: checked above) */
            m = row[i] > m ? row[i] : m;
        }
        __m256 mv = _mm256_set1_ps(m);
        for (i = 0; i + 8 <= n; i += 8) {
            int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + i), mv, _CMP_EQ_OQ));
            if (hit) return i + __builtin_ctz((unsigned)hit);
        }
        for (; i < n; ++i)
            if (row[i] == m) return i;
        return 0;                                   /* unreachable: m is one of the row's values */
    }
#endif
    int64_t best = 0;
    for (i = 1; i < n; ++i) {
        float v = row[i];
        if (v != v) return i;
        if (v > m) { m = v; best = i; }
    }
    return best;
}

/* One row: q̂, then log g added, then the row's share of the column maximum (NaN sticks, as amax
   propagates it). The caller's gy/gx hold h and w floats. */
static void one_row(float *row, int64_t *qhat, float *col_max, int64_t h, int64_t w, float inv,
                    float *gy, float *gx) {
    const int64_t n = h * w;
    int64_t q = first_max(row, n);
    *qhat = q;
    float qy = (float)(q / w), qx = (float)(q % w);
    for (int64_t y = 0; y < h; ++y) { float d = (float)y - qy; gy[y] = -(d * d) * inv; }
    for (int64_t x = 0; x < w; ++x) { float d = (float)x - qx; gx[x] = -(d * d) * inv; }
    for (int64_t y = 0; y < h; ++y) {
        float *r = row + y * w;
        const float a = gy[y];
        for (int64_t x = 0; x < w; ++x) r[x] = (r[x] + a) + gx[x];
    }
    for (int64_t k = 0; k < n; ++k) {
        float v = row[k], cur = col_max[k];
        col_max[k] = (v > cur || v != v) ? v : cur;
    }
}

/* logits (batches, rows_per_batch, h*w) in place; qhat (batches * rows_per_batch) and col_max
 * (batches, h*w) written. Rows are shared among the OpenMP threads of the runtime PyTorch loaded
 * (the same libgomp, so torch.set_num_threads holds, and threads that PyTorch keeps spinning between
 * its own parallel regions are the ones doing this work instead of competing with it). Returns 0, or
 * -1 when a thread could not allocate its buffer: then no row has been touched (every thread checks
 * after the barrier) and the caller takes the PyTorch path. */
int kmn_kernel_rows_f32(float *logits, int64_t *qhat, float *col_max, int64_t batches,
                        int64_t rows_per_batch, int64_t h, int64_t w, float inv, int64_t parallel) {
    const int64_t n = h * w, rows = batches * rows_per_batch;
    int failed = 0;
    for (int64_t k = 0; k < batches * n; ++k) col_max[k] = -INFINITY;
#pragma omp parallel if (parallel)
    {
        float *mine = malloc((size_t)(batches * n + h + w) * sizeof(float));
        if (!mine) {
#pragma omp atomic write
            failed = 1;
        } else {
            for (int64_t k = 0; k < batches * n; ++k) mine[k] = -INFINITY;
        }
#pragma omp barrier
        if (!failed) {
            float *gy = mine + batches * n, *gx = gy + h;
#pragma omp for schedule(static)
            for (int64_t p = 0; p < rows; ++p)
                one_row(logits + p * n, qhat + p, mine + (p / rows_per_batch) * n, h, w, inv, gy, gx);
#pragma omp critical
            for (int64_t k = 0; k < batches * n; ++k) {
                float v = mine[k], cur = col_max[k];
                col_max[k] = (v > cur || v != v) ? v : cur;
            }
        }
        free(mine);
    }
    return failed ? -1 : 0;
}
