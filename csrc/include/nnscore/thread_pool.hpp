// Minimal fork-join parallel_for over std::thread (no OpenMP: faiss ships its own runtime and a
// second one in the process oversubscribes or crashes).  Work items are claimed dynamically;
// the first exception of any worker is rethrown in the caller.
#pragma once
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "nnscore/common.hpp"

namespace nnscore {

/// Calls fn(item, worker) for item in [0, n_items) on up to n_threads threads (the caller is
/// worker 0).  worker < n_threads indexes per-thread scratch.
template <class Fn>
void parallel_for(index_t n_items, int n_threads, Fn&& fn) {
  if (n_items <= 0) return;
  if (n_threads < 1) n_threads = 1;
  if (n_threads > n_items) n_threads = static_cast<int>(n_items);
  std::atomic<index_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&](int w) {
    try {
      for (index_t i = next.fetch_add(1); i < n_items; i = next.fetch_add(1)) fn(i, w);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n_items);  // stop handing out work
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(n_threads - 1);
  for (int w = 1; w < n_threads; ++w) threads.emplace_back(worker, w);
  worker(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace nnscore
