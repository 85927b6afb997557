// wgpu_api.cc — loading libwgpu_native.so (see wgpu_api.h).

#include "wgpu_api.h"

#include <dlfcn.h>
#include <tvm/ffi/error.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace edgesmith {
namespace wgpu {

void fail(const std::string& message) { throw tvm::ffi::Error("WebGPUError", message, ""); }

// The folder this plug-in was loaded from: the bundle's bin/, where the library ships.
static std::string own_dir() {
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&own_dir), &info) || !info.dli_fname) return "";
  std::string path = info.dli_fname;
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

static Api load() {
  std::vector<std::string> tries;
  if (const char* env = std::getenv("EDGESMITH_WGPU_LIBRARY")) {
    tries.push_back(env);
  } else {
    std::string dir = own_dir();
    if (!dir.empty()) tries.push_back(dir + "/libwgpu_native.so");
    tries.push_back("libwgpu_native.so");
  }
  void* handle = nullptr;
  std::string errors, path;
  for (const std::string& t : tries) {
    handle = dlopen(t.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) {
      path = t;
      break;
    }
    const char* e = dlerror();
    errors += (errors.empty() ? "" : "; ") + std::string(e ? e : t);
  }
  if (!handle)
    fail("no WebGPU library (wgpu-native): " + errors + "; the bundle ships bin/libwgpu_native.so, or point "
         "EDGESMITH_WGPU_LIBRARY at one (pip's `wgpu` package holds it in wgpu/resources)");
  Api a;
  a.path = path;
#define EDGESMITH_WGPU_LOAD(name)                                                                          \
  a.name = reinterpret_cast<decltype(a.name)>(dlsym(handle, #name));                                       \
  if (!a.name) fail("the WebGPU library " + path + " has no " #name " (not wgpu-native 29?); use the one the " \
                    "bundle ships");
  EDGESMITH_WGPU_FUNCTIONS(EDGESMITH_WGPU_LOAD)
#undef EDGESMITH_WGPU_LOAD
  return a;
}

const Api& api() {
  static std::mutex mu;
  static Api* loaded = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (!loaded) loaded = new Api(load());  // kept for the life of the process
  return *loaded;
}

}  // namespace wgpu
}  // namespace edgesmith
