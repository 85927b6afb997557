// pipelines.h — what the module loader built: compute pipelines and the time it took (the
// runner's {"webgpu": ...} line).

#ifndef EDGESMITH_WEBGPU_PIPELINES_H_
#define EDGESMITH_WEBGPU_PIPELINES_H_

#include <cstdint>
#include <string>

namespace edgesmith {
namespace wgpu {

struct PipelineStats {
  int64_t built = 0;     // shader module + compute pipeline, on a kernel's first call
  double seconds = 0;    // spent building them
  std::string json() const;
};

PipelineStats& pipeline_stats();

}  // namespace wgpu
}  // namespace edgesmith

#endif  // EDGESMITH_WEBGPU_PIPELINES_H_
