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
static void q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = f16_to_f32(b + 208);
    for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = (int)((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = (int)((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[is + 0] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
    }
}

typedef void (*block_fn)(const uint8_t *, float *);

/* Dequantize `nblocks` consecutive blocks of ggml type `type` from `src` into `dst`.
 * Returns 0, or -1 for a type this file does not handle. */
int lb_dequantize(int type, const uint8_t *src, float *dst, int64_t nblocks) {
    block_fn fn;
    int64_t size, count;
    switch (type) {
        case 2: fn = q4_0; size = 18; count = 32; break;
        case 3: fn = q4_1; size = 20; count = 32; break;
        case 6: fn = q5_0; size = 22; count = 32; break;
        case 7: fn = q5_1; size = 24; count = 32; break;
        case 8: fn = q8_0; size = 34; count = 32; break;
        case 12: fn = q4_k; size = 144; count = 256; break;
        case 14: fn = q6_k; size = 210; count = 256; break;
        default: return -1;
    }
    for (int64_t i = 0; i < nblocks; i++) fn(src + i * size, dst + i * count);
    return 0;
}
