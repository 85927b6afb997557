// programs.h — building a kernel's OpenCL C program for the device, and keeping the built binary
// on the device's disk so the next start of the runner skips the compile.
//
// Cache: one file per (kernel source, device) in
//   $EDGESMITH_OPENCL_CACHE (off: no cache) | $XDG_CACHE_HOME/edgesmith/opencl | ~/.cache/edgesmith/opencl
// named <fnv64(source)>-<fnv64(device identity)>.bin. The file repeats what it was built from
// (device identity: platform, device, driver versions; the source's length and hash), checked on
// load; a binary the driver refuses is rebuilt from source and replaced. Written to a temporary
// name and renamed, so a crash never leaves half a binary under its final name.

#ifndef EDGESMITH_OPENCL_PROGRAMS_H_
#define EDGESMITH_OPENCL_PROGRAMS_H_

#include <string>

#include "context.h"

namespace edgesmith {
namespace ocl {

struct ProgramStats {
  int built = 0;           // compiled from source
  int from_cache = 0;      // created from a cached binary
  int cache_writes = 0;
  int cache_rejected = 0;  // cached binaries that did not match or that the driver refused
  double build_s = 0;      // time in clBuildProgram (both kinds)
  std::string cache_dir;   // "" when off
  std::string json() const;
};

ProgramStats& program_stats();

// The built program for `source` (one kernel's OpenCL C, named `kernel` in errors). Throws
// OpenCLError with the device compiler's log when it does not build.
cl_program build_program(Context& ctx, const std::string& kernel, const std::string& source);

}  // namespace ocl
}  // namespace edgesmith

#endif  // EDGESMITH_OPENCL_PROGRAMS_H_
