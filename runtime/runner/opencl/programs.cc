// programs.cc — clBuildProgram with a binary cache on disk; build errors with the compiler's log.

#include "programs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace edgesmith {
namespace ocl {

static const char kMagic[8] = {'E', 'S', 'O', 'C', 'L', 'B', 'I', 'N'};
static const uint32_t kFormat = 1;
static const char* kBuildOptions = "";  // part of the cache key if it ever changes

ProgramStats& program_stats() {
  static ProgramStats stats;
  return stats;
}

std::string ProgramStats::json() const {
  std::ostringstream o;
  o << "{\"built\": " << built << ", \"from_cache\": " << from_cache << ", \"cache_writes\": " << cache_writes
    << ", \"cache_rejected\": " << cache_rejected << ", \"build_s\": " << build_s << ", \"cache_dir\": \"";
  for (char c : cache_dir) o << (c == '"' || c == '\\' ? "\\" : "") << c;
  o << "\"}";
  return o.str();
}

static double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

static uint64_t fnv64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

static std::string hex64(uint64_t v) {
  char buf[17];
  snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

static bool make_dirs(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i < path.size() && path[i] != '/') continue;
    std::string part = path.substr(0, i);
    if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) return false;
  }
  return true;
}

static std::string cache_dir() {
  static std::string dir = [] {
    const char* env = getenv("EDGESMITH_OPENCL_CACHE");
    std::string d;
    if (env && *env) {
      if (std::string(env) == "off") return std::string();
      d = env;
    } else if (const char* xdg = getenv("XDG_CACHE_HOME"); xdg && *xdg) {
      d = std::string(xdg) + "/edgesmith/opencl";
    } else if (const char* home = getenv("HOME"); home && *home) {
      d = std::string(home) + "/.cache/edgesmith/opencl";
    } else {
      return std::string();
    }
    return make_dirs(d) ? d : std::string();  // a read-only disk: no cache, not an error
  }();
  program_stats().cache_dir = dir;
  return dir;
}

// ---------------------------------------------------------------------------- cache file

namespace {
struct Key {
  std::string identity;  // device identity + build options
  uint64_t source_len, source_hash;
  std::string path;      // "" when the cache is off
};
}  // namespace

static Key make_key(const Context& ctx, const std::string& source) {
  Key k{ctx.facts.identity() + "\n" + kBuildOptions, source.size(), fnv64(source), ""};
  std::string dir = cache_dir();
  if (!dir.empty()) k.path = dir + "/" + hex64(k.source_hash) + "-" + hex64(fnv64(k.identity)) + ".bin";
  return k;
}

static void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }

static bool read_cached(const Key& k, std::vector<unsigned char>& binary) {
  std::ifstream in(k.path, std::ios::binary);
  if (!in) return false;
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (pos + n > data.size()) return false;
    memcpy(dst, data.data() + pos, n);
    pos += n;
    return true;
  };
  char magic[8];
  uint32_t format = 0;
  uint64_t id_len = 0, src_len = 0, src_hash = 0, bin_len = 0;
  if (!take(magic, 8) || memcmp(magic, kMagic, 8) != 0 || !take(&format, 4) || format != kFormat) return false;
  if (!take(&id_len, 8) || pos + id_len > data.size() || data.compare(pos, id_len, k.identity) != 0) return false;
  pos += id_len;
  if (!take(&src_len, 8) || !take(&src_hash, 8) || src_len != k.source_len || src_hash != k.source_hash) return false;
  if (!take(&bin_len, 8) || bin_len == 0 || pos + bin_len != data.size()) return false;
  binary.assign(data.begin() + pos, data.end());
  return true;
}

static void write_cached(const Key& k, const std::vector<unsigned char>& binary) {
  std::string out(kMagic, 8);
  out.append(reinterpret_cast<const char*>(&kFormat), 4);
  put_u64(out, k.identity.size());
  out += k.identity;
  put_u64(out, k.source_len);
  put_u64(out, k.source_hash);
  put_u64(out, binary.size());
  out.append(reinterpret_cast<const char*>(binary.data()), binary.size());
  std::string tmp = k.path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f || !f.write(out.data(), out.size())) {
      unlink(tmp.c_str());
      return;
    }
  }
  if (rename(tmp.c_str(), k.path.c_str()) == 0) program_stats().cache_writes += 1;
  else unlink(tmp.c_str());
}

// ---------------------------------------------------------------------------- building

static std::string build_log(const Context& ctx, cl_program program) {
  size_t n = 0;
  api().clGetProgramBuildInfo(program, ctx.device, CL_PROGRAM_BUILD_LOG, 0, nullptr, &n);
  std::string log(n, '\0');
  if (n) api().clGetProgramBuildInfo(program, ctx.device, CL_PROGRAM_BUILD_LOG, n, &log[0], nullptr);
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  return log;
}

// The compiler's error lines (at most three), one line; the whole log goes to a file.
[[noreturn]] static void build_failed(const Context& ctx, const std::string& kernel, const std::string& source,
                                      cl_int err, const std::string& log) {
  std::string where = program_stats().cache_dir.empty() ? "/tmp" : program_stats().cache_dir;
  std::string log_path = where + "/build-" + kernel + ".log";
  std::ofstream(log_path) << "kernel " << kernel << " on " << ctx.facts.name << " (" << ctx.facts.driver << ")\n"
                          << log << "\n\n--- source ---\n" << source;
  std::istringstream lines(log);
  std::string line, errors;
  int kept = 0;
  while (std::getline(lines, line) && kept < 3) {
    std::string lower = line;
    for (char& c : lower) c = char(tolower(c));
    if (lower.find("error") == std::string::npos) continue;
    if (line.size() > 300) line = line.substr(0, 300) + "...";
    errors += (kept++ ? " | " : "") + line;
  }
  if (errors.empty()) errors = log.empty() ? "(the compiler gave no log)" : log.substr(0, 300);
  std::string hint;
  if (source.find("cl_khr_fp16") != std::string::npos && !ctx.facts.fp16)
    hint = "; the kernels compute in float16 (a q4f16 bundle) and this device has no cl_khr_fp16: compile the "
           "bundle with --quant q4f32";
  fail("building OpenCL kernel '" + kernel + "' for '" + ctx.facts.name + "' (" + ctx.facts.platform + " " +
       ctx.facts.driver + ") failed: " + error_name(err) + ": " + errors + hint + " (full log: " + log_path + ")");
}

// Some drivers print the compiler's diagnostics on stderr as well as into the build log (PoCL's
// clang: "1 error generated."): stderr is muted during the build, so a failure is the runner's
// one line; the log, kept whole in a file, has every word.
static cl_int timed_build(const Context& ctx, cl_program program) {
  double t0 = now_s();
  fflush(stderr);
  int saved = dup(2), devnull = open("/dev/null", O_WRONLY);
  if (saved >= 0 && devnull >= 0) dup2(devnull, 2);
  cl_int err = api().clBuildProgram(program, 1, &ctx.device, kBuildOptions, nullptr, nullptr);
  if (saved >= 0 && devnull >= 0) dup2(saved, 2);
  if (saved >= 0) close(saved);
  if (devnull >= 0) close(devnull);
  program_stats().build_s += now_s() - t0;
  return err;
}

static cl_program from_cache(Context& ctx, const Key& k) {
  std::vector<unsigned char> binary;
  if (k.path.empty() || !read_cached(k, binary)) return nullptr;
  const unsigned char* bin = binary.data();
  size_t size = binary.size();
  cl_int status = CL_SUCCESS, err = CL_SUCCESS;
  cl_program program = api().clCreateProgramWithBinary(ctx.context, 1, &ctx.device, &size, &bin, &status, &err);
  if (err == CL_SUCCESS && status == CL_SUCCESS && timed_build(ctx, program) == CL_SUCCESS) {
    program_stats().from_cache += 1;
    return program;
  }
  if (program) api().clReleaseProgram(program);
  program_stats().cache_rejected += 1;  // a driver update the identity did not catch: rebuilt below
  return nullptr;
}

static std::vector<unsigned char> program_binary(cl_program program) {
  size_t size = 0;
  if (api().clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, sizeof(size), &size, nullptr) != CL_SUCCESS || !size)
    return {};
  std::vector<unsigned char> binary(size);
  unsigned char* ptr = binary.data();
  if (api().clGetProgramInfo(program, CL_PROGRAM_BINARIES, sizeof(ptr), &ptr, nullptr) != CL_SUCCESS) return {};
  return binary;
}

cl_program build_program(Context& ctx, const std::string& kernel, const std::string& source) {
  Key k = make_key(ctx, source);
  if (cl_program cached = from_cache(ctx, k)) return cached;
  const char* text = source.c_str();
  size_t len = source.size();
  cl_int err = CL_SUCCESS;
  cl_program program = api().clCreateProgramWithSource(ctx.context, 1, &text, &len, &err);
  ctx.check(err, "creating the program of kernel '" + kernel + "'");
  err = timed_build(ctx, program);
  if (err != CL_SUCCESS) {
    std::string log = build_log(ctx, program);
    api().clReleaseProgram(program);
    build_failed(ctx, kernel, source, err, log);
  }
  program_stats().built += 1;
  if (!k.path.empty()) {
    std::vector<unsigned char> binary = program_binary(program);
    if (!binary.empty()) write_cached(k, binary);
  }
  return program;
}

}  // namespace ocl
}  // namespace edgesmith
