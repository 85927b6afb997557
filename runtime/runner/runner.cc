// runner.cc — runs an edgesmith bundle on the device, with no Python there.
//
//   runner generate BUNDLE --tokens 1,2,3 -n 32 [--temperature T] [--top-p P] [--seed S]
//                          [--stop-ids a,b] [--stream] [common options]
//   runner generate BUNDLE --interactive -n 32 [...]   a conversation on one KV cache: each
//                          stdin line is a turn of token ids (section "interactive")
//   runner bench    BUNDLE -p 128 -n 128 [--warmup 1] [-r 5] [common options]
//   runner version
//   common options: [--lib-dir DIR] [--threads N] [--no-verify] [--context N]
//                   [--cpus LIST] [--sysroot DIR]  (cores.h: by default the big cluster from sysfs)
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
//   their common options: [--context N] (KV cache sized for N tokens) and the ones above;
//   profile, kernels and logits also [--cpus LIST] (cores.h; by default the big cluster)
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
// Sections: utilities · sha256 and manifest (sha256.h, manifest.h) · model (VM, params) · KV cache ·
//           sampler · generate · interactive · measuring (profiling.h: bench, sensors, profile,
//           kernels, logits, membw; kernelbench.h) · CLI. The headers are parts of this file, each
//           included once at its place: one translation unit, built with one compiler call.

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
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
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


// ----------------------------------------------------------------------------
// sha256 and the manifest: every file checked before anything is loaded

#include "sha256.h"    // Sha256, sha256_file
#include "manifest.h"  // Manifest, load_manifest: the bundle's manifest.json and its checks
#include "cores.h"
#include "kv_append.h"  // edgesmith.kv_fused_append: split + RoPE + KV append in one kernel (GPU decode)

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

// The cores decode runs on (cores.h): --cpus LIST, else, unless --threads/TVM_NUM_THREADS chose a
// count (then wherever the OS puts the threads, as before), the big cluster from sysfs. The process
// is pinned there before the runtime starts its pool (whose threads inherit it: TVM's own binding,
// by cpuinfo_max_freq over every core, is turned off), with one thread per CPU; a tuned thread
// count (apply_tuned_threads, after this) still wins over that count.
static CoreChoice g_cores;
static void apply_cores(bool cpus_given, const std::string& cpus_flag, const std::string& sysroot) {
  std::vector<int> allowed = allowed_cpus();
  if (cpus_given) {
    g_cores = {parse_cpu_list(cpus_flag), "--cpus"};
    if (g_cores.cpus.empty()) die("--cpus '" + cpus_flag + "' is not a CPU list (like 4-7 or 0,2,5)");
    for (int c : g_cores.cpus)
      if (std::find(allowed.begin(), allowed.end(), c) == allowed.end())
        die("cannot run on CPUs " + cpu_list_json(g_cores.cpus) + ": this process may use " +
            cpu_list_json(allowed) + "; pass --cpus with some of those");
  } else if (g_user_threads) {
    g_cores = {allowed, "--threads"};
    return;
  } else {
    g_cores = big_cluster(sysroot, allowed);
  }
  if (g_cores.from == "--cpus" || g_cores.cpus.size() < allowed.size()) {
    if (!pin_to(g_cores.cpus))
      die("cannot run on CPUs " + cpu_list_json(g_cores.cpus) + ": this process may use " + cpu_list_json(allowed) +
          "; pass --cpus with some of those");
    setenv("TVM_BIND_THREADS", "0", 1);
  }
  if (!g_user_threads) setenv("TVM_NUM_THREADS", std::to_string(g_cores.cpus.size()).c_str(), 1);
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
  kv_append::register_factory();  // a GPU bundle's KV cache asks for it (kv_append.h)
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

// Tokens a run may hold: what --context asked for, not the whole pages its cache is made of.
static int64_t context_limit(const Manifest& m) { return m.context ? m.context : m.max_total_seq_len; }

// ----------------------------------------------------------------------------
// KV cache: one sequence (id 0) per generation; every forward is bracketed by
// begin_forward(seq ids, token counts) / end_forward.
//
// Sliding window (compiler/context.py says it whole): when a run's context is longer than the
// model's window W, the cache slides. TVM's paged cache is created with support_sliding_window
// and each new sequence told to keep W - 1 keys: before a forward it hands attention the last
// W - 1 keys (the kernels mask per query), then frees every page wholly before them. The cache is
// then made of W - 1 + one prefill chunk tokens of pages, whatever the context, and its query
// positions are window-relative: the model takes each forward's absolute first position
// (seq_pos) from here instead.

// Tokens of pages a run allocates: the context (whole pages), or where the window slides the
// W - 1 keys it keeps plus one prefill chunk. compiler/context.py (cache_tokens) says the same.
static int64_t window_keep(const Manifest& m, int64_t context) {
  return m.sliding_window > 0 && context > m.sliding_window ? std::max<int64_t>(m.sliding_window - 1, 1) : 0;
}

static int64_t kv_cache_tokens(const Manifest& m, int64_t context) {
  int64_t keep = window_keep(m, context);
  int64_t tokens = keep ? std::min(context, keep + m.prefill_chunk) : context;
  return (tokens + m.page_size - 1) / m.page_size * m.page_size;
}

struct KVSequence {  // the sequence in the cache: how many tokens it holds (its next position)
  int64_t pos = 0;
};

struct KVCache {
  ffi::Any obj;
  std::shared_ptr<KVSequence> seq = std::make_shared<KVSequence>();
  int64_t keep = 0;  // > 0: the cache slides, keeping this many keys (W - 1)
  int64_t tokens = 0;  // tokens of pages it is made of
  ffi::Function begin = global("vm.builtin.kv_state_begin_forward");
  ffi::Function end = global("vm.builtin.kv_state_end_forward");
  // add(obj, id): a new sequence at position 0 (told its window when the cache slides)
  ffi::Function add;
  ffi::Function remove = global("vm.builtin.kv_state_remove_sequence");
};

static KVCache create_kv_cache(const Model& model, const Manifest& m) {
  KVCache kv;
  int64_t context = context_limit(m);
  kv.keep = window_keep(m, context);
  kv.tokens = kv_cache_tokens(m, context);
  int64_t a[5] = {1, kv.tokens, m.prefill_chunk, m.page_size, kv.keep ? 1 : 0};
  // nn.spec `int` arguments are exported as 1-element shapes; plain int64 is accepted too
  // for a library whose function takes scalars.
  try {
    kv.obj = model.create_kv(ffi::Shape({a[0]}), ffi::Shape({a[1]}), ffi::Shape({a[2]}),
                             ffi::Shape({a[3]}), ffi::Shape({a[4]}));
  } catch (const ffi::Error& err) {
    if (err.kind() != "TypeError") throw;
    kv.obj = model.create_kv(a[0], a[1], a[2], a[3], a[4]);
  }
  ffi::Function add_seq = global("vm.builtin.kv_state_add_sequence");
  ffi::Function slide = kv.keep ? global("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")
                                : ffi::Function();
  int64_t keep = kv.keep;
  std::shared_ptr<KVSequence> seq = kv.seq;
  kv.add = ffi::Function::FromTyped([=](ffi::Any obj, int64_t id) {
    add_seq(obj, id);
    if (keep) slide(obj, id, int32_t(keep), int32_t(0));  // no attention sink
    seq->pos = 0;
  });
  return kv;
}

// One forward of `n` tokens through `fn` (prefill or decode) -> logits of the last token.
// logits: (1, 1, vocab) float32, copied into `out`. total_len >= 0 (prefill only): the length
// of the sequence once the whole prompt is in, passed to the model as a 1-element shape; it
// picks longrope's factors for every chunk as one forward over the prompt would. Every forward
// is given its first token's position (seq_pos), as a 1-element shape too.
static void forward(const Model& model, KVCache& kv, const ffi::Function& fn, const int32_t* ids,
                    int64_t n, std::vector<float>& out, int64_t total_len = -1) {
  kv.begin(kv.obj, ffi::Shape({0}), ffi::Shape({n}));
  ffi::Shape pos({kv.seq->pos});
  ffi::Array<ffi::Any> ret = (total_len >= 0 ? fn(make_input(model, ids, n), kv.obj, ffi::Shape({total_len}), pos, model.params)
                                             : fn(make_input(model, ids, n), kv.obj, pos, model.params))
                                 .cast<ffi::Array<ffi::Any>>();
  kv.end(kv.obj);
  kv.seq->pos += n;
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

// A prompt of any length, appended to the sequence (a new one, or a conversation's next turn):
// chunks of at most prefill_chunk tokens, each its own forward, each told the sequence's length
// once the whole prompt is in.
static void prefill(const Model& model, const Manifest& m, KVCache& kv,
                    const std::vector<int32_t>& prompt, std::vector<float>& logits) {
  int64_t total = kv.seq->pos + int64_t(prompt.size());
  for (size_t i = 0; i < prompt.size(); i += m.prefill_chunk) {
    int64_t n = std::min<int64_t>(m.prefill_chunk, prompt.size() - i);
    forward(model, kv, model.prefill, prompt.data() + i, n, logits, total);
  }
}

// --context N: a KV cache for N tokens (whole pages), at most the compiled context; a run holds
// at most N tokens (prompt + new), as asked, though its cache's last page has room for more.
static int64_t g_compiled_context = 0;  // the bundle's max_total_seq_len, before --context

static void apply_context(Manifest& m, int64_t context) {
  g_compiled_context = m.max_total_seq_len;
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

// Interactive only (section "interactive"): stdin's line the reply being generated answers, and
// the line the last "!stop" came after; equal: that reply is to stop.
static std::atomic<int64_t> g_line_running{0}, g_line_stopped{-1};

static const char* decode_tokens(const Model& model, KVCache& kv, const GenerateArgs& a, Rng& rng,
                                 std::vector<float>& logits, std::vector<int32_t>& out) {
  while (int64_t(out.size()) < a.n) {
    check_finite(logits, out.empty() ? "after the prompt" : "at decode step " + std::to_string(out.size()));
    int32_t tok = sample(logits, a.temperature, a.top_p, rng);
    out.push_back(tok);
    if (a.stream) printf("{\"token\": %d}\n", tok), fflush(stdout);
    if (a.stop_ids.count(tok)) return "stop";
    if (int64_t(out.size()) == a.n) break;
    // Interactive: a "!stop" line came. Checked before the token is fed, so that a cancelled reply
    // leaves the cache as every other end does: all but the last sampled token in it.
    if (g_line_stopped.load() == g_line_running.load()) return "cancelled";
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
  if (prompt + n <= context_limit(m)) return;
  // Advice that can work: a larger --context only while it is below what the bundle was compiled for.
  std::string advice = prompt < context_limit(m) ? "ask for at most " + std::to_string(context_limit(m) - prompt) +
                                                       " new tokens (-n), or shorten the prompt"
                                                 : "shorten the prompt";
  if (m.context && m.context < g_compiled_context)
    advice += ", or run with a larger --context (up to the compiled " + std::to_string(g_compiled_context) + ")";
  else
    advice += ", or recompile with a larger --context";
  die("prompt (" + std::to_string(prompt) + ") + new tokens (" + std::to_string(n) + ") exceed " +
      context_name(m) + "; " + advice);
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
  if (a.stream) printf("{\"loaded\": true, \"load_s\": %.6f}\n", load_s), fflush(stdout);  // the host's progress line
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
         "\"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, \"peak_rss_kb\": %ld, \"threads\": %d, "
         "\"kv_cache_tokens\": %ld, \"kv_window_keep\": %ld, \"cpus\": %s, \"cpus_from\": \"%s\"}\n",
         json_ints(out).c_str(), a.tokens.size(), stop_reason, load_s, prefill_s, decode_s,
         prefill_s > 0 ? a.tokens.size() / prefill_s : 0.0,
         decode_s > 0 && decoded ? decoded / decode_s : 0.0, peak_rss_kb(), pool_threads(), long(kv.tokens),
         long(kv.keep), cpu_list_json(g_cores.cpus).c_str(), g_cores.from.c_str());
}

// ----------------------------------------------------------------------------
// interactive: a conversation on one KV cache (sequence 0 lives until the end). stdin is read on a
// thread of its own, so that a stop can arrive while a reply is being generated. Its lines:
//
//   1,2,3        a turn: the ids are appended to the sequence, then up to n tokens are generated as
//                in generate (streamed with --stream) and one result line closes the turn ("turn",
//                "context_tokens": tokens in the cache after it). The host sends the chat-formatted
//                user turn, led by the previous reply's last token (sampled, never fed).
//   {"ids": [1,2,3], "n": 64, "temperature": 0.7, "top_p": 0.9, "seed": 1, "stop_ids": [32007],
//    "reset": true}
//                a turn with options of its own (each optional but ids; the rest default to the
//                command line's); "reset": a new, empty sequence first (`edgesmith serve`'s requests,
//                a chat whose oldest turns were dropped to make room)
//   !stop        the reply to the last line before it ends after its current token (stop_reason
//                "cancelled"; a stop during the prompt's prefill ends it after one token). A stop
//                whose reply has already ended does nothing (the lines are counted: it never stops
//                a later turn, even one read before the stop's reply ended).
//   !reset       a new, empty sequence (the chat's /clear); answered {"reset": true}
//   (empty line or end of input) the end (a transport that cannot close stdin sends the empty line)
//
// The same bytes travel every transport (a pipe here, the SSH channel, adb's shell protocol): no
// signal has to reach the device, which is why a Ctrl-C is a line and not a SIGINT.


struct TurnReader {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<int64_t, std::string>> lines;  // (its number, the line)
  bool eof = false;
  int64_t count = 0;  // lines read (stops not counted)

  void read_all() {  // on its own thread, until the end of stdin
    std::string line;
    while (std::getline(std::cin, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line == "!stop") {
        g_line_stopped = count;
        continue;
      }
      std::lock_guard<std::mutex> g(mu);
      lines.emplace_back(++count, line);
      cv.notify_one();
      if (line.empty()) break;
    }
    std::lock_guard<std::mutex> g(mu);
    eof = true;
    cv.notify_one();
  }

  // The next line (false at the end); a stop after it stops what it starts.
  bool next(std::string& out) {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return !lines.empty() || eof; });
    if (lines.empty()) return false;
    g_line_running = lines.front().first;
    out = lines.front().second;
    lines.pop_front();
    return true;
  }
};

// A {"ids": ...} turn: its ids and options over the command line's.
static std::vector<int32_t> parse_json_turn(const std::string& line, int turn, GenerateArgs& a, bool& reset,
                                            bool& seeded) {
  std::string where = "turn " + std::to_string(turn);
  ffi::String err;
  ffi::json::Value root = ffi::json::Parse(line, &err);
  auto obj = root.as<ffi::json::Object>();
  if (!err.empty() || !obj) die(where + " is not a JSON object: " + std::string(err));
  auto number = [&](const char* key, double dflt) {
    auto it = obj->find(ffi::String(key));
    if (it == obj->end()) return dflt;
    if (auto i = (*it).second.as<int64_t>()) return double(*i);
    if (auto d = (*it).second.as<double>()) return *d;
    die(where + ": \"" + key + "\" must be a number");
  };
  auto ints = [&](const char* key) {
    std::vector<int32_t> out;
    auto it = obj->find(ffi::String(key));
    if (it == obj->end()) return out;
    auto arr = (*it).second.as<ffi::json::Array>();
    if (!arr) die(where + ": \"" + key + "\" must be a list of token ids");
    for (const ffi::Any& v : *arr) {
      auto i = v.as<int64_t>();
      if (!i || *i < INT32_MIN || *i > INT32_MAX) die(where + ": \"" + key + "\" must hold 32-bit integers");
      out.push_back(int32_t(*i));
    }
    return out;
  };
  a.n = int64_t(number("n", double(a.n)));
  a.temperature = float(number("temperature", a.temperature));
  a.top_p = float(number("top_p", a.top_p));
  auto seed_it = obj->find(ffi::String("seed"));
  seeded = seed_it != obj->end();
  if (seeded) a.seed = uint64_t(number("seed", 0));
  auto stops = obj->find(ffi::String("stop_ids"));
  if (stops != obj->end()) {
    a.stop_ids.clear();
    for (int32_t t : ints("stop_ids")) a.stop_ids.insert(t);
  }
  auto reset_it = obj->find(ffi::String("reset"));
  reset = reset_it != obj->end() && (*reset_it).second.as<bool>().value_or(false);
  if (a.n < 0) die(where + ": \"n\" cannot be negative");
  return ints("ids");
}

static void cmd_interactive(const Model& model, const Manifest& m, double load_s, const GenerateArgs& args) {
  if (!args.tokens.empty()) die("generate --interactive reads its turns from stdin; drop --tokens");
  KVCache kv = create_kv_cache(model, m);
  Rng rng(args.seed);
  std::vector<float> logits;
  int64_t context = 0;  // tokens fed so far
  kv.add(kv.obj, int64_t(0));
  // Never freed: the detached thread may still be inside read_all() (marking the end of input)
  // when this function returns; a reader on this stack would be gone under it (a crash at exit).
  TurnReader& reader = *new TurnReader();
  std::thread(&TurnReader::read_all, &reader).detach();  // blocked in a read at exit: the process ends it
  printf("{\"ready\": true, \"load_s\": %.6f}\n", load_s), fflush(stdout);
  std::string line;
  for (int turn = 1; reader.next(line);) {
    if (line.empty()) break;
    if (line == "!reset") {
      kv.remove(kv.obj, int64_t(0));
      kv.add(kv.obj, int64_t(0));
      context = 0;
      printf("{\"reset\": true}\n"), fflush(stdout);
      continue;
    }
    GenerateArgs a = args;
    bool reset = false, seeded = false;
    std::vector<int32_t> ids = line[0] == '{' ? parse_json_turn(line, turn, a, reset, seeded)
                                              : parse_token_list("turn " + std::to_string(turn), line);
    if (ids.empty()) die("turn " + std::to_string(turn) + " holds no token ids: '" + line + "'");
    check_ids(m, ids);
    if (reset) {
      kv.remove(kv.obj, int64_t(0));
      kv.add(kv.obj, int64_t(0));
      context = 0;
    }
    if (seeded) rng = Rng(a.seed);
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
    context += int64_t(ids.size()) + std::max<int64_t>(int64_t(out.size()) - 1, 0);  // the last sampled token is not fed (n 0: none)
    double prefill_s = t1 - t0, decode_s = t2 - t1;
    int64_t decoded = std::max<int64_t>(int64_t(out.size()) - 1, 0);
    printf("{\"turn\": %d, \"output_ids\": %s, \"prompt_tokens\": %zu, \"context_tokens\": %lld, "
           "\"stop_reason\": \"%s\", \"load_s\": %.6f, \"prefill_s\": %.6f, \"decode_s\": %.6f, "
           "\"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, \"peak_rss_kb\": %ld}\n",
           turn, json_ints(out).c_str(), ids.size(), (long long)context, stop_reason, load_s, prefill_s,
           decode_s, prefill_s > 0 ? ids.size() / prefill_s : 0.0,
           decode_s > 0 && decoded ? decoded / decode_s : 0.0, peak_rss_kb());
    fflush(stdout);
    ++turn;
  }
  g_line_running = -2;  // no reply runs now
  kv.remove(kv.obj, int64_t(0));
}

// ----------------------------------------------------------------------------
// measuring: bench, and the profiling commands (sensors, profile, kernels, logits, membw,
// kernelbench) that edgesmith profile and tune drive

#include "profiling.h"

// ----------------------------------------------------------------------------
// CLI

static const char* kUsage =
    "usage: runner generate BUNDLE --tokens 1,2,3 -n N [--temperature T] [--top-p P] [--seed S]\n"
    "                       [--stop-ids a,b] [--stream] [--interactive: turns of ids on stdin]\n"
    "       runner bench BUNDLE [-p 128] [-n 128] [--warmup 1] [-r 5] [--seed S]\n"
    "       runner version\n"
    "options for both: [--lib-dir DIR] [--threads N] [--cpus LIST] [--no-verify] [--context N]\n"
    "                  [--sysroot DIR: where /sys is read from, for the big cluster]\n";

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
  std::string cpus_flag, sysroot;
  bool cpus_given = false;
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
    else if (flag == "--cpus") cpus_flag = value(), cpus_given = true;
    else if (flag == "--sysroot") sysroot = value();
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
  apply_cores(cpus_given, cpus_flag, sysroot);
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
