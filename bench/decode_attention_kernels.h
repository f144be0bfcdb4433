// Small device helpers of bench/decode_attention.cc: random fills (never
// time on zeros) and the decode-query random walk. Return a cudaError_t
// value (0 = ok).
#ifndef WAVEKV_BENCH_DECODE_ATTENTION_KERNELS_H_
#define WAVEKV_BENCH_DECODE_ATTENTION_KERNELS_H_

#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace wavekv::bench {

// `count` fp16 values N(0, sd^2) at `dst` (device or mapped host).
int FillNormalHalf(void* dst, size_t count, float sd, uint64_t seed,
                   cudaStream_t stream);
// `count` fp32 values N(mean, sd^2).
int FillNormalFloat(float* dst, size_t count, float mean, float sd,
                    uint64_t seed, cudaStream_t stream);

// Random walk of decode queries: each of the `num_heads` rows of `q`
// ([num_heads][head_dim] fp32) moves by a Gaussian step of norm
// `step` * |q| (direction uniform) and is rescaled to its old norm, so the
// angle between consecutive queries is about `step` radians. Seeded by
// (seed, counter): a new counter gives a new step.
int QueryWalk(float* q, int num_heads, int head_dim, float step, uint64_t seed,
              uint64_t counter, cudaStream_t stream);

}  // namespace wavekv::bench

#endif  // WAVEKV_BENCH_DECODE_ATTENTION_KERNELS_H_
