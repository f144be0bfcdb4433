// A gtest environment for the engine's GPU test binaries: where this build
// has no CUDA or no GPU is usable, every test is skipped with the reason.
#include <string>

#include "gtest/gtest.h"
#include "kvstore/gpu/engine_gpu.h"

namespace wavekv {
namespace {

class GpuEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (!EngineBuiltWithCuda()) {
      GTEST_SKIP() << "GPU backend tests: built without CUDA (--config=cuda)";
    }
    absl::StatusOr<int> device = ResolveGpuDevice(0);
    if (!device.ok()) {
      GTEST_SKIP() << "GPU backend tests: no usable GPU: " << device.status();
    }
  }
};

const ::testing::Environment* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new GpuEnvironment);

}  // namespace
}  // namespace wavekv
