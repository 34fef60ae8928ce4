/* A program that uses an installed moert, as a user would. */
#include <moert/moert.h>
#include <stdio.h>

int main(void) {
    const float logits[2 * 4] = {0.1f, 2.0f, -1.0f, 1.0f, /* token 0 */
                                 3.0f, 3.0f, 0.0f, 1.0f}; /* token 1: a tie */
    int32_t ids[4];
    float weights[4];
    moert_topk_gate_params params = moert_topk_gate_params_default(); /* top-2, softmax post */
    moert_topk_gate_output out = {ids, weights, NULL, NULL};
    moert_status st = moert_topk_gate(&params, logits, 2, 4, &out);
    if (st != MOERT_OK) {
        fprintf(stderr, "consumer: %s: %s\n", moert_strerror(st), moert_last_error());
        return 1;
    }
    /* The GEMM behind the layer: a product checked by hand, so the link pulls oneDNN in. */
    const float a[2] = {1.0f, 2.0f}, b[2] = {3.0f, 4.0f};
    float c = 0.0f;
    st = moert_sgemm(1, 1, 2, a, 2, b, 1, &c, 1, 0);
    int ok = ids[0] == 1 && ids[1] == 3 && ids[2] == 0 && ids[3] == 1 && weights[2] == 0.5f && st == MOERT_OK &&
             c == 11.0f;
    printf("moert %s: token 0 -> %d %d, token 1 -> %d %d (%.2f %.2f): %s\n", moert_version(),
           ids[0], ids[1], ids[2], ids[3], weights[2], weights[3], ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
