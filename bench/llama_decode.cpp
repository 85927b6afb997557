// A minimal llama.cpp driver for bench/arm_cost.py: the same work as `runner generate` of an
// edgesmith bundle (one prefill of fixed token ids, then greedy decode steps), on one thread,
// built for aarch64 against llama.h and run under qemu so its instructions can be counted.
//
//   llama_decode run MODEL.gguf --tokens 1,2,3 -n N    prefill, then N-1 decode steps (N tokens
//                                                      generated, as the runner counts them);
//                                                      prints the generated ids
//   llama_decode quantize IN.gguf OUT.gguf             every tensor to Q4_0 (llama.cpp's own quantizer)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int die(const std::string& msg) {
  fprintf(stderr, "llama_decode: %s\n", msg.c_str());
  return 2;
}

static std::vector<llama_token> parse_ids(const char* s) {
  std::vector<llama_token> ids;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    ids.push_back(llama_token(strtol(p, &end, 10)));
    if (end == p) return {};
    p = *end == ',' ? end + 1 : end;
  }
  return ids;
}

static int quantize(const char* in, const char* out) {
  llama_model_quantize_params params = llama_model_quantize_default_params();
  params.ftype = LLAMA_FTYPE_MOSTLY_Q4_0;
  params.pure = true;  // the output (lm_head) and embedding too, like an edgesmith q4 bundle
  params.nthread = 1;
  return llama_model_quantize(in, out, &params) == 0 ? 0 : die("llama_model_quantize failed");
}

static int run(const char* path, const std::vector<llama_token>& prompt, int n) {
  llama_model_params mp = llama_model_default_params();
  llama_model* model = llama_model_load_from_file(path, mp);
  if (!model) return die(std::string("cannot load ") + path);
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = uint32_t(prompt.size() + n + 16);
  cp.n_batch = cp.n_ubatch = uint32_t(prompt.size());
  cp.n_threads = cp.n_threads_batch = 1;  // one thread: no spinning workers in the count
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) return die("cannot create a context");
  const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

  std::vector<llama_token> tokens(prompt);
  if (llama_decode(ctx, llama_batch_get_one(tokens.data(), int32_t(tokens.size())))) return die("prefill failed");
  std::vector<llama_token> out;
  for (int step = 0; step < n; ++step) {
    const float* logits = llama_get_logits_ith(ctx, -1);
    llama_token best = 0;
    for (int v = 1; v < vocab; ++v)
      if (logits[v] > logits[best]) best = v;
    out.push_back(best);
    if (step + 1 == n) break;  // the last token needs no forward pass
    if (llama_decode(ctx, llama_batch_get_one(&out.back(), 1))) return die("decode failed");
  }
  for (size_t i = 0; i < out.size(); ++i) printf("%s%d", i ? "," : "", out[i]);
  printf("\n");
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

int main(int argc, char** argv) {
  llama_log_set(quiet, nullptr);
  llama_backend_init();
  if (argc == 4 && !strcmp(argv[1], "quantize")) return quantize(argv[2], argv[3]);
  if (argc == 7 && !strcmp(argv[1], "run") && !strcmp(argv[3], "--tokens") && !strcmp(argv[5], "-n")) {
    std::vector<llama_token> prompt = parse_ids(argv[4]);
    int n = atoi(argv[6]);
    if (prompt.empty() || n < 1) return die("--tokens needs comma-separated ids and -n a count >= 1");
    return run(argv[2], prompt, n);
  }
  return die("usage: llama_decode run MODEL.gguf --tokens 1,2,3 -n N | llama_decode quantize IN.gguf OUT.gguf");
}
