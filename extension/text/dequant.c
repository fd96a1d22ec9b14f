/* GGML block formats -> float32, one pass per block (lora-bridge, extension/text/native.py).
 *
 * Same values as quant.py's torch code and llama.cpp's reference dequantization: every product
 * is rounded on its own (the build passes -ffp-contract=off, so no fused multiply-add).
 * Type numbers are ggml's (GGMLQuantizationType).
 */
#include <stdint.h>
#include <string.h>

static float f16_to_f32(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal half: normalise into a float exponent */
            int shift = 0;
            while (!(mant & 0x400u)) { mant <<= 1; shift++; }
            bits = sign | ((uint32_t)(113 - shift) << 23) | ((mant & 0x3FFu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void q4_0(const uint8_t *b, float *y) {
    const float d = f16_to_f32(b);
    int8_t v[32];
    for (int j = 0; j < 16; j++) v[j] = (int8_t)((b[2 + j] & 0x0F) - 8);
    for (int j = 0; j < 16; j++) v[16 + j] = (int8_t)((b[2 + j] >> 4) - 8);
    for (int j = 0; j < 32; j++) y[j] = (float)v[j] * d;
}

static void q4_1(const uint8_t *b, float *y) {
    const float d = f16_to_f32(b), m = f16_to_f32(b + 2);
    uint8_t v[32];
    for (int j = 0; j < 16; j++) v[j] = b[4 + j] & 0x0F;
    for (int j = 0; j < 16; j++) v[16 + j] = b[4 + j] >> 4;
    for (int j = 0; j < 32; j++) y[j] = d * (float)v[j] + m;
}

static uint32_t u32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void q5_0(const uint8_t *b, float *y) {
    const float d = f16_to_f32(b);
    const uint32_t qh = u32le(b + 2);
    int8_t v[32];
    for (int j = 0; j < 16; j++) {
        v[j] = (int8_t)(((b[6 + j] & 0x0F) | (((qh >> j) & 1u) << 4)) - 16);
        v[16 + j] = (int8_t)(((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - 16);
    }
    for (int j = 0; j < 32; j++) y[j] = d * (float)v[j];
}

static void q5_1(const uint8_t *b, float *y) {
    const float d = f16_to_f32(b), m = f16_to_f32(b + 2);
    const uint32_t qh = u32le(b + 4);
    uint8_t v[32];
    for (int j = 0; j < 16; j++) {
        v[j] = (uint8_t)((b[8 + j] & 0x0F) | (((qh >> j) & 1u) << 4));
        v[16 + j] = (uint8_t)((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
    }
    for (int j = 0; j < 32; j++) y[j] = d * (float)v[j] + m;
}

static void q8_0(const uint8_t *b, float *y) {
    const float d = f16_to_f32(b);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
}

/* Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes. */
static void scale_min_k4(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

static void q4_k(const uint8_t *b, float *y) {
    const float d = f16_to_f32(b), dmin = f16_to_f32(b + 2);
    const uint8_t *scales = b + 4, *q = b + 16;
    for (int chunk = 0; chunk < 4; chunk++, q += 32, y += 64) {
        uint8_t sc, mn;
        scale_min_k4(2 * chunk, scales, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        scale_min_k4(2 * chunk + 1, scales, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) y[l] = d1 * (float)(q[l] & 0x0F) - m1;
        for (int l = 0; l < 32; l++) y[32 + l] = d2 * (float)(q[l] >> 4) - m2;
    }
}

/* Q6_K: 4 low bits in ql, 2 high bits in qh, a signed 8-bit scale per 16 values. */
/* 32 consecutive outputs: the nibble at `shift` of lo[l] and the 2 bits at `hs` of qh[l], 16 per scale.
 * Contiguous outputs with the scale d * sc computed once (the same rounding as d * sc * q, left to
 * right, in the torch code) let the compiler vectorize the loops: 2-2.5x the throughput of one
 * value of each quarter per iteration (measured with 8B shapes, one thread). */
static inline void q6_k_quarter(const uint8_t *lo, const uint8_t *qh, int shift, int hs, float s0, float s1,
                                float *y) {
    for (int l = 0; l < 16; l++) y[l] = s0 * (float)((int)(((lo[l] >> shift) & 0x0F) | (((qh[l] >> hs) & 3) << 4)) - 32);
    for (int l = 16; l < 32; l++) y[l] = s1 * (float)((int)(((lo[l] >> shift) & 0x0F) | (((qh[l] >> hs) & 3) << 4)) - 32);
}

static void q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = f16_to_f32(b + 208);
    for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
        q6_k_quarter(ql, qh, 0, 0, d * (float)sc[0], d * (float)sc[1], y);
        q6_k_quarter(ql + 32, qh, 0, 2, d * (float)sc[2], d * (float)sc[3], y + 32);
        q6_k_quarter(ql, qh, 4, 4, d * (float)sc[4], d * (float)sc[5], y + 64);
        q6_k_quarter(ql + 32, qh, 4, 6, d * (float)sc[6], d * (float)sc[7], y + 96);
    }
}

/* One loop per type, so the block body is inlined into it. */
#define BLOCK_LOOP(name, body_fn, size, count)                                   \
    static void name(const uint8_t *src, float *dst, int64_t nblocks) {          \
        for (int64_t i = 0; i < nblocks; i++) body_fn(src + i * (size), dst + i * (count)); \
    }
BLOCK_LOOP(q4_0_loop, q4_0, 18, 32)
BLOCK_LOOP(q4_1_loop, q4_1, 20, 32)
BLOCK_LOOP(q5_0_loop, q5_0, 22, 32)
BLOCK_LOOP(q5_1_loop, q5_1, 24, 32)
BLOCK_LOOP(q8_0_loop, q8_0, 34, 32)
BLOCK_LOOP(q4_k_loop, q4_k, 144, 256)
BLOCK_LOOP(q6_k_loop, q6_k, 210, 256)

typedef void (*loop_fn)(const uint8_t *, float *, int64_t);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* AVX2 versions of the two most common legacy types, chosen at run time (the library itself is
 * built for the baseline CPU). Same arithmetic: exact int8 -> float conversion, one multiply. */
#include <immintrin.h>
#define LB_HAVE_AVX2_PATH 1

__attribute__((target("avx2"))) static void q4_0_avx2(const uint8_t *src, float *dst, int64_t nblocks) {
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int64_t i = 0; i < nblocks; i++) {
        const uint8_t *b = src + i * 18;
        float *y = dst + i * 32;
        const __m256 d = _mm256_set1_ps(f16_to_f32(b));
        const __m128i q = _mm_loadu_si128((const __m128i *)(b + 2));
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, mask), eight);
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), mask), eight);
        _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d));
        _mm256_storeu_ps(y + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), d));
        _mm256_storeu_ps(y + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d));
        _mm256_storeu_ps(y + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), d));
    }
}

__attribute__((target("avx2"))) static void q8_0_avx2(const uint8_t *src, float *dst, int64_t nblocks) {
    for (int64_t i = 0; i < nblocks; i++) {
        const uint8_t *b = src + i * 34;
        float *y = dst + i * 32;
        const __m256 d = _mm256_set1_ps(f16_to_f32(b));
        for (int j = 0; j < 32; j += 8) {
            const __m128i q = _mm_loadl_epi64((const __m128i *)(b + 2 + j));
            _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
    }
}

static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#endif

/* Dequantize `nblocks` consecutive blocks of ggml type `type` from `src` into `dst`.
 * Returns 0, or -1 for a type this file does not handle. `portable` = 1 skips the SIMD paths. */
int lb_dequantize(int type, const uint8_t *src, float *dst, int64_t nblocks, int portable) {
    loop_fn fn;
    switch (type) {
        case 2: fn = q4_0_loop; break;
        case 3: fn = q4_1_loop; break;
        case 6: fn = q5_0_loop; break;
        case 7: fn = q5_1_loop; break;
        case 8: fn = q8_0_loop; break;
        case 12: fn = q4_k_loop; break;
        case 14: fn = q6_k_loop; break;
        default: return -1;
    }
#ifdef LB_HAVE_AVX2_PATH
    if (!portable && has_avx2()) {
        if (type == 2) fn = q4_0_avx2;
        if (type == 8) fn = q8_0_avx2;
    }
#endif
    fn(src, dst, nblocks);
    return 0;
}
