// edgeexport-check: the parity check of an edgeexport OpenVINO artifact, on the device, in C++.
//
// Reads ARTIFACT/manifest.json (schema 2), checks the sha256 of every file it lists and of every
// golden tensor, compiles model.xml with the OpenVINO runtime and the manifest's inference precision
// hint, runs every golden case, compares each output with PyTorch's at the manifest's tolerance and
// criterion constants (the criterion of docs/parity.md, as edgeexport/validation/metrics.py judges it),
// prints one row per output and the latency of the example case.
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

constexpr std::uint64_t kSchemaVersion = 3;        // what edgeexport writes (edgeexport/manifest.py)
constexpr std::uint64_t kOldestSchemaVersion = 2;  // schema 3 changed only the evaluation set, which this skips
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

// Whether the artifact is an encoder-decoder's decoder (a generation block of role "decoder" with cross-attention
// inputs). OpenVINO 2026.4's CPU plugin gets those wrong below f32 when past + new tokens equals the encoder's length,
// so they compile without snippets there, as edgeexport's runner does (edgeexport/runtimes/openvino.py).
bool cross_attention_decoder(const json& manifest) {
  const auto generation = manifest.find("generation");
  if (generation == manifest.end() || !generation->is_object()) return false;
  const auto role = generation->find("role");
  if (role == generation->end() || !role->is_string() || role->get<std::string>() != "decoder") return false;
  const auto cache = generation->find("cache");
  if (cache == generation->end() || !cache->is_object()) return false;
  const auto cross = cache->find("cross");
  return cross != cache->end() && cross->is_array() && !cross->empty();
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
  if (version < kOldestSchemaVersion)
    throw UsageError(
        format("manifest schema_version %ju is older than this program reads (%ju); re-run 'edgeexport convert' "
               "to rewrite the artifact",
               static_cast<std::uintmax_t>(version), static_cast<std::uintmax_t>(kOldestSchemaVersion)));
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
// A port of edgeexport/validation/metrics.py: each function names the Python one it mirrors, and
// each failure reads word for word as Python's (tests/test_cpp_openvino.py compares them).

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

// The manifest's tolerance, with the per_output overrides of `output` applied (Tolerance.for_output).
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

// The criterion's constants (metrics.CRITERION), from the manifest's `criterion` block that convert writes:
// this program judges by the numbers of the edgeexport that wrote the artifact.
struct Criterion {
  double scale_cap = 0, slice_cap = 0, slope_z = 0, min_scale_dof = 0, feature_quantile = 0,
         min_feature_elements = 0, min_slice_variation = 0, min_slice_spread = 0, flip_z = 0;
};

Criterion criterion_of(const json& manifest) {
  const json& values = object(manifest, "criterion", "");
  Criterion c;
  for (auto [key, slot] :
       {std::pair{"scale_cap", &c.scale_cap}, std::pair{"slice_cap", &c.slice_cap}, std::pair{"slope_z", &c.slope_z},
        std::pair{"min_scale_dof", &c.min_scale_dof}, std::pair{"feature_quantile", &c.feature_quantile},
        std::pair{"min_feature_elements", &c.min_feature_elements},
        std::pair{"min_slice_variation", &c.min_slice_variation},
        std::pair{"min_slice_spread", &c.min_slice_spread}, std::pair{"flip_z", &c.flip_z}})
    *slot = number(values, key, "criterion");
  return c;
}

// The worst slope of one kind of slice (class, row or feature) beyond its noise, and which slice.
struct SliceScale {
  double off;
  std::size_t worst;
};

struct Comparison {
  Comparison(std::string case_name_, std::string output_)
      : case_name(std::move(case_name_)), output(std::move(output_)) {}
  std::string case_name, output;
  double max_err = std::nan(""), rms_err = std::nan(""), scale = std::nan("");  // errors in spreads; the slope
  std::optional<double> top1;  // agreement counting the flips noise explains, where min_top1 is set
  std::vector<std::string> failures;
  bool passed() const { return failures.empty(); }
};

std::string shape_text(const std::vector<std::size_t>& shape) {
  std::string result = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) result += (i ? ", " : "") + std::to_string(shape[i]);
  return result + "]";
}

double in_spreads(double error, double spread) {
  if (error == 0) return 0;
  return spread > 0 ? error / spread : std::numeric_limits<double>::infinity();
}

double mean_of(const std::vector<double>& values) {
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

double rms_of(const std::vector<double>& values) {
  double squares = 0;
  for (double v : values) squares += v * v;
  return std::sqrt(squares / static_cast<double>(values.size()));
}

// numpy.quantile's default (linear interpolation between the closest ranks); numpy.median is q = 0.5.
double quantile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const double rank = q * static_cast<double>(values.size() - 1);
  const auto below = static_cast<std::size_t>(std::floor(rank));
  const std::size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (rank - static_cast<double>(below)) * (values[above] - values[below]);
}

// The first index of the largest value (numpy.argmax).
std::size_t argmax(const std::vector<double>& values, std::size_t start = 0, std::size_t size = 0) {
  const auto first = values.begin() + static_cast<std::ptrdiff_t>(start);
  const auto last = size ? first + static_cast<std::ptrdiff_t>(size) : values.end();
  return static_cast<std::size_t>(std::max_element(first, last) - first);
}

// The compared values of one output (metrics._Errors): the error d, the centred reference rc (rc + level is
// the reference compared), the element-wise floor f, the spread s and the centred values' degrees of freedom.
struct Errors {
  std::vector<double> d, rc, f;
  double level = 0, s = 0;
  double dof = 0;
};

// One output's numbers before the checks (metrics._measure): spread, floor, errors in spreads, slope, worst index.
struct Measured {
  Errors errors;
  double floor = 0;  // rms of the element-wise floor
  std::size_t worst = 0;  // flat index of the largest error beyond its floor
};

Measured measure(Comparison& result, const std::vector<double>& reference, const std::vector<double>& target,
                 std::size_t columns, bool rows, const Tolerance& tolerance) {
  const std::size_t n = reference.size();
  const std::size_t width = rows ? columns : n;  // logits are centred per row, any other output as a whole
  Measured m;
  Errors& e = m.errors;
  e.d.resize(n), e.rc.resize(n), e.f.resize(n);
  double cross = 0, squares = 0;
  for (std::size_t start = 0; start < n; start += width) {
    double r_mean = 0, t_mean = 0;
    for (std::size_t i = start; i < start + width; ++i) r_mean += reference[i], t_mean += target[i];
    r_mean /= static_cast<double>(width), t_mean /= static_cast<double>(width);
    for (std::size_t i = start; i < start + width; ++i) {
      const double tc = target[i] - t_mean;
      e.rc[i] = reference[i] - r_mean;
      e.d[i] = rows ? tc - e.rc[i] : target[i] - reference[i];
      cross += tc * e.rc[i], squares += e.rc[i] * e.rc[i];
    }
    if (!rows) e.level = r_mean;
  }
  e.s = std::sqrt(squares / static_cast<double>(n));
  // The floor follows each value the precision stores, and is at least rounding x the output's RMS
  // (of the centred rows for logits: a per-row offset widens nothing).
  const double magnitude = rows ? e.s : rms_of(reference);
  double max_d = 0, worst_excess = -std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < n; ++i) {
    e.f[i] = tolerance.atol + tolerance.rounding * std::max(std::abs(reference[i]), magnitude);
    max_d = std::max(max_d, std::abs(e.d[i]));
    if (std::abs(e.d[i]) - e.f[i] > worst_excess) worst_excess = std::abs(e.d[i]) - e.f[i], m.worst = i;
  }
  e.dof = static_cast<double>(n - (rows ? n / columns : 1));
  m.floor = rms_of(e.f);
  result.max_err = in_spreads(max_d, e.s), result.rms_err = in_spreads(rms_of(e.d), e.s);
  result.scale = e.s > 0 ? cross / squares : std::nan("");
  return m;
}

// metrics._slopes for one slice: the slope's offset from 1, sum(d rc) / sum(rc^2), and how far noise
// alone moves it: the floor's worst-case tilt sum(f |rc|) / sum(rc^2) plus slope_z standard errors
// sqrt(sum(noise^2 rc^2)) / sum(rc^2), from `noise` (one per element) or else from the residual d - off rc
// with `dof` degrees of freedom.
struct Slope {
  double off, allowance;
};

Slope slope(const std::vector<double>& d, const std::vector<double>& f, const std::vector<double>& rc, double dof,
            const std::vector<double>* noise, const Criterion& criterion) {
  double squares = 0, cross = 0, tilt = 0;
  for (std::size_t i = 0; i < rc.size(); ++i)
    squares += rc[i] * rc[i], cross += d[i] * rc[i], tilt += f[i] * std::abs(rc[i]);
  const double off = cross / squares;
  double spread = 0;  // sum(noise^2 rc^2)
  if (noise) {
    for (std::size_t i = 0; i < rc.size(); ++i) spread += (*noise)[i] * (*noise)[i] * rc[i] * rc[i];
  } else {
    for (std::size_t i = 0; i < rc.size(); ++i) spread += (d[i] - off * rc[i]) * (d[i] - off * rc[i]);
    spread *= squares / dof;
  }
  return {off, (tilt + criterion.slope_z * std::sqrt(spread)) / squares};
}

// One slice of an output seen as (elements, slices): element i of slice j is values[at(i, j)].
struct Slicing {
  std::size_t elements, slices, last;
  bool transposed;  // slices are the rows of the output's last axis (else its columns)
  std::size_t at(std::size_t i, std::size_t j) const { return transposed ? j * last + i : i * last + j; }
};

// metrics._slice_excess: per slice, centred by itself, how far its slope is off 1 beyond its noise; 0 for a
// slice that varies by less than min_slice_variation of its RMS value or whose spread is below min_slice_spread
// of the median slice's. None with one slice or fewer than min_feature_elements elements per slice. `noise`:
// one per element of a slice, or null for each slice's own residual.
std::optional<std::vector<double>> slice_excess(const Errors& e, const Slicing& by, const std::vector<double>* noise,
                                                const Criterion& criterion) {
  if (by.slices < 2 || static_cast<double>(by.elements) < criterion.min_feature_elements) return std::nullopt;
  std::vector<std::vector<double>> d(by.slices), f(by.slices), rc(by.slices);
  std::vector<double> magnitude(by.slices), spread(by.slices);
  for (std::size_t j = 0; j < by.slices; ++j) {
    d[j].resize(by.elements), f[j].resize(by.elements), rc[j].resize(by.elements);
    for (std::size_t i = 0; i < by.elements; ++i) {
      const std::size_t k = by.at(i, j);
      d[j][i] = e.d[k], f[j][i] = e.f[k], rc[j][i] = e.rc[k] + e.level;
    }
    magnitude[j] = rms_of(rc[j]);
    const double d_mean = mean_of(d[j]), r_mean = mean_of(rc[j]);
    for (std::size_t i = 0; i < by.elements; ++i) d[j][i] -= d_mean, rc[j][i] -= r_mean;
    spread[j] = rms_of(rc[j]);
  }
  const double median = quantile(spread, 0.5);
  std::vector<double> excess(by.slices, 0.0);
  for (std::size_t j = 0; j < by.slices; ++j) {
    if (!(spread[j] > criterion.min_slice_variation * magnitude[j] && spread[j] >= criterion.min_slice_spread * median))
      continue;
    const Slope own = slope(d[j], f[j], rc[j], static_cast<double>(by.elements) - 2, noise, criterion);
    excess[j] = std::max(std::abs(own.off) - own.allowance, 0.0);
  }
  return excess;
}

// metrics._noise: the noise per element of `count` values of e.d/e.f from `start`, 1.4826 x median |d|
// combined with the floor's RMS, at most what the bounds allow (floor + rms_error x spread).
double noise_of(const Errors& e, std::size_t start, std::size_t count, const Tolerance& tolerance) {
  std::vector<double> magnitudes(count), floors(count);
  for (std::size_t i = 0; i < count; ++i) magnitudes[i] = std::abs(e.d[start + i]), floors[i] = e.f[start + i];
  const double robust = 1.4826 * quantile(magnitudes, 0.5), floor = rms_of(floors);
  return std::min(std::hypot(robust, floor), floor + tolerance.rms_error * e.s);
}

// metrics._noise with by_row: each row's own noise over its classes; the case's `noise` for every row when
// rows have fewer than min_feature_elements classes.
std::vector<double> row_noise(const Errors& e, std::size_t columns, double noise, const Tolerance& tolerance,
                              const Criterion& criterion) {
  const std::size_t rows = e.d.size() / columns;
  if (static_cast<double>(columns) < criterion.min_feature_elements) return std::vector<double>(rows, noise);
  std::vector<double> each(rows);
  for (std::size_t row = 0; row < rows; ++row) each[row] = noise_of(e, row * columns, columns, tolerance);
  return each;
}

// The top-1 half of metrics._topk_agreement: the fraction of rows whose argmax is the reference's.
double top1_agreement(const std::vector<double>& reference, const std::vector<double>& target, std::size_t columns) {
  const std::size_t rows = reference.size() / columns;
  std::size_t agreeing = 0;
  for (std::size_t row = 0; row < rows; ++row)
    agreeing += argmax(reference, row * columns, columns) == argmax(target, row * columns, columns);
  return static_cast<double>(agreeing) / static_cast<double>(rows);
}

// The standard normal CDF (scipy.special.ndtr).
double ndtr(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

// metrics.explained_flips: the fraction of rows whose top-1 moved in a way the case's noise explains. A flip
// from a to b is explainable when r[a] - r[b] <= flip_z sqrt(2) noise; noise flips row j with probability
// p_j = min(1, sum_c Phi(-(r[a] - r[c]) / (sqrt(2) noise))), and of the explainable flips at most
// ceil(E + flip_z sqrt(V)) count (E = sum p_j, V = sum p_j (1 - p_j)).
double explained_flips(const std::vector<double>& reference, const std::vector<double>& target, std::size_t columns,
                       double noise, const Criterion& criterion) {
  if (noise <= 0) return 0;
  const std::size_t rows = reference.size() / columns;
  const double width = std::sqrt(2.0) * noise;
  std::size_t flips = 0, explainable = 0;
  double expected = 0, variance = 0;
  for (std::size_t row = 0; row < rows; ++row) {
    const std::size_t start = row * columns;
    const std::size_t theirs = argmax(reference, start, columns), ours = argmax(target, start, columns);
    const double best = reference[start + theirs];
    if (ours != theirs) {
      ++flips;
      explainable += best - reference[start + ours] <= criterion.flip_z * width;
    }
    double chance = 0;
    for (std::size_t c = 0; c < columns; ++c)
      if (c != theirs) chance += ndtr(-(best - reference[start + c]) / width);
    const double p = std::min(chance, 1.0);
    expected += p, variance += p * (1 - p);
  }
  if (flips == 0) return 0;
  const double most = std::ceil(expected + criterion.flip_z * std::sqrt(variance));
  return std::min(static_cast<double>(explainable), most) / static_cast<double>(rows);
}

// metrics._slice_scales, logits: the worst class (over the rows, each row with its own noise) and the worst
// row (over the classes, with the case's noise).
std::pair<std::optional<SliceScale>, std::optional<SliceScale>> class_and_row_scales(
    const Errors& e, std::size_t columns, double noise, const Tolerance& tolerance, const Criterion& criterion) {
  const std::size_t rows = e.d.size() / columns;
  const std::vector<double> each_row = row_noise(e, columns, noise, tolerance, criterion);
  const std::vector<double> each_class(columns, noise);
  std::optional<SliceScale> by_class, by_row;
  if (const auto excess = slice_excess(e, {rows, columns, columns, false}, &each_row, criterion))
    by_class = SliceScale{*std::max_element(excess->begin(), excess->end()), argmax(*excess)};
  if (const auto excess = slice_excess(e, {columns, rows, columns, true}, &each_class, criterion))
    by_row = SliceScale{*std::max_element(excess->begin(), excess->end()), argmax(*excess)};
  return {by_class, by_row};
}

// metrics._slice_scales, other outputs: the feature_quantile quantile over the features of the last axis
// of their slopes beyond their own noise, and the worst feature.
std::optional<SliceScale> feature_scale(const Errors& e, std::size_t columns, const Criterion& criterion) {
  const auto excess = slice_excess(e, {e.d.size() / columns, columns, columns, false}, nullptr, criterion);
  if (!excess) return std::nullopt;
  return SliceScale{quantile(*excess, criterion.feature_quantile), argmax(*excess)};
}

// The checks of metrics._misses, in its order and words. Each appends its failure, if any, to `result`.

void check_max_error(Comparison& result, const Measured& m, const std::vector<std::size_t>& shape,
                     const Tolerance& tolerance) {
  const Errors& e = m.errors;
  const double d = std::abs(e.d[m.worst]);
  if (std::max(d - e.f[m.worst], 0.0) <= tolerance.max_error * e.s) return;
  std::vector<std::size_t> index(shape.size());
  for (std::size_t axis = shape.size(), rest = m.worst; axis-- > 0; rest /= shape[axis])
    index[axis] = rest % shape[axis];  // numpy.unravel_index
  result.failures.push_back(format("max error %.3g spreads at index %s exceeds %g (+ floor %.2g; spread %.3g)",
                                   e.s > 0 ? d / e.s : std::numeric_limits<double>::infinity(),
                                   shape_text(index).c_str(), tolerance.max_error, e.f[m.worst], e.s));
}

void check_rms_error(Comparison& result, const Measured& m, const Tolerance& tolerance) {
  if (rms_of(m.errors.d) <= m.floor + tolerance.rms_error * m.errors.s) return;
  result.failures.push_back(format("rms error %.3g spreads exceeds %g (+ floor %.2g; spread %.3g)", result.rms_err,
                                   tolerance.rms_error, m.floor, m.errors.s));
}

// metrics.systematic_scale: the slope deviation an output may carry beyond its noise.
double systematic_scale(const Tolerance& tolerance, const Criterion& criterion) {
  return std::min(tolerance.scale_error, criterion.scale_cap);
}

void check_scale(Comparison& result, const Measured& m, const Tolerance& tolerance, const Criterion& criterion) {
  const Errors& e = m.errors;
  if (!(e.s > 0) || e.dof < criterion.min_scale_dof) return;
  const double limit =
      systematic_scale(tolerance, criterion) + slope(e.d, e.f, e.rc, e.dof - 1, nullptr, criterion).allowance;
  if (std::abs(result.scale - 1) > limit)
    result.failures.push_back(format("scale %.6g is off 1 by more than %.3g", result.scale, limit));
}

void check_feature_scale(Comparison& result, const std::optional<SliceScale>& features, std::size_t columns,
                         const Tolerance& tolerance, const Criterion& criterion) {
  const double allowed = systematic_scale(tolerance, criterion);
  if (!features || features->off <= allowed) return;
  result.failures.push_back(format(
      "feature scale: %.0f%% of the %zu features have slopes off 1 by %.3g or more beyond their noise, more than "
      "%.3g (worst: feature %zu)",
      100 * (1 - criterion.feature_quantile), columns, features->off, allowed, features->worst));
}

void check_slice_scale(Comparison& result, const char* kind, const std::optional<SliceScale>& slices,
                       const Tolerance& tolerance, const Criterion& criterion) {
  const double allowed = std::min(tolerance.scale_error, criterion.slice_cap);
  if (!slices || slices->off <= allowed) return;
  result.failures.push_back(format("%s scale: %s %zu's slope is off 1 by %.3g beyond the noise, more than %g", kind,
                                   kind, slices->worst, slices->off, allowed));
}

void check_top1(Comparison& result, double top1, double near_ties, const Tolerance& tolerance) {
  if (!tolerance.min_top1) return;
  result.top1 = top1 + near_ties;
  if (*result.top1 < *tolerance.min_top1)
    result.failures.push_back(format("top-1 agreement %.3f (%.3f counting the flips its noise explains) < %g", top1,
                                     *result.top1, *tolerance.min_top1));
}

// metrics.compare_output: one output against its bounds.
Comparison compare(Comparison result, const std::vector<double>& reference,
                   const std::vector<std::size_t>& reference_shape, const std::vector<double>& target,
                   const std::vector<std::size_t>& target_shape, bool logits_listed, const Tolerance& tolerance,
                   const Criterion& criterion) {
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
  if (reference.empty()) {
    result.max_err = result.rms_err = 0;
    return result;
  }
  const bool rows = logits_listed && !reference_shape.empty() && reference_shape.back() > 1;
  const std::size_t columns = reference_shape.empty() ? 1 : reference_shape.back();
  const Measured m = measure(result, reference, target, columns, rows, tolerance);
  std::optional<double> noise;
  double top1 = 0, near_ties = 0;
  if (rows) {
    noise = noise_of(m.errors, 0, m.errors.d.size(), tolerance);
    top1 = top1_agreement(reference, target, columns);
    near_ties = explained_flips(reference, target, columns, *noise, criterion);
  }
  std::optional<SliceScale> features, classes, row_slices;
  if (reference_shape.size() >= 2) {
    if (rows)
      std::tie(classes, row_slices) = class_and_row_scales(m.errors, columns, *noise, tolerance, criterion);
    else
      features = feature_scale(m.errors, columns, criterion);
  }
  check_max_error(result, m, reference_shape, tolerance);
  check_rms_error(result, m, tolerance);
  check_scale(result, m, tolerance, criterion);
  check_feature_scale(result, features, columns, tolerance, criterion);
  check_slice_scale(result, "class", classes, tolerance, criterion);
  check_slice_scale(result, "row", row_slices, tolerance, criterion);
  if (rows) check_top1(result, top1, near_ties, tolerance);
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
                                 const std::vector<std::string>& logits_outputs, const Criterion& criterion) {
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
                              tolerances.at(want.name), criterion));
  }
  for (const auto& port : compiled.outputs()) {
    const bool known = std::any_of(golden.outputs.begin(), golden.outputs.end(),
                                   [&](const Tensor& t) { return has_name(port, t.name); });
    if (!known) results.push_back(failure(golden.name, port.get_any_name(), "the golden case has no reference for it"));
  }
  return results;
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
  const Criterion criterion = criterion_of(manifest);

  ov::Core core;
  check_device(core, options.device);
  ov::AnyMap config;
  const json& runtime_options = object(manifest, "runtime_options", "");
  const std::string precision = runtime_options.contains("inference_precision")
                                    ? text(runtime_options, "inference_precision", "runtime_options")
                                    : "";
  if (!precision.empty()) config.insert(ov::hint::inference_precision(ov::element::Type(precision)));
  if (precision != "f32" && options.device.rfind("CPU", 0) == 0 && cross_attention_decoder(manifest)) {
    config.insert({"SNIPPETS_MODE", "DISABLE"});
    std::printf("compiled without CPU snippets: an encoder-decoder's decoder below f32\n");
  }
  const fs::path model_path = inside(options.artifact, text(manifest, "model_file", ""));
  ov::CompiledModel compiled = core.compile_model(core.read_model(model_path.string()), options.device, config);
  ov::InferRequest request = compiled.create_infer_request();

  std::vector<Comparison> results;
  for (GoldenCase& golden : cases) {
    std::vector<Comparison> case_results = run_case(request, compiled, golden, tolerances, logits_outputs, criterion);
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
              options.device.c_str(), options.iterations, kWarmupRuns, quantile(milliseconds, 0.5),
              quantile(milliseconds, 0.9));
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
