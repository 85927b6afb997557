// runner.cc — runs an edgesmith bundle on the device, with no Python there.
//
//   runner generate BUNDLE --tokens 1,2,3 -n 32 [--temperature T] [--top-p P] [--seed S]
//                          [--stop-ids a,b] [--stream] [common options]
//   runner generate BUNDLE --interactive -n 32 [...]   a conversation on one KV cache: each
//                          stdin line is a turn of token ids (section "interactive")
//   runner bench    BUNDLE -p 128 -n 128 [--warmup 1] [-r 5] [common options]
//   runner version
//   common options: [--lib-dir DIR] [--threads N] [--no-verify] [--context N]
//   (--context N: the KV cache holds N tokens, at most what the bundle was compiled for)
//
//   profiling (section "profiling" at the end; edgesmith profile drives them):
//   runner profile BUNDLE -p 128 -n 128 [--warmup 1] [-r 3] [--max-reps 10] [--target-rsd 0.03]
//                         [--cool-below C] [--cool-timeout S] [--cool-poll S] [--sysroot DIR]
//   runner kernels BUNDLE -p 128 -n 32 [--warmup 1]     time of every kernel call
//   runner logits  BUNDLE --tokens 1,2,3 [--prefill K]   teacher-forced logits (base64 float32):
//                                                        the first K tokens (default 1) prefilled
//                                                        at once, then one decode per token
//   runner membw   BUNDLE [--mb 256] [-r 5]              memory read bandwidth (BUNDLE unused)
//   runner kernelbench BUNDLE --fn LABEL[/FUNC]=f32:1x1x3072,u32:9216x384,i32:2@0/64,int@1,... [--fn ...]
//                  [--warmup 2] [-r 7]
//                  [--min-time 0.02] [--cool-below C] [--cool-timeout S] [--cool-poll S] [--sysroot DIR]
//                                                        candidate kernels of BUNDLE/lib/kernels.so
//                                                        timed alone (edgesmith tune)
//   their common options: [--context N] (KV cache sized for N tokens) and the ones above
//
// Output: one JSON object per line on stdout. Errors: one line on stderr, exit code 1.
//
// It uses only the tvm_ffi C++ API (linked: libtvm_ffi.so), dlopen()s libtvm_runtime.so
// (which registers the Relax VM and the vm.builtin.* globals) from next to the runner, and
// calls the runtime by global-function name. Both libraries sit next to the runner, found
// through RUNPATH $ORIGIN, so BUNDLE/bin is self-contained.
//
// GPU bundles (manifest "device"): the runner also dlopen()s the device runtime the manifest
// names (libtvm_runtime_cuda.so, libtvm_runtime_metal.dylib, our libedgesmith_opencl.so or
// libedgesmith_webgpu.so), runs the VM on that device with the CPU as host, and copies token ids
// in and logits out. CUDA kernels ship as source; the runner compiles them with nvcc when the
// library loads (section "device"). OpenCL bundles end with one {"opencl": ...} line (the device
// and its program cache), WebGPU (Vulkan) bundles with one {"webgpu": ...} line (the adapter,
// pipelines built, dispatches).
//
// Sections: utilities · sha256 · manifest and checks · model (VM, params) · KV cache ·
//           sampler · generate · interactive · bench · profiling (sensors, profile, kernels, logits,
//           membw) · CLI

#include <dirent.h>
#include <dlfcn.h>
#include <sys/resource.h>
#include <unistd.h>
#if defined(__APPLE__)
#include <mach-o/dyld.h>
#else
#include <sched.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "membw.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

namespace ffi = tvm::ffi;

#ifndef EDGESMITH_TVM_VERSION  // set by targets/runner_build.py from the runtime wheel's version
#error "build with -DEDGESMITH_TVM_VERSION=\"<apache-tvm version>\""
#endif

#if defined(__aarch64__)
static const char* kArch = "aarch64";
#elif defined(__x86_64__)
static const char* kArch = "x86_64";
#else
#error "unsupported architecture"
#endif

// ----------------------------------------------------------------------------
// utilities

// The one way out on a failure: one line on stderr, exit 1.
[[noreturn]] static void die(const std::string& msg) {
  std::string line = msg;
  std::replace(line.begin(), line.end(), '\n', ' ');
  fprintf(stderr, "runner: %s\n", line.c_str());
  exit(1);
}

static double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Peak resident set size. VmHWM first: getrusage's ru_maxrss survives execve, so a runner
// started from a big parent (python with TVM loaded) would report the parent's peak.
static long peak_rss_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return strtol(line.c_str() + 6, nullptr, 10);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;  // kilobytes on Linux
}

static bool file_exists(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

static std::string dirname_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// Folder of the running executable (under the android-glibc loader: the loader's folder,
// which is the same bin/).
static std::string exe_dir() {
  char buf[4096];
#if defined(__APPLE__)
  uint32_t size = sizeof(buf);
  if (_NSGetExecutablePath(buf, &size) != 0) return ".";
  return dirname_of(buf);
#else
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  buf[n] = 0;
  return dirname_of(buf);
#endif
}

static std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    char* end = nullptr;
    long long v = strtoll(item.c_str(), &end, 10);
    if (*end != 0) die(flag + " expects comma-separated integers, got '" + s + "'");
    out.push_back(v);
  }
  return out;
}

// Token ids: an int32 each (the model's input dtype); a larger value is an error, not a wrap.
static std::vector<int32_t> parse_token_list(const std::string& flag, const std::string& s) {
  std::vector<int32_t> out;
  for (int64_t v : parse_int_list(flag, s)) {
    if (v < INT32_MIN || v > INT32_MAX) die(flag + ": token id " + std::to_string(v) + " is not a 32-bit integer");
    out.push_back(int32_t(v));
  }
  return out;
}

static std::string json_ints(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// ----------------------------------------------------------------------------
// sha256 (FIPS 180-4), streamed over a file in 1 MiB blocks

struct Sha256 {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t block[64];
  size_t block_len = 0;
  uint64_t total_bytes = 0;

  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress(const uint8_t* p) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 |
             uint32_t(p[4 * i + 2]) << 8 | uint32_t(p[4 * i + 3]);
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }

  void update(const uint8_t* p, size_t n) {
    total_bytes += n;
    while (n > 0) {
      size_t take = std::min(n, 64 - block_len);
      memcpy(block + block_len, p, take);
      block_len += take, p += take, n -= take;
      if (block_len == 64) compress(block), block_len = 0;
    }
  }

  std::string hex() {
    uint64_t bits = total_bytes * 8;
    uint8_t pad = 0x80, zero = 0;
    update(&pad, 1);
    while (block_len != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(bits >> (56 - 8 * i));
    update(len, 8);
    char out[65];
    for (int i = 0; i < 8; ++i) snprintf(out + 8 * i, 9, "%08x", h[i]);
    return std::string(out, 64);
  }
};

static std::string sha256_file(const std::string& path) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) die("cannot open " + path + ": " + strerror(errno));
  Sha256 sha;
  std::vector<uint8_t> buf(1 << 20);
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) sha.update(buf.data(), n);
  fclose(f);
  return sha.hex();
}

// ----------------------------------------------------------------------------
// manifest and checks (all before anything is loaded)

struct Manifest {
  std::string tvm_version, arch;
  int64_t vocab_size = 0;                 // model.config.vocab_size (bench draws token ids below it)
  int64_t page_size = 16, prefill_chunk = 512, max_total_seq_len = 4096;
  int64_t context = 0;                    // tokens a run may hold: --context N (0: max_total_seq_len)
  std::vector<std::string> param_names;   // in the order prefill/decode take them
  std::string device_api = "cpu";         // device.api: cpu | cuda | metal | opencl | webgpu
  int device_type = 1;                    // device.dl_device_type (DLPack: 1 CPU, 2 CUDA, 8 Metal, 15 WebGPU)
  std::vector<std::string> device_libs;   // device.runtime_libs: dlopen()ed after libtvm_runtime
  int64_t threads = 0;                    // tuning.threads: what `edgesmith tune` measured best (0: unset)
};

static std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("missing file " + path + " (is this a bundle folder?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

static Manifest load_manifest(const std::string& bundle, bool verify) {
  std::string path = bundle + "/manifest.json";
  ffi::String err;
  ffi::json::Value root = ffi::json::Parse(read_text(path), &err);
  if (!err.empty()) die(path + " is not valid JSON: " + std::string(err));
  auto obj = root.as<ffi::json::Object>();
  if (!obj) die(path + " is not a JSON object");
  auto get = [&](const char* key) -> ffi::Any {
    auto it = obj->find(ffi::String(key));
    if (it == obj->end()) die(path + " has no \"" + key + "\"; rebuild the bundle");
    return (*it).second;
  };
  auto get_int = [&](ffi::json::Object o, const char* key, int64_t dflt) {
    auto it = o.find(ffi::String(key));
    return it == o.end() ? dflt : (*it).second.cast<int64_t>();
  };

  Manifest m;
  m.arch = get("arch").cast<ffi::String>();
  m.tvm_version = get("tvm_version").cast<ffi::String>();

  // Wrong architecture and wrong version fail first, before any file is touched.
  if (m.arch != kArch)
    die("bundle " + bundle + " is for " + m.arch + " but this runner is " + kArch +
        "; compile the bundle for this device's target");
  if (m.tvm_version != EDGESMITH_TVM_VERSION)
    die("bundle " + bundle + " was built with TVM " + m.tvm_version + " but this runtime is TVM " +
        EDGESMITH_TVM_VERSION + "; recompile the bundle with TVM " + EDGESMITH_TVM_VERSION);

  auto kv = get("kv_cache").cast<ffi::json::Object>();
  m.page_size = get_int(kv, "page_size", 16);
  m.prefill_chunk = get_int(kv, "prefill_chunk_size", 512);
  m.max_total_seq_len = get_int(kv, "max_total_seq_len", 4096);
  auto model = get("model").cast<ffi::json::Object>();
  auto config = model.find("config");
  if (config != model.end()) m.vocab_size = get_int((*config).second.cast<ffi::json::Object>(), "vocab_size", 0);
  for (const ffi::Any& name : get("params").cast<ffi::json::Array>())
    m.param_names.push_back(std::string(name.cast<ffi::String>()));
  auto tuning_it = obj->find(ffi::String("tuning"));  // CPU bundles: the kernels' choices
  if (tuning_it != obj->end()) {
    m.threads = get_int((*tuning_it).second.cast<ffi::json::Object>(), "threads", 0);
  }
  auto dev_it = obj->find(ffi::String("device"));  // absent in CPU bundles
  if (dev_it != obj->end()) {
    auto dev = (*dev_it).second.cast<ffi::json::Object>();
    auto api = dev.find(ffi::String("api"));
    if (api != dev.end()) m.device_api = std::string((*api).second.cast<ffi::String>());
    m.device_type = int(get_int(dev, "dl_device_type", 1));
    auto libs = dev.find(ffi::String("runtime_libs"));
    if (libs != dev.end())
      for (const ffi::Any& lib : (*libs).second.cast<ffi::json::Array>())
        m.device_libs.push_back(std::string(lib.cast<ffi::String>()));
  }

  // Every listed file must exist with its size; its sha256 too unless --no-verify.
  for (const auto& kv_pair : get("files").cast<ffi::json::Object>()) {
    std::string rel = kv_pair.first.cast<ffi::String>();
    auto entry = kv_pair.second.cast<ffi::json::Object>();
    std::string file = bundle + "/" + rel;
    if (!file_exists(file)) die("missing file " + file + "; copy the whole bundle again");
    if (!verify) continue;
    auto it = entry.find(ffi::String("sha256"));
    if (it == entry.end()) continue;
    std::string want = (*it).second.cast<ffi::String>();
    std::string got = sha256_file(file);
    if (got != want)
      die("file " + file + " is corrupted (sha256 " + got.substr(0, 12) + "..., manifest says " +
          want.substr(0, 12) + "...); copy the bundle again");
  }
  return m;
}

// ----------------------------------------------------------------------------
// model: the runtime library, the Relax VM, the parameters

static ffi::Function global(const char* name) {
  auto f = ffi::Function::GetGlobal(name);
  if (!f) die(std::string("the TVM runtime has no global function ") + name);
  return *f;
}

// ----------------------------------------------------------------------------
// device: the runtime libraries, and CUDA's kernel compiler

#if defined(__APPLE__)
static const char* kRuntimeLib = "libtvm_runtime.dylib";
#else
static const char* kRuntimeLib = "libtvm_runtime.so";
#endif

static void load_runtime(const std::string& lib_dir, const Manifest& m) {
  std::vector<std::string> libs = {kRuntimeLib};
  libs.insert(libs.end(), m.device_libs.begin(), m.device_libs.end());
  for (const auto& lib : libs) {
    std::string path = lib_dir + "/" + lib;
    if (!file_exists(path)) die("missing file " + path + "; pass --lib-dir or rebuild the bundle");
    // RTLD_GLOBAL: the model library resolves TVM runtime symbols from it.
    if (!dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) die(std::string("dlopen: ") + dlerror());
  }
}

// TVM exports CUDA kernels as CUDA C and compiles them when the library loads, through the
// global tvm_callback_cuda_compile(code) -> bytes that Python's TVM registers. Without Python:
// nvcc to a fatbin for this machine's GPU ($EDGESMITH_NVCC, default nvcc on PATH;
// $EDGESMITH_NVCC_ARCH, default native).
static void register_cuda_compiler() {
  auto compile = [](ffi::String code) -> ffi::Bytes {
    char tmpl[] = "/tmp/edgesmith-nvcc-XXXXXX";
    if (!mkdtemp(tmpl)) die(std::string("mkdtemp: ") + strerror(errno));
    std::string dir = tmpl, src = dir + "/kernels.cu", out = dir + "/kernels.fatbin", log = dir + "/nvcc.log";
    std::ofstream(src, std::ios::binary) << std::string(code);
    const char* nvcc = getenv("EDGESMITH_NVCC") ? getenv("EDGESMITH_NVCC") : "nvcc";
    const char* arch = getenv("EDGESMITH_NVCC_ARCH") ? getenv("EDGESMITH_NVCC_ARCH") : "native";
    std::string cmd = std::string(nvcc) + " --fatbin -O3 -arch=" + arch + " -o " + out + " " + src + " >" + log + " 2>&1";
    if (system(cmd.c_str()) != 0) {
      std::ifstream in(log);
      std::string first;
      std::getline(in, first);
      die("compiling the CUDA kernels failed (" + cmd + "): " + first +
          "; set EDGESMITH_NVCC to nvcc's path and EDGESMITH_NVCC_ARCH to the GPU's (e.g. sm_90)");
    }
    std::string bin = read_text(out);
    unlink(src.c_str()), unlink(out.c_str()), unlink(log.c_str()), rmdir(dir.c_str());
    return ffi::Bytes(bin);
  };
  ffi::Function::SetGlobal("tvm_callback_cuda_compile", ffi::Function::FromTyped(compile), true);
}

// ----------------------------------------------------------------------------
// model: the Relax VM, the parameters

// TVM_NUM_THREADS was given (environment or --threads): a tuned thread count does not override it.
static bool g_user_threads = false;

// The bundle's tuned thread count (manifest tuning.threads), unless the user chose one. Called before
// the runtime is loaded: TVM's pool reads TVM_NUM_THREADS when it first starts.
static void apply_tuned_threads(const Manifest& m) {
  if (g_user_threads || m.threads <= 0) return;
  setenv("TVM_NUM_THREADS", std::to_string(m.threads).c_str(), 1);
}

// The thread count TVM's CPU pool was started with (what generate reports).
static int pool_threads() {
  const char* env = getenv("TVM_NUM_THREADS");
  return env ? atoi(env) : 0;
}

// Set by `runner kernels`: wraps the model library before the VM looks its kernels up.
static void (*g_wrap_library)(ffi::Module& lib) = nullptr;
static DLDevice g_timed_device{kDLCPU, 0};  // the model's device, for the kernel timer's waits

struct Model {
  ffi::Module vm;
  ffi::Function prefill, decode, create_kv;
  ffi::Array<ffi::Tensor> params;
  DLDevice dev;
};

static Model load_model(const std::string& bundle, const Manifest& m) {
  if (m.device_api == "cuda") register_cuda_compiler();
  ffi::Module lib = ffi::Module::LoadFromFile(bundle + "/lib/model.so");
  g_timed_device = DLDevice{DLDeviceType(m.device_type), 0};
  if (g_wrap_library) g_wrap_library(lib);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  // (device type, id, allocator) for the device, then for the host; 2 = pooled allocator
  vm->GetFunction("vm_initialization").value()(m.device_type, 0, 2, int(kDLCPU), 0, 2);
  auto fn = [&](const char* name) {
    auto f = vm->GetFunction(name);
    if (!f) die(bundle + "/lib/model.so has no function '" + name + "'; recompile the bundle");
    return *f;
  };

  // Parameters: tensor-cache shards -> the runtime's cache -> an array in call order.
  DLDevice dev{DLDeviceType(m.device_type), 0};
  global("vm.builtin.tensor_cache.load")(bundle + "/params", int(dev.device_type), 0);
  ffi::Array<ffi::String> names;
  for (const auto& n : m.param_names) names.push_back(n);
  auto params = global("vm.builtin.param_array_from_cache_by_name")(names)
                    .cast<ffi::Array<ffi::Tensor>>();
  global("vm.builtin.tensor_cache.clear")();
  return Model{vm, fn("prefill"), fn("decode"), fn("create_paged_kv_cache"), params, dev};
}

// input_ids: (1, n) int32 on the device (CPU here: filled in place).
static ffi::Tensor make_input(const Model& model, const int32_t* ids, int64_t n) {
  static ffi::Function alloc = global("runtime.TVMTensorAllocWithScope");
  ffi::Tensor t = alloc(ffi::Shape({1, n}), DLDataType{kDLInt, 32, 1}, model.dev,
                        ffi::Optional<ffi::String>())
                      .cast<ffi::Tensor>();
  if (model.dev.device_type == kDLCPU) {
    memcpy(t.data_ptr(), ids, n * sizeof(int32_t));
  } else {  // a GPU: copied there
    static ffi::Function copy_in = global("runtime.TVMTensorCopyFromBytes");
    copy_in(t, static_cast<void*>(const_cast<int32_t*>(ids)), int64_t(n * sizeof(int32_t)));
  }
  return t;
}

// ----------------------------------------------------------------------------
// KV cache: one sequence (id 0) per generation; every forward is bracketed by
// begin_forward(seq ids, token counts) / end_forward.

struct KVCache {
  ffi::Any obj;
  ffi::Function begin = global("vm.builtin.kv_state_begin_forward");
  ffi::Function end = global("vm.builtin.kv_state_end_forward");
  ffi::Function add = global("vm.builtin.kv_state_add_sequence");
  ffi::Function remove = global("vm.builtin.kv_state_remove_sequence");
};

static KVCache create_kv_cache(const Model& model, const Manifest& m) {
  KVCache kv;
  int64_t a[5] = {1, m.max_total_seq_len, m.prefill_chunk, m.page_size, 0};
  // nn.spec `int` arguments are exported as 1-element shapes; plain int64 is accepted too
  // for a library whose function takes scalars.
  try {
    kv.obj = model.create_kv(ffi::Shape({a[0]}), ffi::Shape({a[1]}), ffi::Shape({a[2]}),
                             ffi::Shape({a[3]}), ffi::Shape({a[4]}));
  } catch (const ffi::Error& err) {
    if (err.kind() != "TypeError") throw;
    kv.obj = model.create_kv(a[0], a[1], a[2], a[3], a[4]);
  }
  return kv;
}

// One forward of `n` tokens through `fn` (prefill or decode) -> logits of the last token.
// logits: (1, 1, vocab) float32, copied into `out`. total_len >= 0 (prefill only): the length
// of the sequence once the whole prompt is in, passed to the model as a 1-element shape; it
// picks longrope's factors for every chunk as one forward over the prompt would.
static void forward(const Model& model, KVCache& kv, const ffi::Function& fn, const int32_t* ids,
                    int64_t n, std::vector<float>& out, int64_t total_len = -1) {
  kv.begin(kv.obj, ffi::Shape({0}), ffi::Shape({n}));
  ffi::Array<ffi::Any> ret = (total_len >= 0 ? fn(make_input(model, ids, n), kv.obj, ffi::Shape({total_len}), model.params)
                                             : fn(make_input(model, ids, n), kv.obj, model.params))
                                 .cast<ffi::Array<ffi::Any>>();
  kv.end(kv.obj);
  ffi::Tensor logits = ret[0].cast<ffi::Tensor>();
  DLDataType dt = logits.dtype();
  if (dt.code != kDLFloat || dt.bits != 32) die("model returned logits that are not float32");
  int64_t vocab = logits.shape()[logits.ndim() - 1];
  out.resize(vocab);
  if (logits.device().device_type == kDLCPU) {
    memcpy(out.data(), logits.data_ptr(), vocab * sizeof(float));  // CPU: read in place
  } else {  // waits for the device, so a forward's time includes its kernels
    static ffi::Function copy_out = global("runtime.TVMTensorCopyToBytes");
    copy_out(logits, static_cast<void*>(out.data()), int64_t(vocab * sizeof(float)));
  }
}

// Prompt of any length (a new sequence): chunks of at most prefill_chunk tokens, each its own
// forward, each told the whole prompt's length.
static void prefill(const Model& model, const Manifest& m, KVCache& kv,
                    const std::vector<int32_t>& prompt, std::vector<float>& logits) {
  for (size_t i = 0; i < prompt.size(); i += m.prefill_chunk) {
    int64_t n = std::min<int64_t>(m.prefill_chunk, prompt.size() - i);
    forward(model, kv, model.prefill, prompt.data() + i, n, logits, int64_t(prompt.size()));
  }
}

// Tokens a run may hold: what --context asked for, not the whole pages its cache is made of.
static int64_t context_limit(const Manifest& m) { return m.context ? m.context : m.max_total_seq_len; }

// --context N: a KV cache for N tokens (whole pages), at most the compiled context; a run holds
// at most N tokens (prompt + new), as asked, though its cache's last page has room for more.
static void apply_context(Manifest& m, int64_t context) {
  if (context == 0) return;  // not given: the compiled context
  if (context < 0)
    die("--context " + std::to_string(context) + ": the context must be a positive number of tokens");
  if (context > m.max_total_seq_len)
    die("--context " + std::to_string(context) + " is larger than the " + std::to_string(m.max_total_seq_len) +
        " tokens this bundle was compiled for; use --context " + std::to_string(m.max_total_seq_len) +
        " or less, or recompile with --context " + std::to_string(context));
  m.max_total_seq_len = std::min(m.max_total_seq_len, (context + m.page_size - 1) / m.page_size * m.page_size);
  m.context = context;
}

// ----------------------------------------------------------------------------
// sampler: greedy at temperature 0, else temperature + top-p with its own seeded RNG

struct Rng {  // xorshift64*: same sequence on every platform for a given seed
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
};

static int32_t argmax(const std::vector<float>& logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = int32_t(i);  // strict: lowest index wins ties
  return best;
}

static int32_t sample(const std::vector<float>& logits, float temperature, float top_p, Rng& rng) {
  if (temperature <= 0) return argmax(logits);
  float mx = *std::max_element(logits.begin(), logits.end());
  std::vector<std::pair<double, int32_t>> probs(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    double p = std::exp((logits[i] - mx) / temperature);
    probs[i] = {p, int32_t(i)};
    sum += p;
  }
  std::sort(probs.begin(), probs.end(),
            [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  size_t keep = probs.size();  // smallest prefix whose mass reaches top_p
  double cum = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    cum += probs[i].first / sum;
    if (cum >= top_p) { keep = i + 1; break; }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += probs[i].first;
  double r = rng.uniform() * kept;
  for (size_t i = 0; i < keep; ++i) {
    r -= probs[i].first;
    if (r < 0) return probs[i].second;
  }
  return probs[keep - 1].second;
}

// ----------------------------------------------------------------------------
// generate: prefill the prompt, then decode one token at a time

struct GenerateArgs {
  std::vector<int32_t> tokens;
  int64_t n = 16;
  float temperature = 0, top_p = 1;
  uint64_t seed = 0;
  std::set<int32_t> stop_ids;
  bool stream = false;
  bool interactive = false;
};

// An id past the table would read outside the embedding.
static void check_ids(const Manifest& m, const std::vector<int32_t>& ids) {
  for (int32_t t : ids)
    if (t < 0 || (m.vocab_size > 0 && t >= m.vocab_size))
      die("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
          std::to_string(m.vocab_size - 1) + ")");
}

// Samples up to a.n tokens, the first from `logits` (the last forward's), feeding each one but
// the last back through decode; stops early after a stop id. Returns the stop reason. The last
// sampled token is never fed: a conversation's next turn starts with it.
// NaN or infinite logits (NaN weights, a garbage shard whose sha matched) would sample token 0
// forever: stop and say where.
static void check_finite(const std::vector<float>& logits, const std::string& where) {
  for (float v : logits)
    if (!std::isfinite(v))
      die("the logits " + where + " are not finite (NaN or infinite): the model's weights hold NaN or "
          "infinite values (check the checkpoint), or the bundle is damaged; recompile it");
}

static const char* decode_tokens(const Model& model, KVCache& kv, const GenerateArgs& a, Rng& rng,
                                 std::vector<float>& logits, std::vector<int32_t>& out) {
  while (int64_t(out.size()) < a.n) {
    check_finite(logits, out.empty() ? "after the prompt" : "at decode step " + std::to_string(out.size()));
    int32_t tok = sample(logits, a.temperature, a.top_p, rng);
    out.push_back(tok);
    if (a.stream) printf("{\"token\": %d}\n", tok), fflush(stdout);
    if (a.stop_ids.count(tok)) return "stop";
    if (int64_t(out.size()) == a.n) break;
    forward(model, kv, model.decode, &tok, 1, logits);
  }
  return "length";
}

static std::string context_name(const Manifest& m) {
  return m.context ? "the context of " + std::to_string(m.context) + " tokens (--context " +
                         std::to_string(m.context) + ")"
                   : "the KV cache's max_total_seq_len " + std::to_string(m.max_total_seq_len);
}

static void check_fits(const Manifest& m, int64_t prompt, int64_t n) {
  if (prompt + n > context_limit(m))
    die("prompt (" + std::to_string(prompt) + ") + new tokens (" + std::to_string(n) + ") exceed " +
        context_name(m) + "; ask for fewer tokens, or a larger --context (up to the compiled context)");
}

static void cmd_generate(const Model& model, const Manifest& m, double load_s, const GenerateArgs& a) {
  if (a.tokens.empty()) die("generate needs --tokens (comma-separated prompt token ids)");
  check_ids(m, a.tokens);
  check_fits(m, a.tokens.size(), a.n);
  KVCache kv = create_kv_cache(model, m);
  Rng rng(a.seed);
  std::vector<float> logits;
  std::vector<int32_t> out;

  kv.add(kv.obj, int64_t(0));
  double t0 = now_s();
  prefill(model, m, kv, a.tokens, logits);
  double t1 = now_s();
  const char* stop_reason = decode_tokens(model, kv, a, rng, logits, out);
  double t2 = now_s();
  kv.remove(kv.obj, int64_t(0));

  // The first token comes from prefill's logits: decode_s covers out.size() - 1 forwards.
  double prefill_s = t1 - t0, decode_s = t2 - t1;
  int64_t decoded = std::max<int64_t>(int64_t(out.size()) - 1, 0);
  printf("{\"output_ids\": %s, \"prompt_tokens\": %zu, \"stop_reason\": \"%s\", "
         "\"load_s\": %.6f, \"prefill_s\": %.6f, \"decode_s\": %.6f, "
         "\"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, \"peak_rss_kb\": %ld, \"threads\": %d}\n",
         json_ints(out).c_str(), a.tokens.size(), stop_reason, load_s, prefill_s, decode_s,
         prefill_s > 0 ? a.tokens.size() / prefill_s : 0.0,
         decode_s > 0 && decoded ? decoded / decode_s : 0.0, peak_rss_kb(), pool_threads());
}

// ----------------------------------------------------------------------------
// interactive: a conversation on one KV cache (sequence 0 lives until the end). Each stdin line
// is a turn: comma-separated ids appended to the sequence. The host sends the chat-formatted user
// turn, led by the previous reply's last token (sampled, never fed). Then up to n tokens are
// generated as in generate, streamed with --stream, and one result line closes the turn
// ("turn", "context_tokens": tokens in the cache after the turn's prompt). An empty line or the
// end of stdin ends the conversation (a transport that cannot close stdin sends the empty line).

static void cmd_interactive(const Model& model, const Manifest& m, double load_s, const GenerateArgs& a) {
  if (!a.tokens.empty()) die("generate --interactive reads its turns from stdin; drop --tokens");
  KVCache kv = create_kv_cache(model, m);
  Rng rng(a.seed);
  std::vector<float> logits;
  int64_t context = 0;  // tokens fed so far
  kv.add(kv.obj, int64_t(0));
  printf("{\"ready\": true, \"load_s\": %.6f}\n", load_s), fflush(stdout);
  std::string line;
  for (int turn = 1; std::getline(std::cin, line); ++turn) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) break;
    std::vector<int32_t> ids = parse_token_list("turn " + std::to_string(turn), line);
    if (ids.empty()) die("turn " + std::to_string(turn) + " holds no token ids: '" + line + "'");
    check_ids(m, ids);
    if (context + int64_t(ids.size()) + a.n > context_limit(m))
      die("the conversation (" + std::to_string(context) + " tokens) + turn " + std::to_string(turn) + " (" +
          std::to_string(ids.size()) + ") + new tokens (" + std::to_string(a.n) + ") exceed " + context_name(m) +
          "; start a new conversation or ask for fewer tokens");
    std::vector<int32_t> out;
    double t0 = now_s();
    prefill(model, m, kv, ids, logits);
    double t1 = now_s();
    const char* stop_reason = decode_tokens(model, kv, a, rng, logits, out);
    double t2 = now_s();
    context += int64_t(ids.size()) + int64_t(out.size()) - 1;  // the last sampled token is not fed
    double prefill_s = t1 - t0, decode_s = t2 - t1;
    int64_t decoded = std::max<int64_t>(int64_t(out.size()) - 1, 0);
    printf("{\"turn\": %d, \"output_ids\": %s, \"prompt_tokens\": %zu, \"context_tokens\": %lld, "
           "\"stop_reason\": \"%s\", \"load_s\": %.6f, \"prefill_s\": %.6f, \"decode_s\": %.6f, "
           "\"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, \"peak_rss_kb\": %ld}\n",
           turn, json_ints(out).c_str(), ids.size(), (long long)context, stop_reason, load_s, prefill_s,
           decode_s, prefill_s > 0 ? ids.size() / prefill_s : 0.0,
           decode_s > 0 && decoded ? decoded / decode_s : 0.0, peak_rss_kb());
    fflush(stdout);
  }
  kv.remove(kv.obj, int64_t(0));
}

// ----------------------------------------------------------------------------
// bench: warm-up, then repetitions of (prefill p random tokens, decode n tokens greedily)

struct BenchArgs {
  int64_t p = 128, n = 128, warmup = 1, reps = 5;
  uint64_t seed = 0;
};

static void cmd_bench(const Model& model, const Manifest& m, double load_s, const BenchArgs& a) {
  if (m.vocab_size <= 0) die("manifest model.config.vocab_size is missing; bench cannot draw token ids");
  if (a.p < 1 || a.n < 1 || a.reps < 1) die("bench needs -p >= 1, -n >= 1 and -r >= 1");
  check_fits(m, a.p, a.n);
  Rng rng(a.seed);
  std::vector<int32_t> prompt(a.p);
  for (auto& t : prompt) t = int32_t(rng.next() % uint64_t(m.vocab_size));
  KVCache kv = create_kv_cache(model, m);
  std::vector<float> logits;
  std::vector<double> pp, tg;  // tok/s per measured repetition

  for (int64_t rep = -a.warmup; rep < a.reps; ++rep) {
    kv.add(kv.obj, int64_t(0));
    double t0 = now_s();
    prefill(model, m, kv, prompt, logits);
    double t1 = now_s();
    for (int64_t i = 0; i < a.n; ++i) {
      int32_t tok = argmax(logits);
      forward(model, kv, model.decode, &tok, 1, logits);
    }
    double t2 = now_s();
    kv.remove(kv.obj, int64_t(0));
    if (rep < 0) continue;
    double prefill_s = t1 - t0, decode_s = t2 - t1;
    pp.push_back(a.p / prefill_s), tg.push_back(a.n / decode_s);
    printf("{\"rep\": %ld, \"prefill_s\": %.6f, \"decode_s\": %.6f, \"prefill_tok_s\": %.3f, "
           "\"decode_tok_s\": %.3f}\n",
           long(rep), prefill_s, decode_s, pp.back(), tg.back());
    fflush(stdout);
  }
  auto mean_std = [](const std::vector<double>& v, double& mean, double& sd) {
    mean = 0, sd = 0;
    for (double x : v) mean += x / v.size();
    for (double x : v) sd += (x - mean) * (x - mean) / v.size();
    sd = std::sqrt(sd);
  };
  double pm, ps, tm, ts;
  mean_std(pp, pm, ps), mean_std(tg, tm, ts);
  printf("{\"summary\": true, \"prompt_tokens\": %ld, \"gen_tokens\": %ld, \"reps\": %ld, "
         "\"prefill_tok_s\": %.3f, \"prefill_tok_s_std\": %.3f, \"decode_tok_s\": %.3f, "
         "\"decode_tok_s_std\": %.3f, \"load_s\": %.6f, \"peak_rss_kb\": %ld}\n",
         long(a.p), long(a.n), long(a.reps), pm, ps, tm, ts, load_s, peak_rss_kb());
}

// ----------------------------------------------------------------------------
// profiling: what `edgesmith profile` runs on the device (runtime/profile/ reads these lines)
//
//   sensors   thermal zones and CPU frequencies from sysfs, read around every repetition
//   profile   warm-up; per repetition: cool down below a threshold, prefill p + decode n;
//             stop once pp and tg tok/s spread less than --target-rsd (or at --max-reps)
//   kernels   every kernel call timed through a wrapper around the model library
//   logits    teacher-forced logits of a fixed token sequence (the on-device accuracy check)
//   membw     memory read bandwidth (the roofline's ceiling)
//   kernelbench  kernels of a candidate library timed in isolation, in alternating rounds

// Thermal zones (°C, in zone order) and current/max CPU frequencies (MHz, per cpu) under
// ROOT/sys — ROOT is "" on a real device; a test points it at a fake sysfs folder.
struct Sensors {
  std::vector<std::pair<std::string, double>> temps_c;
  std::vector<double> cur_mhz, max_mhz;
  double max_temp() const {
    double t = -1e9;
    for (auto& z : temps_c) t = std::max(t, z.second);
    return temps_c.empty() ? NAN : t;
  }
};

static bool read_number(const std::string& path, double& out) {
  std::ifstream in(path);
  return bool(in >> out);
}

static std::vector<std::string> entries_with_prefix(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name.rfind(prefix, 0) == 0 && name.size() > prefix.size() && isdigit(name[prefix.size()]))
        names.push_back(name);
    }
    closedir(d);
  }
  // numeric order: zone2 before zone10
  std::sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    return atol(a.c_str() + prefix.size()) < atol(b.c_str() + prefix.size());
  });
  return names;
}

static Sensors read_sensors(const std::string& root) {
  Sensors s;
  std::string thermal = root + "/sys/class/thermal";
  for (const auto& zone : entries_with_prefix(thermal, "thermal_zone")) {
    double t;
    if (!read_number(thermal + "/" + zone + "/temp", t)) continue;
    std::string type = zone;
    std::ifstream(thermal + "/" + zone + "/type") >> type;
    s.temps_c.push_back({type, std::fabs(t) > 200 ? t / 1000 : t});  // millidegrees on Linux
  }
  std::string cpus = root + "/sys/devices/system/cpu";
  for (const auto& cpu : entries_with_prefix(cpus, "cpu")) {
    double cur, mx;
    if (!read_number(cpus + "/" + cpu + "/cpufreq/scaling_cur_freq", cur)) continue;
    if (!read_number(cpus + "/" + cpu + "/cpufreq/cpuinfo_max_freq", mx)) mx = cur;
    s.cur_mhz.push_back(cur / 1000), s.max_mhz.push_back(mx / 1000);  // kHz in sysfs
  }
  return s;
}

static std::string json_string(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (uint8_t(c) < 0x20) out += ' ';
    else out += c;
  }
  return out + "\"";
}

static std::string json_sensors(const Sensors& s) {
  std::string out = "{\"temps_c\": {";
  for (size_t i = 0; i < s.temps_c.size(); ++i) {
    char num[32];
    snprintf(num, sizeof(num), "%.1f", s.temps_c[i].second);
    // duplicate zone types are common (several "cpu-thermal"): suffix the zone index
    out += (i ? ", " : "") + json_string(s.temps_c[i].first + "#" + std::to_string(i)) + ": " + num;
  }
  out += "}, \"cur_mhz\": [";
  for (size_t i = 0; i < s.cur_mhz.size(); ++i) out += (i ? "," : "") + std::to_string(long(s.cur_mhz[i]));
  out += "], \"max_mhz\": [";
  for (size_t i = 0; i < s.max_mhz.size(); ++i) out += (i ? "," : "") + std::to_string(long(s.max_mhz[i]));
  return out + "]}";
}

static long current_rss_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return strtol(line.c_str() + 6, nullptr, 10);
  return 0;
}

struct ProfileArgs {
  int64_t p = 128, n = 128, warmup = 1, min_reps = 3, max_reps = 10, context = 0, positions = 0, prefill = 1;
  int64_t mb = 0;  // membw: 0 = sized from the last-level cache
  double target_rsd = 0.03, cool_below = 0, cool_timeout = 300, cool_poll = 1;
  std::string sysroot;
  std::vector<int32_t> tokens;
  uint64_t seed = 0;
};

// Sample relative standard deviation (n - 1); 0 for fewer than two samples.
static double rel_sd(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  double mean = 0, ss = 0;
  for (double x : v) mean += x / v.size();
  for (double x : v) ss += (x - mean) * (x - mean);
  return mean > 0 ? std::sqrt(ss / (v.size() - 1)) / mean : 0;
}

// Waits until the hottest zone is below `below` °C (polling every `poll` s, at most `timeout`
// s); prints when it starts and ends waiting. Returns the seconds waited.
static double cool_down(const ProfileArgs& a, int64_t rep) {
  if (a.cool_below <= 0) return 0;
  double t = read_sensors(a.sysroot).max_temp();
  if (!(t >= a.cool_below)) return 0;  // no zones (NaN) or already cool
  printf("{\"event\": \"cooldown\", \"rep\": %ld, \"temp_c\": %.1f, \"below_c\": %.1f}\n", long(rep), t,
         a.cool_below);
  fflush(stdout);
  double t0 = now_s();
  bool timed_out = false;
  while (t >= a.cool_below) {
    if (now_s() - t0 >= a.cool_timeout) { timed_out = true; break; }
    usleep(useconds_t(a.cool_poll * 1e6));
    t = read_sensors(a.sysroot).max_temp();
  }
  double waited = now_s() - t0;
  printf("{\"event\": \"cooled\", \"rep\": %ld, \"temp_c\": %.1f, \"waited_s\": %.3f, \"timed_out\": %s}\n",
         long(rep), t, waited, timed_out ? "true" : "false");
  fflush(stdout);
  return waited;
}

static std::vector<int32_t> random_prompt(const Manifest& m, int64_t p, uint64_t seed) {
  if (m.vocab_size <= 0) die("manifest model.config.vocab_size is missing; cannot draw token ids");
  Rng rng(seed);
  std::vector<int32_t> prompt(p);
  for (auto& t : prompt) t = int32_t(rng.next() % uint64_t(m.vocab_size));
  return prompt;
}

// One repetition: a fresh sequence, prefill `prompt`, decode n tokens greedily.
static void one_rep(const Model& model, const Manifest& m, KVCache& kv, const std::vector<int32_t>& prompt,
                    int64_t n, double& prefill_s, double& decode_s) {
  std::vector<float> logits;
  kv.add(kv.obj, int64_t(0));
  double t0 = now_s();
  prefill(model, m, kv, prompt, logits);
  double t1 = now_s();
  for (int64_t i = 0; i < n; ++i) {
    int32_t tok = argmax(logits);
    forward(model, kv, model.decode, &tok, 1, logits);
  }
  double t2 = now_s();
  kv.remove(kv.obj, int64_t(0));
  prefill_s = t1 - t0, decode_s = t2 - t1;
}

static void cmd_profile(const Model& model, const Manifest& m, double load_s, const ProfileArgs& a) {
  if (a.p < 1 || a.n < 1 || a.min_reps < 1 || a.max_reps < a.min_reps)
    die("profile needs -p >= 1, -n >= 1, -r >= 1 and --max-reps >= -r");
  check_fits(m, a.p, a.n);
  std::vector<int32_t> prompt = random_prompt(m, a.p, a.seed);
  long rss_load = current_rss_kb();
  KVCache kv = create_kv_cache(model, m);
  double pre, dec;
  for (int64_t w = 0; w < a.warmup; ++w) one_rep(model, m, kv, prompt, a.n, pre, dec);

  std::vector<double> pp, tg;
  const char* stop = "max_reps";
  for (int64_t rep = 0; rep < a.max_reps; ++rep) {
    double waited = cool_down(a, rep);
    Sensors before = read_sensors(a.sysroot);
    one_rep(model, m, kv, prompt, a.n, pre, dec);
    Sensors after = read_sensors(a.sysroot);
    pp.push_back(a.p / pre), tg.push_back(a.n / dec);
    printf("{\"rep\": %ld, \"prefill_s\": %.6f, \"decode_s\": %.6f, \"prefill_tok_s\": %.3f, "
           "\"decode_tok_s\": %.3f, \"cooldown_s\": %.3f, \"before\": %s, \"after\": %s}\n",
           long(rep), pre, dec, pp.back(), tg.back(), waited, json_sensors(before).c_str(),
           json_sensors(after).c_str());
    fflush(stdout);
    if (int64_t(pp.size()) >= a.min_reps && rel_sd(pp) <= a.target_rsd && rel_sd(tg) <= a.target_rsd) {
      stop = "stable";
      break;
    }
  }
  printf("{\"summary\": true, \"prompt_tokens\": %ld, \"gen_tokens\": %ld, \"reps\": %zu, \"stop\": \"%s\", "
         "\"prefill_rsd\": %.5f, \"decode_rsd\": %.5f, \"kv_context\": %ld, \"load_s\": %.6f, "
         "\"rss_after_load_kb\": %ld, \"peak_rss_kb\": %ld}\n",
         long(a.p), long(a.n), pp.size(), stop, rel_sd(pp), rel_sd(tg), long(m.max_total_seq_len), load_s,
         rss_load, peak_rss_kb());
}

// --- kernels: the VM finds kernels in the executable's imports (the model library) by name;
// swapping that import for a module that wraps each function with a clock times every call.
// On the CPU a kernel returns when its work is done, so wall time per call is its time; on a
// GPU a call only queues the kernel, so each timed call ends by waiting for the device's stream.

struct KernelStat {
  int64_t calls[2] = {0, 0};
  double seconds[2] = {0, 0};
};
static std::map<std::string, KernelStat> g_kernels;  // std::map: stable addresses
static int g_phase = -1;                             // -1 off, 0 prefill, 1 decode

static void wait_for_device() {
  if (g_timed_device.device_type == kDLCPU) return;
  static ffi::Function sync = global("runtime.Device_StreamSync");
  sync(g_timed_device, int64_t(0));  // stream 0: the one TVM launches on unless told otherwise
}

class TimedLibrary : public ffi::ModuleObj {
 public:
  explicit TimedLibrary(ffi::Module inner) : inner_(inner) {}
  const char* kind() const final { return "edgesmith_timed_library"; }
  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    ffi::Optional<ffi::Function> f = inner_->GetFunction(name, true);
    if (!f) return f;
    ffi::Function inner_fn = *f;
    KernelStat* stat = &g_kernels[std::string(name)];
    return ffi::Function::FromPacked([inner_fn, stat](ffi::PackedArgs args, ffi::Any* rv) {
      if (g_phase >= 0) wait_for_device();  // earlier queued work is not this kernel's
      double t0 = now_s();
      inner_fn.CallPacked(args, rv);
      if (g_phase >= 0) wait_for_device(), stat->calls[g_phase] += 1, stat->seconds[g_phase] += now_s() - t0;
    });
  }

 private:
  ffi::Module inner_;
};

static void wrap_imports(ffi::ModuleObj* parent) {
  std::vector<ffi::Module> libs;
  for (const ffi::Any& imp : parent->imports()) libs.push_back(imp.cast<ffi::Module>());
  parent->ClearImports();
  for (auto& lib : libs) parent->ImportModule(ffi::Module(ffi::make_object<TimedLibrary>(lib)));
}

static void wrap_library(ffi::Module& exec) { wrap_imports(exec.operator->()); }

// OpenCL and WebGPU: the model library's host functions launch the kernels of its imported device
// module, which they look up through the library's imports on first call; timing that module
// instead makes the table list the device kernels themselves (host glue counts as "other"). Each
// timed call waits for the device before and after it, so the times are per-dispatch waits. WebGPU
// bundles on an adapter with timestamp queries are not wrapped: the plug-in times each dispatch on
// the device (edgesmith.webgpu.timestamps / kernel_times), read at the end of each phase.
static void wrap_device_kernels(ffi::Module& exec) {
  for (const ffi::Any& imp : exec->imports()) wrap_imports(imp.cast<ffi::Module>().operator->());
}

static bool g_device_timestamps = false;  // WebGPU: kernel times from the plug-in's timestamp queries

// The plug-in's times of one phase ({"kernel": [calls, seconds]}) into g_kernels.
static void take_device_times(int phase) {
  static ffi::Function take = global("edgesmith.webgpu.kernel_times");
  ffi::String err;
  ffi::json::Value times = ffi::json::Parse(std::string(take().cast<ffi::String>()), &err);
  if (!err.empty()) die("the WebGPU plug-in's kernel times are not JSON: " + std::string(err));
  if (phase < 0) return;  // dropped (the warm-up's)
  for (const auto& kv : times.cast<ffi::json::Object>()) {
    auto pair = kv.second.cast<ffi::json::Array>();
    KernelStat& st = g_kernels[std::string(kv.first.cast<ffi::String>())];
    st.calls[phase] += pair[0].cast<int64_t>();
    st.seconds[phase] += pair[1].cast<double>();
  }
}

static void cmd_kernels(const Model& model, const Manifest& m, const ProfileArgs& a) {
  if (a.p < 1 || a.n < 1) die("kernels needs -p >= 1 and -n >= 1");
  check_fits(m, a.p, a.n);
  std::vector<int32_t> prompt = random_prompt(m, a.p, a.seed);
  KVCache kv = create_kv_cache(model, m);
  double pre, dec;
  for (int64_t w = 0; w < a.warmup; ++w) one_rep(model, m, kv, prompt, a.n, pre, dec);
  // Measured: prefill with the clock on phase 0, then decode on phase 1.
  std::vector<float> logits;
  kv.add(kv.obj, int64_t(0));
  if (g_device_timestamps) take_device_times(-1);  // the warm-up's: dropped
  g_phase = 0;
  double t0 = now_s();
  prefill(model, m, kv, prompt, logits);
  double t1 = now_s();
  if (g_device_timestamps) take_device_times(0);
  g_phase = 1;
  for (int64_t i = 0; i < a.n; ++i) {
    int32_t tok = argmax(logits);
    forward(model, kv, model.decode, &tok, 1, logits);
  }
  double t2 = now_s();
  if (g_device_timestamps) take_device_times(1);
  g_phase = -1;
  kv.remove(kv.obj, int64_t(0));
  double sum[2] = {0, 0};
  for (const auto& [name, st] : g_kernels) {
    for (int ph = 0; ph < 2; ++ph) {
      if (!st.calls[ph]) continue;
      sum[ph] += st.seconds[ph];
      printf("{\"kernel\": %s, \"phase\": \"%s\", \"calls\": %ld, \"total_s\": %.6f}\n", json_string(name).c_str(),
             ph ? "decode" : "prefill", long(st.calls[ph]), st.seconds[ph]);
    }
  }
  const char* timing = g_device_timestamps ? "timestamp queries"
                       : m.device_api == "cpu"  ? "host clock"
                                                : "per-dispatch waits";
  printf("{\"summary\": true, \"prompt_tokens\": %ld, \"gen_tokens\": %ld, \"prefill_s\": %.6f, \"decode_s\": %.6f, "
         "\"kernels_prefill_s\": %.6f, \"kernels_decode_s\": %.6f, \"timing\": \"%s\"}\n",
         long(a.p), long(a.n), t1 - t0, t2 - t1, sum[0], sum[1], timing);
}

// --- logits: position 0 from a prefill of tokens[0], position i from a decode of tokens[i];
// each printed as little-endian float32 in base64 (a phone's stdout carries it unchanged).

static std::string base64(const uint8_t* p, size_t n) {
  static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = uint32_t(p[i]) << 16 | (i + 1 < n ? uint32_t(p[i + 1]) << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
    out += abc[v >> 18 & 63], out += abc[v >> 12 & 63];
    out += i + 1 < n ? abc[v >> 6 & 63] : '=';
    out += i + 2 < n ? abc[v & 63] : '=';
  }
  return out;
}

static void cmd_logits(const Model& model, const Manifest& m, const ProfileArgs& a) {
  if (a.tokens.empty()) die("logits needs --tokens (comma-separated token ids)");
  for (int32_t t : a.tokens)
    if (t < 0 || (m.vocab_size > 0 && t >= m.vocab_size))
      die("token id " + std::to_string(t) + " is outside the vocabulary (0.." + std::to_string(m.vocab_size - 1) + ")");
  if (a.prefill < 1 || a.prefill > int64_t(a.tokens.size()))
    die("--prefill " + std::to_string(a.prefill) + ": it must be between 1 and the " +
        std::to_string(a.tokens.size()) + " tokens given");
  check_fits(m, a.tokens.size(), 0);
  KVCache kv = create_kv_cache(model, m);
  std::vector<float> logits;
  kv.add(kv.obj, int64_t(0));
  std::vector<int32_t> head(a.tokens.begin(), a.tokens.begin() + a.prefill);
  prefill(model, m, kv, head, logits);  // position prefill - 1 ...
  for (size_t i = a.prefill - 1; i < a.tokens.size(); ++i) {
    if (i >= size_t(a.prefill)) forward(model, kv, model.decode, &a.tokens[i], 1, logits);  // ... then one each
    printf("{\"position\": %zu, \"token\": %d, \"vocab\": %zu, \"logits_f32le_b64\": \"%s\"}\n", i, a.tokens[i],
           logits.size(), base64(reinterpret_cast<const uint8_t*>(logits.data()), logits.size() * 4).c_str());
  }
  kv.remove(kv.obj, int64_t(0));
  printf("{\"summary\": true, \"positions\": %zu}\n", a.tokens.size());
}

// --- membw: the device's read bandwidth as decode can use it (membw.h says how it is measured).

static void cmd_membw(const ProfileArgs& a) {
  if (a.mb < 0 || a.min_reps < 1) die("membw needs --mb >= 0 (0: sized from the caches) and -r >= 1");
  const char* env = getenv("TVM_NUM_THREADS");
  int threads = env ? atoi(env) : int(std::thread::hardware_concurrency());
  membw::Result r = membw::measure(a.mb, int(a.min_reps), threads, now_s, [](int i, double gbs) {
    printf("{\"rep\": %d, \"read_gb_s\": %.3f}\n", i, gbs);
  });
  printf("{\"summary\": true, \"read_gb_s\": %.3f, \"median_gb_s\": %.3f, \"spread\": %.4f, \"passes\": %zu, "
         "\"mb\": %ld, \"llc_bytes\": %ld, \"threads\": %d, \"checksum\": %llu}\n",
         r.best, r.median, r.spread, r.passes.size(), long(r.mb), long(r.llc_bytes), r.threads,
         (unsigned long long)(r.checksum & 0xffff));
}

// --- kernelbench: `edgesmith tune`'s candidates (runtime/tune/). BUNDLE/lib/kernels.so holds
// one function per candidate; --fn LABEL[/FUNC]=SPEC gives each one's arguments (dtype:shape, the
// output last), which are allocated on the CPU and filled with finite values (floats in [-1, 1),
// fp16 1/64, integers random bits: any packed weight is valid), or hold the values given (an
// attention kernel's indptrs: i32:N@v/v/...), or are scalars (int@V, float@V). One function may be
// timed on several argument sets under several labels (attention at a few lengths). After the warm-up every round
// times each function once, in turn (a noisy machine slows all candidates of a round alike); a
// sample is `number` back-to-back calls, `number` chosen so a sample lasts --min-time. The
// thermal gate is profile's: before each round, wait until the device is below --cool-below.

struct BenchArg {
  DLDataType dtype;
  std::vector<int64_t> shape;   // empty with `scalar`
  std::vector<double> values;   // given values (int tensors: indptrs; scalars: one), else filled
  bool scalar = false;          // int@V or float@V: a plain argument, not a tensor
};
struct BenchFn {
  std::string label, name;  // label (what the output line says) / function in the library
  std::vector<BenchArg> args;
};

static DLDataType parse_dtype(const std::string& s) {
  if (s == "f32") return DLDataType{kDLFloat, 32, 1};
  if (s == "f16") return DLDataType{kDLFloat, 16, 1};
  if (s == "u32") return DLDataType{kDLUInt, 32, 1};
  if (s == "i32") return DLDataType{kDLInt, 32, 1};
  if (s == "i8") return DLDataType{kDLInt, 8, 1};
  die("--fn: dtype '" + s + "' is not one of f32, f16, u32, i32, i8");
}

static double parse_value(const std::string& spec, const std::string& v) {
  char* end = nullptr;
  double d = strtod(v.c_str(), &end);
  if (v.empty() || *end != 0) die("--fn '" + spec + "': value '" + v + "' is not a number");
  return d;
}

// LABEL[/FUNC]=ARG,ARG,...; ARG: dtype:AxBxC (filled), dtype:N@v0/v1/... (these values, int32),
// int@V or float@V (a scalar argument).
static BenchFn parse_fn(const std::string& spec) {
  BenchFn fn;
  size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) die("--fn '" + spec + "': expected NAME=dtype:AxB,dtype:C,...");
  std::string names = spec.substr(0, eq);
  size_t slash = names.find('/');
  fn.label = names.substr(0, slash);
  fn.name = slash == std::string::npos ? names : names.substr(slash + 1);
  std::stringstream ss(spec.substr(eq + 1));
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t at = item.find('@');
    std::string head = item.substr(0, at);
    if (head == "int" || head == "float") {
      if (at == std::string::npos) die("--fn '" + spec + "': scalar '" + item + "' needs @VALUE");
      BenchArg a{head == "int" ? DLDataType{kDLInt, 64, 1} : DLDataType{kDLFloat, 64, 1}, {}, {}, true};
      a.values.push_back(parse_value(spec, item.substr(at + 1)));
      fn.args.push_back(a);
      continue;
    }
    size_t colon = head.find(':');
    if (colon == std::string::npos) die("--fn '" + spec + "': argument '" + item + "' has no dtype:shape");
    BenchArg a{parse_dtype(head.substr(0, colon)), {}, {}, false};
    std::stringstream dims(head.substr(colon + 1));
    std::string d;
    while (std::getline(dims, d, 'x')) {
      char* end = nullptr;
      long long v = strtoll(d.c_str(), &end, 10);
      if (d.empty() || *end != 0 || v < 1) die("--fn '" + spec + "': dimension '" + d + "' is not a positive integer");
      a.shape.push_back(v);
    }
    if (at != std::string::npos) {
      if (a.dtype.code != kDLInt || a.dtype.bits != 32 || a.shape.size() != 1)
        die("--fn '" + spec + "': given values ('" + item + "') are for a 1-d i32 tensor");
      std::stringstream vals(item.substr(at + 1));
      std::string v;
      while (std::getline(vals, v, '/')) a.values.push_back(parse_value(spec, v));
      if (int64_t(a.values.size()) != a.shape[0]) die("--fn '" + spec + "': '" + item + "' gives the wrong count of values");
    }
    fn.args.push_back(a);
  }
  if (fn.args.empty()) die("--fn '" + spec + "' gives no arguments");
  return fn;
}

static ffi::Tensor bench_tensor(const BenchArg& a, Rng& rng) {
  static ffi::Function alloc = global("runtime.TVMTensorAllocWithScope");
  ffi::Tensor t = alloc(ffi::Shape(a.shape), a.dtype, DLDevice{kDLCPU, 0}, ffi::Optional<ffi::String>())
                      .cast<ffi::Tensor>();
  int64_t n = 1;
  for (int64_t d : a.shape) n *= d;
  if (!a.values.empty()) {
    int32_t* p = static_cast<int32_t*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) p[i] = int32_t(a.values[i]);
  } else if (a.dtype.code == kDLFloat && a.dtype.bits == 32) {
    float* p = static_cast<float*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) p[i] = float(2 * rng.uniform() - 1);
  } else if (a.dtype.code == kDLFloat) {
    uint16_t* p = static_cast<uint16_t*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) p[i] = 0x2400;  // 1/64 in fp16
  } else {
    uint8_t* p = static_cast<uint8_t*>(t.data_ptr());
    for (int64_t i = 0; i < n * a.dtype.bits / 8; ++i) p[i] = uint8_t(rng.next());
  }
  return t;
}

static void cmd_kernelbench(const std::string& bundle, const std::vector<BenchFn>& fns, const ProfileArgs& a,
                            double min_time) {
  if (fns.empty()) die("kernelbench needs at least one --fn NAME=SPEC");
  if (a.min_reps < 1 || a.warmup < 0 || !(min_time > 0)) die("kernelbench needs -r >= 1, --warmup >= 0, --min-time > 0");
  ffi::Module lib = ffi::Module::LoadFromFile(bundle + "/lib/kernels.so");
  Rng rng(a.seed + 1);
  struct Bound {
    ffi::Function f;
    std::vector<ffi::Any> values;  // tensors, and scalars as int64 / double
    std::vector<ffi::AnyView> views;
    int64_t number = 1;
    std::vector<double> per_call;
  };
  std::vector<Bound> bound(fns.size());
  for (size_t i = 0; i < fns.size(); ++i) {
    auto f = lib->GetFunction(fns[i].name);
    if (!f) die(bundle + "/lib/kernels.so has no function '" + fns[i].name + "'");
    bound[i].f = *f;
    for (const auto& arg : fns[i].args) {
      if (!arg.scalar) bound[i].values.push_back(bench_tensor(arg, rng));
      else if (arg.dtype.code == kDLInt) bound[i].values.push_back(int64_t(arg.values[0]));
      else bound[i].values.push_back(arg.values[0]);
    }
  }
  for (auto& b : bound)
    for (auto& v : b.values) b.views.push_back(ffi::AnyView(v));
  auto call = [](Bound& b, int64_t times) {
    ffi::Any rv;
    double t0 = now_s();
    for (int64_t i = 0; i < times; ++i) b.f.CallPacked(b.views.data(), int32_t(b.views.size()), &rv);
    return now_s() - t0;
  };
  for (auto& b : bound) {
    double once = call(b, 1);
    for (int64_t w = 0; w < a.warmup; ++w) once = std::min(once, call(b, 1));
    b.number = std::max<int64_t>(1, int64_t(min_time / std::max(once, 1e-7)));
  }
  for (int64_t rep = 0; rep < a.min_reps; ++rep) {
    cool_down(a, rep);
    for (auto& b : bound) b.per_call.push_back(call(b, b.number) / b.number);
  }
  for (size_t i = 0; i < fns.size(); ++i) {
    std::vector<double> v = bound[i].per_call;
    std::sort(v.begin(), v.end());
    double median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    printf("{\"fn\": %s, \"median_s\": %.9f, \"min_s\": %.9f, \"rsd\": %.5f, \"reps\": %zu, \"number\": %ld}\n",
           json_string(fns[i].label).c_str(), median, v.front(), rel_sd(bound[i].per_call), v.size(),
           long(bound[i].number));
  }
  Sensors s = read_sensors(a.sysroot);
  printf("{\"summary\": true, \"functions\": %zu, \"reps\": %ld, \"sensors\": %s}\n", fns.size(), long(a.min_reps),
         json_sensors(s).c_str());
}

// Command-line values shared by every command's parser: the argument after `flag` (advancing i).
static std::string flag_value(int argc, char** argv, int& i, const std::string& flag) {
  if (i + 1 >= argc) die(flag + " needs a value");
  return argv[++i];
}

static double flag_number(int argc, char** argv, int& i, const std::string& flag) {
  std::string v = flag_value(argc, argv, i, flag);
  char* end = nullptr;
  double d = strtod(v.c_str(), &end);
  if (v.empty() || *end != 0) die(flag + " expects a number, got '" + v + "'");
  return d;
}

// --context's value: a whole, positive number (0 is "not given" inside the runner).
static int64_t context_flag(double v) {
  if (v < 1 || v != std::floor(v)) {
    char shown[32];
    snprintf(shown, sizeof(shown), "%g", v);
    die(std::string("--context ") + shown + ": the context must be a positive whole number of tokens");
  }
  return int64_t(v);
}

static bool is_profiling_command(const std::string& cmd) {
  return cmd == "profile" || cmd == "kernels" || cmd == "logits" || cmd == "membw" || cmd == "kernelbench";
}

static void run_profiling(const std::string& cmd, int argc, char** argv) {
  if (argc < 3 || argv[2][0] == '-') die(cmd + " needs a BUNDLE folder as its first argument");
  std::string bundle = argv[2];
  std::string lib_dir = exe_dir();
  bool verify = true;
  ProfileArgs a;
  if (cmd == "kernels") a.n = 32;
  if (cmd == "membw") a.min_reps = 5;
  if (cmd == "kernelbench") a.min_reps = 7, a.warmup = 2;
  std::vector<BenchFn> fns;
  double min_time = 0.02;
  for (int i = 3; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&] { return flag_value(argc, argv, i, flag); };
    auto number = [&] { return flag_number(argc, argv, i, flag); };
    bool timed = cmd == "profile" || cmd == "kernels";
    bool gated = cmd == "profile" || cmd == "kernelbench";  // the thermal gate
    if (flag == "--lib-dir") lib_dir = value();
    else if (flag == "--threads") setenv("TVM_NUM_THREADS", value().c_str(), 1), g_user_threads = true;
    else if (flag == "--no-verify") verify = false;
    else if (flag == "--context") a.context = context_flag(number());
    else if (flag == "--seed") a.seed = uint64_t(number());
    else if (timed && flag == "-p") a.p = int64_t(number());
    else if (timed && flag == "-n") a.n = int64_t(number());
    else if ((timed || cmd == "kernelbench") && flag == "--warmup") a.warmup = int64_t(number());
    else if ((cmd == "profile" || cmd == "membw" || cmd == "kernelbench") && flag == "-r") a.min_reps = int64_t(number());
    else if (cmd == "profile" && flag == "--max-reps") a.max_reps = int64_t(number());
    else if (cmd == "profile" && flag == "--target-rsd") a.target_rsd = number();
    else if (gated && flag == "--cool-below") a.cool_below = number();
    else if (gated && flag == "--cool-timeout") a.cool_timeout = number();
    else if (gated && flag == "--cool-poll") a.cool_poll = number();
    else if (gated && flag == "--sysroot") a.sysroot = value();
    else if (cmd == "kernelbench" && flag == "--fn") fns.push_back(parse_fn(value()));
    else if (cmd == "kernelbench" && flag == "--min-time") min_time = number();
    else if (cmd == "logits" && flag == "--tokens")
      for (int32_t t : parse_token_list(flag, value())) a.tokens.push_back(t);
    else if (cmd == "logits" && flag == "--prefill") a.prefill = int64_t(number());
    else if (cmd == "membw" && flag == "--mb") a.mb = int64_t(number());
    else die("unknown option '" + flag + "' for " + cmd + "; see the usage at the top of runner.cc");
  }
  if (cmd == "profile" && a.max_reps < a.min_reps) a.max_reps = a.min_reps;
  if (cmd == "membw") return cmd_membw(a);

  double t0 = now_s();
  Manifest m = load_manifest(bundle, verify);
  // A KV cache for the context the run needs (whole pages), not the bundle's maximum.
  apply_context(m, a.context);
  if (cmd == "kernelbench") {
    if (m.device_api != "cpu") die("kernelbench times CPU kernels; bundle " + bundle + " is for " + m.device_api);
    load_runtime(lib_dir, m);
    return cmd_kernelbench(bundle, fns, a, min_time);
  }
  if (cmd == "kernels")
    g_wrap_library = m.device_api == "opencl" || m.device_api == "webgpu" ? wrap_device_kernels : wrap_library;
  apply_tuned_threads(m);
  load_runtime(lib_dir, m);
  if (cmd == "kernels" && m.device_api == "webgpu" && !getenv("EDGESMITH_WEBGPU_NO_TIMESTAMPS") &&
      global("edgesmith.webgpu.timestamps")(true).cast<bool>())
    g_device_timestamps = true, g_wrap_library = nullptr;  // timed on the device instead
  Model model = load_model(bundle, m);
  double load_s = now_s() - t0;
  if (cmd == "profile") cmd_profile(model, m, load_s, a);
  else if (cmd == "kernels") cmd_kernels(model, m, a);
  else cmd_logits(model, m, a);
}

// ----------------------------------------------------------------------------
// CLI

static const char* kUsage =
    "usage: runner generate BUNDLE --tokens 1,2,3 -n N [--temperature T] [--top-p P] [--seed S]\n"
    "                       [--stop-ids a,b] [--stream] [--interactive: turns of ids on stdin]\n"
    "       runner bench BUNDLE [-p 128] [-n 128] [--warmup 1] [-r 5] [--seed S]\n"
    "       runner version\n"
    "options for both: [--lib-dir DIR] [--threads N] [--no-verify] [--context N]\n";

static void run(int argc, char** argv) {
  if (argc < 2) die(std::string("no command; ") + kUsage);
  std::string cmd = argv[1];
  if (cmd == "version") {
    printf("{\"tvm_version\": \"%s\", \"arch\": \"%s\"}\n", EDGESMITH_TVM_VERSION, kArch);
    return;
  }
  if (is_profiling_command(cmd)) return run_profiling(cmd, argc, argv);
  if (cmd != "generate" && cmd != "bench")
    die("unknown command '" + cmd + "'; use generate, bench, profile, kernels, logits, membw, kernelbench or version");
  if (argc < 3 || argv[2][0] == '-') die(cmd + " needs a BUNDLE folder as its first argument");
  std::string bundle = argv[2];
  std::string lib_dir = exe_dir();
  bool verify = true;
  int64_t context = 0;
  GenerateArgs g;
  BenchArgs b;

  for (int i = 3; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&] { return flag_value(argc, argv, i, flag); };
    auto number = [&] { return flag_number(argc, argv, i, flag); };
    if (flag == "--lib-dir") lib_dir = value();
    else if (flag == "--threads")  // before the runtime starts its pool
      setenv("TVM_NUM_THREADS", value().c_str(), 1), g_user_threads = true;
    else if (flag == "--no-verify") verify = false;
    else if (flag == "--context") context = context_flag(number());
    else if (flag == "--seed") g.seed = b.seed = uint64_t(number());
    else if (flag == "-n") g.n = b.n = int64_t(number());
    else if (cmd == "generate" && flag == "--tokens")
      for (int32_t t : parse_token_list(flag, value())) g.tokens.push_back(t);
    else if (cmd == "generate" && flag == "--temperature") g.temperature = float(number());
    else if (cmd == "generate" && flag == "--top-p") g.top_p = float(number());
    else if (cmd == "generate" && flag == "--stop-ids")
      for (int32_t t : parse_token_list(flag, value())) g.stop_ids.insert(t);
    else if (cmd == "generate" && flag == "--stream") g.stream = true;
    else if (cmd == "generate" && flag == "--interactive") g.interactive = true;
    else if (cmd == "bench" && flag == "-p") b.p = int64_t(number());
    else if (cmd == "bench" && flag == "--warmup") b.warmup = int64_t(number());
    else if (cmd == "bench" && (flag == "-r" || flag == "--reps")) b.reps = int64_t(number());
    else die("unknown option '" + flag + "' for " + cmd + "; see `runner` usage");
  }

  double t0 = now_s();
  Manifest m = load_manifest(bundle, verify);
  apply_context(m, context);
  apply_tuned_threads(m);
  load_runtime(lib_dir, m);
  Model model = load_model(bundle, m);
  double load_s = now_s() - t0;
  if (cmd == "generate") (g.interactive ? cmd_interactive : cmd_generate)(model, m, load_s, g);
  else cmd_bench(model, m, load_s, b);
}

// TVM's CPU pool halves the core count on x86 (it assumes hyper-threads), which is one thread on a
// 2-core VM: use every core this process may run on, unless TVM_NUM_THREADS or --threads says
// (or, once the manifest is read, the thread count the bundle was tuned for: apply_tuned_threads).
static void use_all_cores() {
  if (getenv("TVM_NUM_THREADS")) {
    g_user_threads = true;
    return;
  }
  int n = int(std::thread::hardware_concurrency());
#if !defined(__APPLE__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
#endif
  if (n > 0) setenv("TVM_NUM_THREADS", std::to_string(n).c_str(), 1);
}

// OpenCL and WebGPU bundles: what the plug-in (libedgesmith_opencl.so, libedgesmith_webgpu.so)
// ran on and compiled, one JSON line.
static void report_device_runtime() {
  if (auto report = ffi::Function::GetGlobal("edgesmith.opencl.report"))
    printf("{\"opencl\": %s}\n", std::string((*report)().cast<ffi::String>()).c_str());
  if (auto report = ffi::Function::GetGlobal("edgesmith.webgpu.report"))
    printf("{\"webgpu\": %s}\n", std::string((*report)().cast<ffi::String>()).c_str());
}

int main(int argc, char** argv) {
  use_all_cores();
  try {
    run(argc, argv);
    report_device_runtime();
  } catch (const ffi::Error& err) {
    // TVM messages can span lines (with a traceback): the first line says what went wrong.
    std::string msg = err.message();
    if (err.kind() == "OpenCLError") die("OpenCL: " + msg.substr(0, msg.find('\n')));  // our plug-ins' own
    if (err.kind() == "WebGPUError") die("WebGPU: " + msg.substr(0, msg.find('\n')));
    die("TVM " + err.kind() + ": " + msg.substr(0, msg.find('\n')));
  } catch (const std::exception& err) {
    die(err.what());
  }
  return 0;
}
