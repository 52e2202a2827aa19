// Checkpoints (zeroblocks/checkpoint/checkpoint.hpp) on 1–4 ranks:
//  - resume is exact: save after step k, load into a fresh engine, continue — master
//    and 16-bit parameters bit-identical to the run that never stopped, for stages 0–3,
//    the NVMe tier, bf16 and fp16 with the dynamic scaler mid growth window after a
//    skipped step;
//  - reshard on load: a checkpoint written by N ranks loads on M ranks, for every N, M
//    up to the world size, into another stage or tier; the loaded master and optimizer
//    state equal the saved ones bit for bit (compared through the files), and training
//    continues;
//  - verified load: a flipped byte, a truncated or missing rank file, another model, a
//    newer format version — an error on every rank naming the file (and the corrupt
//    byte range), and the engine unchanged;
//  - atomicity: `latest`, `keep_last`, leftovers of an interrupted save removed; a save
//    inside a step is refused on every rank; ENOSPC (a private small tmpfs) is an error
//    on every rank and the previous checkpoint still loads.
#include "mpi_test_main.hpp"

#include <zeroblocks/checkpoint/checkpoint.hpp>
#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/master/swapped.hpp>

#include "error_of.hpp"
#include "harness.hpp"
#include "scratch_fs.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>

namespace zb = zeroblocks;
namespace fs = std::filesystem;
using zbt::error_of;
using zbt::has;
using C = zb::comm::mpi;

namespace {

/// A directory every rank of `comm` shares, new for each call (rank 0 names it).
fs::path shared_dir(MPI_Comm comm, const std::string& label) {
  static int n = 0;
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  long pid = ::getpid();
  MPI_Bcast(&pid, 1, MPI_LONG, 0, comm);
  const auto d = fs::path(ZB_SWAP_TEST_DIR) / "checkpoints" / (label + "-" + std::to_string(pid) + "-" + std::to_string(n++));
  if (rank == 0) {
    fs::remove_all(d);
    fs::create_directories(d);
  }
  MPI_Barrier(comm);
  return d;
}

/// The engine's config: the harness's, NVMe paths per rank where the preset has a tier.
template <class E>
typename E::config config_of(MPI_Comm comm, zbt::run_options o = {}) {
  auto cfg = zbt::config_for<E>(o);
  if constexpr (requires { cfg.master.swap.paths; }) {
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    const auto dir = fs::path(ZB_SWAP_TEST_DIR) / "ckpt-tier" / (std::to_string(::getpid()) + "-" + std::to_string(rank));
    fs::create_directories(dir);
    cfg.master.swap.paths = {dir.string()};
    cfg.master.sub_group_numel = 100;  // several sub-groups
  }
  if constexpr (requires { cfg.scale.growth_interval; }) cfg.scale.growth_interval = 3;
  return cfg;
}

struct state {
  std::vector<float> master, params;
  float loss_scale = 0;
  long steps = 0;
};

template <class E>
state state_of(E& eng) {
  return {eng.gather_master(), zbt::params_of(eng), eng.loss_scale(), eng.steps()};
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Train steps [from, to) of the harness trainer.
template <class E>
void train(E& eng, const zbt::synthetic_model& m, const zbt::run_options& o, int from, int to) {
  for (int s = from; s < to; ++s) {
    zbt::run_micro_steps(eng, m, o, s);
    eng.step();
  }
}

template <class E>
void resume_is_exact(zbt::run_options o) {
  zbt::synthetic_model m(2);
  const auto dir = shared_dir(MPI_COMM_WORLD, "resume");
  state want;
  {
    E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
    zbt::init_params(eng, m);
    train(eng, m, o, 0, 5);
    want = state_of(eng);
  }
  {
    E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
    zbt::init_params(eng, m);
    train(eng, m, o, 0, 3);
    CHECK(zb::checkpoint::save(eng, dir.string()) == "step-" + std::to_string(eng.steps()));
  }
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
  zb::checkpoint::load(eng, dir.string());
  train(eng, m, o, 3, 5);
  const auto got = state_of(eng);
  CHECK(same_bits(got.master, want.master));
  CHECK(same_bits(got.params, want.params));
  CHECK(got.loss_scale == want.loss_scale);
  CHECK(got.steps == want.steps);
}

/// Every parameter's arrays as a checkpoint holds them: name → array → values.
using contents = std::map<std::size_t, std::vector<std::vector<float>>>;
contents read_back(const fs::path& cdir) {
  const auto m = nlohmann::json::parse(zb::checkpoint::detail::read_text(cdir / "manifest.json"));
  const int arrays = m.at("optimizer").at("state_arrays").get<int>();
  contents out;
  for (const auto& f : m.at("files")) {
    std::ifstream in(cdir / f.at("file").get<std::string>(), std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (const auto& s : f.at("segments")) {
      const std::size_t p = s.at(0), begin = s.at(1), count = s.at(2), off = s.at(3);
      auto& v = out[p];
      v.resize(static_cast<std::size_t>(arrays));
      for (int a = 0; a < arrays; ++a) {
        if (v[a].size() < begin + count) v[a].resize(begin + count);
        std::memcpy(v[a].data() + begin, bytes.data() + off + static_cast<std::size_t>(a) * count * 4, count * 4);
      }
    }
  }
  return out;
}

bool same_contents(const contents& a, const contents& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [p, arrays] : a) {
    const auto it = b.find(p);
    if (it == b.end() || it->second.size() != arrays.size()) return false;
    for (std::size_t k = 0; k < arrays.size(); ++k)
      if (!same_bits(arrays[k], it->second[k])) return false;
  }
  return true;
}

/// A communicator of the first `n` world ranks (MPI_COMM_NULL on the others).
MPI_Comm first_ranks(int n) {
  MPI_Comm c = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, zb_world_rank() < n ? 0 : MPI_UNDEFINED, zb_world_rank(), &c);
  return c;
}

/// Save with `Src` on n ranks, load with `Dst` on k ranks, save again: same contents.
template <class Src, class Dst>
void reshard(int n, int k) {
  INFO("saved on " << n << " rank(s) by " << Src::stage << ", loaded on " << k << " by " << Dst::stage);
  zbt::synthetic_model m(3);
  zbt::run_options o;
  const auto dir = shared_dir(MPI_COMM_WORLD, "reshard");
  if (MPI_Comm c = first_ranks(n); c != MPI_COMM_NULL) {
    {
      Src eng(m.reg, C(c), config_of<Src>(c, o));
      zbt::init_params(eng, m);
      train(eng, m, o, 0, 2);
      zb::checkpoint::save_options so;
      so.name = "a";
      zb::checkpoint::save(eng, dir.string(), so);
    }
    MPI_Comm_free(&c);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (MPI_Comm c = first_ranks(k); c != MPI_COMM_NULL) {
    {
      Dst eng(m.reg, C(c), config_of<Dst>(c, o));
      zb::checkpoint::load(eng, dir.string(), "a");
      CHECK(eng.steps() == 2);
      zb::checkpoint::save_options so;
      so.name = "b";
      zb::checkpoint::save(eng, dir.string(), so);
      train(eng, m, o, 2, 3);  // and training goes on
      CHECK(eng.steps() == 3);
    }
    MPI_Comm_free(&c);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (zb_world_rank() == 0) CHECK(same_contents(read_back(dir / "a"), read_back(dir / "b")));
}

/// Run `f` on rank 0 only, then every rank waits.
template <class F>
void on_rank0(F&& f) {
  if (zb_world_rank() == 0) f();
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace

TEST_CASE_TEMPLATE("resume after a save is bit-identical to the run that never stopped", E, zb::stage0<C>,
                   zb::stage1<C>, zb::stage2<C>, zb::stage3<C>, zb::stage3<C, float>, zb::stage2_nvme<C>,
                   zb::infinity<C>) {
  resume_is_exact<E>({});
}

TEST_CASE_TEMPLATE("fp16: the loss scaler resumes mid growth window, after a skipped step", E,
                   zb::stage1<C, zb::half>, zb::stage3<C, zb::half>) {
  zbt::run_options o;
  o.overflow_step = 1;  // skipped: the scale halves (hysteresis 1), then grows every 3 steps
  resume_is_exact<E>(o);
}

TEST_CASE("a checkpoint written by N ranks loads on M ranks into another stage or tier") {
  const int world = zb_world_size();
  for (int n = 1; n <= world; ++n)
    for (int k = 1; k <= world; ++k) {
      switch ((n + k) % 4) {
        case 0: reshard<zb::stage3<C>, zb::stage1<C>>(n, k); break;
        case 1: reshard<zb::stage0<C>, zb::stage3<C>>(n, k); break;
        case 2: reshard<zb::stage2<C>, zb::stage2_nvme<C>>(n, k); break;
        default: reshard<zb::infinity<C>, zb::stage0<C>>(n, k); break;
      }
    }
}

TEST_CASE("a damaged or foreign checkpoint is an error on every rank, and the engine is unchanged") {
  zbt::synthetic_model m(20);  // at least 29 KB per rank file on 4 ranks: several 4 KiB blocks
  zbt::run_options o;
  using E = zb::stage3<C>;
  const auto dir = shared_dir(MPI_COMM_WORLD, "damaged");
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
  zbt::init_params(eng, m);
  train(eng, m, o, 0, 2);
  zb::checkpoint::save_options so;
  so.name = "good";
  so.block_bytes = 4096;  // several blocks per file: the corrupt one is located
  zb::checkpoint::save(eng, dir.string(), so);
  train(eng, m, o, 2, 3);
  const auto before = state_of(eng);
  const auto copy = [&](const std::string& name) {
    on_rank0([&] { fs::copy(dir / "good", dir / name, fs::copy_options::recursive); });
    return name;
  };
  const auto unchanged = [&] {
    const auto now = state_of(eng);
    CHECK(same_bits(now.master, before.master));
    CHECK(same_bits(now.params, before.params));
    CHECK(now.steps == before.steps);
  };
  const auto rank0_file = [&](const std::string& name) { return (dir / name / "rank-00000.bin").string(); };
  {  // a flipped byte in the second block
    const auto name = copy("flipped");
    on_rank0([&] {
      std::fstream f(rank0_file(name), std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(5000);
      char c = 0;
      f.read(&c, 1);
      c = static_cast<char>(c ^ 0x10);
      f.seekp(5000);
      f.write(&c, 1);
    });
    const auto msg = error_of([&] { zb::checkpoint::load(eng, dir.string(), name); });
    INFO(msg);
    CHECK(has(msg, "checkpoint::load: " + rank0_file(name) + " is corrupt: bytes [4096, "));
    unchanged();
  }
  {  // a segment whose offset lies past the end of its file (the load maps the files)
    const auto name = copy("outside");
    on_rank0([&] {
      auto j = nlohmann::json::parse(zb::checkpoint::detail::read_text(dir / name / "manifest.json"));
      j["files"][0]["segments"][0][3] = j["files"][0]["bytes"].get<std::uint64_t>();
      std::ofstream(dir / name / "manifest.json") << j.dump();
    });
    const auto msg = error_of([&] { zb::checkpoint::load(eng, dir.string(), name); });
    INFO(msg);
    CHECK(has(msg, "checkpoint::load: "));
    CHECK(has(msg, "a segment of rank-00000.bin ([0, 0, "));
    CHECK(has(msg, "lies outside its file or its parameter"));
    unchanged();
  }
  {  // truncated
    const auto name = copy("truncated");
    on_rank0([&] { fs::resize_file(rank0_file(name), fs::file_size(rank0_file(name)) - 3); });
    const auto msg = error_of([&] { zb::checkpoint::load(eng, dir.string(), name); });
    INFO(msg);
    CHECK(has(msg, rank0_file(name) + " has "));
    CHECK(has(msg, "(truncated or replaced)"));
    unchanged();
  }
  {  // a missing rank file
    const auto name = copy("missing");
    on_rank0([&] { fs::remove(rank0_file(name)); });
    const auto msg = error_of([&] { zb::checkpoint::load(eng, dir.string(), name); });
    INFO(msg);
    CHECK(has(msg, "cannot open " + rank0_file(name)));
    unchanged();
  }
  {  // a newer format
    const auto name = copy("newer");
    on_rank0([&] {
      auto j = nlohmann::json::parse(zb::checkpoint::detail::read_text(dir / name / "manifest.json"));
      j["format_version"] = zb::checkpoint::format_version + 1;
      std::ofstream(dir / name / "manifest.json") << j.dump();
    });
    const auto msg = error_of([&] { zb::checkpoint::load(eng, dir.string(), name); });
    INFO(msg);
    CHECK(has(msg, "has format version " + std::to_string(zb::checkpoint::format_version + 1)));
    unchanged();
  }
  {  // another model
    zbt::synthetic_model other(21);
    E foreign(other.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
    const auto msg = error_of([&] { zb::checkpoint::load(foreign, dir.string(), "good"); });
    INFO(msg);
    CHECK(has(msg, "is of another model: parameter #0 is 'embed.w' [260,7] in unit 'embed' in the checkpoint but "
                   "'embed.w' [273,7] in unit 'embed' in this engine"));
  }
  // The good one still loads and gives the state it saved.
  zb::checkpoint::load(eng, dir.string(), "good");
  CHECK(eng.steps() == 2);
}

TEST_CASE("a load replaces values set_param recorded before, even ones that differ across ranks") {
  // A trainer that initialises its model randomly per rank and then resumes: the loaded
  // state is what every rank trains from, so the earlier values must not be checked.
  zbt::synthetic_model m(9);
  zbt::run_options o;
  using E = zb::stage2<C>;
  const auto dir = shared_dir(MPI_COMM_WORLD, "reinit");
  E saver(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
  zbt::init_params(saver, m);
  train(saver, m, o, 0, 2);
  zb::checkpoint::save_options so;
  so.name = "base";
  zb::checkpoint::save(saver, dir.string(), so);

  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  for (std::size_t p = 0; p < m.params.size(); ++p) {  // rank-dependent "random" values
    std::vector<float> v(eng.model_layout().param(p).numel, 0.25f * static_cast<float>(rank + 1));
    eng.set_param(m.params[p], v);
  }
  zb::checkpoint::load(eng, dir.string(), "base");
  train(eng, m, o, 2, 3);  // no initial-values error
  train(saver, m, o, 2, 3);
  CHECK(same_bits(state_of(eng).master, state_of(saver).master));
}

TEST_CASE("latest, keep_last, leftovers of an interrupted save, and a save inside a step") {
  zbt::synthetic_model m;
  zbt::run_options o;
  using E = zb::stage2<C>;
  const auto dir = shared_dir(MPI_COMM_WORLD, "housekeeping");
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
  zbt::init_params(eng, m);
  on_rank0([&] { fs::create_directories(dir / ".tmp-step-9-deadbeef"); });  // a killed save's leftover
  zb::checkpoint::save_options so;
  so.keep_last = 2;
  for (int s = 0; s < 4; ++s) {
    train(eng, m, o, s, s + 1);
    zb::checkpoint::save(eng, dir.string(), so);
  }
  CHECK(zb::checkpoint::latest(dir.string()) == "step-4");
  CHECK(!fs::exists(dir / ".tmp-step-9-deadbeef"));
  CHECK(!fs::exists(dir / "step-1"));
  CHECK(!fs::exists(dir / "step-2"));
  CHECK(fs::exists(dir / "step-3" / "manifest.json"));
  // Inside a step: refused on every rank, nothing written.
  eng.begin_micro_step();
  const auto msg = error_of([&] { zb::checkpoint::save(eng, dir.string()); });
  CHECK(has(msg, "micro-step(s) of the next step already ran; save between steps"));
  CHECK(zb::checkpoint::latest(dir.string()) == "step-4");
  eng.end_micro_step();
  eng.step();
  // Ranks that name the checkpoint differently: an error on every rank, nothing published.
  if (zb_world_size() > 1) {
    zb::checkpoint::save_options mine;
    mine.name = zb_world_rank() == 1 ? "other" : "mine";
    const auto m2 = error_of([&] { zb::checkpoint::save(eng, dir.string(), mine); });
    CHECK(has(m2, "checkpoint::save: rank 0 saves as 'mine' (keep_last 0) but rank 1 as 'other' (keep_last 0)"));
    CHECK(zb::checkpoint::latest(dir.string()) == "step-4");
  }
}

TEST_CASE("ENOSPC during a save is an error on every rank; the previous checkpoint still loads") {
  zbt::synthetic_model m(100);  // 48,300 elements: 0.58 MB per checkpoint, two do not fit in 1 MiB
  zbt::run_options o;
  using E = zb::stage1<C>;
  std::string path;
  std::unique_ptr<zbt::small_fs> small;
  int mounted = 0;
  if (zb_world_rank() == 0) {
    small = std::make_unique<zbt::small_fs>(fs::path(ZB_SWAP_TEST_DIR), "ckpt-enospc", std::size_t{1} << 20);
    path = small->dir().string();
    mounted = small->mounted() ? 1 : 0;
    if (!mounted) MESSAGE("not checked: " << small->why_not());
  }
  MPI_Bcast(&mounted, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (!mounted) return;
  int len = static_cast<int>(path.size());
  MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
  path.resize(static_cast<std::size_t>(len));
  MPI_Bcast(path.data(), len, MPI_CHAR, 0, MPI_COMM_WORLD);
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
  zbt::init_params(eng, m);
  train(eng, m, o, 0, 1);
  zb::checkpoint::save(eng, path);  // fits
  train(eng, m, o, 1, 2);
  const auto msg = error_of([&] { zb::checkpoint::save(eng, path); });  // does not
  INFO(msg);
  CHECK(has(msg, "No space left on device"));
  CHECK(zb::checkpoint::latest(path) == "step-1");
  E fresh(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
  zb::checkpoint::load(fresh, path);
  CHECK(fresh.steps() == 1);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_CASE("safetensors in: an export imports into another stage, bf16 rounded, names mapped; bad files refused") {
  zbt::synthetic_model m(2);
  zbt::run_options o;
  const auto dir = shared_dir(MPI_COMM_WORLD, "import");
  std::vector<float> master;
  {
    using A = zb::stage1<C>;
    A eng(m.reg, C(MPI_COMM_WORLD), config_of<A>(MPI_COMM_WORLD, o));
    zbt::init_params(eng, m);
    train(eng, m, o, 0, 2);
    zb::checkpoint::save(eng, dir.string());
    master = eng.gather_master();
    zb::checkpoint::save_safetensors(eng, (dir / "live.safetensors").string());  // collectively, from the engine
  }
  on_rank0([&] {
    zb::checkpoint::export_options eo;
    zb::checkpoint::export_safetensors(dir.string(), "", (dir / "fp32.safetensors").string(), eo);
    eo.dtype = "bf16";
    zb::checkpoint::export_safetensors(dir.string(), "", (dir / "bf16.safetensors").string(), eo);
  });
  {  // fp32 into stage 3: the master as saved, bit for bit; training goes on
    using B = zb::stage3<C>;
    B eng(m.reg, C(MPI_COMM_WORLD), config_of<B>(MPI_COMM_WORLD, o));
    zb::checkpoint::import_safetensors(eng, (dir / "fp32.safetensors").string(),
                                       [](const std::string& n) { return n; });
    CHECK(same_bits(eng.gather_master(), master));
    train(eng, m, o, 0, 1);
  }
  {  // the collective export imports alike
    using B = zb::stage2_nvme<C>;
    B eng(m.reg, C(MPI_COMM_WORLD), config_of<B>(MPI_COMM_WORLD, o));
    zb::checkpoint::import_safetensors(eng, (dir / "live.safetensors").string());
    CHECK(same_bits(eng.gather_master(), master));
    CHECK(!fs::exists(dir / "live.safetensors.checkpoint"));
  }
  {  // bf16 into stage 0: the master rounded to bf16
    using B = zb::stage0<C>;
    B eng(m.reg, C(MPI_COMM_WORLD), config_of<B>(MPI_COMM_WORLD, o));
    zb::checkpoint::import_safetensors(eng, (dir / "bf16.safetensors").string());
    auto want = master;
    for (auto& x : want) x = zb::to_float(zb::from_float<zb::bfloat16>(x));
    CHECK(same_bits(eng.gather_master(), want));
  }
  {  // a name the file does not have; another model's shapes: refused, engine unchanged
    using B = zb::stage2<C>;
    B eng(m.reg, C(MPI_COMM_WORLD), config_of<B>(MPI_COMM_WORLD, o));
    zbt::init_params(eng, m);
    const auto before = eng.gather_master();
    auto msg = error_of([&] {
      zb::checkpoint::import_safetensors(eng, (dir / "fp32.safetensors").string(),
                                         [](const std::string& n) { return "model." + n; });
    });
    CHECK(has(msg, "has no tensor 'model.embed.w' for parameter 'embed.w' [26,7] in unit 'embed'"));
    zbt::synthetic_model other(3);
    B wrong(other.reg, C(MPI_COMM_WORLD), config_of<B>(MPI_COMM_WORLD, o));
    msg = error_of([&] { zb::checkpoint::import_safetensors(wrong, (dir / "fp32.safetensors").string()); });
    CHECK(has(msg, "tensor 'embed.w' has shape [26,7] but parameter 'embed.w' [39,7] in unit 'embed' needs [39,7]"));
    CHECK(same_bits(eng.gather_master(), before));
  }
}

TEST_CASE("async_saver: training goes on while the snapshot is written; it loads as saved; errors surface later") {
  zbt::synthetic_model m(20);
  zbt::run_options o;
  using E = zb::stage2<C>;
  const auto dir = shared_dir(MPI_COMM_WORLD, "async");
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
  zbt::init_params(eng, m);
  zb::checkpoint::async_saver<E> saver(eng);
  train(eng, m, o, 0, 2);
  const auto at2 = state_of(eng);
  CHECK(saver.save(dir.string()) == "step-2");
  train(eng, m, o, 2, 4);  // while the background thread writes step-2
  const auto at4 = state_of(eng);
  CHECK(saver.save(dir.string()) == "step-4");  // waits for step-2 first
  saver.wait();
  CHECK(zb::checkpoint::latest(dir.string()) == "step-4");
  for (const auto& [name, want] : {std::pair{std::string("step-2"), at2}, std::pair{std::string("step-4"), at4}}) {
    E fresh(m.reg, C(MPI_COMM_WORLD), config_of<E>(MPI_COMM_WORLD, o));
    zb::checkpoint::load(fresh, dir.string(), name);
    const auto got = state_of(fresh);
    CHECK(same_bits(got.master, want.master));
    CHECK(same_bits(got.params, want.params));
  }
  // A directory that cannot be made (a file is in the way): the error comes at the next call, on every rank.
  on_rank0([&] { std::ofstream(dir / "blocked") << "x"; });
  saver.save((dir / "blocked" / "sub").string());
  const auto msg = error_of([&] { saver.wait(); });
  CHECK(!msg.empty());
  saver.wait();  // reported once
}
