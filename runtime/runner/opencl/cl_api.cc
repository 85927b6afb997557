// cl_api.cc — finding and loading the OpenCL library at run time; error names.

#include "cl_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include <tvm/ffi/error.h>

namespace edgesmith {
namespace ocl {

void fail(const std::string& message) { throw tvm::ffi::Error("OpenCLError", message, ""); }

// Where an OpenCL implementation lives: the Khronos ICD loader first (it dispatches to every
// installed driver, /etc/OpenCL/vendors/*.icd), then libraries that export the API themselves
// (ARM's libmali on boards without a loader; Qualcomm Linux and Android vendor paths, which only
// a bionic process can load, listed so the error names them).
static const char* kCandidates[] = {
    "libOpenCL.so.1", "libOpenCL.so", "libmali.so.1", "libmali.so",
    "/usr/lib/libOpenCL.so", "/vendor/lib64/libOpenCL.so", "/system/vendor/lib64/libOpenCL.so",
};

static Api g_api;
static std::string g_library;

static void load_symbols(void* handle, const std::string& path) {
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(handle, name));
    if (!fn) fail("the OpenCL library " + path + " has no " + name + " (not an OpenCL 1.2 library?); point "
                  "EDGESMITH_OPENCL_LIBRARY at the GPU driver's libOpenCL.so");
  };
#define EDGESMITH_CL_SYM(name) sym(g_api.name, #name)
  EDGESMITH_CL_SYM(clGetPlatformIDs);
  EDGESMITH_CL_SYM(clGetPlatformInfo);
  EDGESMITH_CL_SYM(clGetDeviceIDs);
  EDGESMITH_CL_SYM(clGetDeviceInfo);
  EDGESMITH_CL_SYM(clCreateContext);
  EDGESMITH_CL_SYM(clCreateCommandQueue);
  EDGESMITH_CL_SYM(clCreateBuffer);
  EDGESMITH_CL_SYM(clReleaseMemObject);
  EDGESMITH_CL_SYM(clEnqueueReadBuffer);
  EDGESMITH_CL_SYM(clEnqueueWriteBuffer);
  EDGESMITH_CL_SYM(clEnqueueCopyBuffer);
  EDGESMITH_CL_SYM(clFinish);
  EDGESMITH_CL_SYM(clCreateProgramWithSource);
  EDGESMITH_CL_SYM(clCreateProgramWithBinary);
  EDGESMITH_CL_SYM(clBuildProgram);
  EDGESMITH_CL_SYM(clGetProgramBuildInfo);
  EDGESMITH_CL_SYM(clGetProgramInfo);
  EDGESMITH_CL_SYM(clReleaseProgram);
  EDGESMITH_CL_SYM(clCreateKernel);
  EDGESMITH_CL_SYM(clReleaseKernel);
  EDGESMITH_CL_SYM(clSetKernelArg);
  EDGESMITH_CL_SYM(clGetKernelWorkGroupInfo);
  EDGESMITH_CL_SYM(clEnqueueNDRangeKernel);
#undef EDGESMITH_CL_SYM
}

const Api& api() {
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    std::vector<std::string> paths;
    const char* env = getenv("EDGESMITH_OPENCL_LIBRARY");
    if (env && *env) paths.push_back(env);
    else paths.assign(std::begin(kCandidates), std::end(kCandidates));
    std::string first_error;
    for (const auto& path : paths) {
      // RTLD_LOCAL: the driver's symbols stay out of the TVM runtime's way.
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!handle) {
        if (first_error.empty()) first_error = dlerror();
        continue;
      }
      try {
        load_symbols(handle, path);
      } catch (const tvm::ffi::Error& err) {
        error = err.message();
        return;
      }
      g_library = path;
      return;
    }
    if (env && *env) {
      error = "cannot load the OpenCL library EDGESMITH_OPENCL_LIBRARY=" + std::string(env) + " (" + first_error +
              "); point it at the GPU driver's libOpenCL.so or unset it";
    } else {
      error = "no OpenCL library on this machine (tried libOpenCL.so.1, libOpenCL.so, libmali.so and the "
              "Android vendor paths; first error: " + first_error + "); install the GPU's OpenCL driver and "
              "the ICD loader (Debian: ocl-icd-libopencl1), or set EDGESMITH_OPENCL_LIBRARY to the driver's "
              "libOpenCL.so";
    }
  });
  if (!error.empty()) fail(error);
  return g_api;
}

const std::string& api_library() { return g_library; }

std::string error_name(cl_int code) {
  static const std::pair<cl_int, const char*> names[] = {
      {CL_SUCCESS, "CL_SUCCESS"},
      {CL_DEVICE_NOT_FOUND, "CL_DEVICE_NOT_FOUND"},
      {CL_DEVICE_NOT_AVAILABLE, "CL_DEVICE_NOT_AVAILABLE"},
      {CL_COMPILER_NOT_AVAILABLE, "CL_COMPILER_NOT_AVAILABLE"},
      {CL_MEM_OBJECT_ALLOCATION_FAILURE, "CL_MEM_OBJECT_ALLOCATION_FAILURE"},
      {CL_OUT_OF_RESOURCES, "CL_OUT_OF_RESOURCES"},
      {CL_OUT_OF_HOST_MEMORY, "CL_OUT_OF_HOST_MEMORY"},
      {CL_BUILD_PROGRAM_FAILURE, "CL_BUILD_PROGRAM_FAILURE"},
      {CL_INVALID_VALUE, "CL_INVALID_VALUE"},
      {CL_INVALID_DEVICE, "CL_INVALID_DEVICE"},
      {CL_INVALID_BINARY, "CL_INVALID_BINARY"},
      {CL_INVALID_KERNEL_NAME, "CL_INVALID_KERNEL_NAME"},
      {CL_INVALID_KERNEL_ARGS, "CL_INVALID_KERNEL_ARGS"},
      {CL_INVALID_WORK_GROUP_SIZE, "CL_INVALID_WORK_GROUP_SIZE"},
      {CL_INVALID_WORK_ITEM_SIZE, "CL_INVALID_WORK_ITEM_SIZE"},
      {CL_INVALID_BUFFER_SIZE, "CL_INVALID_BUFFER_SIZE"},
      {CL_INVALID_GLOBAL_WORK_SIZE, "CL_INVALID_GLOBAL_WORK_SIZE"},
      {CL_PLATFORM_NOT_FOUND_KHR, "CL_PLATFORM_NOT_FOUND_KHR"},
  };
  for (const auto& [value, name] : names)
    if (value == code) return std::string(name) + " (" + std::to_string(code) + ")";
  return "OpenCL error " + std::to_string(code);
}

}  // namespace ocl
}  // namespace edgesmith
