// edgeexport-check: the parity check of an edgeexport OpenVINO artifact, on the device, in C++.
//
// Reads ARTIFACT/manifest.json (schema 2), checks the sha256 of every file it lists and of every
// golden tensor, compiles model.xml with the OpenVINO runtime and the manifest's inference precision
// hint, runs every golden case, compares each output with PyTorch's at the manifest's tolerance (the
// criterion of docs/parity.md), prints one row per output and the latency of the example case.
// Exit codes: 0 every output passes, 1 a mismatch, 2 a usage or I/O error (one "error:" line).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <nlohmann/json.hpp>
#include <openvino/openvino.hpp>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t kSchemaVersion = 2;
constexpr std::uint64_t kAlignment = 64;
constexpr std::uintmax_t kMaxManifestBytes = 4 << 20;
constexpr int kWarmupRuns = 3;
constexpr const char* kUsage = "usage: edgeexport-check ARTIFACT_DIR [--iterations N] [--device NAME]";

// A usage, I/O or artifact problem: main prints it as one "error:" line and exits 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
std::string format(const char* pattern, Args... args) {
  const int size = std::snprintf(nullptr, 0, pattern, args...);
  std::string text(static_cast<std::size_t>(size), '\0');
  std::snprintf(text.data(), text.size() + 1, pattern, args...);
  return text;
}

std::string in_quotes(const std::string& text) { return "'" + text + "'"; }

// ------------------------------------------------------------------ manifest fields

std::string path_of(const std::string& where, const std::string& key) {
  return where.empty() ? key : where + "." + key;
}

const json& member(const json& object, const std::string& key, const std::string& where) {
  if (!object.is_object()) throw UsageError("manifest " + (where.empty() ? "root" : where) + " must be a JSON object");
  const auto found = object.find(key);
  if (found == object.end())
    throw UsageError("manifest is missing field " + in_quotes(path_of(where, key)) +
                     "; the artifact is incomplete, re-run convert");
  return *found;
}

// The member `key`, refused unless (value.*is_kind)() holds.
const json& typed(const json& parent, const std::string& key, const std::string& where,
                  bool (json::*is_kind)() const noexcept, const char* kind) {
  const json& value = member(parent, key, where);
  if (!(value.*is_kind)())
    throw UsageError("manifest field " + in_quotes(path_of(where, key)) + " must be " + kind +
                     "; the artifact is corrupt");
  return value;
}

std::string text(const json& parent, const std::string& key, const std::string& where) {
  return typed(parent, key, where, &json::is_string, "a string").get<std::string>();
}

double number(const json& parent, const std::string& key, const std::string& where) {
  const double value = typed(parent, key, where, &json::is_number, "a number").get<double>();
  if (value < 0)
    throw UsageError("manifest field " + in_quotes(path_of(where, key)) +
                     " must be a non-negative number; the artifact is corrupt");
  return value;
}

std::uint64_t count(const json& value, const std::string& where) {
  if (!value.is_number_unsigned())
    throw UsageError("manifest field " + in_quotes(where) + " must be a non-negative int; the artifact is corrupt");
  return value.get<std::uint64_t>();
}

const json& array(const json& parent, const std::string& key, const std::string& where) {
  return typed(parent, key, where, &json::is_array, "a list");
}

const json& object(const json& parent, const std::string& key, const std::string& where) {
  return typed(parent, key, where, &json::is_object, "an object");
}

// ------------------------------------------------------------------ files and hashes

// sha256 with OpenSSL's EVP interface, fed in pieces.
class Sha256 {
 public:
  Sha256() : context_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!context_ || EVP_DigestInit_ex(context_.get(), EVP_sha256(), nullptr) != 1)
      throw UsageError("OpenSSL cannot compute sha256");
  }
  void update(const void* data, std::size_t size) { EVP_DigestUpdate(context_.get(), data, size); }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    EVP_DigestFinal_ex(context_.get(), digest, &size);
    std::string result;
    for (unsigned int i = 0; i < size; ++i) result += format("%02x", digest[i]);
    return result;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context_;
};

std::string sha256_of_file(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  Sha256 digest;
  std::vector<char> block(1 << 20);
  while (stream.read(block.data(), static_cast<std::streamsize>(block.size())) || stream.gcount() > 0)
    digest.update(block.data(), static_cast<std::size_t>(stream.gcount()));
  if (stream.bad()) throw UsageError("cannot read " + path.string());
  return digest.hex();
}

std::vector<std::uint8_t> read_bytes(const fs::path& path, const std::string& relative) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) throw UsageError("golden file " + in_quotes(relative) + " cannot be read; the artifact is corrupt");
  return {std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>()};
}

// root/relative, refused when relative is absolute or leaves root (symbolic links followed).
fs::path inside(const fs::path& root, const std::string& relative) {
  const fs::path base = fs::canonical(root);
  const fs::path resolved = fs::weakly_canonical(base / relative);
  const auto mismatch = std::mismatch(base.begin(), base.end(), resolved.begin(), resolved.end());
  if (fs::path(relative).is_absolute() || mismatch.first != base.end())
    throw UsageError("artifact path " + in_quotes(relative) +
                     " points outside the artifact folder; refusing to read it");
  return resolved;
}

json read_manifest(const fs::path& root) {
  if (!fs::is_directory(root))
    throw UsageError("artifact folder " + in_quotes(root.string()) +
                     " does not exist; pass the folder written by 'edgeexport convert'");
  const fs::path path = root / "manifest.json";
  if (!fs::is_regular_file(path)) {
    if (fs::is_regular_file(root / "bundle.json"))
      throw UsageError(in_quotes(root.string()) +
                       " is a bundle; pass one of its component folders (encoder/, decoder/)");
    throw UsageError(in_quotes(root.string()) + " has no manifest.json; it is not an edgeexport artifact");
  }
  if (fs::file_size(path) > kMaxManifestBytes)
    throw UsageError(format("manifest.json is larger than %ju bytes; refusing to parse it", kMaxManifestBytes));
  std::ifstream stream(path);
  json manifest = json::parse(stream, nullptr, false);
  if (manifest.is_discarded())
    throw UsageError("manifest.json is not valid JSON; the artifact is corrupt, re-run convert");
  const std::uint64_t version = count(member(manifest, "schema_version", ""), "schema_version");
  if (version > kSchemaVersion)
    throw UsageError(
        format("manifest schema_version %ju is newer than this program reads (%ju); rebuild it from a newer edgeexport",
               static_cast<std::uintmax_t>(version), static_cast<std::uintmax_t>(kSchemaVersion)));
  if (version < kSchemaVersion)
    throw UsageError(
        format("manifest schema_version %ju is older than this program reads (%ju); re-run 'edgeexport convert' "
               "to rewrite the artifact",
               static_cast<std::uintmax_t>(version), static_cast<std::uintmax_t>(kSchemaVersion)));
  const std::string target = text(manifest, "target", "");
  if (target != "openvino")
    throw UsageError(in_quotes(root.string()) + " is a " + in_quotes(target) +
                     " artifact; this program checks OpenVINO ones "
                     "(edgeexport convert --target openvino)");
  const std::string model_file = text(manifest, "model_file", "");
  if (fs::path(model_file).extension() != ".xml")
    throw UsageError("manifest model_file " + in_quotes(model_file) +
                     " is not an OpenVINO .xml model; the artifact is corrupt");
  return manifest;
}

// The check Artifact.verify() makes in Python: every listed file exists and matches its sha256.
void verify_files(const fs::path& root, const json& manifest) {
  for (const auto& [relative, expected] : object(manifest, "files", "").items()) {
    const fs::path path = inside(root, relative);
    if (!fs::is_regular_file(path))
      throw UsageError("artifact file " + in_quotes(relative) +
                       " is missing; the artifact is incomplete, re-run convert");
    if (!expected.is_string() || sha256_of_file(path) != expected.get<std::string>())
      throw UsageError("artifact file " + in_quotes(relative) +
                       " does not match its sha256 in the manifest; it was modified or corrupted");
  }
}

// ------------------------------------------------------------------ golden tensors

struct DType {
  const char* name;
  std::size_t size;
  ov::element::Type element;
};

// The golden dtypes (README, "Artifact layout"); bool is one byte, 0 or 1.
const DType kDTypes[] = {
    {"float32", 4, ov::element::f32},  {"float16", 2, ov::element::f16}, {"int64", 8, ov::element::i64},
    {"int32", 4, ov::element::i32},    {"int8", 1, ov::element::i8},     {"uint8", 1, ov::element::u8},
    {"bool", 1, ov::element::boolean},
};

const DType& dtype_named(const std::string& name, const std::string& where) {
  for (const DType& dtype : kDTypes)
    if (name == dtype.name) return dtype;
  throw UsageError("manifest " + where + ".dtype " + in_quotes(name) +
                   " is not a golden dtype; the artifact is corrupt");
}

struct Tensor {
  std::string name;
  const DType* dtype;
  ov::Shape shape;
  std::vector<std::uint8_t> bytes;
};

// The tensors a golden index ({"file", "tensors"}) describes, each checked against its file.
std::vector<Tensor> read_tensors(const fs::path& root, const json& index, const std::string& where) {
  const std::string relative = text(index, "file", where);
  const std::vector<std::uint8_t> data = read_bytes(inside(root, relative), relative);
  const json& entries = array(index, "tensors", where);
  std::vector<Tensor> tensors;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const json& entry = entries[i];
    const std::string at = where + format(".tensors[%zu]", i);
    Tensor tensor{text(entry, "name", at), &dtype_named(text(entry, "dtype", at), at), {}, {}};
    std::uint64_t elements = 1;
    for (const json& dim : array(entry, "shape", at)) {
      const std::uint64_t size = count(dim, at + ".shape");
      if (size != 0 && elements > std::numeric_limits<std::uint64_t>::max() / size / 8)
        throw UsageError("manifest " + at + ".shape is too large; the artifact is corrupt");
      elements *= size;
      tensor.shape.push_back(size);
    }
    const std::uint64_t offset = count(member(entry, "offset", at), at + ".offset");
    const std::uint64_t nbytes = count(member(entry, "nbytes", at), at + ".nbytes");
    const std::string where_tensor = "golden tensor " + in_quotes(tensor.name) + " of " + in_quotes(relative);
    if (offset % kAlignment != 0)
      throw UsageError(format("manifest %s.offset is not a multiple of %ju; the artifact is corrupt", at.c_str(),
                              static_cast<std::uintmax_t>(kAlignment)));
    if (elements * tensor.dtype->size != nbytes)
      throw UsageError("manifest " + at + ": its shape and dtype do not take " + std::to_string(nbytes) +
                       " bytes; the artifact is corrupt");
    if (offset > data.size() || nbytes > data.size() - offset)
      throw UsageError(where_tensor + format(" ends past the file's %zu bytes; the artifact is corrupt", data.size()));
    Sha256 digest;
    digest.update(data.data() + offset, nbytes);
    if (digest.hex() != text(entry, "sha256", at))
      throw UsageError(where_tensor + " does not match its sha256 in the manifest; the artifact is corrupt");
    tensor.bytes.assign(data.begin() + static_cast<std::ptrdiff_t>(offset),
                        data.begin() + static_cast<std::ptrdiff_t>(offset + nbytes));
    tensors.push_back(std::move(tensor));
  }
  return tensors;
}

struct GoldenCase {
  std::string name;
  std::vector<Tensor> inputs;
  std::vector<Tensor> outputs;
};

std::vector<GoldenCase> read_golden(const fs::path& root, const json& manifest) {
  std::vector<GoldenCase> cases;
  const json& entries = array(manifest, "golden", "");
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::string at = format("golden[%zu]", i);
    cases.push_back({text(entries[i], "name", at), read_tensors(root, object(entries[i], "inputs", at), at + ".inputs"),
                     read_tensors(root, object(entries[i], "outputs", at), at + ".outputs")});
  }
  return cases;
}

// Little-endian values of any golden or OpenVINO output element type, as float64.
template <typename T>
std::vector<double> widen(const void* data, std::size_t count) {
  std::vector<double> values(count);
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  for (std::size_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, bytes + i * sizeof(T), sizeof(T));
    values[i] = static_cast<double>(value);
  }
  return values;
}

std::vector<double> as_doubles(const ov::element::Type& type, const void* data, std::size_t count) {
  if (type == ov::element::f32) return widen<float>(data, count);
  if (type == ov::element::f16) return widen<ov::float16>(data, count);
  if (type == ov::element::i64) return widen<std::int64_t>(data, count);
  if (type == ov::element::i32) return widen<std::int32_t>(data, count);
  if (type == ov::element::i8) return widen<std::int8_t>(data, count);
  if (type == ov::element::u8 || type == ov::element::boolean) return widen<std::uint8_t>(data, count);
  throw UsageError("output element type " + type.get_type_name() + " cannot be compared; this program reads " +
                   "f32, f16, i64, i32, i8, u8 and boolean");
}

// ------------------------------------------------------------------ the parity criterion (docs/parity.md)

struct Tolerance {
  double atol = 0, rounding = 0, max_error = 0, rms_error = 0, scale_error = 0;
  std::optional<double> min_top1;
};

void apply_tolerance(const json& values, const std::string& where, Tolerance& tolerance) {
  for (auto [key, slot] :
       {std::pair{"atol", &tolerance.atol}, std::pair{"rounding", &tolerance.rounding},
        std::pair{"max_error", &tolerance.max_error},
        std::pair{"rms_error", &tolerance.rms_error}, std::pair{"scale_error", &tolerance.scale_error}})
    if (values.contains(key)) *slot = number(values, key, where);
  if (values.contains("min_top1") && !values["min_top1"].is_null())
    tolerance.min_top1 = number(values, "min_top1", where);
}

// The manifest's tolerance, with the per_output overrides of `output` applied.
Tolerance tolerance_for(const json& manifest, const std::string& output) {
  const json& values = object(manifest, "tolerance", "");
  for (const char* required : {"atol", "rounding", "max_error", "rms_error", "scale_error"})
    member(values, required, "tolerance");
  Tolerance tolerance;
  apply_tolerance(values, "tolerance", tolerance);
  if (values.contains("per_output") && object(values, "per_output", "tolerance").contains(output))
    apply_tolerance(object(values["per_output"], output, "tolerance.per_output"), "tolerance.per_output." + output,
                    tolerance);
  return tolerance;
}

struct Comparison {
  Comparison(std::string case_name_, std::string output_)
      : case_name(std::move(case_name_)), output(std::move(output_)) {}
  std::string case_name, output;
  double max_err = std::nan(""), rms_err = std::nan(""), scale = std::nan("");  // errors in spreads; the slope
  std::optional<double> top1;  // agreement counting near-ties, where it is checked
  std::vector<std::string> failures;
  bool passed() const { return failures.empty(); }
};

std::string shape_text(const ov::Shape& shape) {
  std::string result = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) result += (i ? ", " : "") + std::to_string(shape[i]);
  return result + "]";
}

double in_spreads(double error, double spread) {
  if (error == 0) return 0;
  return spread > 0 ? error / spread : std::numeric_limits<double>::infinity();
}

// Top-1 agreement over rows of `columns` classes, near-ties counted as agreeing (step 5).
double top1_agreement(const std::vector<double>& reference, const std::vector<double>& target, std::size_t columns,
                      double gap) {
  const std::size_t rows = reference.size() / columns;
  std::size_t agreeing = 0;
  for (std::size_t row = 0; row < rows; ++row) {
    const auto r = reference.begin() + static_cast<std::ptrdiff_t>(row * columns);
    const auto t = target.begin() + static_cast<std::ptrdiff_t>(row * columns);
    const auto a = std::max_element(r, r + static_cast<std::ptrdiff_t>(columns)) - r;
    const auto b = std::max_element(t, t + static_cast<std::ptrdiff_t>(columns)) - t;
    agreeing += a == b || r[a] - r[b] <= gap;
  }
  return static_cast<double>(agreeing) / static_cast<double>(rows);
}

Comparison compare(Comparison result, const std::vector<double>& reference, const ov::Shape& reference_shape,
                   const std::vector<double>& target, const ov::Shape& target_shape, bool logits_listed,
                   const Tolerance& tolerance) {
  if (target_shape != reference_shape) {
    result.failures.push_back("shape " + shape_text(target_shape) + " differs from the reference's " +
                              shape_text(reference_shape));
    return result;
  }
  const auto bad = std::count_if(target.begin(), target.end(), [](double v) { return !std::isfinite(v); });
  if (bad) {
    result.failures.push_back(format("%td NaN/Inf values in the target output", bad));
    return result;
  }
  const std::size_t n = reference.size();
  if (n == 0) {
    result.max_err = result.rms_err = 0;
    return result;
  }
  // Step 1: logits are centred per row over the last axis, with the error between the centred outputs;
  // any other output is centred by its own mean, its error the raw difference.
  const bool logits = logits_listed && !reference_shape.empty() && reference_shape.back() > 1;
  const std::size_t columns = logits ? reference_shape.back() : n;
  std::vector<double> rc(n), tc(n), d(n);
  for (std::size_t start = 0; start < n; start += columns) {
    double r_mean = 0, t_mean = 0;
    for (std::size_t i = start; i < start + columns; ++i) r_mean += reference[i], t_mean += target[i];
    r_mean /= static_cast<double>(columns), t_mean /= static_cast<double>(columns);
    for (std::size_t i = start; i < start + columns; ++i) {
      rc[i] = reference[i] - r_mean, tc[i] = target[i] - t_mean;
      d[i] = logits ? tc[i] - rc[i] : target[i] - reference[i];
    }
  }
  // Steps 2-4: spread and floor (over the centred rows for logits), errors, scale.
  double rc_squares = 0, r_squares = 0, d_squares = 0, max_d = 0, cross = 0;
  for (std::size_t i = 0; i < n; ++i) {
    rc_squares += rc[i] * rc[i], r_squares += reference[i] * reference[i], d_squares += d[i] * d[i];
    cross += tc[i] * rc[i];
    max_d = std::max(max_d, std::abs(d[i]));
  }
  const double spread = std::sqrt(rc_squares / static_cast<double>(n));
  const double floor = tolerance.atol + tolerance.rounding * std::sqrt((logits ? rc_squares : r_squares) / static_cast<double>(n));
  const double rms_d = std::sqrt(d_squares / static_cast<double>(n));
  result.max_err = in_spreads(max_d, spread), result.rms_err = in_spreads(rms_d, spread);
  result.scale = rc_squares > 0 ? cross / rc_squares : std::nan("");
  if (max_d > floor + tolerance.max_error * spread)
    result.failures.push_back(
        format("max error %.3g exceeds floor %.2g + %g x spread %.3g", max_d, floor, tolerance.max_error, spread));
  if (rms_d > floor + tolerance.rms_error * spread)
    result.failures.push_back(
        format("rms error %.3g exceeds floor %.2g + %g x spread %.3g", rms_d, floor, tolerance.rms_error, spread));
  if (spread > 0 && std::abs(result.scale - 1) > tolerance.scale_error + floor / spread)
    result.failures.push_back(
        format("scale %.6g is off 1 by more than %.3g", result.scale, tolerance.scale_error + floor / spread));
  // Step 5: top-1 of logits, where the manifest sets min_top1.
  if (logits && tolerance.min_top1) {
    result.top1 = top1_agreement(reference, target, columns, 2 * (floor + tolerance.rms_error * spread));
    if (*result.top1 < *tolerance.min_top1)
      result.failures.push_back(
          format("top-1 agreement %.3f (near-ties counted) is below %g", *result.top1, *tolerance.min_top1));
  }
  return result;
}

// ------------------------------------------------------------------ running

struct Options {
  fs::path artifact;
  int iterations = 20;
  std::string device = "CPU";
};

Options parse_options(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::printf("%s\n", kUsage);
      std::exit(0);
    }
    if (arg == "--iterations" || arg == "--device") {
      if (i + 1 == argc) throw UsageError(arg + " needs a value; " + kUsage);
      const std::string value = argv[++i];
      if (arg == "--device") {
        options.device = value;
        continue;
      }
      std::size_t used = 0;
      try {
        options.iterations = std::stoi(value, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != value.size() || options.iterations < 1)
        throw UsageError("--iterations takes a positive int, got " + in_quotes(value));
    } else if (arg.rfind("-", 0) == 0) {
      throw UsageError("unknown option " + in_quotes(arg) + "; " + kUsage);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 1) throw UsageError(std::string("pass one artifact folder; ") + kUsage);
  options.artifact = positional[0];
  return options;
}

Comparison failure(const std::string& case_name, const std::string& output, const std::string& reason) {
  Comparison result{case_name, output};
  result.failures.push_back(reason);
  return result;
}

bool has_name(const ov::Output<const ov::Node>& port, const std::string& name) {
  return port.get_names().count(name) > 0;
}

// Feed one golden case's inputs to the request, refusing inputs the model does not take.
void set_inputs(ov::InferRequest& request, const ov::CompiledModel& compiled, GoldenCase& golden) {
  for (const auto& port : compiled.inputs()) {
    const auto tensor = std::find_if(golden.inputs.begin(), golden.inputs.end(),
                                     [&](const Tensor& t) { return has_name(port, t.name); });
    if (tensor == golden.inputs.end())
      throw UsageError("golden case " + in_quotes(golden.name) + " has no input " + in_quotes(port.get_any_name()) +
                       "; the artifact is corrupt");
    if (port.get_element_type() != tensor->dtype->element)
      throw UsageError("golden input " + in_quotes(tensor->name) + " is " + tensor->dtype->name +
                       " but the model takes " + port.get_element_type().get_type_name() + "; the artifact is corrupt");
    request.set_tensor(port, ov::Tensor(tensor->dtype->element, tensor->shape, tensor->bytes.data()));
  }
  if (golden.inputs.size() != compiled.inputs().size())
    throw UsageError("golden case " + in_quotes(golden.name) +
                     " has inputs the model does not take; the artifact is corrupt");
}

// One comparison per golden output, plus a failing one per model output without a reference.
std::vector<Comparison> run_case(ov::InferRequest& request, const ov::CompiledModel& compiled, GoldenCase& golden,
                                 const std::map<std::string, Tolerance>& tolerances,
                                 const std::vector<std::string>& logits_outputs) {
  set_inputs(request, compiled, golden);
  request.infer();
  std::vector<Comparison> results;
  if (golden.outputs.empty()) results.push_back(failure(golden.name, "-", "the golden case has no outputs"));
  for (const Tensor& want : golden.outputs) {
    const auto outputs = compiled.outputs();
    const auto port =
        std::find_if(outputs.begin(), outputs.end(), [&](const auto& p) { return has_name(p, want.name); });
    if (port == outputs.end()) {
      results.push_back(failure(golden.name, want.name, "the model has no output named " + in_quotes(want.name)));
      continue;
    }
    const ov::Tensor got = request.get_tensor(*port);
    const bool logits = std::find(logits_outputs.begin(), logits_outputs.end(), want.name) != logits_outputs.end();
    results.push_back(compare({golden.name, want.name},
                              as_doubles(want.dtype->element, want.bytes.data(), shape_size(want.shape)), want.shape,
                              as_doubles(got.get_element_type(), got.data(), got.get_size()), got.get_shape(), logits,
                              tolerances.at(want.name)));
  }
  for (const auto& port : compiled.outputs()) {
    const bool known = std::any_of(golden.outputs.begin(), golden.outputs.end(),
                                   [&](const Tensor& t) { return has_name(port, t.name); });
    if (!known) results.push_back(failure(golden.name, port.get_any_name(), "the golden case has no reference for it"));
  }
  return results;
}

// numpy.percentile's default (linear interpolation between the closest ranks).
double percentile(std::vector<double> values, double percent) {
  std::sort(values.begin(), values.end());
  const double rank = percent / 100 * static_cast<double>(values.size() - 1);
  const auto below = static_cast<std::size_t>(std::floor(rank));
  const std::size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (rank - static_cast<double>(below)) * (values[above] - values[below]);
}

std::vector<double> time_runs(ov::InferRequest& request, int iterations) {
  for (int i = 0; i < kWarmupRuns; ++i) request.infer();
  std::vector<double> milliseconds;
  for (int i = 0; i < iterations; ++i) {
    const auto start = std::chrono::steady_clock::now();
    request.infer();
    milliseconds.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return milliseconds;
}

std::string number_text(double value) { return std::isnan(value) ? "-" : format("%.8g", value); }

void print_table(const std::vector<Comparison>& results) {
  int case_width = 4, output_width = 6;
  for (const Comparison& r : results) {
    case_width = std::max(case_width, static_cast<int>(r.case_name.size()));
    output_width = std::max(output_width, static_cast<int>(r.output.size()));
  }
  std::printf("%-*s  %-*s  %15s  %15s  %15s  %8s  %s\n", case_width, "case", output_width, "output", "max err",
              "rms err", "scale", "top-1", "result");
  for (const Comparison& r : results) {
    std::string verdict = r.passed() ? "PASS" : "FAIL ";
    for (std::size_t i = 0; i < r.failures.size(); ++i) verdict += (i ? "; " : "") + r.failures[i];
    std::printf("%-*s  %-*s  %15s  %15s  %15s  %8s  %s\n", case_width, r.case_name.c_str(), output_width,
                r.output.c_str(), number_text(r.max_err).c_str(), number_text(r.rms_err).c_str(),
                number_text(r.scale).c_str(), r.top1 ? format("%.6f", *r.top1).c_str() : "-", verdict.c_str());
  }
}

// Refuse a device this machine lacks with the ones it has (OpenVINO's own message does not list them).
void check_device(const ov::Core& core, const std::string& device) {
  const std::string family = device.substr(0, device.find_first_of(":."));
  if (family == "AUTO" || family == "MULTI" || family == "HETERO" || family == "BATCH") return;
  std::string available;
  for (const std::string& name : core.get_available_devices()) {
    if (name.substr(0, name.find('.')) == family) return;
    available += (available.empty() ? "" : ", ") + name;
  }
  throw UsageError("OpenVINO device " + in_quotes(device) + " is not available here; available: " + available);
}

int check(const Options& options) {
  const json manifest = read_manifest(options.artifact);
  verify_files(options.artifact, manifest);
  std::vector<GoldenCase> cases = read_golden(options.artifact, manifest);
  std::vector<std::string> logits_outputs;
  for (const json& name : array(manifest, "logits_outputs", "")) {
    if (!name.is_string()) throw UsageError("manifest logits_outputs must hold output names; the artifact is corrupt");
    logits_outputs.push_back(name.get<std::string>());
  }
  if (cases.empty()) {
    std::printf("FAIL: the artifact has no golden cases\n");
    return 1;
  }
  std::map<std::string, Tolerance> tolerances;
  for (const GoldenCase& golden : cases)
    for (const Tensor& output : golden.outputs) tolerances.emplace(output.name, tolerance_for(manifest, output.name));

  ov::Core core;
  check_device(core, options.device);
  ov::AnyMap config;
  const json& runtime_options = object(manifest, "runtime_options", "");
  if (runtime_options.contains("inference_precision"))
    config.insert(ov::hint::inference_precision(
        ov::element::Type(text(runtime_options, "inference_precision", "runtime_options"))));
  const fs::path model_path = inside(options.artifact, text(manifest, "model_file", ""));
  ov::CompiledModel compiled = core.compile_model(core.read_model(model_path.string()), options.device, config);
  ov::InferRequest request = compiled.create_infer_request();

  std::vector<Comparison> results;
  for (GoldenCase& golden : cases) {
    std::vector<Comparison> case_results = run_case(request, compiled, golden, tolerances, logits_outputs);
    results.insert(results.end(), case_results.begin(), case_results.end());
  }
  print_table(results);
  std::vector<std::string> failed;
  for (const Comparison& r : results)
    if (!r.passed()) failed.push_back(r.case_name + "/" + r.output);
  if (failed.empty()) {
    std::printf("PASS: %zu outputs of %zu golden cases within tolerance\n", results.size(), cases.size());
  } else {
    std::string names;
    for (std::size_t i = 0; i < failed.size(); ++i) names += (i ? ", " : "") + failed[i];
    std::printf("FAIL: %zu of %zu outputs beyond tolerance: %s\n", failed.size(), results.size(), names.c_str());
  }

  set_inputs(request, compiled, cases.front());
  const std::vector<double> milliseconds = time_runs(request, options.iterations);
  std::printf("latency of %s on %s (%d runs after %d warm-up): p50 %.3f ms, p90 %.3f ms\n", cases.front().name.c_str(),
              options.device.c_str(), options.iterations, kWarmupRuns, percentile(milliseconds, 50),
              percentile(milliseconds, 90));
  return failed.empty() ? 0 : 1;
}

// OpenVINO's messages span lines ("Exception from src/...:\n[ GENERAL_ERROR ] ..."): keep the ones
// that say something, joined, so the error stays one line.
std::string one_line(const std::string& message) {
  std::istringstream lines(message);
  std::string line, result;
  while (std::getline(lines, line)) {
    if (line.empty() || line.rfind("Exception from ", 0) == 0) continue;
    result += (result.empty() ? "" : " ") + line;
  }
  return result.empty() ? message : result;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return check(parse_options(argc, argv));
  } catch (const UsageError& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
  } catch (const ov::Exception& error) {
    std::fprintf(stderr, "error: OpenVINO: %s\n", one_line(error.what()).c_str());
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", one_line(error.what()).c_str());
  }
  return 2;
}
