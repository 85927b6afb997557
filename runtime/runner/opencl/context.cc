// context.cc — choosing the device, creating its context and queue, counting its memory.

#include "context.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace edgesmith {
namespace ocl {

// ---------------------------------------------------------------------------- device facts

static std::string platform_string(cl_platform_id p, cl_platform_info what) {
  size_t n = 0;
  if (api().clGetPlatformInfo(p, what, 0, nullptr, &n) != CL_SUCCESS || n == 0) return "";
  std::string s(n, '\0');
  api().clGetPlatformInfo(p, what, n, &s[0], nullptr);
  while (!s.empty() && (s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

static std::string device_string(cl_device_id d, cl_device_info what) {
  size_t n = 0;
  if (api().clGetDeviceInfo(d, what, 0, nullptr, &n) != CL_SUCCESS || n == 0) return "";
  std::string s(n, '\0');
  api().clGetDeviceInfo(d, what, n, &s[0], nullptr);
  while (!s.empty() && (s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

template <typename T>
static T device_value(cl_device_id d, cl_device_info what) {
  T v{};
  api().clGetDeviceInfo(d, what, sizeof(T), &v, nullptr);
  return v;
}

static DeviceFacts read_facts(cl_platform_id p, cl_device_id d) {
  DeviceFacts f;
  f.platform = platform_string(p, CL_PLATFORM_NAME);
  f.platform_version = platform_string(p, CL_PLATFORM_VERSION);
  f.name = device_string(d, CL_DEVICE_NAME);
  f.vendor = device_string(d, CL_DEVICE_VENDOR);
  f.version = device_string(d, CL_DEVICE_VERSION);
  f.driver = device_string(d, CL_DRIVER_VERSION);
  f.opencl_c = device_string(d, CL_DEVICE_OPENCL_C_VERSION);
  f.extensions = device_string(d, CL_DEVICE_EXTENSIONS);
  f.type = device_value<cl_device_type>(d, CL_DEVICE_TYPE);
  f.vendor_id = device_value<cl_uint>(d, CL_DEVICE_VENDOR_ID);
  f.compute_units = device_value<cl_uint>(d, CL_DEVICE_MAX_COMPUTE_UNITS);
  f.max_clock_mhz = device_value<cl_uint>(d, CL_DEVICE_MAX_CLOCK_FREQUENCY);
  f.max_work_group = device_value<size_t>(d, CL_DEVICE_MAX_WORK_GROUP_SIZE);
  cl_uint dims = device_value<cl_uint>(d, CL_DEVICE_MAX_WORK_ITEM_DIMENSIONS);
  f.max_item_sizes.assign(dims, 0);
  if (dims) api().clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_ITEM_SIZES, dims * sizeof(size_t), f.max_item_sizes.data(), nullptr);
  f.global_mem = device_value<cl_ulong>(d, CL_DEVICE_GLOBAL_MEM_SIZE);
  f.max_alloc = device_value<cl_ulong>(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE);
  f.local_mem = device_value<cl_ulong>(d, CL_DEVICE_LOCAL_MEM_SIZE);
  f.cache_bytes = device_value<cl_ulong>(d, CL_DEVICE_GLOBAL_MEM_CACHE_SIZE);
  std::istringstream ext(f.extensions);
  for (std::string e; ext >> e;) f.fp16 |= e == "cl_khr_fp16";
  return f;
}

const char* DeviceFacts::type_name() const {
  if (type & CL_DEVICE_TYPE_GPU) return "gpu";
  if (type & CL_DEVICE_TYPE_ACCELERATOR) return "accelerator";
  if (type & CL_DEVICE_TYPE_CPU) return "cpu";
  return "other";
}

std::string DeviceFacts::identity() const {
  return platform + "\n" + platform_version + "\n" + name + "\n" + version + "\n" + driver + "\n" +
         std::to_string(vendor_id);
}

static std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) out += ' ';
    else out += c;
  }
  return out + "\"";
}

std::string DeviceFacts::json() const {
  std::ostringstream o;
  o << "{\"platform\": " << json_str(platform) << ", \"device\": " << json_str(name) << ", \"type\": \""
    << type_name() << "\", \"vendor\": " << json_str(vendor) << ", \"version\": " << json_str(version)
    << ", \"driver\": " << json_str(driver) << ", \"opencl_c\": " << json_str(opencl_c)
    << ", \"fp16\": " << (fp16 ? "true" : "false") << ", \"compute_units\": " << compute_units
    << ", \"max_clock_mhz\": " << max_clock_mhz << ", \"max_work_group_size\": " << max_work_group
    << ", \"global_mem_bytes\": " << global_mem << ", \"max_alloc_bytes\": " << max_alloc
    << ", \"local_mem_bytes\": " << local_mem << ", \"library\": " << json_str(api_library()) << "}";
  return o.str();
}

// ---------------------------------------------------------------------------- choosing the device

namespace {
struct Candidate {
  cl_platform_id platform;
  cl_device_id device;
  size_t platform_index, device_index;
  DeviceFacts facts;
};
}  // namespace

static std::vector<Candidate> list_devices() {
  const Api& cl = api();
  cl_uint n = 0;
  cl_int err = cl.clGetPlatformIDs(0, nullptr, &n);
  if (err == CL_PLATFORM_NOT_FOUND_KHR || (err == CL_SUCCESS && n == 0)) {
    const char* vendors = getenv("OCL_ICD_VENDORS");
    fail(std::string("no OpenCL platform: ") + api_library() + " found no OpenCL driver (ICD files in " +
         (vendors ? std::string("OCL_ICD_VENDORS=") + vendors : std::string("/etc/OpenCL/vendors")) +
         "); install the GPU's OpenCL driver (NVIDIA: the driver's OpenCL part, nvidia.icd; Mali/Adreno: "
         "the board vendor's libmali or libOpenCL) or PoCL for the CPU");
  }
  if (err != CL_SUCCESS) fail("listing OpenCL platforms failed: " + error_name(err));
  std::vector<cl_platform_id> platforms(n);
  cl.clGetPlatformIDs(n, platforms.data(), nullptr);
  std::vector<Candidate> out;
  std::string empty;
  for (size_t p = 0; p < platforms.size(); ++p) {
    cl_uint nd = 0;
    err = cl.clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, nullptr, &nd);
    if (err == CL_DEVICE_NOT_FOUND || nd == 0) {
      empty += (empty.empty() ? "'" : ", '") + platform_string(platforms[p], CL_PLATFORM_NAME) + "'";
      continue;
    }
    if (err != CL_SUCCESS) fail("listing the devices of OpenCL platform " + std::to_string(p) + " failed: " + error_name(err));
    std::vector<cl_device_id> devices(nd);
    cl.clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, nd, devices.data(), nullptr);
    for (size_t d = 0; d < devices.size(); ++d)
      out.push_back({platforms[p], devices[d], p, d, read_facts(platforms[p], devices[d])});
  }
  if (out.empty())
    fail("no OpenCL device: platform " + empty + " reports none (a driver without its GPU, or a GPU this "
         "process may not use: check the device nodes' permissions and clinfo -l)");
  return out;
}

static std::string describe(const std::vector<Candidate>& all) {
  std::string s;
  for (const auto& c : all)
    s += (s.empty() ? "" : ", ") + std::to_string(c.platform_index) + ":" + std::to_string(c.device_index) + " '" +
         c.facts.name + "' (" + c.facts.type_name() + ", " + c.facts.platform + ")";
  return s;
}

static const Candidate& choose(const std::vector<Candidate>& all) {
  const char* env = getenv("EDGESMITH_OPENCL_DEVICE");
  std::string want = env ? env : "";
  auto first = [&](cl_device_type t) -> const Candidate* {
    for (const auto& c : all)
      if (c.facts.type & t) return &c;
    return nullptr;
  };
  if (want.empty() || want == "auto") {
    if (auto c = first(CL_DEVICE_TYPE_GPU)) return *c;
    if (auto c = first(CL_DEVICE_TYPE_ACCELERATOR)) return *c;
    return all.front();
  }
  if (want == "gpu" || want == "cpu") {
    if (auto c = first(want == "gpu" ? CL_DEVICE_TYPE_GPU : CL_DEVICE_TYPE_CPU)) return *c;
    fail("no " + std::string(want == "gpu" ? "GPU" : "CPU") + " OpenCL device (EDGESMITH_OPENCL_DEVICE=" + want +
         "); this machine offers " + describe(all) + (want == "gpu" ? "; install the GPU's OpenCL driver, or unset "
         "EDGESMITH_OPENCL_DEVICE to run on what is there" : ""));
  }
  size_t colon = want.find(':');
  char* end = nullptr;
  if (colon != std::string::npos) {
    unsigned long p = strtoul(want.c_str(), &end, 10), d = strtoul(want.c_str() + colon + 1, &end, 10);
    for (const auto& c : all)
      if (c.platform_index == p && c.device_index == d) return c;
  }
  fail("EDGESMITH_OPENCL_DEVICE='" + want + "' names no device; use auto, gpu, cpu or P:D from: " + describe(all));
}

// ---------------------------------------------------------------------------- the context

static Context* g_context = nullptr;
static std::mutex g_init_mu;

Context& Context::get() {
  if (g_context) return *g_context;
  std::lock_guard<std::mutex> lock(g_init_mu);
  if (!g_context) {
    Context* c = new Context();  // lives for the process: buffers are freed through it at exit
    try {
      c->init();
    } catch (...) {
      delete c;
      throw;
    }
    g_context = c;
  }
  return *g_context;
}

bool Context::ready() { return g_context != nullptr; }

void Context::init() {
  std::vector<Candidate> all = list_devices();
  const Candidate& c = choose(all);
  const Api& cl = api();
  device = c.device;
  facts = c.facts;
  cl_int err = CL_SUCCESS;
  context = cl.clCreateContext(nullptr, 1, &device, nullptr, nullptr, &err);
  if (err != CL_SUCCESS) fail("creating an OpenCL context on '" + facts.name + "' failed: " + error_name(err));
  queue = cl.clCreateCommandQueue(context, device, 0, &err);  // in order: kernels and copies run as queued
  if (err != CL_SUCCESS) fail("creating an OpenCL command queue on '" + facts.name + "' failed: " + error_name(err));
}

static std::string mib(double bytes) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.1f MiB", bytes / (1 << 20));
  return buf;
}

std::string Context::out_of_memory(const std::string& what, size_t more) const {
  return "out of device memory on '" + facts.name + "' " + what + ": " + mib(more) + " more on top of " +
         mib(allocated_) + " in use, the device has " + mib(facts.global_mem) + " (largest single buffer " +
         mib(facts.max_alloc) + "); use a smaller model or quantization, a shorter --context, or a device "
         "with more memory";
}

cl_mem Context::alloc(size_t nbytes) {
  size_t n = nbytes ? nbytes : 1;
  std::lock_guard<std::mutex> lock(mu_);
  // Checked here against what the device reports: drivers that allocate lazily would otherwise
  // fail later, inside some kernel launch.
  if (n > facts.max_alloc) fail(out_of_memory("(one buffer larger than CL_DEVICE_MAX_MEM_ALLOC_SIZE)", n));
  if (allocated_ + n > facts.global_mem) fail(out_of_memory("(CL_DEVICE_GLOBAL_MEM_SIZE reached)", n));
  cl_int err = CL_SUCCESS;
  cl_mem buffer = api().clCreateBuffer(context, CL_MEM_READ_WRITE, n, nullptr, &err);
  if (err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_RESOURCES || err == CL_OUT_OF_HOST_MEMORY ||
      err == CL_INVALID_BUFFER_SIZE)
    fail(out_of_memory("(clCreateBuffer: " + error_name(err) + ")", n));
  if (err != CL_SUCCESS) fail("allocating " + mib(n) + " on '" + facts.name + "' failed: " + error_name(err));
  sizes_[buffer] = n;
  allocated_ += n;
  return buffer;
}

void Context::release(cl_mem buffer) {
  if (!buffer) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sizes_.find(buffer);
  if (it != sizes_.end()) allocated_ -= it->second, sizes_.erase(it);
  api().clReleaseMemObject(buffer);
}

void Context::check(cl_int err, const std::string& what) const {
  if (err == CL_SUCCESS) return;
  if (err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_HOST_MEMORY)
    fail(out_of_memory("(" + what + ": " + error_name(err) + ")", 0));
  // CL_OUT_OF_RESOURCES is also how some drivers report a kernel that faulted
  std::string why = err == CL_OUT_OF_RESOURCES ? ": the device ran out of memory or resources, or a kernel faulted" : "";
  fail(what + " on '" + facts.name + "' failed: " + error_name(err) + why);
}

}  // namespace ocl
}  // namespace edgesmith
