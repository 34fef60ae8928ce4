/* Pieces of the top-k gate shared by all variants: exact heap selection, the bad-data
 * scan that names the first offending element, and the weights of one row. */
#include <math.h>

#include "kernels/expf.h"
#include "kernels/topk_gate/internal.h"

/* The selection order: a higher key wins; equal keys go to the lower index. */
static int ranks_before(float key_a, int32_t idx_a, float key_b, int32_t idx_b) {
    return key_a > key_b || (key_a == key_b && idx_a < idx_b);
}

/* Min-heap on the selection order: the root is the entry that would leave first. */
static void sift_down(float *hk, int32_t *hi, int size, int at) {
    for (;;) {
        int worst = at, left = 2 * at + 1, right = left + 1;
        if (left < size && ranks_before(hk[worst], hi[worst], hk[left], hi[left])) worst = left;
        if (right < size && ranks_before(hk[worst], hi[worst], hk[right], hi[right]))
            worst = right;
        if (worst == at) return;
        float tk = hk[at];
        hk[at] = hk[worst];
        hk[worst] = tk;
        int32_t ti = hi[at];
        hi[at] = hi[worst];
        hi[worst] = ti;
        at = worst;
    }
}

void topk_select_heap(const float *keys, const int32_t *idx, size_t n, int k, float *top_keys,
                      int32_t *top_idx) {
    /* The heap lives in the output arrays, then is sorted in place by popping. */
    float *hk = top_keys;
    int32_t *hi = top_idx;
    for (int i = 0; i < k; i++) {
        hk[i] = keys[i];
        hi[i] = idx ? idx[i] : i;
    }
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(hk, hi, k, i);
    for (size_t i = (size_t)k; i < n; i++) {
        int32_t id = idx ? idx[i] : (int32_t)i;
        if (ranks_before(keys[i], id, hk[0], hi[0])) {
            hk[0] = keys[i];
            hi[0] = id;
            sift_down(hk, hi, k, 0);
        }
    }
    /* Pop the worst to the end until the arrays read best-first. */
    for (int size = k; size > 1; size--) {
        float tk = hk[0];
        hk[0] = hk[size - 1];
        hk[size - 1] = tk;
        int32_t ti = hi[0];
        hi[0] = hi[size - 1];
        hi[size - 1] = ti;
        sift_down(hk, hi, size - 1, 0);
    }
}

topk_row_error topk_find_bad(const float *row, size_t experts, size_t row_index) {
    topk_row_error err = {TOPK_ROW_ALL_NEG_INF, row_index, 0};
    for (size_t e = 0; e < experts; e++) {
        float x = row[e];
        if (isnan(x)) return (topk_row_error){TOPK_ROW_NAN, row_index, e};
        if (x == INFINITY) return (topk_row_error){TOPK_ROW_POS_INF, row_index, e};
        if (x != -INFINITY) err.kind = TOPK_ROW_OK;
    }
    return err;
}

void topk_weights_inplace(const topk_job *job, float *w, float row_max, float row_sum) {
    const int k = job->k;
    if (job->score == MOERT_SCORE_SIGMOID) {
        for (int j = 0; j < k; j++) w[j] = moert_sigmoidf(w[j]);
        if (job->renormalize) {
            float sum = 0.0f;
            for (int j = 0; j < k; j++) sum += w[j];
            sum += 1e-20f; /* as Megatron-Core: an all-zero selection stays zero */
            for (int j = 0; j < k; j++) w[j] = w[j] / sum;
        }
    } else if (job->order == MOERT_SOFTMAX_POST) {
        /* Softmax over the k selected; the first is the largest. */
        const float first = w[0];
        float sum = 0.0f;
        for (int j = 0; j < k; j++) {
            w[j] = moert_expf(w[j] - first);
            sum += w[j];
        }
        for (int j = 0; j < k; j++) w[j] = w[j] / sum;
    } else {
        for (int j = 0; j < k; j++) w[j] = moert_expf(w[j] - row_max) / row_sum;
        if (job->renormalize) {
            float sum = 0.0f;
            for (int j = 0; j < k; j++) sum += w[j];
            for (int j = 0; j < k; j++) w[j] = w[j] / sum;
        }
    }
    if (job->scaling != 1.0f)
        for (int j = 0; j < k; j++) w[j] = w[j] * job->scaling;
}
