/*
 * Exact per-user top-K inner-product search with the threshold test fused
 * into the matrix product (recbatch/score/native.py compiles and loads this).
 *
 * Why fused: the tiled torch kernel writes every score tile to memory, then
 * reads it back to compare it against each user's running threshold; that
 * pass, not the product, was most of its time. Here a micro-kernel keeps an
 * 8-user (3 without AVX-512) x 32-item block of scores in registers,
 * compares it against the users' thresholds there, and only touches memory
 * for the rare scores that beat them (survivors). Nothing the size of a tile
 * is ever written.
 *
 * Layout (built by native.py): items packed in 32-item micro-panels, each
 * [D][32] floats, so the micro-kernel reads two contiguous 16-float vectors
 * per dimension. (One wide [D][P] panel would put rows P*4 bytes apart; at
 * P = 1024 that is 4 KiB, and all D rows of a block would fight over the
 * same L1 sets.) Consecutive micro-panels form an L2-sized panel.
 *
 * Loop order: item panel (outer, stays in L2) > user micro-block > item
 * micro-panel, so every user sees items in ascending index order. That makes
 * the tie rule free: a score enters only if it is strictly above the user's
 * threshold (the K-th best so far), and an equal score with a later index
 * loses to the lower index already held. The same ordering lets each user's
 * sorted exclusion list be walked with a pointer that only moves forward, and
 * it is checked for survivors only.
 *
 * Per user: survivors go to a buffer (capacity 4K); when it is full it is cut
 * to the best K and the threshold rises to the K-th best score. Rarely
 * updating the threshold admits about twice the survivors an exact running
 * top-K would (~1,600 against ~800 per user at K=100, 100k items), but costs
 * no per-survivor heap work.
 *
 * Build: -O3 -march=native. With AVX-512F (and without -DRECBATCH_PORTABLE)
 * the micro-kernel uses intrinsics; otherwise plain C loops that the
 * compiler vectorises for whatever the CPU has (AVX2, NEON).
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && !defined(RECBATCH_PORTABLE)
#include <immintrin.h>
#define RB_AVX512 1
#else
#define RB_AVX512 0
#endif

#define MI 32 /* items per micro-block (and per packed micro-panel): two 16-float vectors */
#if RB_AVX512
#define MU 8 /* users per micro-block: 16 zmm accumulators, half of AVX-512's 32 registers */
#else
/* 3 users x 32 items = 12 ymm accumulators, which with the item vectors fits AVX2's 16
   registers; 8 users spill and ran at 44 against 76 GFLOP/s (-march=x86-64-v3 on Zen 4). */
#define MU 3
#endif

typedef struct {
    float score;
    int32_t item; /* index into the packed items (the caller keeps n_items < 2^31): 8-byte entries */
} Cand;

/* One user's running top-K: a buffer of candidates and the score to beat. */
typedef struct {
    Cand *buf;       /* capacity `cap`; holds the best K plus survivors since the last compaction */
    int64_t n;       /* entries in buf */
    float threshold; /* K-th best score at the last compaction; -inf before, +inf for padding rows */
    const int64_t *ex, *ex_end; /* excluded items not yet passed, ascending */
} UserTop;

/* What every user of one call shares. */
typedef struct {
    int64_t k, cap, n_items;
    float *scratch; /* cap floats for compaction */
} Run;

int rb_variant(void) { return RB_AVX512; } /* 1: AVX-512 intrinsics, 0: portable loops */
int rb_micro_users(void) { return MU; }
int rb_micro_items(void) { return MI; }

/* ------------------------------------------------------------------ micro-kernel */

/*
 * Scores of MU users (rows of `u`, stride d) against one packed micro-panel
 * `panel` ([d][MI]), compared with each user's threshold. Sets mask[r] to
 * the items (bit j = item j of the panel) that beat user r's threshold and,
 * only when some bit is set, writes the scores to out. Returns that flag.
 */
#if RB_AVX512
static inline int micro_kernel(const float *u, int64_t d, const float *panel, const float thr[MU],
                               uint32_t mask[MU], float out[MU][MI]) {
    __m512 acc[2 * MU]; /* 16 zmm accumulators: user r, items 0-15 and 16-31 */
    for (int i = 0; i < 2 * MU; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t p = 0; p < d; p++) {
        __m512 lo = _mm512_loadu_ps(panel + p * MI);
        __m512 hi = _mm512_loadu_ps(panel + p * MI + 16);
        for (int r = 0; r < MU; r++) {
            __m512 a = _mm512_set1_ps(u[r * d + p]);
            acc[2 * r] = _mm512_fmadd_ps(a, lo, acc[2 * r]);
            acc[2 * r + 1] = _mm512_fmadd_ps(a, hi, acc[2 * r + 1]);
        }
    }
    uint32_t any = 0;
    for (int r = 0; r < MU; r++) {
        __m512 t = _mm512_set1_ps(thr[r]);
        uint32_t m = (uint32_t)_mm512_cmp_ps_mask(acc[2 * r], t, _CMP_GT_OQ)
                   | (uint32_t)_mm512_cmp_ps_mask(acc[2 * r + 1], t, _CMP_GT_OQ) << 16;
        mask[r] = m;
        any |= m;
    }
    if (!any) return 0; /* the common case: nothing leaves the registers */
    for (int r = 0; r < MU; r++) {
        _mm512_storeu_ps(out[r], acc[2 * r]);
        _mm512_storeu_ps(out[r] + 16, acc[2 * r + 1]);
    }
    return 1;
}
#else
static inline int micro_kernel(const float *u, int64_t d, const float *panel, const float thr[MU],
                               uint32_t mask[MU], float out[MU][MI]) {
    float acc[MU][MI] = {{0}};
    for (int64_t p = 0; p < d; p++) {
        const float *b = panel + p * MI;
        for (int r = 0; r < MU; r++) {
            float a = u[r * d + p];
            for (int j = 0; j < MI; j++) acc[r][j] += a * b[j]; /* vectorised over j */
        }
    }
    uint32_t any = 0;
    for (int r = 0; r < MU; r++) {
        uint32_t m = 0;
        for (int j = 0; j < MI; j++) m |= (uint32_t)(acc[r][j] > thr[r]) << j;
        mask[r] = m;
        any |= m;
    }
    if (any) memcpy(out, acc, sizeof(acc));
    return any != 0;
}
#endif

/* ------------------------------------------------------------------ selection */

/*
 * A user's buffer always holds its candidates in ascending item order: they
 * are pushed in that order and compaction keeps the order. So among equal
 * scores the buffer order *is* the tie order, and selection only has to look
 * at scores.
 */

/* Moves the elements of a[lo..hi) above `pivot` (or equal to it, when `equal`) to the
   front; returns how many. Branch-free (swap always, advance on the comparison): its
   outcome is a coin flip, which a branch would mispredict half the time. */
static int64_t partition_front(float *a, int64_t lo, int64_t hi, float pivot, int equal) {
    int64_t j = lo;
    for (int64_t i = lo; i < hi; i++) {
        float x = a[i];
        a[i] = a[j];
        a[j] = x;
        j += equal ? x == pivot : x > pivot; /* `equal` is loop-invariant: no branch per element */
    }
    return j - lo;
}

static inline float median3(float a, float b, float c) {
    return fmaxf(fminf(a, b), fminf(fmaxf(a, b), c));
}

/* The k-th largest (k >= 1) of a[0..n), counting repeats; reorders a. Quickselect. */
static float kth_largest(float *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n; /* the answer is the (k - lo)-th largest of a[lo..hi) */
    while (hi - lo > 8) {
        float pivot = median3(a[lo], a[lo + (hi - lo) / 2], a[hi - 1]);
        int64_t above = partition_front(a, lo, hi, pivot, 0);
        if (k - lo <= above) {
            hi = lo + above;
            continue;
        }
        lo += above;
        int64_t equal = partition_front(a, lo, hi, pivot, 1); /* >= 1: the pivot is in the range */
        if (k - lo <= equal) return pivot;
        lo += equal;
    }
    for (int64_t i = lo + 1; i < hi; i++) { /* a few left: insertion sort, descending */
        float x = a[i];
        int64_t j = i;
        for (; j > lo && a[j - 1] < x; j--) a[j] = a[j - 1];
        a[j] = x;
    }
    return a[k - 1];
}

/*
 * Keeps the best k of the n > k candidates, in item order, and returns the
 * k-th best score: every score above it, then as many equal to it as fit,
 * lowest items first (the buffer is in item order).
 */
static float keep_best(Cand *buf, int64_t n, int64_t k, float *scratch) {
    for (int64_t i = 0; i < n; i++) scratch[i] = buf[i].score;
    float kth = kth_largest(scratch, n, k);
    int64_t above = 0;
    for (int64_t i = 0; i < n; i++) above += buf[i].score > kth;
    int64_t ties = k - above; /* >= 1 entries equal to kth still fit */
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        Cand c = buf[i];
        int tie = c.score == kth && ties > 0;
        ties -= tie;
        buf[m] = c;
        m += (c.score > kth) | tie;
    }
    return kth;
}

/* Final order: higher score first, then lower item index. */
static int by_rank(const void *a, const void *b) {
    const Cand *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->item > y->item) - (x->item < y->item);
}

/* Buffer full: keep the best k and raise the threshold to the k-th score. */
static void compact(UserTop *t, const Run *run) {
    t->threshold = keep_best(t->buf, t->n, run->k, run->scratch);
    t->n = run->k;
}

/* Whether `item` is excluded for this user; items arrive ascending, so the pointer only moves forward. */
static inline int excluded(UserTop *t, int64_t item) {
    while (t->ex < t->ex_end && *t->ex < item) t->ex++;
    return t->ex < t->ex_end && *t->ex == item;
}

/* A score that beat the threshold at the block's compare enters the user's buffer. */
static inline void push_survivor(UserTop *t, float score, int64_t item, const Run *run) {
    /* The threshold may have risen since the compare (a compaction earlier in this block);
       items past n_items are the zero padding of the last micro-panel. */
    if (!(score > t->threshold) || item >= run->n_items || excluded(t, item)) return;
    t->buf[t->n].score = score;
    t->buf[t->n].item = (int32_t)item;
    if (++t->n == run->cap) compact(t, run);
}

/* The user's final list, best first; padded with -1 / -inf below k eligible items. */
static void finalize(UserTop *t, const Run *run, int64_t *out_idx, float *out_score) {
    int64_t k = run->k;
    if (t->n > k) compact(t, run);
    int64_t n = t->n;
    qsort(t->buf, (size_t)n, sizeof(Cand), by_rank);
    for (int64_t j = 0; j < n; j++) {
        out_idx[j] = t->buf[j].item;
        out_score[j] = t->buf[j].score;
    }
    for (int64_t j = n; j < k; j++) {
        out_idx[j] = -1;
        out_score[j] = -INFINITY;
    }
}

/* ------------------------------------------------------------------ driver */

/*
 * Top-k of users [u0, u1) of `users` ([*, d] row-major) against `n_items`
 * packed items (`packed`: ceil(n_items / MI) micro-panels of [d][MI], zero
 * padded). `ex_indptr`/`ex_indices` (CSR over all users, indices sorted per
 * row; both NULL for none) remove items per user. Writes rows u0..u1-1 of
 * out_idx/out_score ([*, k]). `panel_items`: items per L2 panel. Returns 0,
 * -1 when memory runs out, -2 when n_items >= 2^31. Thread-safe: each call
 * owns its state.
 */
int rb_topk_range(const float *users, int64_t d, const float *packed, int64_t n_items,
                  const int64_t *ex_indptr, const int64_t *ex_indices, int64_t k, int64_t u0,
                  int64_t u1, int64_t panel_items, int64_t *out_idx, float *out_score) {
    int64_t n_users = u1 - u0;
    if (n_users <= 0) return 0;
    if (n_items >= INT32_MAX) return -2;
    int64_t n_groups = (n_users + MU - 1) / MU;
    int64_t n_rows = n_groups * MU; /* users rounded up to whole micro-blocks */
    int64_t n_panels = (n_items + MI - 1) / MI;
    int64_t panel_step = panel_items / MI > 0 ? panel_items / MI : 1;
    Run run = {.k = k, .cap = 4 * k > 64 ? 4 * k : 64, .n_items = n_items}; /* compaction every >= 3k pushes */

    /* A zero-padded copy of the users: the micro-kernel always reads MU rows. */
    float *u = calloc((size_t)(n_rows * d), sizeof(float));
    UserTop *tops = calloc((size_t)n_rows, sizeof(UserTop));
    Cand *bufs = malloc((size_t)(n_users * run.cap) * sizeof(Cand));
    run.scratch = malloc((size_t)run.cap * sizeof(float));
    if (!u || !tops || !bufs || !run.scratch) {
        free(u);
        free(tops);
        free(bufs);
        free(run.scratch);
        return -1;
    }
    memcpy(u, users + u0 * d, (size_t)(n_users * d) * sizeof(float));
    for (int64_t i = 0; i < n_rows; i++) {
        UserTop *t = &tops[i];
        if (i >= n_users) { /* padding row: nothing beats +inf, so it never collects anything */
            t->threshold = INFINITY;
            continue;
        }
        t->buf = bufs + i * run.cap;
        t->threshold = -INFINITY;
        if (ex_indptr) {
            t->ex = ex_indices + ex_indptr[u0 + i];
            t->ex_end = ex_indices + ex_indptr[u0 + i + 1];
        }
    }

    float scores[MU][MI];
    uint32_t mask[MU];
    float thr[MU];
    for (int64_t p0 = 0; p0 < n_panels; p0 += panel_step) {
        int64_t p1 = p0 + panel_step < n_panels ? p0 + panel_step : n_panels;
        for (int64_t g = 0; g < n_groups; g++) {
            UserTop *t = tops + g * MU;
            const float *ug = u + g * MU * d;
            for (int64_t p = p0; p < p1; p++) {
                for (int r = 0; r < MU; r++) thr[r] = t[r].threshold;
                if (!micro_kernel(ug, d, packed + p * d * MI, thr, mask, scores)) continue;
                for (int r = 0; r < MU; r++) {
                    for (uint32_t m = mask[r]; m; m &= m - 1) { /* ascending item order */
                        int j = __builtin_ctz(m);
                        push_survivor(&t[r], scores[r][j], p * MI + j, &run);
                    }
                }
            }
        }
    }

    for (int64_t i = 0; i < n_users; i++)
        finalize(&tops[i], &run, out_idx + (u0 + i) * k, out_score + (u0 + i) * k);
    free(u);
    free(tops);
    free(bufs);
    free(run.scratch);
    return 0;
}
