// Fork-join helper for the index's CPU work (clustering segments, assigning
// token chunks). Internal to index/.
//
// Thread-safe: ParallelFor may be called from several threads at once; each
// call uses its own threads.
#ifndef WAVEKV_INDEX_PARALLEL_H_
#define WAVEKV_INDEX_PARALLEL_H_

#include <cstddef>

#include "absl/functional/function_ref.h"

namespace wavekv {

// Runs fn(0) .. fn(num_tasks - 1), each exactly once, on up to `num_threads`
// threads (the calling thread included), and returns when all are done.
// Tasks are handed out dynamically, so results are deterministic as long as
// each task writes only its own outputs. num_threads <= 1 runs inline.
void ParallelFor(size_t num_tasks, int num_threads,
                 absl::FunctionRef<void(size_t)> fn);

}  // namespace wavekv

#endif  // WAVEKV_INDEX_PARALLEL_H_
